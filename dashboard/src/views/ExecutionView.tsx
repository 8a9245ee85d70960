import { clock } from '../api';
import type { RunModel } from '../runState';
import { StatusBadge } from '../components/Status';

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Seed 000's team execution: agents in step order, who is active, results and errors. */
export function ExecutionBody({ run }: { run: RunModel }) {
  const agents = Object.entries(run.agents).sort(
    ([, a], [, b]) => (a.step_order ?? 99) - (b.step_order ?? 99),
  );
  return (
    <div className="run-grid">
      <div className="card">
        <div className="card-head">
          <h2>Team{run.teamId ? ` · ${run.teamId}` : ''}</h2>
          <span className="muted small">{agents.filter(([, a]) => a.status === 'running').length} active</span>
        </div>
        <ol className="steps" data-testid="agents">
          {agents.length === 0 ? <li className="muted">No agent has started yet.</li> : null}
          {agents.map(([id, a]) => (
            <li key={id} className={`step step-${a.status ?? 'pending'}`} data-agent={id} data-status={a.status ?? 'pending'}>
              <span className="step-marker">{a.step_order ?? '·'}</span>
              <span className="step-name">{id}</span>
              <StatusBadge status={a.status ?? 'pending'} />
            </li>
          ))}
        </ol>
      </div>
      <div className="card">
        <div className="card-head">
          <h2>Results and errors</h2>
          <span className="muted small">
            {plural(run.results.length, 'result')} · {plural(run.errors.length, 'error')}
          </span>
        </div>
        <ul className="feed" data-testid="results">
          {run.results.length + run.errors.length === 0 ? <li className="muted">Nothing yet.</li> : null}
          {[
            ...run.results.map((r) => ({ kind: 'result' as const, who: r.agent_id, body: r.result, ts: r.timestamp })),
            ...run.errors.map((e) => ({ kind: 'error' as const, who: e.agent_id ?? e.node_id, body: e.error_message ?? e.error, ts: e.timestamp })),
          ]
            .sort((a, b) => String(b.ts).localeCompare(String(a.ts)))
            .map((item, i) => (
              <li key={i} className={`feed-item ${item.kind}`}>
                <div className="feed-head">
                  <strong>{item.who ?? 'run'}</strong>
                  <span className="muted small">{item.ts ? clock(new Date(item.ts)) : ''}</span>
                </div>
                <div className="feed-body">
                  {typeof item.body === 'object' && item.body !== null
                    ? (item.body as any).summary ?? JSON.stringify(item.body)
                    : String(item.body ?? '')}
                </div>
              </li>
            ))}
        </ul>
      </div>
    </div>
  );
}
