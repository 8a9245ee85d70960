import { useEffect, useState } from 'react';
import { api, formatDuration, formatTime, type RunRow } from '../api';
import { runHref, useNow } from '../context';
import { ProgressBar, StatusBadge } from '../components/Status';

const KINDS = ['', 'workflow', 'execution'];
const STATUSES = ['', 'running', 'paused', 'completed', 'failed', 'cancelled', 'lost', 'pending'];
const POLL_MS = 1500;

interface Page {
  total: number;
  runs: RunRow[];
}

/** Live and recent runs, most recently updated first; refreshed every 1.5 s. */
export function RunsView() {
  const [kind, setKind] = useState('');
  const [status, setStatus] = useState('');
  const [page, setPage] = useState<Page | null>(null);
  const [error, setError] = useState<string | null>(null);
  const now = useNow(1000);

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const load = async () => {
      const q = new URLSearchParams({ limit: '100' });
      if (kind) q.set('kind', kind);
      if (status) q.set('status', status);
      try {
        const p = await api<Page>(`/api/runs?${q}`);
        if (!stopped) {
          setPage(p);
          setError(null);
        }
      } catch (err) {
        if (!stopped) setError(err instanceof Error ? err.message : String(err));
      }
      if (!stopped) timer = setTimeout(load, POLL_MS);
    };
    load();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [kind, status]);

  // newest first, and stable: a row does not jump when its run reports progress
  const runs = [...(page?.runs ?? [])].sort((a, b) => (b.started_at ?? '').localeCompare(a.started_at ?? '') || a.topic.localeCompare(b.topic));
  const live = runs.filter((r) => r.status === 'running' || r.status === 'paused').length;

  return (
    <section className="page">
      <div className="page-head">
        <div>
          <h1>Runs</h1>
          <p className="muted">
            {page ? `${page.total} run${page.total === 1 ? '' : 's'} · ${live} live` : 'Loading…'}
          </p>
        </div>
        <div className="filters">
          <label>
            <span>Kind</span>
            <select value={kind} onChange={(e) => setKind(e.target.value)} data-testid="filter-kind">
              {KINDS.map((k) => (
                <option key={k} value={k}>
                  {k || 'All kinds'}
                </option>
              ))}
            </select>
          </label>
          <label>
            <span>Status</span>
            <select value={status} onChange={(e) => setStatus(e.target.value)} data-testid="filter-status">
              {STATUSES.map((s) => (
                <option key={s} value={s}>
                  {s || 'All statuses'}
                </option>
              ))}
            </select>
          </label>
        </div>
      </div>
      {error ? <div className="notice error">{error}</div> : null}
      <div className="card table-card">
        <table className="runs" data-testid="runs-table">
          <thead>
            <tr>
              <th>Run</th>
              <th>Status</th>
              <th className="col-progress">Progress</th>
              <th className="col-time">Started</th>
              <th className="col-time">Duration</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((r) => (
              <tr key={r.topic} data-topic={r.topic} onClick={() => (location.hash = runHref(r.topic))}>
                <td>
                  <a href={runHref(r.topic)} className="run-link">
                    <span className={`kind kind-${r.kind}`}>{r.kind}</span>
                    <span className="run-id">{r.run_id}</span>
                  </a>
                </td>
                <td>
                  <StatusBadge status={r.status} />
                </td>
                <td className="col-progress">
                  <div className="progress-cell">
                    <ProgressBar value={r.progress} status={r.status} />
                    <span className="num">{r.progress == null ? '—' : `${Math.round(r.progress)}%`}</span>
                  </div>
                </td>
                <td className="col-time num">{formatTime(r.started_at)}</td>
                <td className="col-time num">{formatDuration(r.started_at, r.finished_at, now)}</td>
              </tr>
            ))}
            {page && runs.length === 0 ? (
              <tr>
                <td colSpan={5} className="empty">
                  No runs yet. Start one with <code>agentcast serve --demo</code> or{' '}
                  <code>POST /api/workflows/&lt;id&gt;/execute</code>.
                </td>
              </tr>
            ) : null}
          </tbody>
        </table>
      </div>
    </section>
  );
}
