"""uvicorn's protocols, with two defences uvicorn lacks: the closing handshake completed
when its WebSocket protocol fails a connection, and a deadline for request headers.

**Closing handshake.** Under the ASGI adapter (and for the ASGI routes the native path
hands over), uvicorn's ``WebSocketsSansIOProtocol`` parses the client's frames. When a
frame breaks a limit or the protocol (an oversized frame: 1009; invalid UTF-8: 1007; a
protocol error: 1002), websockets *fails* the connection (RFC 6455 7.1.7) and uvicorn
writes the close frame and closes the socket at once. A client that is still sending
then has unread bytes in the server's socket: the kernel answers with a reset, and the
client's kernel drops the close frame it had not read yet. Measured: a client that wrote
an oversized frame and went on sending for a few loop iterations before reading got
``ECONNRESET`` instead of 1009, 20 times out of 20
(``tests/integration/test_limits.py``).

:class:`ClosingSansIOProtocol` does what agentcast's native path does instead: after the
close frame it half-closes the connection (the client reads the close frame, then EOF),
goes on reading and discarding what the client sends (websockets' parser discards
everything after failing), and closes when the client does, or after ``close_timeout``.
Discarding costs the server the reading only, for at most ``close_timeout``.

It relies on uvicorn's ``handle_parser_exception`` hook and a few of its attributes
(``conn``, ``queue``, ``transport``, ``close_sent``, ``close_timer``, ``loop``); the test
above fails if a uvicorn release changes them.

**Header deadline (slowloris).** uvicorn's HTTP protocol waits for a request's headers
without a time limit (its keep-alive timeout applies between requests, and any byte
received cancels it), so a client that sends a header line now and then holds a socket,
and a file descriptor, for ever (uvicorn 0.55: no timer runs before a request's headers
are complete). :class:`HeaderDeadlineProtocol` (uvicorn's ``httptools``
protocol, the one ``uvicorn[standard]`` uses) gives every request ``header_timeout``
seconds from its first byte (from the connection's opening for the first) to complete its
headers, a WebSocket handshake included; past it the client gets HTTP 408 and the socket
is closed. Bodies are not covered (``max_http_body_bytes`` bounds them; a slow body holds
its request's handler, not the event loop).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = [
    "ClosingSansIOProtocol",
    "HeaderDeadlineProtocol",
    "http_protocol_class",
    "protocol_class",
]

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 38\r\nconnection: close\r\n\r\nrequest headers not received in time\r\n"
)


READ_CHUNK = 16 * 1024
"""Bytes parsed per loop iteration and connection (``ClosingSansIOProtocol.data_received``)."""


class ClosingSansIOProtocol(WebSocketsSansIOProtocol):
    """See the module docstring. ``close_timeout`` (class attribute): the longest a failed
    connection is read and discarded before the socket is closed."""

    close_timeout_setting: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.close_timeout_setting
        self.unread = b""
        self.feeding: asyncio.Handle | None = None

    def data_received(self, data: bytes) -> None:
        """Parse at most ``READ_CHUNK`` bytes per loop iteration: the rest of a large
        read (asyncio reads up to 256 KiB: thousands of small frames) waits, in order,
        for the next iteration, so one connection's read never holds the loop for long."""
        if self.feeding is not None:
            self.unread += data
            return
        if len(data) > READ_CHUNK:
            self.unread = data[READ_CHUNK:]
            data = data[:READ_CHUNK]
            self.feeding = self.loop.call_soon(self._feed_unread)
        super().data_received(data)

    def _feed_unread(self) -> None:
        self.feeding = None
        data, self.unread = self.unread, b""
        if data and not self.transport.is_closing():
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.feeding is not None:
            self.feeding.cancel()
            self.feeding = None
        super().connection_lost(exc)

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


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """See the module docstring. ``header_timeout`` (class attribute, seconds; 0: none)."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # a keep-alive connection's next request

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def _start_header_timer(self) -> None:
        if self.header_timeout > 0 and getattr(self, "_header_timer", None) is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _stop_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_REQUEST_TIMEOUT)
            transport.close()


def http_protocol_class(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """A :class:`HeaderDeadlineProtocol` subclass with ``header_timeout``, for uvicorn's
    ``http`` setting."""
    return type(
        "AgentcastHttpProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout}
    )
