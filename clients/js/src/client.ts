/**
 * The framework-free client: one WebSocket to an agentcast server carrying any number of
 * subscriptions, reconnected with jittered backoff and resumed by seq and epoch
 * (docs/protocol.md sections 6 and 11).
 */
import { backoffDelay, type BackoffOptions } from './backoff.js';
import { ChatSession } from './chat.js';
import { CloseCode, closeCodeOfStatus, isAuthClose, reconnectable } from './codes.js';
import { AgentcastError } from './errors.js';

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' | 'unauthorized';

/** A token, or a function that returns one (called before every connection attempt). */
export type TokenSource = string | (() => string | null | Promise<string | null>);

/** The WebSocket constructor the client uses (the browser's, or the `ws` package's). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;

export interface ClientOptions {
  /** `ws://host:port/ws`, or an `http(s)://host:port` base from which `/ws` is derived. */
  url: string;
  /** Sent as the subprotocols `agentcast.v1, bearer.<token>` (docs/security.md). */
  token?: TokenSource;
  /**
   * A single-use ticket (`POST /api/tickets`), fetched before every connection attempt and
   * sent as `?ticket=`. Takes precedence over `token` for the WebSocket (the token still
   * serves HTTP calls). Throw an {@link AgentcastError} with code `unauthorized` when the
   * ticket endpoint answers 401: the client then stops in state `unauthorized`
   * ({@link fetchTicket} does so).
   */
  ticket?: () => Promise<string>;
  /** The WebSocket class (the `ws` package in Node 20); default `globalThis.WebSocket`. */
  WebSocket?: typeof WebSocket;
  /** Full-jitter exponential backoff between attempts (default 500 ms up to 30 s). */
  reconnect?: BackoffOptions;
  /**
   * After this many ms without any frame from the server, send a `ping` command; when
   * nothing arrives within as long again, the connection is taken for dead and replaced.
   * Default 20000; 0 disables it.
   */
  heartbeatMs?: number;
  /**
   * Refresh the connection's token before it expires (default true when `token` is a
   * function): for a JWT with `exp`, the client sends `auth:refresh` with a fresh token
   * from `token()` when a quarter of its lifetime (at most 30 s) is left, so the server
   * never closes with 4501.
   */
  refreshToken?: boolean;
  /** Default reply timeout of {@link AgentcastClient.command} (default 30000 ms). */
  commandTimeoutMs?: number;
  /** `fetch` for the HTTP calls (default `globalThis.fetch`). */
  fetch?: typeof fetch;
}

/** A topic event as the server sent it (docs/protocol.md section 4). */
export interface AgentcastEvent<D = Record<string, unknown>> {
  type: string;
  topic: string;
  seq: number;
  timestamp: string;
  data: D;
}

export interface SubscriptionHandlers {
  /** Each event once, in seq order, across reconnections. */
  onEvent?(ev: AgentcastEvent): void;
  /** The topic's state as of `seq` (run and chat topics): replace yours with it. */
  onSnapshot?(data: unknown, info: { seq: number }): void;
  /** Every `subscribed` reply (the first one, and one per reconnection). */
  onSubscribed?(info: { seq: number; epoch: string; recovered: boolean }): void;
  /** `recovered: false`: drop your state of the topic (a snapshot follows for run/chat topics). */
  onHistoryLost?(): void;
  /** The server refused the subscription (`forbidden`, …) or ended it; it is over. */
  onRefused?(err: AgentcastError): void;
}

export interface Subscription {
  readonly topic: string;
  /** The last seq applied (0 before any). */
  readonly seq: number;
  /** The topic's epoch, from the last `subscribed` reply. */
  readonly epoch?: string;
  /** Whether the last `subscribed` reply said `recovered: true`. */
  readonly recovered?: boolean;
  /** True once the server confirmed the subscription on the current connection. */
  readonly live: boolean;
  unsubscribe(): void;
}

export interface Ack {
  topic: string;
  seq: number;
  duplicate?: boolean;
}

type Frame = Record<string, unknown>;
type StateListener = (s: ConnectionState, detail?: { code?: number; reason?: string }) => void;

interface Command {
  id: number;
  frame: Frame;
  onReply(frame: Frame): void;
  onLost(err: AgentcastError): void;
  /** User commands wait for the next connection; subscription commands are resent anyway. */
  portable: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

/** Error codes after which a `subscribe` is retried with backoff instead of given up. */
const TRANSIENT = new Set(['unavailable', 'rate_limited', 'internal']);
/** Error codes after which an idempotent publish is sent again. */
const PUBLISH_RETRY = new Set(['connection_lost', 'outcome_unknown', 'unavailable', 'timeout', 'rate_limited']);
/** A connection open at least this long resets the backoff. */
const STABLE_MS = 5000;

/** The WebSocket URL of a server: `http://h:p` → `ws://h:p/ws`; ws(s) URLs unchanged. */
export function wsUrlOf(url: string): string {
  if (/^wss?:\/\//.test(url)) return url;
  const base = url.replace(/\/+$/, '');
  if (base.startsWith('https://')) return 'wss://' + base.slice(8) + '/ws';
  if (base.startsWith('http://')) return 'ws://' + base.slice(7) + '/ws';
  throw new TypeError(`not an http(s):// or ws(s):// URL: ${url}`);
}

/** The HTTP base of a server: `ws://h:p/ws` → `http://h:p`. */
export function httpUrlOf(url: string): string {
  if (/^https?:\/\//.test(url)) return url.replace(/\/+$/, '');
  const u = new URL(url);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '');
  u.search = '';
  return u.toString().replace(/\/+$/, '');
}

/** The `exp` of a JWT, in ms since the epoch; null when `token` is not a JWT with one. */
export function jwtExpiry(token: string): number | null {
  const part = token.split('.')[1];
  if (part === undefined) return null;
  try {
    const claims = JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: unknown };
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

async function resolveToken(token: TokenSource | undefined): Promise<string | null> {
  if (token === undefined) return null;
  if (typeof token === 'string') return token;
  return (await token()) ?? null;
}

/**
 * Trade a token for a single-use ticket (`POST /api/tickets`, docs/security.md). Rejects
 * with an {@link AgentcastError} `unauthorized` on 401 (the client then stops) and a
 * plain `Error` otherwise (the client retries with backoff).
 */
export async function fetchTicket(baseUrl: string, token: string, fetchImpl: typeof fetch = globalThis.fetch): Promise<string> {
  const r = await fetchImpl(`${httpUrlOf(baseUrl)}/api/tickets`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}` },
  });
  if (r.status === 401 || r.status === 403) {
    throw new AgentcastError('unauthorized', `ticket refused: HTTP ${r.status}`, {
      closeCode: r.status === 401 ? CloseCode.UNAUTHORIZED : CloseCode.FORBIDDEN,
    });
  }
  if (!r.ok) throw new Error(`ticket: HTTP ${r.status}`);
  return ((await r.json()) as { ticket: string }).ticket;
}

class Sub implements Subscription {
  readonly topic: string;
  /** Last seq applied (the resume point and the duplicate filter); null: live only. */
  position: number | null;
  epoch?: string;
  recovered?: boolean;
  live = false;
  ended = false;
  expectSnapshot = false;
  /** Id of the latest `subscribe` command: only its reply counts. */
  request: number | null = null;
  retries = 0;
  retryTimer?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly client: AgentcastClient,
    topic: string,
    readonly handlers: SubscriptionHandlers,
    since: number | undefined,
    epoch: string | undefined,
  ) {
    this.topic = topic;
    this.position = since ?? null;
    if (since !== undefined && epoch !== undefined) this.epoch = epoch;
  }

  get seq(): number {
    return this.position ?? 0;
  }

  unsubscribe(): void {
    if (this.ended) return;
    this.ended = true;
    this.live = false;
    clearTimeout(this.retryTimer);
    this.client._drop(this);
  }

  command(): Frame {
    const frame: Frame = { type: 'subscribe', topic: this.topic };
    if (this.position !== null) {
      frame.since = this.position;
      if (this.epoch !== undefined) frame.epoch = this.epoch;
    }
    return frame;
  }

  onSubscribed(reply: Frame): void {
    const data = reply.data as { seq: number; recovered: boolean; since: number | null; first_seq: number; epoch: string };
    this.epoch = data.epoch;
    this.retries = 0;
    this.recovered = data.recovered;
    if (data.since === null || data.since === undefined) {
      this.position = data.seq;
    } else if (data.recovered) {
      this.position = data.since;
    } else {
      this.position = data.first_seq - 1;
    }
    this.live = true;
    this.expectSnapshot = true;
    if (!data.recovered) this.safe(() => this.handlers.onHistoryLost?.());
    this.safe(() => this.handlers.onSubscribed?.({ seq: data.seq, epoch: data.epoch, recovered: data.recovered }));
  }

  onFrame(frame: Frame): void {
    if (!this.live || this.ended) return;
    const seq = frame.seq as number;
    if (this.expectSnapshot && frame.type === 'snapshot') {
      this.expectSnapshot = false;
      this.position = seq;
      this.safe(() => this.handlers.onSnapshot?.(frame.data, { seq }));
      return;
    }
    this.expectSnapshot = false;
    if (this.position !== null) {
      if (seq <= this.position) return; // a duplicate after a resume
      if (seq !== this.position + 1) {
        this.live = false;
        this.client._resync(this);
        return;
      }
    }
    this.position = seq;
    this.safe(() => this.handlers.onEvent?.(frame as unknown as AgentcastEvent));
  }

  private safe(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      // a handler's exception must not break the connection's other subscriptions
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

/**
 * One WebSocket to an agentcast server, with any number of subscriptions.
 *
 * Contract: after {@link connect} the client keeps a connection open, reconnecting with
 * full-jitter exponential backoff after every lost connection and reconnectable close code
 * (1001, 1011, 1012, 4000–4499, 1006), and at once when the page becomes visible or the
 * network comes back (`online`), until {@link close} or a terminal close: 4500, 4501,
 * 4503, 4508 (or a handshake answered 401/403) put it in state `unauthorized`, other
 * terminal codes (4529, 4530, 1002, 1007–1009, a 404 handshake) in `closed`; calling
 * {@link connect} again starts over (e.g. with a fresh token) and resumes every
 * subscription. Each subscription's handlers see every event once, in seq order, across
 * reconnections; `onHistoryLost` says when the server could not provide what was missed.
 */
export class AgentcastClient {
  readonly url: string;
  readonly httpUrl: string;
  private readonly opts: ClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly fetchImpl: typeof fetch | undefined;
  private _state: ConnectionState = 'idle';
  private readonly listeners = new Set<StateListener>();
  private readonly frameListeners = new Set<(frame: Frame) => void>();
  private readonly subs = new Map<string, Sub>();
  private ws: WebSocket | null = null;
  private opened = false;
  private openedAt = 0;
  private attempt = 0;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private heartbeat?: ReturnType<typeof setInterval>;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  /** The token the current connection authenticated with (for the refresh schedule). */
  private connectedToken: string | null = null;
  private lastRx = 0;
  private pingSentAt = 0;
  private lastError = '';
  private nextId = 1;
  private readonly outbox: Command[] = [];
  private readonly inFlight = new Map<number, Command>();
  private readonly lateErrors = new Map<number, (err: AgentcastError) => void>();
  private generation = 0;
  private readonly producerId = `js-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
  private producerSeq = 0;
  private publishing: Promise<unknown> = Promise.resolve();
  private readonly detachGlobals: () => void;

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.url = wsUrlOf(opts.url);
    this.httpUrl = httpUrlOf(this.url);
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (WS === undefined) {
      throw new TypeError('no WebSocket: pass ClientOptions.WebSocket (e.g. the `ws` package in Node)');
    }
    this.WS = WS as unknown as WebSocketConstructor;
    this.fetchImpl = opts.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    this.detachGlobals = this.attachGlobals();
  }

  /** The connection's state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** Call `cb` on every state change (with the close code and reason when a close caused it). */
  onStateChange(cb: StateListener): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  /** Every frame that is neither a subscribed topic's event nor a reply the client awaits. */
  onFrame(cb: (frame: Frame) => void): () => void {
    this.frameListeners.add(cb);
    return () => this.frameListeners.delete(cb);
  }

  /** Open the connection (again, after `close()`, `closed` or `unauthorized`). */
  connect(): void {
    if (this._state === 'connecting' || this._state === 'open' || this._state === 'reconnecting') return;
    this.attempt = 0;
    this.setState('connecting');
    void this.open();
  }

  /**
   * Close the connection and stop reconnecting. Subscriptions are kept: a later
   * {@link connect} resumes them. Commands waiting for a reply are rejected `closed`.
   */
  close(): void {
    this.generation++;
    clearTimeout(this.retryTimer);
    clearTimeout(this.refreshTimer);
    this.stopHeartbeat();
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      detach(ws);
      try {
        ws.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
    }
    this.offline(new AgentcastError('closed', 'the client was closed'));
    this.failOutbox(new AgentcastError('closed', 'the client was closed'));
    this.setState('closed');
  }

  /** {@link close}, and forget the `online`/`visibilitychange` listeners for good. */
  dispose(): void {
    this.close();
    this.detachGlobals();
  }

  /**
   * Subscribe to `topic`. Without `since`: live events only (and a snapshot for run and
   * chat topics); `since: N` (with the `epoch` of that N): the events after N first. One
   * subscription per topic: subscribing again to a topic replaces the subscription it
   * has (that one receives nothing more; its `unsubscribe()` does nothing). To share a
   * run topic between several consumers, use {@link acquireRunStore} (the hooks do).
   */
  subscribe(topic: string, handlers: SubscriptionHandlers, opts: { since?: number; epoch?: string } = {}): Subscription {
    const previous = this.subs.get(topic);
    if (previous !== undefined) {
      previous.ended = true;
      previous.live = false;
      clearTimeout(previous.retryTimer);
      this._drop(previous); // `unsubscribe` first: a second `subscribe` would replay nothing
    }
    const sub = new Sub(this, topic, handlers, opts.since, opts.epoch);
    this.subs.set(topic, sub);
    if (this._state === 'open') this.sendSubscribe(sub);
    return sub;
  }

  /**
   * Send a command; resolves with its reply frame, rejects with an {@link AgentcastError}:
   * the `error` frame's code, `timeout`, `connection_lost` (sent, and the connection
   * closed before the reply: it may or may not have been applied) or `closed`. Commands
   * wait for a connection while there is none (within `timeoutMs`).
   */
  command<T = Record<string, unknown>>(frame: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this._state === 'closed' || this._state === 'unauthorized') {
        reject(new AgentcastError(this._state === 'closed' ? 'closed' : 'unauthorized', `the client is ${this._state}`));
        return;
      }
      const cmd: Command = {
        id: this.nextId++,
        frame,
        portable: true,
        onReply: (reply) => {
          clearTimeout(cmd.timer);
          if (reply.type === 'error') reject(AgentcastError.fromFrame(reply));
          else resolve(reply as T);
        },
        onLost: (err) => {
          clearTimeout(cmd.timer);
          reject(err);
        },
      };
      const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs ?? 30_000;
      cmd.timer = setTimeout(() => {
        this.forget(cmd);
        reject(new AgentcastError('timeout', `no reply to ${String(frame.type)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.enqueue(cmd);
    });
  }

  /**
   * Publish one event. Idempotent: the client numbers its publishes (`producer_id`,
   * `producer_seq`), sends them one at a time, and sends one again after a lost
   * connection, a timeout, `outcome_unknown` or `unavailable` (5 attempts): the server
   * never publishes it twice (the ack then says `duplicate: true`).
   */
  publish(topic: string, type: string, data: unknown): Promise<Ack> {
    const run = async (): Promise<Ack> => {
      const frame = {
        type: 'publish',
        topic,
        event: type,
        data: data ?? {},
        producer_id: this.producerId,
        producer_seq: ++this.producerSeq,
      };
      for (let attempt = 1; ; attempt++) {
        try {
          const reply = await this.command<{ data: Ack }>(frame);
          return reply.data;
        } catch (err) {
          if (!(err instanceof AgentcastError) || !PUBLISH_RETRY.has(err.code) || attempt >= 5) throw err;
          await sleep(backoffDelay(attempt - 1, { initialMs: 100, maxMs: 2000, jitter: 0.5 }));
        }
      }
    };
    const result = this.publishing.then(run, run);
    this.publishing = result.catch(() => undefined);
    return result;
  }

  /** A conversation (docs/protocol.md section 13): send, stream, stop, history. */
  chat(conversationId: string): ChatSession {
    return new ChatSession(this, conversationId);
  }

  /**
   * Create a conversation over HTTP (`POST /api/conversations`) for the caller: subscribe
   * to it with {@link chat} before its first message.
   */
  async createConversation(opts: { agentId?: string; title?: string } = {}): Promise<{ id: string; agent_id: string; title: string | null }> {
    const body: Record<string, unknown> = {};
    if (opts.agentId !== undefined) body.agent_id = opts.agentId;
    if (opts.title !== undefined) body.title = opts.title;
    return (await this.http('POST', '/api/conversations', body)) as { id: string; agent_id: string; title: string | null };
  }

  /**
   * An HTTP call to the server's API with the client's token; the JSON answer. Rejects
   * with an {@link AgentcastError} carrying the answer's `detail.code` on an error status.
   */
  async http(method: string, path: string, body?: unknown): Promise<unknown> {
    if (this.fetchImpl === undefined) throw new AgentcastError('unavailable', 'no fetch in this environment');
    const headers: Record<string, string> = {};
    const token = await resolveToken(this.opts.token);
    if (token !== null) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const r = await this.fetchImpl(this.httpUrl + path, init);
    const text = await r.text();
    const json: unknown = text ? JSON.parse(text) : null;
    if (!r.ok) {
      const detail = (json as { detail?: { code?: string; message?: string } } | null)?.detail;
      throw new AgentcastError(detail?.code ?? (r.status === 401 ? 'unauthorized' : 'internal'), detail?.message ?? `HTTP ${r.status}`);
    }
    return json;
  }

  /**
   * Bring the open connection a fresh token (`auth:refresh` with `token()`'s value), for
   * the same subject; resolves with the `authenticated` reply's data. Done by itself before
   * a JWT expires (`refreshToken`).
   */
  async refreshAuth(): Promise<{ subject: string; scopes: string[]; expires_at: string | null }> {
    const token = await resolveToken(this.opts.token);
    if (token === null) throw new AgentcastError('unauthorized', 'no token to refresh with');
    const reply = await this.command<{ data: { subject: string; scopes: string[]; expires_at: string | null } }>({
      type: 'auth:refresh',
      token,
    });
    this.connectedToken = token;
    this.scheduleRefresh(token);
    return reply.data;
  }

  private scheduleRefresh(token: string | null): void {
    clearTimeout(this.refreshTimer);
    const enabled = this.opts.refreshToken ?? typeof this.opts.token === 'function';
    if (!enabled || token === null) return;
    const exp = jwtExpiry(token);
    if (exp === null) return;
    const left = exp - Date.now();
    const delay = Math.max(0, left - Math.min(30_000, left / 4));
    const generation = this.generation;
    this.refreshTimer = setTimeout(() => {
      if (generation !== this.generation || this._state !== 'open') return;
      this.refreshAuth().catch(() => {
        // refused: the connection keeps its token until it expires (then 4501: unauthorized)
      });
    }, delay);
  }

  // -- used by Sub and ChatSession ---------------------------------------------------

  /** @internal A subscription ended by its owner. */
  _drop(sub: Sub): void {
    if (this.subs.get(sub.topic) !== sub) return;
    this.subs.delete(sub.topic);
    if (this._state === 'open' && sub.request !== null) {
      this.sendBound({ type: 'unsubscribe', topic: sub.topic });
    }
  }

  /** @internal A subscription saw a gap (a bug upstream): subscribe again from its position. */
  _resync(sub: Sub): void {
    if (this._state !== 'open') return;
    this.sendBound({ type: 'unsubscribe', topic: sub.topic });
    this.sendSubscribe(sub);
  }

  /** @internal Route a late `error` frame carrying `id` (a chat answer that failed). */
  _onLateError(id: number, cb: (err: AgentcastError) => void): () => void {
    this.lateErrors.set(id, cb);
    return () => this.lateErrors.delete(id);
  }

  /** @internal The id the next command will get. */
  _peekId(): number {
    return this.nextId;
  }

  // -- the connection ------------------------------------------------------------------

  private setState(s: ConnectionState, detail?: { code?: number; reason?: string }): void {
    if (s === this._state && detail === undefined) return;
    this._state = s;
    for (const cb of [...this.listeners]) {
      try {
        cb(s, detail);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    let url = this.url;
    const protocols = ['agentcast.v1'];
    try {
      if (this.opts.ticket !== undefined) {
        const ticket = await this.opts.ticket();
        url += (url.includes('?') ? '&' : '?') + 'ticket=' + encodeURIComponent(ticket);
        this.connectedToken = await resolveToken(this.opts.token);
      } else {
        const token = await resolveToken(this.opts.token);
        if (token !== null) protocols.push(`bearer.${token}`);
        this.connectedToken = token;
      }
    } catch (err) {
      if (generation !== this.generation) return;
      if (err instanceof AgentcastError && err.code === 'unauthorized') {
        this.terminal(err.closeCode ?? CloseCode.UNAUTHORIZED, err.message);
      } else {
        this.lastError = String(err);
        this.scheduleReconnect({ reason: `credentials: ${String(err)}` });
      }
      return;
    }
    if (generation !== this.generation) return;
    let ws: WebSocket;
    try {
      ws = new this.WS(url, protocols);
    } catch (err) {
      this.terminal(CloseCode.POLICY_VIOLATION, `cannot open ${this.url}: ${String(err)}`);
      return;
    }
    this.ws = ws;
    this.opened = false;
    this.lastError = '';
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.opened = true;
      this.openedAt = Date.now();
      this.lastRx = Date.now();
      this.pingSentAt = 0;
      this.setState('open');
      this.startHeartbeat();
      this.scheduleRefresh(this.connectedToken);
      for (const sub of this.subs.values()) this.sendSubscribe(sub);
      this.flush();
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      this.pingSentAt = 0;
      if (typeof ev.data === 'string') this.receive(ev.data);
    };
    ws.onerror = (ev: Event) => {
      const message = (ev as Event & { message?: string; error?: Error }).message ?? (ev as { error?: Error }).error?.message;
      if (message) this.lastError = message;
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = null;
      void this.lost(ev.code, ev.reason);
    };
  }

  private receive(text: string): void {
    let frame: Frame;
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return;
      frame = parsed as Frame;
    } catch {
      return;
    }
    if (typeof frame.seq === 'number') {
      if (frame.replay !== true) {
        const sub = typeof frame.topic === 'string' ? this.subs.get(frame.topic) : undefined;
        if (sub !== undefined) {
          sub.onFrame(frame);
          return;
        }
      }
      this.emitFrame(frame);
      return;
    }
    const id = frame.id;
    if (typeof id === 'number') {
      const cmd = this.inFlight.get(id);
      if (cmd !== undefined) {
        this.inFlight.delete(id);
        cmd.onReply(frame);
        return;
      }
      const late = this.lateErrors.get(id);
      if (late !== undefined && frame.type === 'error') {
        this.lateErrors.delete(id);
        late(AgentcastError.fromFrame(frame));
        return;
      }
    }
    if (frame.type === 'unsubscribed' && id === undefined && typeof frame.topic === 'string') {
      const sub = this.subs.get(frame.topic);
      if (sub !== undefined) {
        // the server ended it (a refreshed token no longer grants the topic)
        sub.ended = true;
        sub.live = false;
        this.subs.delete(frame.topic);
        const reason = ((frame.data ?? {}) as { reason?: string }).reason ?? 'forbidden';
        sub.handlers.onRefused?.(new AgentcastError(reason, `the server ended the subscription to ${frame.topic}`));
        return;
      }
    }
    this.emitFrame(frame);
  }

  private emitFrame(frame: Frame): void {
    for (const cb of [...this.frameListeners]) cb(frame);
  }

  private async lost(code: number, reason: string): Promise<void> {
    const generation = this.generation;
    const wasOpen = this.opened;
    this.opened = false;
    this.stopHeartbeat();
    clearTimeout(this.refreshTimer);
    this.offline(new AgentcastError('connection_lost', `the connection closed (${code}) before the reply came`, { closeCode: code }));
    if (wasOpen) {
      if (Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
      if (reconnectable(code)) this.scheduleReconnect({ code, reason });
      else this.terminal(code, reason);
      return;
    }
    // the handshake failed: an HTTP answer, or no answer at all
    let status: number | null = null;
    const m = /\b([1-5]\d\d)\b/.exec(/response|status|HTTP/i.test(this.lastError) ? this.lastError : '');
    if (m) status = Number(m[1]);
    if (status === null) status = await this.probe();
    if (generation !== this.generation) return;
    if (status !== null) {
      const refusal = closeCodeOfStatus(status);
      if (refusal !== null) {
        this.terminal(refusal, `handshake refused: HTTP ${status}`);
        return;
      }
    }
    this.scheduleReconnect({ code, reason: this.lastError || reason || 'connection failed' });
  }

  /**
   * A browser does not tell why a handshake failed: with credentials, ask the HTTP API
   * whether they are refused (401/403); null when it cannot tell.
   */
  private async probe(): Promise<number | null> {
    if (this.fetchImpl === undefined || this.opts.token === undefined || this.opts.ticket !== undefined) return null;
    try {
      const token = await resolveToken(this.opts.token);
      if (token === null) return null;
      const r = await this.fetchImpl(this.httpUrl + '/api/topics', { headers: { Authorization: `Bearer ${token}` } });
      return r.status === 401 || r.status === 403 ? r.status : null;
    } catch {
      return null;
    }
  }

  private terminal(code: number, reason: string): void {
    clearTimeout(this.retryTimer);
    const err = new AgentcastError(isAuthClose(code) ? 'unauthorized' : 'closed', `closed with ${code}${reason ? ` (${reason})` : ''}`, {
      closeCode: code,
    });
    this.failOutbox(err);
    this.setState(isAuthClose(code) ? 'unauthorized' : 'closed', { code, reason });
  }

  private scheduleReconnect(detail: { code?: number; reason?: string }): void {
    clearTimeout(this.retryTimer);
    const delay = backoffDelay(this.attempt++, this.opts.reconnect);
    this.setState('reconnecting', detail);
    const generation = this.generation;
    this.retryTimer = setTimeout(() => {
      if (generation === this.generation) void this.open();
    }, delay);
  }

  /** Reconnect now instead of waiting for the backoff (network back, page visible). */
  private reconnectNow(): void {
    if (this._state === 'reconnecting' && this.ws === null) {
      clearTimeout(this.retryTimer);
      void this.open();
    } else if (this._state === 'open') {
      this.ping(); // check at once that the connection survived the sleep
    }
  }

  private attachGlobals(): () => void {
    const g = globalThis as {
      addEventListener?: (t: string, cb: () => void) => void;
      removeEventListener?: (t: string, cb: () => void) => void;
      document?: { visibilityState?: string; addEventListener?: (t: string, cb: () => void) => void; removeEventListener?: (t: string, cb: () => void) => void };
    };
    const online = () => this.reconnectNow();
    const visible = () => {
      if (g.document?.visibilityState === 'visible') this.reconnectNow();
    };
    g.addEventListener?.('online', online);
    g.document?.addEventListener?.('visibilitychange', visible);
    return () => {
      g.removeEventListener?.('online', online);
      g.document?.removeEventListener?.('visibilitychange', visible);
    };
  }

  private startHeartbeat(): void {
    this.stopHeartbeat();
    const every = this.opts.heartbeatMs ?? 20_000;
    if (every <= 0) return;
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      if (this.pingSentAt !== 0 && now - this.pingSentAt >= every) {
        this.abandon('no pong');
      } else if (this.pingSentAt === 0 && now - this.lastRx >= every) {
        this.ping();
      }
    }, Math.max(10, every / 4));
  }

  private ping(): void {
    if (this.ws === null || this.pingSentAt !== 0) return;
    this.pingSentAt = Date.now();
    this.sendBound({ type: 'ping' });
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  /** Give up on a connection that stopped answering: replace it without waiting for its close. */
  private abandon(reason: string): void {
    const ws = this.ws;
    if (ws === null) return;
    this.ws = null;
    detach(ws);
    try {
      ws.close(CloseCode.KEEPALIVE_TIMEOUT, reason);
    } catch {
      /* ignore */
    }
    void this.lost(CloseCode.ABNORMAL, reason);
  }

  // -- commands ------------------------------------------------------------------------

  private sendSubscribe(sub: Sub): void {
    const cmd: Command = {
      id: this.nextId++,
      frame: sub.command(),
      portable: false,
      onReply: (reply) => {
        if (sub.ended || sub.request !== cmd.id) return;
        if (reply.type === 'subscribed') {
          sub.onSubscribed(reply);
          return;
        }
        const err = AgentcastError.fromFrame(reply);
        if (TRANSIENT.has(err.code)) {
          sub.retryTimer = setTimeout(() => {
            if (!sub.ended && this._state === 'open') this.sendSubscribe(sub);
          }, backoffDelay(sub.retries++, this.opts.reconnect));
          return;
        }
        sub.ended = true;
        if (this.subs.get(sub.topic) === sub) this.subs.delete(sub.topic);
        sub.handlers.onRefused?.(err);
      },
      onLost: () => undefined, // resent on the next connection
    };
    sub.request = cmd.id;
    sub.live = false;
    this.transmit(cmd);
  }

  /** A command bound to the current connection whose reply is not awaited. */
  private sendBound(frame: Frame): void {
    this.transmit({ id: this.nextId++, frame, portable: false, onReply: () => undefined, onLost: () => undefined });
  }

  private enqueue(cmd: Command): void {
    if (this._state === 'open' && this.ws !== null) this.transmit(cmd);
    else this.outbox.push(cmd);
  }

  private transmit(cmd: Command): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== 1) {
      if (cmd.portable) this.outbox.push(cmd);
      return;
    }
    this.inFlight.set(cmd.id, cmd);
    ws.send(JSON.stringify({ ...cmd.frame, id: cmd.id }));
  }

  private flush(): void {
    const queued = this.outbox.splice(0);
    for (const cmd of queued) this.transmit(cmd);
  }

  private forget(cmd: Command): void {
    this.inFlight.delete(cmd.id);
    const i = this.outbox.indexOf(cmd);
    if (i >= 0) this.outbox.splice(i, 1);
  }

  /** The connection is gone: commands awaiting replies fail, subscriptions wait for the next one. */
  private offline(err: AgentcastError): void {
    for (const sub of this.subs.values()) {
      sub.live = false;
      sub.request = null;
      clearTimeout(sub.retryTimer);
    }
    const waiting = [...this.inFlight.values()];
    this.inFlight.clear();
    for (const cmd of waiting) cmd.onLost(err);
  }

  private failOutbox(err: AgentcastError): void {
    const queued = this.outbox.splice(0);
    for (const cmd of queued) cmd.onLost(err);
  }
}

function detach(ws: WebSocket): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
