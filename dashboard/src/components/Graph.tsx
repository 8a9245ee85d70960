import dagre from '@dagrejs/dagre';
import { useEffect, useMemo, useState } from 'react';
import type { NodeInfo } from '../runState';

const NODE_W = 150;
const NODE_H = 48;

interface Props {
  order: string[];
  nodes: Record<string, NodeInfo>;
  edges: { source: string; target: string }[];
  flows: ReadonlySet<string>;
  current: string | null;
  selected: string | null;
  onSelect(node: string): void;
}

interface Layout {
  width: number;
  height: number;
  nodes: Record<string, { x: number; y: number }>;
  edges: { key: string; source: string; target: string; d: string }[];
}

function layout(order: string[], edges: { source: string; target: string }[], vertical: boolean): Layout {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: vertical ? 'TB' : 'LR', nodesep: 28, ranksep: vertical ? 44 : 64, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of order) g.setNode(n, { width: NODE_W, height: NODE_H });
  for (const e of edges) {
    if (!g.hasNode(e.source)) g.setNode(e.source, { width: NODE_W, height: NODE_H });
    if (!g.hasNode(e.target)) g.setNode(e.target, { width: NODE_W, height: NODE_H });
    g.setEdge(e.source, e.target);
  }
  dagre.layout(g);
  const nodes: Layout['nodes'] = {};
  for (const n of g.nodes()) {
    const v = g.node(n);
    nodes[n] = { x: v.x, y: v.y };
  }
  const out: Layout['edges'] = g.edges().map((e) => {
    const pts = g.edge(e).points ?? [];
    const d = pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
    return { key: `${e.v}→${e.w}`, source: e.v, target: e.w, d };
  });
  const label = g.graph();
  return { width: label.width ?? 0, height: label.height ?? 0, nodes, edges: out };
}

function useNarrow(): boolean {
  const query = '(max-width: 640px)';
  const [narrow, setNarrow] = useState(() => window.matchMedia(query).matches);
  useEffect(() => {
    const mq = window.matchMedia(query);
    const on = () => setNarrow(mq.matches);
    mq.addEventListener('change', on);
    return () => mq.removeEventListener('change', on);
  }, []);
  return narrow;
}

/** The workflow's graph laid out by dagre: nodes coloured by status, edges flowing for
 * 2.5 s after an `edge_flow`, the current node outlined, a node clickable. */
export function Graph({ order, nodes, edges, flows, current, selected, onSelect }: Props) {
  const vertical = useNarrow();
  const key = `${order.join(',')}|${edges.map((e) => `${e.source}>${e.target}`).join(',')}|${vertical}`;
  const lay = useMemo(() => layout(order, edges, vertical), [key]);

  if (!(lay.width > 0) || order.length + edges.length === 0) return <div className="graph-empty muted">Waiting for the workflow to start…</div>;
  return (
    <svg
      className="graph"
      viewBox={`0 0 ${lay.width} ${lay.height}`}
      style={{ maxWidth: `${lay.width * 1.25}px` }}
      role="img"
      aria-label="workflow graph"
      data-testid="graph"
    >
      <defs>
        <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M 0 0 L 10 5 L 0 10 z" className="arrow-head" />
        </marker>
        <marker id="arrow-flow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M 0 0 L 10 5 L 0 10 z" className="arrow-head flowing" />
        </marker>
      </defs>
      {lay.edges.map((e) => {
        const flowing = flows.has(e.key);
        return (
          <g key={e.key} className={`edge ${flowing ? 'flowing' : ''}`} data-edge={e.key} data-flowing={flowing ? 'true' : 'false'}>
            <path d={e.d} className="edge-line" markerEnd={flowing ? 'url(#arrow-flow)' : 'url(#arrow)'} />
            {flowing ? (
              <>
                <path d={e.d} className="edge-dash" />
                <circle r="4.5" className="edge-dot">
                  <animateMotion dur="1.1s" repeatCount="indefinite" path={e.d} />
                </circle>
              </>
            ) : null}
          </g>
        );
      })}
      {Object.entries(lay.nodes).map(([id, p]) => {
        const status = nodes[id]?.status ?? 'pending';
        const cls = ['node', `node-${status}`, id === current ? 'current' : '', id === selected ? 'selected' : ''].join(' ');
        return (
          <g
            key={id}
            className={cls}
            transform={`translate(${p.x - NODE_W / 2},${p.y - NODE_H / 2})`}
            onClick={() => onSelect(id)}
            data-node={id}
            data-status={status}
            tabIndex={0}
            onKeyDown={(ev) => (ev.key === 'Enter' || ev.key === ' ') && onSelect(id)}
          >
            {id === selected ? <rect className="node-ring" x={-5} y={-5} width={NODE_W + 10} height={NODE_H + 10} rx={14} /> : null}
            {status === 'running' ? <rect className="node-pulse" width={NODE_W} height={NODE_H} rx={10} /> : null}
            <rect className="node-box" width={NODE_W} height={NODE_H} rx={10} />
            <circle className="node-dot" cx={18} cy={NODE_H / 2} r={5} />
            <text x={32} y={NODE_H / 2 - 3} className="node-label">
              {id.length > 15 ? `${id.slice(0, 14)}…` : id}
            </text>
            <text x={32} y={NODE_H / 2 + 13} className="node-status">
              {status}
            </text>
          </g>
        );
      })}
    </svg>
  );
}
