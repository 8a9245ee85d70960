import { useState } from 'react';
import { formatDuration, formatTime } from '../api';
import { useNow, useSession } from '../context';
import { Graph } from '../components/Graph';
import { LogPanel } from '../components/LogPanel';
import { ProgressBar, StatusBadge } from '../components/Status';
import { useRun } from '../useRun';
import type { RunModel } from '../runState';
import { ExecutionBody } from './ExecutionView';

export function RunView({ topic }: { topic: string }) {
  const { run, refused } = useRun(topic);
  const now = useNow(500);
  const [kind, id] = [topic.split(':', 1)[0], topic.slice(topic.indexOf(':') + 1)];
  const progress = Math.max(run.progress, nodeProgress(run));
  if (refused) {
    return (
      <section className="page">
        <Back />
        <div className="card empty-card">
          <h1>Run not available</h1>
          <p className="muted">{refused}</p>
        </div>
      </section>
    );
  }
  return (
    <section className="page" data-testid="run-view" data-run-status={run.status}>
      <Back />
      <div className="page-head">
        <div className="title-block">
          <div className="eyebrow">
            <span className={`kind kind-${kind}`}>{kind}</span>
          </div>
          <h1 className="run-title">{id}</h1>
          <p className="muted meta">
            <span>Started {formatTime(run.startedAt)}</span>
            <span>·</span>
            <span>{formatDuration(run.startedAt, run.finishedAt, now)}</span>
            {run.executionId ? (
              <>
                <span>·</span>
                <span className="mono" title={run.executionId}>
                  {run.executionId.slice(0, 8)}
                </span>
              </>
            ) : null}
          </p>
        </div>
        <div className="head-actions">
          <StatusBadge status={run.status} />
          <Controls topic={topic} run={run} />
        </div>
      </div>
      <div className="card progress-card">
        <div className="progress-row">
          <ProgressBar value={progress} status={run.status} />
          <span className="num progress-num" data-testid="progress">
            {Math.round(progress)}%
          </span>
        </div>
        {run.kind === 'execution' && run.totalSteps ? (
          <p className="muted small">
            Step {run.currentStep ?? 0} of {run.totalSteps}
          </p>
        ) : null}
      </div>
      {run.kind === 'workflow' ? <WorkflowBody run={run} /> : <ExecutionBody run={run} />}
    </section>
  );
}

/** For producers that send no `progress`: the percent of a workflow's nodes that ended,
 * or of an execution's steps whose agent completed. */
function nodeProgress(run: RunModel): number {
  if (run.kind === 'execution') {
    const done = Object.values(run.agents).filter((a) => a.status === 'completed').length;
    return run.totalSteps ? Math.min(100, (100 * done) / run.totalSteps) : 0;
  }
  const ids = run.order;
  if (ids.length === 0) return 0;
  const ended = ids.filter((n) => ['completed', 'error', 'skipped'].includes(run.nodes[n]?.status ?? '')).length;
  return (100 * ended) / ids.length;
}

function Back() {
  return (
    <a className="back" href="#/">
      ← All runs
    </a>
  );
}

function Controls({ topic, run }: { topic: string; run: RunModel }) {
  const { client, canControl } = useSession();
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const live = !['completed', 'failed', 'cancelled', 'lost', 'pending'].includes(run.status);
  if (!canControl || !live) return null;
  const act = async (action: 'pause' | 'resume' | 'cancel') => {
    setBusy(action);
    setError(null);
    try {
      await client.command({ type: 'control', topic, action });
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(null);
    }
  };
  return (
    <div className="controls">
      {run.status === 'paused' ? (
        <button className="btn" disabled={!live || !!busy} onClick={() => act('resume')} data-testid="resume">
          Resume
        </button>
      ) : (
        <button className="btn" disabled={!live || !!busy} onClick={() => act('pause')} data-testid="pause">
          Pause
        </button>
      )}
      <button className="btn danger" disabled={!live || !!busy} onClick={() => act('cancel')} data-testid="cancel">
        Cancel
      </button>
      {error ? <span className="form-error small">{error}</span> : null}
    </div>
  );
}

function WorkflowBody({ run }: { run: RunModel }) {
  const [selected, setSelected] = useState<string | null>(null);
  const node = selected ? run.nodes[selected] : null;
  // the current node: the one the run names if it is running, else the first running one
  const running = run.order.filter((n) => run.nodes[n]?.status === 'running');
  const live = run.status === 'running' || run.status === 'paused';
  const named = run.currentNode && running.includes(run.currentNode) ? run.currentNode : null;
  const current = live ? (named ?? running[0] ?? null) : null;
  return (
    <div className="run-grid">
      <div className="card graph-card">
        <div className="card-head">
          <h2>Graph</h2>
          <div className="legend">
            {['pending', 'running', 'completed', 'error'].map((s) => (
              <span key={s} className={`legend-item node-${s}`}>
                <i />
                {s}
              </span>
            ))}
          </div>
        </div>
        <div className="graph-wrap">
          <Graph
            order={run.order}
            nodes={run.nodes}
            edges={run.graphEdges}
            flows={run.flows}
            current={current}
            selected={selected}
            onSelect={(n) => setSelected(n === selected ? null : n)}
          />
        </div>
        {selected ? (
          <div className="node-detail" data-testid="node-detail">
            <div className="card-head">
              <h3>{selected}</h3>
              <StatusBadge status={node?.status ?? 'pending'} />
            </div>
            {node?.error ? (
              <pre className="code error">{node.error}</pre>
            ) : node?.result !== undefined ? (
              <pre className="code">{JSON.stringify(node.result, null, 2)}</pre>
            ) : (
              <p className="muted small">No result yet.</p>
            )}
          </div>
        ) : (
          <p className="muted small hint">Select a node to see its result or error.</p>
        )}
      </div>
      <LogPanel logs={run.logs} />
    </div>
  );
}
