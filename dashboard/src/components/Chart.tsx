import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { clock } from '../api';

/** Seconds of history a chart shows (its x axis spans at least this). */
const WINDOW_S = 60;
const MIN_WINDOW_S = 10;

interface Props {
  title: string;
  unit: string;
  color: string;
  times: number[];
  values: number[];
  max?: number;
  format?(v: number): string;
}

/** A small live line chart (uPlot), sized to its card. */
export function Chart({ title, unit, color, times, values, max, format }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const fmt = format ?? ((v: number) => v.toFixed(1));

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: 150,
      legend: { show: false },
      cursor: { show: false },
      scales: {
        // x is set by setScale below (the window); the range keeps what it is given
        x: {
          time: false,
          range: (_u, lo, hi) => {
            const h = hi ?? Date.now() / 1000;
            return [lo ?? h - MIN_WINDOW_S, h];
          },
        },
        y: { range: (_u, lo, hi) => [0, Math.max(max ?? 0, hi * 1.15, lo + 1)] } },
      axes: [
        { stroke: '#8a94a6', grid: { stroke: '#eef1f5' }, ticks: { stroke: '#eef1f5' }, font: '11px Inter, system-ui, sans-serif', values: (_u, v) => v.map((t) => clock(new Date(t * 1000))), space: 70, incrs: [5, 10, 15, 20, 30, 60, 120, 300, 600] },
        { stroke: '#8a94a6', grid: { stroke: '#eef1f5' }, ticks: { stroke: '#eef1f5' }, size: 44, font: '11px Inter, system-ui, sans-serif', values: (_u, v) => v.map((x) => fmt(x)) },
      ],
      series: [{}, { stroke: color, width: 2, fill: `${color}22`, points: { show: false } }],
    };
    const u = new uPlot(opts, [[], []], el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: 150 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [color, max]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    u.setData([times, values]);
    const hi = times.length ? times[times.length - 1] : Date.now() / 1000;
    // the last minute; while there is less history, at least 10 s, so a line shows at once
    const span = Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, hi - (times[0] ?? hi)));
    u.setScale('x', { min: hi - span, max: hi });
  }, [times, values]);

  const last = values.length ? values[values.length - 1] : null;
  return (
    <div className="card chart-card" data-testid={`chart-${title.toLowerCase().replace(/[^a-z]+/g, '-')}`}>
      <div className="chart-head">
        <span className="chart-title">{title}</span>
        <span className="chart-value num" style={{ color }}>
          {last === null ? '—' : fmt(last)}
          <small>{unit}</small>
        </span>
      </div>
      <div ref={box} className="chart-box" />
    </div>
  );
}
