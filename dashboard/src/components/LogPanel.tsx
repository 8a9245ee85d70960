import { useEffect, useRef, useState } from 'react';
import { clock } from '../api';
import type { LogLine } from '../runState';

const LEVELS = ['all', 'info', 'warning', 'error'] as const;

/** The run's log, newest at the bottom, following new lines unless scrolled up. */
export function LogPanel({ logs }: { logs: LogLine[] }) {
  const [level, setLevel] = useState<(typeof LEVELS)[number]>('all');
  const box = useRef<HTMLDivElement>(null);
  const follow = useRef(true);
  const shown = level === 'all' ? logs : logs.filter((l) => l.level === level);
  useEffect(() => {
    const el = box.current;
    if (el && follow.current) el.scrollTop = el.scrollHeight;
  }, [shown.length, level]);
  return (
    <div className="card log-card">
      <div className="card-head">
        <h2>Log</h2>
        <div className="segmented" role="group" aria-label="log level">
          {LEVELS.map((l) => (
            <button key={l} className={l === level ? 'on' : ''} onClick={() => setLevel(l)} data-level={l}>
              {l}
            </button>
          ))}
        </div>
      </div>
      <div
        className="log"
        ref={box}
        data-testid="log"
        onScroll={(e) => {
          const el = e.currentTarget;
          follow.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
        }}
      >
        {shown.length === 0 ? <div className="muted log-empty">No log lines{level === 'all' ? '' : ` at ${level}`}.</div> : null}
        {shown.map((l) => (
          <div key={l.key} className={`log-line lvl-${l.level}`} data-seq={l.seq ?? ''}>
            <span className="log-time">{l.timestamp ? clock(new Date(l.timestamp)) : ''}</span>
            <span className={`log-level`}>{l.level}</span>
            <span className="log-msg">{l.message}</span>
          </div>
        ))}
      </div>
    </div>
  );
}
