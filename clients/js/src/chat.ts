/**
 * Conversations (docs/protocol.md section 13): a session subscribes to
 * `chat:<conversation_id>` and folds its snapshot and events into a {@link ChatState},
 * idempotently ("Snapshots of conversations"), so that an answer being written resumes
 * mid-stream after a reconnection without a lost or repeated chunk.
 */
import type { AgentcastClient, AgentcastEvent, Subscription } from './client.js';
import { AgentcastError } from './errors.js';
import type { ChatMessageData } from './generated/schemas.js';

export type ChatMessage = ChatMessageData;

/** The answer being generated: `text` holds chunks `0 … index-1`. */
export interface ChatStreaming {
  reply_to: number;
  index: number;
  text: string;
  /** Position in the upstream's queue (1 = next), or null once streaming. */
  position: number | null;
  done?: boolean;
}

export type ChatStatus = 'queued' | 'streaming' | 'ready' | 'error';

export interface ChatState {
  conversationId: string;
  /** Stored messages, oldest first (by id). */
  messages: ChatMessage[];
  streaming: ChatStreaming | null;
  /** Older messages exist: {@link ChatSession.loadOlder} fetches them. */
  hasMore: boolean;
  /** The id to page back from (`chat:history` `before`). */
  before: number | null;
  status: ChatStatus;
  queuePosition: number | null;
  error: AgentcastError | null;
  /** The last seq applied. */
  seq: number;
}

export function emptyChatState(conversationId: string): ChatState {
  return {
    conversationId,
    messages: [],
    streaming: null,
    hasMore: false,
    before: null,
    status: 'ready',
    queuePosition: null,
    error: null,
    seq: 0,
  };
}

function withStatus(state: ChatState): ChatState {
  const s = state.streaming;
  let status: ChatStatus;
  if (s !== null && !s.done) status = s.position !== null ? 'queued' : 'streaming';
  else if (state.error !== null) status = 'error';
  else {
    const last = state.messages[state.messages.length - 1];
    status = last !== undefined && last.role === 'assistant' && last.status === 'error' ? 'error' : 'ready';
  }
  return { ...state, status, queuePosition: s !== null && !s.done ? s.position : null };
}

function upsert(messages: ChatMessage[], message: ChatMessage): ChatMessage[] {
  const i = messages.findIndex((m) => m.id === message.id);
  if (i >= 0) {
    const copy = messages.slice();
    copy[i] = message;
    return copy;
  }
  return [...messages, message].sort((a, b) => a.id - b.id);
}

/** The state a conversation `snapshot` frame describes. */
export function chatStateFromSnapshot(conversationId: string, data: unknown, seq: number): ChatState {
  const d = (data ?? {}) as {
    messages?: ChatMessage[];
    has_more?: boolean;
    before?: number | null;
    streaming?: ChatStreaming | null;
  };
  const state: ChatState = {
    ...emptyChatState(conversationId),
    messages: [...(d.messages ?? [])].sort((a, b) => a.id - b.id),
    hasMore: d.has_more ?? false,
    before: d.before ?? null,
    streaming: d.streaming ? { ...d.streaming } : null,
    seq,
  };
  return withStatus(state);
}

/**
 * Fold one event of `chat:<id>` into `state` (pure; returns a new state). Idempotent as
 * the protocol asks: a `chat:message` whose id is there replaces it, a `chat:streaming`
 * with an index below `streaming.index` is already in the text.
 */
export function applyChatEvent(state: ChatState, ev: AgentcastEvent): ChatState {
  const data = ev.data as Record<string, unknown>;
  let next: ChatState = { ...state, seq: Math.max(state.seq, ev.seq) };
  switch (ev.type) {
    case 'chat:message': {
      const message = data as unknown as ChatMessage;
      next.messages = upsert(next.messages, message);
      if (message.role === 'user') {
        const answered = next.messages.some((m) => m.role === 'assistant' && m.reply_to === message.id);
        const newest = next.messages[next.messages.length - 1]?.id === message.id;
        if (!answered && newest && (next.streaming === null || next.streaming.reply_to !== message.id)) {
          // stored, not answered yet: the answer is on its way
          next.streaming = { reply_to: message.id, index: 0, text: '', position: null };
          next.error = null;
        }
      } else if (next.streaming !== null && message.reply_to === next.streaming.reply_to) {
        next.streaming = null;
      }
      break;
    }
    case 'chat:queued': {
      const replyTo = data.reply_to as number;
      const s = next.streaming?.reply_to === replyTo ? next.streaming : { reply_to: replyTo, index: 0, text: '', position: null };
      next.streaming = { ...s, position: (data.position as number | null) ?? null };
      break;
    }
    case 'chat:streaming': {
      const replyTo = data.reply_to as number;
      if (next.messages.some((m) => m.role === 'assistant' && m.reply_to === replyTo)) break; // already stored
      let s = next.streaming?.reply_to === replyTo ? next.streaming : { reply_to: replyTo, index: 0, text: '', position: null };
      const index = data.index as number;
      if (data.done === true) {
        s = { ...s, done: true, position: null };
      } else if (index >= s.index) {
        s = { ...s, text: s.text + String(data.chunk ?? ''), index: index + 1, position: null };
      }
      next.streaming = s;
      break;
    }
    default:
      return next;
  }
  next = withStatus(next);
  return next;
}

type ChatListener = (state: ChatState) => void;

/**
 * One conversation on a client. Made by {@link AgentcastClient.chat}: it subscribes to
 * `chat:<id>` at once (the snapshot gives the latest messages and any answer being
 * written) and keeps {@link state} current; {@link close} unsubscribes.
 */
export class ChatSession {
  readonly conversationId: string;
  readonly topic: string;
  private _state: ChatState;
  private readonly listeners = new Set<ChatListener>();
  private readonly eventListeners = new Set<(ev: AgentcastEvent) => void>();
  private readonly subscription: Subscription;
  /** Drops the late-error route of the latest `send` (one per session at a time). */
  private forgetLastSend: () => void = () => undefined;
  /** Listen to the session: `change` (a new state), `event` (each raw event). */
  readonly events: {
    on(name: 'change', cb: ChatListener): () => void;
    on(name: 'event', cb: (ev: AgentcastEvent) => void): () => void;
  };

  constructor(
    private readonly client: AgentcastClient,
    conversationId: string,
  ) {
    this.conversationId = conversationId;
    this.topic = `chat:${conversationId}`;
    this._state = emptyChatState(conversationId);
    const on = (name: 'change' | 'event', cb: ChatListener | ((ev: AgentcastEvent) => void)): (() => void) => {
      const set = (name === 'change' ? this.listeners : this.eventListeners) as Set<unknown>;
      set.add(cb);
      return () => set.delete(cb);
    };
    this.events = { on } as ChatSession['events'];
    this.subscription = client.subscribe(this.topic, {
      onSnapshot: (data, { seq }) => {
        const error = this._state.error;
        this.update({ ...chatStateFromSnapshot(conversationId, data, seq), error });
      },
      onHistoryLost: () => this.update(emptyChatState(conversationId)),
      onEvent: (ev) => {
        for (const cb of [...this.eventListeners]) cb(ev);
        this.update(applyChatEvent(this._state, ev));
      },
      onRefused: (err) => this.update(withStatus({ ...this._state, error: err })),
    });
  }

  /** The conversation as it stands. */
  get state(): ChatState {
    return this._state;
  }

  /** Call `cb` with every new state. */
  onChange(cb: ChatListener): () => void {
    return this.events.on('change', cb);
  }

  /**
   * Send a message (`chat:send`); resolves once the server stored it (`chat:accepted`:
   * it is never lost from then on) with its id. The answer streams into {@link state}.
   * Rejects `conflict` while an answer is being written, `not_found`, `rate_limited` …;
   * an answer that fails later sets `state.error` (and status `error`).
   */
  async send(text: string, opts: { agent?: string } = {}): Promise<{ messageId: number }> {
    const data: Record<string, unknown> = { message: text, conversation_id: this.conversationId };
    if (opts.agent !== undefined) data.agent = opts.agent;
    const id = this.client._peekId();
    const pending = this.client.command<{ data: { message_id: number } }>({ type: 'chat:send', data });
    this.forgetLastSend();
    const forget = this.client._onLateError(id, (err) => this.update(withStatus({ ...this._state, error: err })));
    this.forgetLastSend = forget;
    this.update(withStatus({ ...this._state, error: null }));
    try {
      const reply = await pending;
      return { messageId: reply.data.message_id };
    } catch (err) {
      forget();
      this.update(withStatus({ ...this._state, error: err instanceof AgentcastError ? err : new AgentcastError('internal', String(err)) }));
      throw err;
    }
  }

  /** Stop the answer being written (`chat:cancel`); true when one was running. */
  async stop(): Promise<boolean> {
    const reply = await this.client.command<{ data: { cancelled: boolean } }>({
      type: 'chat:cancel',
      data: { conversation_id: this.conversationId },
    });
    return reply.data.cancelled;
  }

  /** Stored messages (`chat:history`): the last `limit` with an id below `before`. */
  async history(opts: { before?: number | null; limit?: number } = {}): Promise<{
    messages: ChatMessage[];
    has_more: boolean;
    before: number | null;
    generating: boolean;
  }> {
    const data: Record<string, unknown> = { conversation_id: this.conversationId };
    if (opts.before !== undefined && opts.before !== null) data.before = opts.before;
    if (opts.limit !== undefined) data.limit = opts.limit;
    const reply = await this.client.command<{
      data: { messages: ChatMessage[]; has_more: boolean; before: number | null; generating: boolean };
    }>({ type: 'chat:history', data });
    return reply.data;
  }

  /** Fetch the page of messages before the oldest one held and prepend it; false when none is left. */
  async loadOlder(limit?: number): Promise<boolean> {
    if (!this._state.hasMore) return false;
    const oldest = this._state.messages[0]?.id ?? this._state.before;
    const opts: { before?: number | null; limit?: number } = { before: oldest };
    if (limit !== undefined) opts.limit = limit;
    const page = await this.history(opts);
    let messages = this._state.messages;
    for (const m of page.messages) messages = upsert(messages, m);
    this.update({ ...this._state, messages, hasMore: page.has_more, before: page.before });
    return page.has_more;
  }

  /** Unsubscribe from the conversation. */
  close(): void {
    this.subscription.unsubscribe();
    this.forgetLastSend();
  }

  private update(state: ChatState): void {
    this._state = state;
    for (const cb of [...this.listeners]) cb(state);
  }
}
