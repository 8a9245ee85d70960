/**
 * A run's state folded from its events, as the server folds it for `snapshot` frames
 * (src/agentcast/runs/state.py): the same shape, so that a client can start from a
 * snapshot and apply the events that follow. No I/O, no framework.
 */
import type { AgentcastEvent } from './client.js';

export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'cancelled', 'lost']);
const MAX_EDGES = 50;
const MAX_LOGS = 100;

export type NodeStatusValue = 'pending' | 'running' | 'completed' | 'error' | 'skipped' | 'cancelled';

export interface RunNode {
  status: NodeStatusValue | string;
  result?: unknown;
  error?: string;
  progress?: number;
  updated_at?: string;
}

export interface RunAgent {
  status?: string;
  step_order?: number;
  updated_at?: string;
}

export interface RunEdge {
  source_node_id?: string;
  target_node_id?: string;
  edge_id?: string | null;
  timestamp: string;
}

export interface RunLog {
  level: string;
  message?: string;
  timestamp: string;
  /** The log event's own seq (to dedupe live lines against a snapshot's). */
  seq?: number;
}

/** An edge of the workflow's graph, from `workflow_start`'s `edges`. */
export interface RunGraphEdge {
  source: string;
  target: string;
  [key: string]: unknown;
}

/** The data of a run topic's `snapshot` frame (and the state {@link applyRunEvent} folds). */
export interface RunSnapshot {
  kind: 'workflow' | 'execution';
  run_id: string;
  execution_id: string | null;
  status: string;
  seq: number;
  started_at: string | null;
  finished_at: string | null;
  progress?: number;
  current_step?: number;
  total_steps?: number;
  current_node_id?: string;
  execution_order?: string[];
  /** The graph (`workflow_start`'s `edges`), `[]` when unknown. */
  graph_edges?: RunGraphEdge[];
  total_nodes?: number | null;
  team_id?: string;
  estimated_completion?: string;
  success?: boolean;
  execution_time?: number;
  nodes: Record<string, RunNode>;
  agents: Record<string, RunAgent>;
  active_agents: string[];
  completed_agents: string[];
  failed_agents: string[];
  results: Array<{ agent_id?: string | null; result?: unknown; timestamp: string }>;
  errors: Array<Record<string, unknown>>;
  edges: RunEdge[];
  logs: RunLog[];
  [key: string]: unknown;
}

/** The state of a run that has not started. */
export function emptyRunState(topic: string): RunSnapshot {
  const [kind, ...rest] = topic.split(':');
  return {
    kind: kind === 'execution' ? 'execution' : 'workflow',
    run_id: rest.join(':'),
    execution_id: null,
    status: 'pending',
    seq: 0,
    started_at: null,
    finished_at: null,
    nodes: {},
    agents: {},
    active_agents: [],
    completed_agents: [],
    failed_agents: [],
    results: [],
    errors: [],
    edges: [],
    logs: [],
  };
}

const FIELDS = [
  'progress',
  'current_step',
  'total_steps',
  'current_node_id',
  'execution_order',
  'graph_edges',
  'total_nodes',
  'team_id',
  'estimated_completion',
  'success',
  'execution_time',
] as const;

function clone(s: RunSnapshot): RunSnapshot {
  const agents: Record<string, RunAgent> = {};
  for (const [k, v] of Object.entries(s.agents)) agents[k] = { ...v };
  const nodes: Record<string, RunNode> = {};
  for (const [k, v] of Object.entries(s.nodes)) nodes[k] = { ...v };
  return { ...s, nodes, agents, results: [...s.results], errors: [...s.errors], edges: [...s.edges], logs: [...s.logs] };
}

function copyFields(s: RunSnapshot, data: Record<string, unknown>, ...names: string[]): void {
  for (const n of names) if (data[n] !== undefined && data[n] !== null) s[n] = data[n];
}

function finish(s: RunSnapshot, status: string, ts: string): void {
  s.status = status;
  s.finished_at = ts;
  for (const agent of Object.values(s.agents)) {
    if (agent.status === 'running' && status !== 'completed') agent.status = status === 'cancelled' ? 'cancelled' : 'failed';
  }
}

function agentsIn(s: RunSnapshot, ...statuses: string[]): string[] {
  return Object.entries(s.agents)
    .filter(([, a]) => a.status !== undefined && statuses.includes(a.status))
    .map(([k]) => k);
}

function startsNewRun(s: RunSnapshot, type: string, data: Record<string, unknown>): boolean {
  if (s.started_at === null) return false;
  if (type === 'workflow_start') return true;
  if (s.kind !== 'execution') return false;
  const executionId = data.execution_id;
  if (executionId !== undefined && executionId !== null && s.execution_id !== null && s.execution_id !== executionId) return true;
  return type === 'status_update' && TERMINAL_STATUSES.has(s.status) && !TERMINAL_STATUSES.has(String(data.status));
}

/** Fold one event (pure: returns a new state; events at or below `state.seq` change nothing). */
export function applyRunEvent(state: RunSnapshot, ev: AgentcastEvent): RunSnapshot {
  if (ev.seq <= state.seq) return state;
  const data = (ev.data ?? {}) as Record<string, unknown>;
  const ts = ev.timestamp;
  let s = clone(state);
  s.seq = ev.seq;
  if (startsNewRun(s, ev.type, data)) {
    s = { ...emptyRunState(`${s.kind}:${s.run_id}`), seq: ev.seq };
  }
  if (s.started_at === null) s.started_at = ts;
  if (s.execution_id === null && typeof data.execution_id === 'string') s.execution_id = data.execution_id;
  switch (ev.type) {
    case 'status_update': {
      if (typeof data.execution_id === 'string') s.execution_id = data.execution_id;
      copyFields(s, data, 'team_id', 'progress', 'current_step', 'total_steps');
      for (const [key, status] of [
        ['active_agents', 'running'],
        ['completed_agents', 'completed'],
        ['failed_agents', 'failed'],
      ] as const) {
        for (const agent of (data[key] as string[] | undefined) ?? []) s.agents[agent] = { ...s.agents[agent], status };
      }
      const status = typeof data.status === 'string' ? data.status : s.status;
      if (TERMINAL_STATUSES.has(status)) finish(s, status, ts);
      else s.status = status;
      break;
    }
    case 'agent_status_update': {
      const id = String(data.agent_id);
      const agent: RunAgent = { ...s.agents[id], status: data.status as string, updated_at: ts };
      if (typeof data.step_order === 'number') agent.step_order = data.step_order;
      s.agents[id] = agent;
      if (s.status === 'pending') s.status = 'running';
      break;
    }
    case 'progress_update':
      if (typeof data.execution_id === 'string') s.execution_id = data.execution_id;
      copyFields(s, data, 'progress', 'current_step', 'total_steps', 'estimated_completion');
      break;
    case 'result_update':
      s.results.push({ agent_id: (data.agent_id as string | undefined) ?? null, result: data.result, timestamp: ts });
      break;
    case 'error_update':
      s.errors.push({
        agent_id: data.agent_id ?? null,
        error_message: data.error_message ?? null,
        error_details: data.error_details ?? {},
        timestamp: ts,
      });
      if (typeof data.agent_id === 'string' && data.agent_id) s.agents[data.agent_id] = { ...s.agents[data.agent_id], status: 'failed' };
      break;
    case 'workflow_start': {
      const order = (data.execution_order as string[] | undefined) ?? [];
      s.execution_id = (data.execution_id as string | undefined) ?? null;
      s.status = 'running';
      s.started_at = ts;
      s.finished_at = null;
      s.nodes = Object.fromEntries(order.map((n) => [n, { status: 'pending' }]));
      for (const f of FIELDS) delete s[f];
      s.execution_order = [...order];
      s.graph_edges = [...((data.edges as RunGraphEdge[] | undefined) ?? [])];
      s.total_nodes = (data.total_nodes as number | undefined) ?? null;
      s.progress = 0;
      s.errors = [];
      s.results = [];
      s.edges = [];
      break;
    }
    case 'node_status': {
      const id = String(data.node_id);
      const node: RunNode = { ...s.nodes[id], status: data.status as string, updated_at: ts };
      for (const key of ['result', 'error', 'progress'] as const) {
        if (data[key] !== undefined && data[key] !== null) (node as unknown as Record<string, unknown>)[key] = data[key];
      }
      s.nodes[id] = node;
      if (data.status === 'error') s.errors.push({ node_id: id, error: data.error ?? null, timestamp: ts });
      break;
    }
    case 'edge_flow':
      s.edges.push({
        source_node_id: data.source_node_id as string,
        target_node_id: data.target_node_id as string,
        edge_id: (data.edge_id as string | undefined) ?? null,
        timestamp: ts,
      });
      if (s.edges.length > MAX_EDGES) s.edges.splice(0, s.edges.length - MAX_EDGES);
      break;
    case 'progress':
      copyFields(s, data, 'progress', 'current_step', 'total_steps', 'current_node_id');
      break;
    case 'log':
      s.logs.push({ level: (data.level as string | undefined) ?? 'info', message: data.message as string, timestamp: ts, seq: ev.seq });
      if (s.logs.length > MAX_LOGS) s.logs.splice(0, s.logs.length - MAX_LOGS);
      break;
    case 'error':
      s.errors.push({ node_id: data.node_id ?? null, error: data.error ?? null, timestamp: ts });
      break;
    case 'workflow_complete':
      copyFields(s, data, 'success', 'execution_time');
      if (data.success) s.progress = 100;
      finish(s, data.success ? 'completed' : 'failed', ts);
      break;
    case 'publisher_lost':
      s.errors.push({ error: 'publisher_lost', details: data, timestamp: ts });
      finish(s, 'lost', ts);
      break;
    case 'run_paused':
      if (!TERMINAL_STATUSES.has(s.status)) s.status = 'paused';
      break;
    case 'run_resumed':
      if (!TERMINAL_STATUSES.has(s.status)) s.status = 'running';
      break;
    case 'run_cancelled':
      finish(s, 'cancelled', ts);
      break;
    default:
      break;
  }
  s.active_agents = agentsIn(s, 'running');
  s.completed_agents = agentsIn(s, 'completed');
  s.failed_agents = agentsIn(s, 'failed', 'error');
  return s;
}

/** A snapshot frame's data as a state (missing lists filled in). */
export function runStateFromSnapshot(topic: string, data: unknown, seq: number): RunSnapshot {
  const d = (data ?? {}) as Partial<RunSnapshot>;
  return { ...emptyRunState(topic), ...d, seq } as RunSnapshot;
}
