import { useEffect, useState } from 'react';
import { useSession } from '../context';
import { Chart } from '../components/Chart';

interface Metrics {
  cpu?: { percent?: number; count?: number };
  memory?: { total?: number; used?: number; percent?: number };
  process?: { rss?: number; cpu_percent?: number };
  connections?: number;
  subscriptions?: number;
  topics?: number;
  events_per_second?: number;
}

interface Series {
  t: number[];
  cpu: number[];
  mem: number[];
  conns: number[];
  eps: number[];
  last: Metrics | null;
}

const KEEP = 180;
const empty: Series = { t: [], cpu: [], mem: [], conns: [], eps: [], last: null };

function push(s: Series, m: Metrics, at: number): Series {
  const cut = (xs: number[], v: number) => [...xs, v].slice(-KEEP);
  return {
    t: cut(s.t, at),
    cpu: cut(s.cpu, m.cpu?.percent ?? 0),
    mem: cut(s.mem, m.memory?.percent ?? 0),
    conns: cut(s.conns, m.connections ?? 0),
    eps: cut(s.eps, m.events_per_second ?? 0),
    last: m,
  };
}

function bytes(n?: number): string {
  if (!n) return '—';
  const gb = n / 2 ** 30;
  return gb >= 1 ? `${gb.toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

/** Seed 001's monitoring topic as live charts: CPU, memory, connections, events/s. */
export function MonitoringView() {
  const { client } = useSession();
  const [s, setS] = useState<Series>(empty);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const sub = client.subscribe('monitoring', {
      onEvent: (ev) => {
        if (ev.type === 'monitoring:metrics') setS((cur) => push(cur, ev.data as Metrics, Date.parse(ev.timestamp) / 1000 || Date.now() / 1000));
      },
      onSubscribed: () => {
        client
          .command<{ data: Metrics }>({ type: 'monitoring:subscribe' }) // resolves with the reply frame
          .then((reply) => setS((cur) => (cur.t.length ? cur : push(cur, reply.data, Date.now() / 1000))))
          .catch((err) => setError(err instanceof Error ? err.message : String(err)));
      },
      onRefused: (err) => setError(err.message),
    }, { since: 0 }); // the retained samples too: a late visitor sees the recent past
    return () => sub.unsubscribe();
  }, [client]);

  const m = s.last;
  return (
    <section className="page">
      <div className="page-head">
        <div>
          <h1>Monitoring</h1>
          <p className="muted">This server, live{m?.cpu?.count ? ` · ${m.cpu.count} CPUs` : ''}</p>
        </div>
      </div>
      {error ? <div className="notice error">{error}</div> : null}
      <div className="stats">
        <Stat label="Connections" value={m?.connections} />
        <Stat label="Subscriptions" value={m?.subscriptions} />
        <Stat label="Topics" value={m?.topics} />
        <Stat label="Process memory" text={bytes(m?.process?.rss)} />
      </div>
      <div className="charts" data-testid="charts">
        <Chart title="CPU" unit="%" color="#6366f1" times={s.t} values={s.cpu} max={100} format={(v) => v.toFixed(0)} />
        <Chart title="Memory" unit="%" color="#0ea5e9" times={s.t} values={s.mem} max={100} format={(v) => v.toFixed(0)} />
        <Chart title="Connections" unit="" color="#10b981" times={s.t} values={s.conns} format={(v) => v.toFixed(0)} />
        <Chart title="Events per second" unit="/s" color="#f59e0b" times={s.t} values={s.eps} format={(v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1))} />
      </div>
    </section>
  );
}

function Stat({ label, value, text }: { label: string; value?: number; text?: string }) {
  return (
    <div className="card stat">
      <span className="stat-label">{label}</span>
      <span className="stat-value num">{text ?? (value ?? '—')}</span>
    </div>
  );
}
