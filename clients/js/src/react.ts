/**
 * React hooks for agentcast (`@agentcast/client/react`; react ≥ 18 is a peer dependency).
 *
 * Give the hooks a client with `<AgentcastProvider client={client}>` or as an explicit
 * `client` option. A hook connects an `idle` client. Hooks on the same client and topic
 * share one subscription. Their state is kept across reconnections (the client resumes
 * with `since` and `epoch`) and rebuilt from the server's snapshot when history was lost.
 */
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react';
import type { ChatMessage, ChatSession, ChatState, ChatStatus } from './chat.js';
import { emptyChatState } from './chat.js';
import type { AgentcastClient, ConnectionState } from './client.js';
import { AgentcastError } from './errors.js';
import { emptyRunState, type RunAgent, type RunGraphEdge, type RunSnapshot } from './runs.js';
import {
  acquireChatSession,
  acquireRunStore,
  releaseChatSession,
  releaseRunStore,
  type EdgeFlow,
  type RunStore,
  type RunView,
} from './stores.js';

export type { EdgeFlow, RunView } from './stores.js';

const ClientContext = createContext<AgentcastClient | null>(null);

/** Makes `client` the hooks' default. */
export function AgentcastProvider(props: { client: AgentcastClient; children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** The explicit client, else the provider's; throws when there is neither. */
export function useAgentcastClient(explicit?: AgentcastClient): AgentcastClient {
  const fromContext = useContext(ClientContext);
  const client = explicit ?? fromContext;
  if (client === null) throw new AgentcastError('closed', 'no agentcast client: wrap the tree in <AgentcastProvider client={…}> or pass { client }');
  return client;
}

/** The client's connection state, re-rendering on every change. */
export function useConnectionState(explicit?: AgentcastClient): ConnectionState {
  const client = useAgentcastClient(explicit);
  const subscribe = useCallback((cb: () => void) => client.onStateChange(cb), [client]);
  return useSyncExternalStore(subscribe, () => client.state, () => client.state);
}

const noSubscribe = () => () => undefined;

function useRunView(client: AgentcastClient, topic: string | null): RunView {
  const [store, setStore] = useState<RunStore | null>(null);
  useEffect(() => {
    if (topic === null) return undefined;
    const s = acquireRunStore(client, topic);
    setStore(s);
    if (client.state === 'idle') client.connect();
    return () => {
      setStore(null);
      releaseRunStore(client, topic);
    };
  }, [client, topic]);
  const empty = useMemo<RunView>(
    () => ({ topic: topic ?? '', run: emptyRunState(topic ?? 'workflow:'), edgeFlows: [], seq: 0, recovered: undefined, live: false, error: null }),
    [topic],
  );
  const current = store !== null && store.topic === topic ? store : null;
  return useSyncExternalStore(current?.subscribe ?? noSubscribe, current?.getSnapshot ?? (() => empty), current?.getSnapshot ?? (() => empty));
}

/** Seed 004's node state. */
export interface NodeStatus {
  [nodeId: string]: { status: 'pending' | 'running' | 'completed' | 'error' | 'skipped' | 'cancelled'; result?: unknown; error?: string };
}

export interface WorkflowRunResult {
  /** Seed 004's `useWorkflowWebSocket` values. */
  nodeStatuses: NodeStatus;
  edgeFlows: EdgeFlow[];
  progress: number;
  isConnected: boolean;
  /** Added by agentcast. */
  connectionState: ConnectionState;
  seq: number;
  recovered: boolean | undefined;
  /** `pending`, `running`, `paused`, `completed`, `failed`, `cancelled`, `lost`. */
  status: string;
  executionId: string | null;
  executionOrder: string[];
  /** The graph's edges (`workflow_start`'s `edges`; `[]` when the producer sent none). */
  graphEdges: RunGraphEdge[];
  currentNodeId: string | undefined;
  logs: RunSnapshot['logs'];
  errors: RunSnapshot['errors'];
  /** The whole folded state. */
  run: RunSnapshot;
  /** Set when the server refused the subscription. */
  error: Error | null;
  /** `control`: pause, resume or cancel the run (needs the `control` scope with auth). */
  control(action: 'pause' | 'resume' | 'cancel'): Promise<unknown>;
}

/**
 * Follow `workflow:<workflowId>`: what seed 004's `useWorkflowWebSocket` returns, plus the
 * connection's state, the last seq and `recovered`. `edgeFlows` holds each `edge_flow`
 * for `3 s` after it came, as the seed's hook does.
 */
export function useWorkflowRun(workflowId: string | null, opts: { client?: AgentcastClient } = {}): WorkflowRunResult {
  const client = useAgentcastClient(opts.client);
  const topic = workflowId === null ? null : `workflow:${workflowId}`;
  const view = useRunView(client, topic);
  const connectionState = useConnectionState(client);
  const control = useCallback(
    (action: 'pause' | 'resume' | 'cancel') => client.command({ type: 'control', topic, action }),
    [client, topic],
  );
  return useMemo(() => {
    const run = view.run;
    const nodeStatuses: NodeStatus = {};
    for (const [id, node] of Object.entries(run.nodes)) {
      const entry: NodeStatus[string] = { status: node.status as NodeStatus[string]['status'] };
      if (node.result !== undefined) entry.result = node.result;
      if (node.error !== undefined) entry.error = node.error;
      nodeStatuses[id] = entry;
    }
    return {
      nodeStatuses,
      edgeFlows: view.edgeFlows,
      progress: typeof run.progress === 'number' ? run.progress : 0,
      isConnected: connectionState === 'open',
      connectionState,
      seq: view.seq,
      recovered: view.recovered,
      status: run.status,
      executionId: run.execution_id,
      executionOrder: run.execution_order ?? [],
      graphEdges: run.graph_edges ?? [],
      currentNodeId: run.current_node_id,
      logs: run.logs,
      errors: run.errors,
      run,
      error: view.error,
      control,
    };
  }, [view, connectionState, control]);
}

export interface ExecutionStep {
  agentId: string;
  step: number | undefined;
  status: string | undefined;
}

export interface ExecutionResult {
  status: string;
  progress: number;
  currentStep: number | undefined;
  totalSteps: number | undefined;
  agents: Record<string, RunAgent>;
  activeAgents: string[];
  completedAgents: string[];
  failedAgents: string[];
  /** The agents in step order. */
  steps: ExecutionStep[];
  results: RunSnapshot['results'];
  errors: RunSnapshot['errors'];
  estimatedCompletion: string | undefined;
  isConnected: boolean;
  connectionState: ConnectionState;
  seq: number;
  recovered: boolean | undefined;
  run: RunSnapshot;
  error: Error | null;
}

/** Follow `execution:<executionId>` (seed 000's team executions). */
export function useExecution(executionId: string | null, opts: { client?: AgentcastClient } = {}): ExecutionResult {
  const client = useAgentcastClient(opts.client);
  const view = useRunView(client, executionId === null ? null : `execution:${executionId}`);
  const connectionState = useConnectionState(client);
  return useMemo(() => {
    const run = view.run;
    const steps = Object.entries(run.agents)
      .map(([agentId, a]) => ({ agentId, step: a.step_order, status: a.status }))
      .sort((a, b) => (a.step ?? Infinity) - (b.step ?? Infinity));
    return {
      status: run.status,
      progress: typeof run.progress === 'number' ? run.progress : 0,
      currentStep: run.current_step,
      totalSteps: run.total_steps,
      agents: run.agents,
      activeAgents: run.active_agents,
      completedAgents: run.completed_agents,
      failedAgents: run.failed_agents,
      steps,
      results: run.results,
      errors: run.errors,
      estimatedCompletion: run.estimated_completion,
      isConnected: connectionState === 'open',
      connectionState,
      seq: view.seq,
      recovered: view.recovered,
      run,
      error: view.error,
    };
  }, [view, connectionState]);
}

/** The answer being written, as a message (not stored yet). */
export interface StreamingChatMessage {
  id: string;
  role: 'assistant';
  content: string;
  status: 'queued' | 'streaming';
  reply_to: number;
  conversation_id: string;
}

export interface ChatResult {
  /** Stored messages, oldest first, then the answer being written (if any). */
  messages: Array<ChatMessage | StreamingChatMessage>;
  status: ChatStatus;
  queuePosition: number | null;
  hasMore: boolean;
  error: AgentcastError | null;
  isConnected: boolean;
  connectionState: ConnectionState;
  state: ChatState;
  send(text: string): Promise<{ messageId: number }>;
  stop(): Promise<boolean>;
  /** Fetch the previous page of history; false when there is no more. */
  loadOlder(limit?: number): Promise<boolean>;
}

/**
 * Follow a conversation: its messages, the answer being streamed (resumed mid-stream
 * after a reconnection), the status and queue position; `send`, `stop`, `loadOlder`.
 */
export function useChat(conversationId: string | null, opts: { client?: AgentcastClient } = {}): ChatResult {
  const client = useAgentcastClient(opts.client);
  const connectionState = useConnectionState(client);
  const [session, setSession] = useState<ChatSession | null>(null);
  const [state, setState] = useState<ChatState>(() => emptyChatState(conversationId ?? ''));
  useEffect(() => {
    if (conversationId === null) return undefined;
    const s = acquireChatSession(client, conversationId);
    setSession(s);
    setState(s.state);
    const off = s.onChange(setState);
    if (client.state === 'idle') client.connect();
    return () => {
      off();
      setSession(null);
      releaseChatSession(client, conversationId);
    };
  }, [client, conversationId]);
  const current = session !== null && session.conversationId === conversationId ? session : null;
  const send = useCallback(
    (text: string) => (current !== null ? current.send(text) : Promise.reject(new AgentcastError('closed', 'no conversation'))),
    [current],
  );
  const stop = useCallback(() => (current !== null ? current.stop() : Promise.resolve(false)), [current]);
  const loadOlder = useCallback((limit?: number) => (current !== null ? current.loadOlder(limit) : Promise.resolve(false)), [current]);
  return useMemo(() => {
    const messages: Array<ChatMessage | StreamingChatMessage> = [...state.messages];
    const s = state.streaming;
    if (s !== null && !s.done) {
      messages.push({
        id: `streaming:${s.reply_to}`,
        role: 'assistant',
        content: s.text,
        status: s.position !== null ? 'queued' : 'streaming',
        reply_to: s.reply_to,
        conversation_id: state.conversationId,
      });
    }
    return {
      messages,
      status: state.status,
      queuePosition: state.queuePosition,
      hasMore: state.hasMore,
      error: state.error,
      isConnected: connectionState === 'open',
      connectionState,
      state,
      send,
      stop,
      loadOlder,
    };
  }, [state, connectionState, send, stop, loadOlder]);
}
