/**
 * Observable stores over a client's subscriptions, for UI code (the React hooks use them;
 * any framework can): a {@link RunStore} folds a run topic into a {@link RunView}, kept
 * across reconnections and rebuilt from the snapshot when history was lost. Stores are
 * shared: {@link acquireRunStore} / {@link acquireChatSession} give every caller on the
 * same client and topic the same one (one subscription), until the last one releases it.
 */
import type { AgentcastClient, AgentcastEvent, Subscription } from './client.js';
import type { ChatSession } from './chat.js';
import { applyRunEvent, emptyRunState, runStateFromSnapshot, type RunSnapshot } from './runs.js';

/** An edge being animated (seed 004's `EdgeFlow`): removed `edgeFlowMs` after it came. */
export interface EdgeFlow {
  sourceNodeId: string;
  targetNodeId: string;
  timestamp: string;
  edgeId?: string | null;
}

export interface RunView {
  topic: string;
  /** The run's folded state (the shape of the server's snapshots). */
  run: RunSnapshot;
  /** Edges that carried data in the last `edgeFlowMs` (live events only). */
  edgeFlows: EdgeFlow[];
  /** The last seq applied. */
  seq: number;
  /** The last `subscribed` reply's `recovered` (undefined before the first). */
  recovered: boolean | undefined;
  /** True while the server streams the topic to this client. */
  live: boolean;
  /** Set when the server refused the subscription (`forbidden`). */
  error: Error | null;
}

type Listener = () => void;

/** One run topic (`workflow:<id>` or `execution:<id>`) folded live. */
export class RunStore {
  readonly topic: string;
  private view: RunView;
  private readonly listeners = new Set<Listener>();
  private readonly subscription: Subscription;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private readonly edgeFlowMs: number;
  private readonly offState: () => void;

  constructor(client: AgentcastClient, topic: string, opts: { edgeFlowMs?: number } = {}) {
    this.topic = topic;
    this.edgeFlowMs = opts.edgeFlowMs ?? 3000;
    this.view = { topic, run: emptyRunState(topic), edgeFlows: [], seq: 0, recovered: undefined, live: false, error: null };
    this.subscription = client.subscribe(topic, {
      onSubscribed: (info) => this.set({ recovered: info.recovered, live: true, seq: this.subscription?.seq ?? this.view.seq }),
      onHistoryLost: () => this.set({ run: emptyRunState(topic), edgeFlows: [], seq: 0 }),
      onSnapshot: (data, { seq }) => this.set({ run: runStateFromSnapshot(topic, data, seq), seq }),
      onEvent: (ev) => this.apply(ev),
      onRefused: (err) => this.set({ error: err, live: false }),
    });
    this.offState = client.onStateChange((s) => {
      if (s !== 'open' && this.view.live) this.set({ live: false });
    });
  }

  /** For `useSyncExternalStore`: call `cb` after every change. */
  subscribe = (cb: Listener): (() => void) => {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  };

  /** The current view (a new object after every change). */
  getSnapshot = (): RunView => this.view;

  /** Unsubscribe from the topic. */
  close(): void {
    this.subscription.unsubscribe();
    this.offState();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  private apply(ev: AgentcastEvent): void {
    const patch: Partial<RunView> = { run: applyRunEvent(this.view.run, ev), seq: ev.seq };
    if (ev.type === 'edge_flow') {
      const d = ev.data as { source_node_id?: string; target_node_id?: string; edge_id?: string | null };
      const flow: EdgeFlow = {
        sourceNodeId: String(d.source_node_id),
        targetNodeId: String(d.target_node_id),
        timestamp: ev.timestamp,
        edgeId: d.edge_id ?? null,
      };
      patch.edgeFlows = [...this.view.edgeFlows, flow];
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.set({ edgeFlows: this.view.edgeFlows.filter((f) => f !== flow) });
      }, this.edgeFlowMs);
      this.timers.add(timer);
    } else if (ev.type === 'workflow_start') {
      patch.edgeFlows = [];
    }
    this.set(patch);
  }

  private set(patch: Partial<RunView>): void {
    this.view = { ...this.view, ...patch };
    for (const cb of [...this.listeners]) cb();
  }
}

interface Entry<T> {
  value: T;
  refs: number;
}
const runStores = new WeakMap<AgentcastClient, Map<string, Entry<RunStore>>>();
const chatSessions = new WeakMap<AgentcastClient, Map<string, Entry<ChatSession>>>();

function acquire<T>(registry: WeakMap<AgentcastClient, Map<string, Entry<T>>>, client: AgentcastClient, key: string, make: () => T): T {
  let byKey = registry.get(client);
  if (byKey === undefined) registry.set(client, (byKey = new Map()));
  let entry = byKey.get(key);
  if (entry === undefined) byKey.set(key, (entry = { value: make(), refs: 0 }));
  entry.refs++;
  return entry.value;
}

function release<T>(registry: WeakMap<AgentcastClient, Map<string, Entry<T>>>, client: AgentcastClient, key: string, close: (v: T) => void): void {
  const byKey = registry.get(client);
  const entry = byKey?.get(key);
  if (byKey === undefined || entry === undefined) return;
  if (--entry.refs <= 0) {
    byKey.delete(key);
    close(entry.value);
  }
}

/** The shared {@link RunStore} of `topic` on `client`; pair with {@link releaseRunStore}. */
export function acquireRunStore(client: AgentcastClient, topic: string): RunStore {
  return acquire(runStores, client, topic, () => new RunStore(client, topic));
}

export function releaseRunStore(client: AgentcastClient, topic: string): void {
  release(runStores, client, topic, (s) => s.close());
}

/** The shared {@link ChatSession} of a conversation on `client`; pair with {@link releaseChatSession}. */
export function acquireChatSession(client: AgentcastClient, conversationId: string): ChatSession {
  return acquire(chatSessions, client, conversationId, () => client.chat(conversationId));
}

export function releaseChatSession(client: AgentcastClient, conversationId: string): void {
  release(chatSessions, client, conversationId, (s) => s.close());
}
