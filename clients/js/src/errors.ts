/**
 * The one error type of the client. `code` is an error code of docs/codes.md
 * (`forbidden`, `not_found`, `rate_limited`, …) from an `error` frame, or one of the
 * client's own: `unauthorized` (refused credentials), `closed` (the client was closed or
 * stopped on a terminal close code), `connection_lost` (the socket closed before the
 * reply came: the command may or may not have been applied), `timeout` (no reply within
 * `timeoutMs`), `handshake_refused` (an HTTP answer other than 101, 401, 403, 429 or 5xx).
 */
export class AgentcastError extends Error {
  /** A stable error code (docs/codes.md, or one of the client's, above). */
  code: string;
  /** The WebSocket close code, when the error comes from a close (4500, 4501, …). */
  closeCode?: number;
  /** The field at fault, when the server named one (`data.execution_id`). */
  field?: string;
  /** Seconds to wait before retrying (`rate_limited`). */
  retryAfter?: number;
  /** The server's `error` frame, when there was one. */
  frame?: Record<string, unknown>;

  constructor(
    code: string,
    message: string,
    extra: { closeCode?: number; field?: string; retryAfter?: number; frame?: Record<string, unknown> } = {},
  ) {
    super(message);
    this.name = 'AgentcastError';
    this.code = code;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.field !== undefined) this.field = extra.field;
    if (extra.retryAfter !== undefined) this.retryAfter = extra.retryAfter;
    if (extra.frame !== undefined) this.frame = extra.frame;
  }

  /** The error an `error` frame stands for. */
  static fromFrame(frame: Record<string, unknown>): AgentcastError {
    const data = (frame.data ?? {}) as Record<string, unknown>;
    const code = typeof data.code === 'string' ? data.code : 'internal';
    const message = typeof data.message === 'string' ? data.message : code;
    const extra: { field?: string; retryAfter?: number; frame: Record<string, unknown> } = { frame };
    if (typeof data.field === 'string') extra.field = data.field;
    if (typeof data.retry_after === 'number') extra.retryAfter = data.retry_after;
    return new AgentcastError(code, message, extra);
  }
}
