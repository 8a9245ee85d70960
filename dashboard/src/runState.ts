/**
 * A run as the views draw it. The folding (snapshot, then events, across reconnections) is
 * `@agentcast/client`'s (`useWorkflowRun` / `useExecution`, `applyRunEvent`); this module
 * only maps its state into the views' shape.
 */
import type { EdgeFlow, RunSnapshot } from '@agentcast/client';

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
  /** edge keys "source→target" drawn flowing (an `edge_flow` in the last 3 s) */
  flows: ReadonlySet<string>;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** The views' model of a run: the client's folded state and its flowing edges. */
export function toModel(s: RunSnapshot, edgeFlows: readonly EdgeFlow[]): RunModel {
  const graphEdges = [...(s.graph_edges ?? [])];
  const seen = new Set(graphEdges.map((e) => `${e.source}→${e.target}`));
  for (const e of s.edges) {
    // edges the graph did not declare but data flowed along
    const key = `${e.source_node_id}→${e.target_node_id}`;
    if (e.source_node_id && e.target_node_id && !seen.has(key)) {
      seen.add(key);
      graphEdges.push({ source: e.source_node_id, target: e.target_node_id });
    }
  }
  return {
    kind: s.kind,
    status: s.status,
    executionId: s.execution_id,
    startedAt: s.started_at,
    finishedAt: s.finished_at,
    progress: num(s.progress) ?? 0,
    order: s.execution_order ?? Object.keys(s.nodes),
    nodes: s.nodes,
    graphEdges,
    currentNode: s.current_node_id ?? null,
    currentStep: num(s.current_step),
    totalSteps: num(s.total_steps),
    teamId: s.team_id ?? null,
    agents: s.agents,
    results: s.results.map((r) => ({ agent_id: r.agent_id ?? undefined, result: r.result, timestamp: r.timestamp })),
    errors: s.errors as RunModel['errors'],
    logs: s.logs.map((l, i) => ({
      key: typeof l.seq === 'number' ? `seq-${l.seq}` : `snap-${s.seq}-${i}`,
      seq: l.seq,
      level: l.level ?? 'info',
      message: String(l.message ?? ''),
      timestamp: l.timestamp ?? '',
    })),
    flows: new Set(edgeFlows.map((f) => `${f.sourceNodeId}→${f.targetNodeId}`)),
  };
}
