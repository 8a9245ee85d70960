/**
 * The dashboard's one door to the server's WebSocket protocol (docs/protocol.md).
 *
 * Everything else in the dashboard talks to `AgentcastClient` through the interface below,
 * which is the interface of `@agentcast/client` (clients/js). Until that package is wired
 * in, this module implements it itself, small: resume by seq and epoch on reconnect,
 * jittered exponential reconnect (also at once when the page becomes visible or the
 * network comes back), commands with an id awaiting their reply, an application ping.
 * Swapping in the package is replacing this file by `export * from '@agentcast/client'`.
 */

export type ConnectionState =
  | 'idle'
  | 'connecting'
  | 'open'
  | 'reconnecting'
  | 'closed'
  | 'unauthorized';

export interface LiveEvent {
  type: string;
  topic: string;
  seq: number;
  timestamp: string;
  data: any;
}

export interface SubscriptionHandlers {
  onEvent?(ev: LiveEvent): void;
  onSnapshot?(data: unknown, info: { seq: number }): void;
  onSubscribed?(info: { seq: number; epoch: string; recovered: boolean }): void;
  onHistoryLost?(): void;
  onRefused?(err: { code: string; message: string }): void;
}

export interface Subscription {
  readonly seq: number;
  unsubscribe(): void;
}

export interface ClientOptions {
  url: string;
  token?: string | (() => string | null);
}

export class CommandError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

interface SubState {
  topic: string;
  handlers: SubscriptionHandlers;
  seq: number;
  epoch?: string;
  /** Events of the topic are delivered only after its `subscribed` reply. */
  live: boolean;
  /** `since` was sent with the pending subscribe (a resume). */
  resuming: boolean;
  active: boolean;
}

interface Pending {
  resolve(data: any): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Close codes after which reconnecting with the same credentials cannot succeed. */
const TERMINAL = new Set([4500, 4501, 4503, 4508]);
const PING_MS = 20_000;
/** The longest wait between two attempts (before jitter: each wait is 50–100 % of it). */
const MAX_BACKOFF_MS = 5_000;

export class AgentcastClient {
  private ws: WebSocket | null = null;
  private _state: ConnectionState = 'idle';
  private listeners = new Set<(s: ConnectionState, d?: { code?: number; reason?: string }) => void>();
  private subs = new Map<string, SubState>();
  private pending = new Map<string, Pending>();
  private outbox: string[] = [];
  /** subscribe command id → topic: a refusal (`error` with that id) names no topic */
  private subIds = new Map<string, string>();
  private nextId = 1;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private wanted = false;

  constructor(private readonly opts: ClientOptions) {
    if (typeof window !== 'undefined') {
      window.addEventListener('online', () => this.kick());
      document.addEventListener('visibilitychange', () => {
        if (document.visibilityState === 'visible') this.kick();
      });
    }
  }

  get state(): ConnectionState {
    return this._state;
  }

  onStateChange(cb: (s: ConnectionState, detail?: { code?: number; reason?: string }) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  connect(): void {
    this.wanted = true;
    if (this.ws) return;
    this.open();
  }

  close(): void {
    this.wanted = false;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, 'bye');
    this.failPending('closed', 'the connection was closed');
    this.setState('closed');
  }

  subscribe(
    topic: string,
    handlers: SubscriptionHandlers,
    opts: { since?: number; epoch?: string } = {},
  ): Subscription {
    const previous = this.subs.get(topic);
    if (previous) previous.active = false;
    const sub: SubState = {
      topic,
      handlers,
      seq: opts.since ?? 0,
      epoch: opts.epoch,
      live: false,
      resuming: opts.since !== undefined,
      active: true,
    };
    this.subs.set(topic, sub);
    if (this._state === 'open') {
      if (previous) this.send({ type: 'unsubscribe', topic });
      this.sendSubscribe(sub);
    }
    return {
      get seq() {
        return sub.seq;
      },
      unsubscribe: () => {
        if (!sub.active) return;
        sub.active = false;
        if (this.subs.get(topic) === sub) {
          this.subs.delete(topic);
          if (this._state === 'open') this.send({ type: 'unsubscribe', topic });
        }
      },
    };
  }

  command<T = Record<string, unknown>>(frame: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    const id = `c${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CommandError('timeout', `no reply to ${String(frame.type)} in time`));
      }, opts.timeoutMs ?? 10_000);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ ...frame, id });
    });
  }

  // -- internals -----------------------------------------------------------------------

  private token(): string | null {
    const t = this.opts.token;
    return typeof t === 'function' ? t() : t ?? null;
  }

  private setState(s: ConnectionState, detail?: { code?: number; reason?: string }): void {
    if (s === this._state && !detail) return;
    this._state = s;
    for (const cb of this.listeners) cb(s, detail);
  }

  private open(): void {
    const token = this.token();
    const protocols = token ? ['agentcast.v1', `bearer.${token}`] : ['agentcast.v1'];
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    const ws = new WebSocket(this.opts.url, protocols);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.attempt = 0;
      this.setState('open');
      for (const sub of this.subs.values()) this.sendSubscribe(sub);
      const queued = this.outbox.splice(0);
      for (const text of queued) ws.send(text);
      this.startPing();
    };
    ws.onmessage = (msg) => {
      if (this.ws === ws && typeof msg.data === 'string') this.receive(msg.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopPing();
      for (const sub of this.subs.values()) sub.live = false;
      this.subIds.clear();
      this.failPending('disconnected', 'the connection was lost');
      if (!this.wanted) {
        this.setState('closed', { code: ev.code, reason: ev.reason });
        return;
      }
      if (TERMINAL.has(ev.code)) {
        this.wanted = false;
        this.setState('unauthorized', { code: ev.code, reason: ev.reason });
        return;
      }
      this.scheduleRetry(opened, ev);
    };
  }

  private scheduleRetry(opened: boolean, ev: CloseEvent): void {
    this.attempt += 1;
    const base = opened ? 250 : Math.min(MAX_BACKOFF_MS, 300 * 2 ** Math.min(this.attempt - 1, 6));
    const delay = base * (0.5 + Math.random() * 0.5);
    this.setState('reconnecting', { code: ev.code, reason: ev.reason });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.wanted && !this.ws) this.open();
    }, delay);
  }

  /** Retry now (page visible again, network back) instead of waiting for the backoff. */
  private kick(): void {
    if (!this.wanted || this.ws || !this.retryTimer) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.open();
  }

  private startPing(): void {
    this.stopPing();
    this.pingTimer = setInterval(() => this.send({ type: 'ping' }), PING_MS);
  }

  private stopPing(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  private failPending(code: string, message: string): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new CommandError(code, message));
      this.pending.delete(id);
    }
  }

  private send(frame: Record<string, unknown>): void {
    const text = JSON.stringify(frame);
    if (this.ws && this._state === 'open') this.ws.send(text);
    else if (frame.type !== 'subscribe' && frame.type !== 'unsubscribe' && frame.type !== 'ping') this.outbox.push(text);
  }

  private sendSubscribe(sub: SubState): void {
    const id = `s${this.nextId++}`;
    this.subIds.set(id, sub.topic);
    const frame: Record<string, unknown> = { type: 'subscribe', topic: sub.topic, id };
    if (sub.seq > 0 || sub.resuming) {
      frame.since = sub.seq;
      if (sub.epoch) frame.epoch = sub.epoch;
      sub.resuming = true;
    }
    sub.live = false;
    this.send(frame);
  }

  private receive(text: string): void {
    let frame: any;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const id = frame.id;
    if (id !== undefined && id !== null) {
      const p = this.pending.get(String(id));
      if (p) {
        this.pending.delete(String(id));
        clearTimeout(p.timer);
        if (frame.type === 'error') p.reject(new CommandError(frame.data?.code ?? 'error', frame.data?.message ?? 'error'));
        else p.resolve(frame.data ?? {});
        return;
      }
    }
    const subTopic = typeof id === 'string' ? this.subIds.get(id) : undefined;
    if (subTopic !== undefined) this.subIds.delete(id);
    const sub = this.subs.get(frame.topic ?? subTopic ?? '');
    if (frame.type === 'error') {
      if (sub && subTopic !== undefined) {
        this.subs.delete(sub.topic);
        sub.active = false;
        sub.handlers.onRefused?.({ code: frame.data?.code, message: frame.data?.message });
      }
      return;
    }
    if (!sub || !sub.active) return;
    if (frame.type === 'subscribed') {
      const d = frame.data ?? {};
      const resumed = sub.resuming;
      sub.epoch = d.epoch;
      if (!resumed) sub.seq = d.seq ?? 0;
      else if (!d.recovered) sub.seq = Math.max(0, (d.first_seq ?? 1) - 1);
      sub.live = true;
      sub.handlers.onSubscribed?.({ seq: d.seq ?? 0, epoch: d.epoch ?? '', recovered: !!d.recovered });
      if (resumed && !d.recovered) sub.handlers.onHistoryLost?.();
      return;
    }
    if (frame.type === 'unsubscribed') return;
    if (frame.type === 'snapshot') {
      sub.seq = frame.seq ?? sub.seq;
      sub.handlers.onSnapshot?.(frame.data, { seq: sub.seq });
      return;
    }
    if (typeof frame.seq !== 'number') return;
    if (frame.seq <= sub.seq) return; // already applied: replay overlap, never a duplicate
    sub.seq = frame.seq;
    sub.handlers.onEvent?.(frame as LiveEvent);
  }
}
