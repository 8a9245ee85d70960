export function StatusBadge({ status }: { status: string }) {
  return (
    <span className={`badge status-${status}`} data-status={status}>
      {status}
    </span>
  );
}

export function ProgressBar({ value, status }: { value: number | null | undefined; status?: string }) {
  const v = Math.max(0, Math.min(100, value ?? 0));
  return (
    <div className={`progress ${status ? `progress-${status}` : ''}`} role="progressbar" aria-valuenow={v} aria-valuemin={0} aria-valuemax={100}>
      <div className="progress-fill" style={{ width: `${v}%` }} />
    </div>
  );
}
