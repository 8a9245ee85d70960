/** Reconnection delays: full-jitter exponential backoff. */

export interface BackoffOptions {
  /** The first delay's upper bound, ms (default 500). */
  initialMs?: number;
  /** The largest delay, ms (default 30000). */
  maxMs?: number;
  /**
   * How much of each delay is random, 0 to 1 (default 1: "full jitter", uniform in
   * [0, d]); 0.5 gives uniform in [d/2, d]; 0 gives d exactly.
   */
  jitter?: number;
}

/**
 * The delay before reconnection attempt `attempt` (0 for the first): with
 * `d = min(maxMs, initialMs × 2^attempt)`, uniform in `[d × (1 − jitter), d]`.
 * `random` is injectable for tests.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = opts.initialMs ?? 500;
  const max = opts.maxMs ?? 30_000;
  const jitter = Math.min(1, Math.max(0, opts.jitter ?? 1));
  const d = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return d * (1 - jitter * random());
}
