/**
 * What a close code means for the client (docs/codes.md, docs/protocol.md section 8):
 * 4000–4499 and 1001, 1011, 1012 (and a lost connection, 1006) reconnect and resume;
 * 4500–4999 and 1002, 1003, 1007–1010 are terminal. Of the terminal ones, the
 * authentication codes put the client in state `unauthorized`, the others in `closed`.
 */

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  IDLE_TIMEOUT: 4000,
  SLOW_CONSUMER: 4001,
  KEEPALIVE_TIMEOUT: 4002,
  RESYNC: 4003,
  UNAUTHORIZED: 4500,
  TOKEN_EXPIRED: 4501,
  FORBIDDEN: 4503,
  AUTH_TIMEOUT: 4508,
  TOO_MANY_CONNECTIONS: 4529,
  RATE_LIMITED: 4530,
} as const;

/** RFC 6455 codes after which reconnecting as is fails again (besides 4500–4999). */
export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([1002, 1003, 1007, 1008, 1009, 1010]);

/** Terminal codes that mean "your credentials": the client's state becomes `unauthorized`. */
export const AUTH_CLOSE_CODES: ReadonlySet<number> = new Set([4500, 4501, 4503, 4508]);

/** True when a connection closed with `code` should be reconnected and resumed. */
export function reconnectable(code: number): boolean {
  return !(TERMINAL_CLOSE_CODES.has(code) || (code >= 4500 && code <= 4999));
}

/** True for the codes after which the client needs new credentials. */
export function isAuthClose(code: number): boolean {
  return AUTH_CLOSE_CODES.has(code);
}

/** The close code a refused handshake's HTTP status stands for (codes.md), or null to retry. */
export function closeCodeOfStatus(status: number): number | null {
  if (status === 401) return CloseCode.UNAUTHORIZED;
  if (status === 403) return CloseCode.FORBIDDEN;
  if (status === 429 || status >= 500) return null; // retried with backoff
  return CloseCode.POLICY_VIOLATION; // 400, 404, …: terminal
}
