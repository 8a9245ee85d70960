"""The one table of WebSocket close codes and protocol error codes.

Every close code the server sends and every ``code`` an ``error`` frame carries is
listed here, with its explanation and whether a client should reconnect. ``docs/codes.md``
is generated from these tables (``python -m agentcast.codes > docs/codes.md``) and a test
checks that the committed file matches.

Close code ranges:

* 1000–1015: RFC 6455 codes.
* 4000–4499: the server closed the connection but the client should **reconnect and
  resume** from its last seen sequence numbers (with backoff).
* 4500–4999: **terminal**: reconnecting with the same credentials or input fails again.

A code marked ``reserved`` is defined for clients (which must handle it) and for later
use; the server does not send it today (a test checks that no code path does).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes used by agentcast."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    IDLE_TIMEOUT = 4000
    SLOW_CONSUMER = 4001
    KEEPALIVE_TIMEOUT = 4002
    RESYNC = 4003
    UNAUTHORIZED = 4500
    TOKEN_EXPIRED = 4501
    FORBIDDEN = 4503
    AUTH_TIMEOUT = 4508
    TOO_MANY_CONNECTIONS = 4529
    RATE_LIMITED = 4530


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """What a close code means, whether the client should reconnect, and whether it is
    ``reserved`` (not sent by the server today)."""

    reason: str
    explanation: str
    reconnect: bool
    reserved: bool = False


CLOSE_CODES: dict[CloseCode, CloseInfo] = {
    CloseCode.NORMAL: CloseInfo(
        "normal closure", "The connection finished its work.", False, reserved=True
    ),
    CloseCode.GOING_AWAY: CloseInfo(
        "server shutting down",
        "The server is stopping (SIGTERM/SIGINT). Reconnect to another node or later, and "
        "resume with `since`.",
        True,
    ),
    CloseCode.PROTOCOL_ERROR: CloseInfo(
        "protocol error", "The client broke RFC 6455 framing (e.g. an unmasked frame).", False
    ),
    CloseCode.INVALID_DATA: CloseInfo("invalid utf-8", "A text frame was not valid UTF-8.", False),
    CloseCode.POLICY_VIOLATION: CloseInfo(
        "policy violation",
        "The connection broke a server policy: seed 003's endpoint closes with it when "
        "`conversation_id` names no conversation of the caller's (the reason is the error "
        "code).",
        False,
    ),
    CloseCode.MESSAGE_TOO_BIG: CloseInfo(
        "message too big",
        "A client frame exceeded `max_message_bytes`. Send smaller commands.",
        False,
    ),
    CloseCode.INTERNAL_ERROR: CloseInfo(
        "internal error",
        "An unexpected server error (sent by the WebSocket layer when an endpoint fails). "
        "Reconnect with backoff and resume.",
        True,
    ),
    CloseCode.SERVICE_RESTART: CloseInfo(
        "service restart",
        "The server is restarting. Reconnect with backoff and resume.",
        True,
        reserved=True,
    ),
    CloseCode.IDLE_TIMEOUT: CloseInfo(
        "idle timeout",
        "The connection had no subscription and sent nothing for `idle_timeout` seconds. "
        "Reconnect when there is something to subscribe to.",
        True,
    ),
    CloseCode.SLOW_CONSUMER: CloseInfo(
        "slow consumer",
        "The client read too slowly and its outbox passed `outbox_max_bytes` or "
        "`outbox_max_frames`. Nothing is lost: reconnect and resume with `since`.",
        True,
    ),
    CloseCode.KEEPALIVE_TIMEOUT: CloseInfo(
        "keepalive timeout",
        "The client did not answer a WebSocket ping within `ping_timeout` seconds.",
        True,
    ),
    CloseCode.RESYNC: CloseInfo(
        "resync",
        "The server can no longer continue one of the connection's subscriptions in "
        "order: the topic's numbering restarted (a new `epoch`), or its broker lost "
        "events that history no longer holds. Reconnect and resume with `since` and "
        "`epoch`: the `subscribed` reply of that topic says `recovered: false`.",
        True,
    ),
    CloseCode.UNAUTHORIZED: CloseInfo(
        "unauthorized",
        "The token of a first `auth` message was refused (invalid, expired, wrong audience "
        "or issuer). Get a new token. (A refused handshake is answered HTTP 401; the client "
        "reports it as this code.)",
        False,
    ),
    CloseCode.TOKEN_EXPIRED: CloseInfo(
        "token expired",
        "The connection's token expired and no `auth:refresh` brought a fresh one within "
        "`auth_expiry_grace` seconds. Get a new token, then reconnect and resume.",
        False,
    ),
    CloseCode.FORBIDDEN: CloseInfo(
        "forbidden",
        "The authenticated principal may not use this endpoint: a valid token without the "
        "rights, in a first `auth` message (an HTTP 403 handshake answer, which the client "
        "reports as this code, otherwise).",
        False,
    ),
    CloseCode.AUTH_TIMEOUT: CloseInfo(
        "authentication timeout",
        "The handshake carried no credentials and no `auth` message came within "
        "`auth_timeout` seconds.",
        False,
    ),
    CloseCode.TOO_MANY_CONNECTIONS: CloseInfo(
        "too many connections",
        "The principal already holds `max_connections_per_user` connections. Refused "
        "before the upgrade with HTTP 429 (`Retry-After`), or 503 when the server holds "
        "`max_connections` or `max_pending_handshakes`; clients may report either as "
        "this code (agentcast's client retries 429 and 503 with backoff). Sent as a close "
        "code to a connection that authenticated with its first `auth` message as a user "
        "already at the limit.",
        False,
    ),
    CloseCode.RATE_LIMITED: CloseInfo(
        "rate limited",
        "The connection kept sending over a rate limit: `rate_limit_close_after` "
        "`rate_limited` errors within `rate_limit_close_window` seconds. Slow down before "
        "connecting again.",
        False,
    ),
}


class ErrorCode(StrEnum):
    """Stable machine-readable ``code`` values of ``error`` frames and HTTP error bodies."""

    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_FIELD = "invalid_field"
    INVALID_TOPIC = "invalid_topic"
    BINARY_UNSUPPORTED = "binary_unsupported"
    NOT_SUBSCRIBED = "not_subscribed"
    FORBIDDEN = "forbidden"
    UNAUTHORIZED = "unauthorized"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    OUTCOME_UNKNOWN = "outcome_unknown"
    INTERNAL = "internal"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_ERROR = "upstream_error"
    AGENT_ERROR = "agent_error"
    CANCELLED = "cancelled"


ERROR_CODES: dict[ErrorCode, str] = {
    ErrorCode.BAD_JSON: "The text frame is not valid JSON (and not the bare text `ping`).",
    ErrorCode.BAD_FRAME: "The JSON is not an object with a string `type`.",
    ErrorCode.UNKNOWN_COMMAND: "The `type` names no command this server knows.",
    ErrorCode.INVALID_FIELD: "A field is missing or has the wrong type; `field` names it.",
    ErrorCode.INVALID_TOPIC: "The topic name is empty, too long or has forbidden characters.",
    ErrorCode.BINARY_UNSUPPORTED: "Binary frames are not part of protocol v1; send JSON text.",
    ErrorCode.NOT_SUBSCRIBED: "`unsubscribe` for a topic this connection is not subscribed to.",
    ErrorCode.FORBIDDEN: "The principal may not subscribe or publish to this topic.",
    ErrorCode.UNAUTHORIZED: "The request carries no valid credentials (HTTP 401).",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "The connection holds `max_subscriptions` topics already.",
    ErrorCode.RATE_LIMITED: "Too many commands, publishes or chat messages (a `rate_limit_*` "
    "setting), or too many commands in flight; `retry_after` (seconds) says when to retry "
    "(HTTP: 429 with a `Retry-After` header). The command was not applied.",
    ErrorCode.PAYLOAD_TOO_LARGE: "An event's data exceeds `max_event_bytes`, or an HTTP request "
    "body exceeds `max_http_body_bytes` (HTTP 413).",
    ErrorCode.UNAVAILABLE: "The broker or store is unreachable; the command was not applied.",
    ErrorCode.OUTCOME_UNKNOWN: "The broker did not answer a publish that was sent: the "
    "event may or may not have been published. Read the topic's history before "
    "publishing it again.",
    ErrorCode.INTERNAL: "An unexpected server error; the command may not have been applied.",
    ErrorCode.NOT_FOUND: "The conversation (or other resource) does not exist or is not yours.",
    ErrorCode.CONFLICT: "The resource is busy, e.g. a conversation already generating an answer.",
    ErrorCode.UPSTREAM_UNAVAILABLE: "The LLM server is unreachable or refused the request "
    "(after retries and fallback models), or the connection was lost before the first token "
    "(the request is not sent again); the user's message is stored.",
    ErrorCode.UPSTREAM_TIMEOUT: "The LLM server stalled longer than its read timeout.",
    ErrorCode.UPSTREAM_ERROR: "The LLM server answered with an error or a broken stream.",
    ErrorCode.AGENT_ERROR: "The agent raised an error while answering; `message` says which.",
    ErrorCode.CANCELLED: "The generation was cancelled (`chat:cancel`); the partial answer "
    "is stored as cancelled.",
}


def render_markdown() -> str:
    """The content of ``docs/codes.md``, generated from the tables above."""
    lines = [
        "# Close codes and error codes",
        "",
        "Generated from `src/agentcast/codes.py` by `python -m agentcast.codes`; "
        "a test checks that this file matches the code.",
        "",
        "## WebSocket close codes",
        "",
        "4000–4499: reconnect and resume. 4500–4999: terminal, do not reconnect as is.",
        "",
        "Codes marked *reserved* are for clients to handle and for later use: the server "
        "does not send them today.",
        "",
        "| code | name | reason sent | reconnect | meaning |",
        "|---|---|---|---|---|",
    ]
    for code, info in CLOSE_CODES.items():
        reason = f"{info.reason} *(reserved)*" if info.reserved else info.reason
        lines.append(
            f"| {int(code)} | `{code.name}` | {reason} | "
            f"{'yes' if info.reconnect else 'no'} | {info.explanation} |"
        )
    lines += [
        "",
        "## Error codes",
        "",
        "Carried by `error` frames on the WebSocket (`data.code`) and by HTTP error bodies "
        "(`detail.code`).",
        "",
        "| code | meaning |",
        "|---|---|",
    ]
    for ecode, text in ERROR_CODES.items():
        lines.append(f"| `{ecode.value}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
