/** A run's state on the client: the server's snapshot, then its events folded in. */
import type { LiveEvent } from '@agentcast/client';

export interface NodeInfo {
  status: string;
  result?: unknown;
  error?: string;
  progress?: number;
  updated_at?: string;
}

export interface LogLine {
  key: string;
  seq?: number;
  level: string;
  message: string;
  timestamp: string;
}

export interface AgentInfo {
  status?: string;
  step_order?: number;
  updated_at?: string;
}

export interface RunModel {
  kind: 'workflow' | 'execution';
  status: string;
  executionId: string | null;
  startedAt: string | null;
  finishedAt: string | null;
  progress: number;
  order: string[];
  nodes: Record<string, NodeInfo>;
  graphEdges: { source: string; target: string }[];
  currentNode: string | null;
  currentStep: number | null;
  totalSteps: number | null;
  teamId: string | null;
  agents: Record<string, AgentInfo>;
  results: { agent_id?: string; result?: unknown; timestamp?: string }[];
  errors: { node_id?: string; agent_id?: string; error?: string; error_message?: string; timestamp?: string }[];
  logs: LogLine[];
  /** edge key "source→target" → time (ms) until which it is drawn flowing */
  flows: Record<string, number>;
  seq: number;
  loaded: boolean;
}

export const FLOW_MS = 2500;
const MAX_LOGS = 500;

export function emptyRun(topic: string): RunModel {
  return {
    kind: topic.startsWith('execution:') ? 'execution' : 'workflow',
    status: 'pending',
    executionId: null,
    startedAt: null,
    finishedAt: null,
    progress: 0,
    order: [],
    nodes: {},
    graphEdges: [],
    currentNode: null,
    currentStep: null,
    totalSteps: null,
    teamId: null,
    agents: {},
    results: [],
    errors: [],
    logs: [],
    flows: {},
    seq: 0,
    loaded: false,
  };
}

export function fromSnapshot(topic: string, s: any, seq: number): RunModel {
  const m = emptyRun(topic);
  m.loaded = true;
  m.seq = seq;
  m.status = s.status ?? 'pending';
  m.executionId = s.execution_id ?? null;
  m.startedAt = s.started_at ?? null;
  m.finishedAt = s.finished_at ?? null;
  m.progress = num(s.progress) ?? 0;
  m.order = Array.isArray(s.execution_order) ? s.execution_order : Object.keys(s.nodes ?? {});
  m.nodes = { ...(s.nodes ?? {}) };
  m.graphEdges = Array.isArray(s.graph_edges) ? s.graph_edges : [];
  for (const e of s.edges ?? []) addEdge(m, e.source_node_id, e.target_node_id);
  m.currentNode = s.current_node_id ?? null;
  m.currentStep = num(s.current_step);
  m.totalSteps = num(s.total_steps);
  m.teamId = s.team_id ?? null;
  m.agents = { ...(s.agents ?? {}) };
  m.results = [...(s.results ?? [])];
  m.errors = [...(s.errors ?? [])];
  m.logs = (s.logs ?? []).map((l: any, i: number) => ({
    key: typeof l.seq === 'number' ? `seq-${l.seq}` : `snap-${seq}-${i}`,
    seq: typeof l.seq === 'number' ? l.seq : undefined,
    level: l.level ?? 'info',
    message: String(l.message ?? ''),
    timestamp: l.timestamp ?? '',
  }));
  return m;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function addEdge(m: RunModel, source?: string, target?: string): void {
  if (!source || !target) return;
  if (!m.graphEdges.some((e) => e.source === source && e.target === target)) {
    m.graphEdges = [...m.graphEdges, { source, target }];
  }
}

function finish(m: RunModel, status: string, ts: string): void {
  m.status = status;
  m.finishedAt = ts;
}

/** Fold one live event (a new object; events at or below `seq` are ignored). */
export function applyEvent(prev: RunModel, ev: LiveEvent, now = Date.now()): RunModel {
  if (ev.seq <= prev.seq) return prev;
  const m: RunModel = { ...prev, seq: ev.seq, loaded: true };
  const d = ev.data ?? {};
  const ts = ev.timestamp;
  if (!m.startedAt) m.startedAt = ts;
  switch (ev.type) {
    case 'workflow_start': {
      const order: string[] = d.execution_order ?? [];
      Object.assign(m, {
        status: 'running',
        executionId: d.execution_id ?? null,
        startedAt: ts,
        finishedAt: null,
        progress: 0,
        order,
        nodes: Object.fromEntries(order.map((n) => [n, { status: 'pending' }])),
        graphEdges: Array.isArray(d.edges) ? d.edges : [],
        currentNode: null,
        errors: [],
        results: [],
        logs: [],
        flows: {},
      });
      break;
    }
    case 'node_status': {
      const node: NodeInfo = { ...(m.nodes[d.node_id] ?? {}), status: d.status, updated_at: ts };
      if (d.result != null) node.result = d.result;
      if (d.error != null) node.error = d.error;
      if (d.progress != null) node.progress = d.progress;
      m.nodes = { ...m.nodes, [d.node_id]: node };
      if (!m.order.includes(d.node_id)) m.order = [...m.order, d.node_id];
      if (d.status === 'running') m.currentNode = d.node_id;
      if (d.status === 'error') m.errors = [...m.errors, { node_id: d.node_id, error: d.error, timestamp: ts }];
      if (m.status === 'pending') m.status = 'running';
      break;
    }
    case 'edge_flow':
      addEdge(m, d.source_node_id, d.target_node_id);
      m.flows = { ...m.flows, [`${d.source_node_id}→${d.target_node_id}`]: now + FLOW_MS };
      break;
    case 'progress':
    case 'progress_update':
      m.progress = num(d.progress) ?? m.progress;
      m.currentStep = num(d.current_step) ?? m.currentStep;
      m.totalSteps = num(d.total_steps) ?? m.totalSteps;
      if (d.current_node_id) m.currentNode = d.current_node_id;
      break;
    case 'log':
      m.logs = [...m.logs, { key: `seq-${ev.seq}`, seq: ev.seq, level: d.level ?? 'info', message: String(d.message ?? ''), timestamp: ts }].slice(-MAX_LOGS);
      break;
    case 'error':
      m.errors = [...m.errors, { node_id: d.node_id, error: d.error, timestamp: ts }];
      break;
    case 'workflow_complete':
      if (d.success) m.progress = 100;
      finish(m, d.success ? 'completed' : 'failed', ts);
      break;
    case 'status_update': {
      m.executionId = d.execution_id ?? m.executionId;
      if (d.team_id) m.teamId = d.team_id;
      m.progress = num(d.progress) ?? m.progress;
      m.currentStep = num(d.current_step) ?? m.currentStep;
      m.totalSteps = num(d.total_steps) ?? m.totalSteps;
      const agents = { ...m.agents };
      const mark = (list: string[] | undefined, status: string) => {
        for (const a of list ?? []) agents[a] = { ...(agents[a] ?? {}), status };
      };
      mark(d.active_agents, 'running');
      mark(d.completed_agents, 'completed');
      mark(d.failed_agents, 'failed');
      if (['completed', 'failed', 'cancelled', 'lost'].includes(d.status)) {
        if (!m.finishedAt || m.status !== d.status) finish(m, d.status, ts);
      } else if (d.status) {
        if (m.finishedAt) {
          // a new execution on the topic
          m.finishedAt = null;
          m.results = [];
          m.errors = [];
          m.startedAt = ts;
        }
        m.status = d.status;
      }
      m.agents = agents;
      break;
    }
    case 'agent_status_update':
      m.agents = { ...m.agents, [d.agent_id]: { ...(m.agents[d.agent_id] ?? {}), status: d.status, step_order: d.step_order ?? m.agents[d.agent_id]?.step_order, updated_at: ts } };
      if (m.status === 'pending') m.status = 'running';
      break;
    case 'result_update':
      m.results = [...m.results, { agent_id: d.agent_id, result: d.result, timestamp: ts }];
      break;
    case 'error_update':
      m.errors = [...m.errors, { agent_id: d.agent_id, error_message: d.error_message, timestamp: ts }];
      if (d.agent_id) m.agents = { ...m.agents, [d.agent_id]: { ...(m.agents[d.agent_id] ?? {}), status: 'failed' } };
      break;
    case 'run_paused':
      if (!m.finishedAt) m.status = 'paused';
      break;
    case 'run_resumed':
      if (!m.finishedAt) m.status = 'running';
      break;
    case 'run_cancelled':
      finish(m, 'cancelled', ts);
      break;
    case 'publisher_lost':
      m.errors = [...m.errors, { error: 'publisher lost', timestamp: ts }];
      finish(m, 'lost', ts);
      break;
  }
  return m;
}
