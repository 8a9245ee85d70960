"""Errors specific to :mod:`agentcast.client` (all are :class:`~agentcast.errors.ClientError`).

The tree, with the ones from :mod:`agentcast.errors`::

    ClientError
    ├── ConnectionClosedError      terminal close code: the client stopped
    │   └── HandshakeRefusedError       the server answered the opening handshake with an HTTP error
    ├── HistoryLostError           a resume could not be complete (``on_history_lost="raise"``)
    ├── CommandFailedError              the server answered a command with an ``error`` frame
    └── ConnectionLostError        the connection dropped before a command's reply came
"""

from __future__ import annotations

from agentcast.codes import CloseCode, ErrorCode
from agentcast.errors import ClientError, ConnectionClosedError

__all__ = ["CommandFailedError", "ConnectionLostError", "HandshakeRefusedError"]


class CommandFailedError(ClientError):
    """The server answered a command with an ``error`` frame.

    ``code`` is the stable error code (an :class:`~agentcast.codes.ErrorCode` when this
    client knows it, the server's string otherwise), ``field`` names the offending field
    when there is one. The command had no effect, except for ``internal``.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" ({field})" if field else ""))
        try:
            self.code: str = ErrorCode(code)
        except ValueError:
            self.code = code
        self.message = message
        self.field = field


class ConnectionLostError(ClientError):
    """The connection dropped after a command was sent and before its reply arrived.

    The command may or may not have been carried out (a ``publish`` may have been
    published). The client reconnects by itself; retry if the command is idempotent for
    you.
    """


class HandshakeRefusedError(ConnectionClosedError):
    """The server refused the WebSocket handshake with HTTP ``status``.

    ``code`` is the close code of the same meaning: 4500 (unauthorized) for 401, 4503
    (forbidden) for 403, 1008 (policy violation) for any other refusal. Terminal: the
    client does not retry (429 and 5xx answers are retried instead).
    """

    def __init__(self, status: int) -> None:
        if status == 401:
            code = CloseCode.UNAUTHORIZED
        elif status == 403:
            code = CloseCode.FORBIDDEN
        else:
            code = CloseCode.POLICY_VIOLATION
        super().__init__(int(code), f"handshake refused: HTTP {status}")
        self.status = status
