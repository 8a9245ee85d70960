"""uvicorn's sans-I/O WebSocket protocol, with the closing handshake completed when it
fails a connection.

Under the ASGI adapter (and for the ASGI routes the native path hands over), uvicorn's
``WebSocketsSansIOProtocol`` parses the client's frames. When a frame breaks a limit or
the protocol (an oversized frame: 1009; invalid UTF-8: 1007; a protocol error: 1002),
websockets *fails* the connection (RFC 6455 7.1.7) and uvicorn writes the close frame
and closes the socket at once. A client that is still sending then has unread bytes in
the server's socket: the kernel answers with a reset, and the client's kernel drops the
close frame it had not read yet. Measured: a client that wrote an oversized frame and
went on sending for a few loop iterations before reading got ``ECONNRESET`` instead of
1009, 20 times out of 20 (``tests/integration/test_limits.py``).

:class:`ClosingSansIOProtocol` does what agentcast's native path does instead: after the
close frame it half-closes the connection (the client reads the close frame, then EOF),
goes on reading and discarding what the client sends (websockets' parser discards
everything after failing), and closes when the client does, or after ``close_timeout``.
Discarding costs the server the reading only, for at most ``close_timeout``.

It relies on uvicorn's ``handle_parser_exception`` hook and a few of its attributes
(``conn``, ``queue``, ``transport``, ``close_sent``, ``close_timer``, ``loop``); the test
above fails if a uvicorn release changes them.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["ClosingSansIOProtocol", "protocol_class"]


class ClosingSansIOProtocol(WebSocketsSansIOProtocol):
    """See the module docstring. ``close_timeout`` (class attribute): the longest a failed
    connection is read and discarded before the socket is closed."""

    close_timeout_setting: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.close_timeout_setting

    def handle_parser_exception(self) -> None:
        if self.close_sent:  # failed already: what follows is read and discarded
            return
        close = self.conn.close_sent
        code = close.code if close is not None else 1006
        reason = close.reason if close is not None else ""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.stop_keepalive()
        transport = self.transport
        transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if transport.can_write_eof():  # not over TLS: the timer (or the client) ends it
            transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(self.close_timeout, transport.close)


def protocol_class(close_timeout: float) -> type[ClosingSansIOProtocol]:
    """A :class:`ClosingSansIOProtocol` subclass with ``close_timeout``, for uvicorn's
    ``ws`` setting."""
    return type(
        "AgentcastSansIOProtocol",
        (ClosingSansIOProtocol,),
        {"close_timeout_setting": close_timeout},
    )
