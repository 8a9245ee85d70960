"""The native WebSocket path: a uvicorn ``ws`` protocol class on websockets' sans-I/O core.

uvicorn parses HTTP and, on an upgrade request, hands the connection to the protocol
class in its ``ws`` setting. :func:`protocol_class` builds one bound to a gateway:

* For the gateway's own paths (``/ws``, and the seeds' per-run endpoints
  ``/api/ws/workflow/{id}`` and ``/api/ws/executions/{id}``) it runs the handshake and
  parses client frames with ``websockets.server.ServerProtocol`` (sans-I/O: bytes in,
  events out), and writes the gateway's pre-framed, coalesced outbox bytes straight to
  the transport: one ``write()`` per connection per loop iteration, no task and no ASGI
  scope per connection.
* Any other path is handed, unchanged, to uvicorn's own ``WebSocketsSansIOProtocol``
  (:mod:`agentcast.transports.uvicorn_protocols`: with the closing handshake completed when it
  fails a connection), which runs the ASGI app (FastAPI/Starlette WebSocket routes keep working).

The transport's write buffer limits drive slow-consumer detection: above the high-water
mark the gateway stops flushing to the connection and its outbox grows until it drains
or overflows.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, ClassVar, cast
from urllib.parse import parse_qsl, unquote

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from agentcast.codes import CloseCode
from agentcast.core.session import Session
from agentcast.gateway import Gateway
from agentcast.plugin import SocketEndpoint
from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from agentcast.security.credentials import select_subprotocol

__all__ = ["NativeWebSocketProtocol", "protocol_class"]

logger = logging.getLogger("agentcast.transport")
protocol_logger = logging.getLogger("agentcast.transport.ws")
"""Passed to websockets' ServerProtocol, which logs every open/close at INFO level."""

_PING_FRAME = bytes((0x89, 0))
_MAX_HANDSHAKE_BYTES = 16 * 1024
_READ_CHUNK = 16 * 1024
"""Bytes parsed per loop iteration and connection (asyncio reads up to 256 KiB)."""
_FRAME_BUDGET = 256
"""Frames handled per loop iteration and connection; the rest wait for the next one."""


def _request_path(data: bytes) -> str | None:
    """Path of the HTTP request line at the start of ``data`` (without the query)."""
    line_end = data.find(b"\r\n")
    parts = data[: line_end if line_end >= 0 else len(data)].split(b" ")
    if len(parts) < 2:
        return None
    return unquote(parts[1].split(b"?", 1)[0].decode("latin-1"))


class NativeWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection on the native path (see the module docstring)."""

    gateway: ClassVar[Gateway]
    paths: ClassVar[Collection[str]] = ("/ws",)
    transport_kind: ClassVar[str] = "native"
    """The ``transport`` label of ``agentcast_connections`` (``/metrics``)."""

    __slots__ = (
        "app_state",
        "close_handle",
        "config",
        "conn",
        "delegate",
        "discarding",
        "endpoint",
        "events",
        "fragments",
        "resume_handle",
        "server_state",
        "session",
        "transport",
        "unread",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None
        self.conn: ServerProtocol | Protocol | None = None
        self.delegate: asyncio.Protocol | None = None
        self.session: Session | None = None
        self.fragments: list[bytes] | None = None
        self.close_handle: asyncio.TimerHandle | None = None
        self.endpoint: tuple[SocketEndpoint, str] | None = None
        self.discarding = False
        """After a close the server initiated, half-closed: input is dropped unparsed."""
        self.resume_handle: asyncio.Handle | None = None
        """Set while reading is paused by a hold or a full per-read budget."""
        self.events: list[Request | Response | Frame] | None = None
        """Frames parsed but not handled yet (a hold, or past the budget)."""
        self.unread = b""
        """Bytes read but not parsed yet (past ``_READ_CHUNK``, or read while paused)."""

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)
        high = self.gateway.settings.write_high_water
        self.transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)
            return
        if self.discarding:  # closing: dropped, not parsed (a flood costs a read, no more)
            return
        conn = self.conn
        if conn is None:
            path = _request_path(data)
            if path not in self.paths:
                self.endpoint = self.gateway.socket_endpoint(path) if path is not None else None
                if self.endpoint is None:
                    self._delegate(data)
                    return
            conn = self.conn = ServerProtocol(
                max_size=self.gateway.settings.max_message_bytes,
                logger=protocol_logger,
                select_subprotocol=_subprotocol,
            )
        session = self.session
        if session is not None:
            session.last_seen = self.gateway.loop.time()
            session.ping_sent = 0.0
        if self.resume_handle is not None:  # held or over budget: read, queued behind
            self.unread += data
            return
        self._consume(data)

    def _consume(self, data: bytes) -> None:
        """Parse at most ``_READ_CHUNK`` bytes of ``data`` now (the rest waits in
        ``unread``) and handle the frames (:meth:`_handle`)."""
        conn = self.conn
        assert conn is not None
        if len(data) > _READ_CHUNK:
            self.unread = data[_READ_CHUNK:]
            data = data[:_READ_CHUNK]
        conn.receive_data(data)
        self._handle(conn.events_received())

    def _handle(self, events: list[Request | Response | Frame]) -> None:
        """Handle at most ``_FRAME_BUDGET`` of ``events``, in order; stop early when the
        connection closes or its reading is held (:meth:`hold_reading`). What is left
        (frames, unparsed bytes) waits with reading paused: for the hold, or for the next
        loop iteration, so that one connection's read never holds the loop for long."""
        session = self.session
        count = len(events)
        end = count if count <= _FRAME_BUDGET else _FRAME_BUDGET
        i = 0
        while i < end:
            event = events[i]
            i += 1
            if isinstance(event, Request):
                self._handshake(event)
                session = self.session
                continue
            if not isinstance(event, Frame):  # pragma: no cover - servers receive no Response
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if not event.fin:
                    if opcode is not Opcode.CONT:
                        self.fragments = [opcode.name.encode(), bytes(event.data)]
                    elif self.fragments is not None:
                        self.fragments.append(bytes(event.data))
                    continue
                if opcode is Opcode.CONT:
                    if self.fragments is None:  # pragma: no cover - websockets rejects this
                        continue
                    binary = self.fragments[0] == b"BINARY"
                    payload = b"".join([*self.fragments[1:], bytes(event.data)])
                    self.fragments = None
                else:
                    binary = opcode is Opcode.BINARY
                    payload = bytes(event.data)
                if session is None:  # pragma: no cover - frames only follow a handshake
                    continue
                if binary:
                    self.gateway.receive_binary(session)
                else:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        self.close(CloseCode.INVALID_DATA, "invalid utf-8")
                        return
                    self.gateway.receive_text(session, text)
                if self.resume_handle is not None or self.discarding:
                    break
        self._write_pending()
        transport = self.transport
        if self.discarding or transport is None or transport.is_closing():
            self.unread = b""
            return
        rest = events[i:] if i < count else None
        if self.resume_handle is not None:  # held: the rest waits for the hold's end
            self.events = rest
        elif rest is not None or self.unread:
            self.events = rest
            transport.pause_reading()
            self.resume_handle = self.gateway.loop.call_soon(self._resume)

    def _resume(self) -> None:
        """After a hold or a full budget: handle what waits, then read again."""
        self.resume_handle = None
        transport = self.transport
        if self.discarding or transport is None or transport.is_closing():
            return
        events, self.events = self.events, None
        if events is not None:
            self._handle(events)
        elif self.unread:
            data, self.unread = self.unread, b""
            self._consume(data)
        # before the session (an authenticator or the cluster state still deciding) the
        # handshake's own pause stands: it resumes reading when it is done
        if self.resume_handle is None and self.session is not None and not transport.is_closing():
            transport.resume_reading()

    def hold_reading(self, seconds: float) -> None:
        """See :meth:`agentcast.core.session.Writer.hold_reading`."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.discarding:
            return
        if self.resume_handle is not None:
            self.resume_handle.cancel()
        transport.pause_reading()
        self.resume_handle = self.gateway.loop.call_later(seconds, self._resume)

    def eof_received(self) -> bool | None:
        # the client closed its side: after our close frame (the closing handshake is
        # complete) or without one; either way the transport closes now
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
            return
        self.server_state.connections.discard(self)
        if self.close_handle is not None:
            self.close_handle.cancel()
            self.close_handle = None
        if self.resume_handle is not None:
            self.resume_handle.cancel()
            self.resume_handle = None
        self.events = None
        self.unread = b""
        if self.session is not None:
            self.gateway.close_session(self.session)

    def pause_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.pause_writing()
        elif self.session is not None:
            self.gateway.set_paused(self.session, True)

    def resume_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.resume_writing()
        elif self.session is not None:
            self.gateway.set_paused(self.session, False)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: the gateway drains (the stopping producers' last
        events are delivered), then closes every connection with 1001."""
        if self.session is not None:
            if self.gateway.started:
                self.gateway.request_drain()
            else:
                self.gateway.close(self.session, CloseCode.GOING_AWAY)
        elif self.transport is not None:
            self.transport.close()

    # -- Writer (for the gateway) --------------------------------------------------

    def write_frames(self, frames: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.close_handle is not None:
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def send_ping(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and self.close_handle is None:
            transport.write(_PING_FRAME)

    def close(self, code: CloseCode, reason: str) -> None:
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None or transport.is_closing():
            return
        if self.session is not None and not self.session.closed:
            self.gateway.close(self.session, code, reason)  # comes back here
            return
        try:
            conn.send_close(int(code), reason)
        except InvalidState:
            return
        self._write_pending()
        if not transport.is_closing() and transport.can_write_eof():
            # Half-close after the close frame: the client reads it, then EOF, and closes
            # (clients close on the server's EOF); meanwhile what it sends is dropped
            # without parsing. Parsing a flooding client's frames for close_timeout cost
            # the event loop seconds per connection (benchmarks/attack.py, rate-limits).
            # Over TLS (no half-close) the client's close frame is waited for, parsed.
            if self.session is not None:
                self.gateway.close_session(self.session)
            transport.write_eof()
            self.discarding = True
        if self.resume_handle is not None:  # held: read on (to discard, or the close frame)
            self.resume_handle.cancel()
            self.resume_handle = None
            self.events = None
            transport.resume_reading()
        self._close_later()

    # -- internals -----------------------------------------------------------------

    def _write_pending(self) -> None:
        """Write what the protocol has to send, and carry out its end of the connection.

        A close the server initiates completes its closing handshake: :meth:`close`
        half-closes right after the close frame and drops the client's input unparsed
        until its EOF (over TLS: reads on until the client's close frame, then
        half-closes here); a connection websockets fails (1009, 1002) is half-closed here
        and its input discarded by websockets; at most ``close_timeout`` in all.
        Closing the socket at once with unread input would make the kernel reset the
        connection and lose the close frame (a client flooding after an oversized frame
        never saw its 1009).
        """
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None:
            return
        chunks = conn.data_to_send()
        if chunks:
            data = b"".join(chunks)
            if data and not transport.is_closing():
                transport.write(data)
            if chunks[-1] == b"":  # the protocol is done sending: EOF
                if self.session is None:  # a refused or failed handshake: nothing to read
                    transport.close()
                else:
                    # nothing more is written: the session goes (no ping, no frame)
                    self.gateway.close_session(self.session)
                    if not transport.is_closing() and transport.can_write_eof():
                        transport.write_eof()
                    # websockets discards all input after failing: drop it unparsed
                    self.discarding = True
                    self.unread = b""
                    self._close_later()
                return
        if conn.close_expected():
            self._close_later()

    def _close_later(self) -> None:
        """Abort the transport if the client has not closed it within ``close_timeout``."""
        transport = self.transport
        if self.close_handle is None and transport is not None and not transport.is_closing():
            timeout = self.gateway.settings.close_timeout
            self.close_handle = self.gateway.loop.call_later(timeout, transport.abort)

    def _delegate(self, data: bytes) -> None:
        """Hand a non-native path to uvicorn's own sans-I/O WebSocket protocol (ASGI app)."""
        from agentcast.transports.uvicorn_protocols import protocol_class as sansio_class

        delegate = sansio_class(self.gateway.settings.close_timeout)(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        self.server_state.connections.discard(self)
        self.delegate = delegate
        assert self.transport is not None
        delegate.connection_made(self.transport)
        delegate.data_received(data)

    def _handshake(self, request: Request) -> None:
        conn = self.conn
        transport = self.transport
        assert isinstance(conn, ServerProtocol)
        assert transport is not None
        response = conn.accept(request)
        if response.status_code != 101:
            self._reject(response)
            return
        if self.endpoint is not None and not self.endpoint[0].accepts(self.endpoint[1]):
            self._reject(conn.reject(404, "no such endpoint\n"))
            return
        path, _, query = request.path.partition("?")
        creq = ConnectionRequest(
            path=unquote(path),
            query=dict(parse_qsl(query)),
            headers={k.lower(): v for k, v in request.headers.raw_items()},
            client=transport.get_extra_info("peername"),
        )
        gateway = self.gateway
        if gateway.server_full():  # before any work
            self._reject(_limit_response(conn, 503, "server full"))
            return
        try:
            result = gateway.authenticate(creq)
        except AuthenticationError as exc:
            gateway.auth_refused(exc)
            self._reject(conn.reject(exc.status, f"{_refusal(exc)}: {exc}\n"))
            return
        if inspect.isawaitable(result):
            if not gateway.begin_handshake():
                if inspect.iscoroutine(result):
                    result.close()
                self._reject(_limit_response(conn, 503, "too many handshakes in progress"))
                return
            transport.pause_reading()
            gateway.loop.create_task(self._finish_handshake(response, result, creq))
        else:
            self._accept(response, result, creq)

    async def _finish_handshake(
        self, response: Response, pending: Awaitable[Principal], creq: ConnectionRequest
    ) -> None:
        conn = self.conn
        assert isinstance(conn, ServerProtocol)
        assert self.transport is not None
        try:
            principal = await pending
        except AuthenticationError as exc:
            self.gateway.auth_refused(exc)
            self._reject(conn.reject(exc.status, f"{_refusal(exc)}: {exc}\n"))
            return
        except Exception:
            logger.exception("authenticator failed")
            self._reject(conn.reject(500, "authentication failed\n"))
            return
        finally:
            self.gateway.end_handshake()
        if self.transport.is_closing():
            return
        if self._accept(response, principal, creq):
            self.transport.resume_reading()

    def _accept(self, response: Response, principal: Principal, creq: ConnectionRequest) -> bool:
        """Admit (:meth:`Gateway.admit`) and open the connection, or refuse it. False when
        the admission is asked of the cluster state: reading is paused until it answers."""
        admitted = self.gateway.admit(principal)
        if inspect.isawaitable(admitted):
            assert self.transport is not None
            self.transport.pause_reading()
            finish = self._finish_admission(response, principal, creq, admitted)
            self.gateway.loop.create_task(finish)
            return False
        self._open(response, principal, creq, admitted)
        return True

    async def _finish_admission(
        self,
        response: Response,
        principal: Principal,
        creq: ConnectionRequest,
        pending: Awaitable[tuple[int, str] | None],
    ) -> None:
        assert self.transport is not None
        refusal = await pending
        if self.transport.is_closing():
            if refusal is None:
                self.gateway.release_admission(principal)
            return
        self._open(response, principal, creq, refusal)
        self.transport.resume_reading()

    def _open(
        self,
        response: Response,
        principal: Principal,
        creq: ConnectionRequest,
        refusal: tuple[int, str] | None,
    ) -> None:
        conn = self.conn
        assert isinstance(conn, ServerProtocol)
        if refusal is not None:
            self._reject(_limit_response(conn, *refusal))
            return
        conn.send_response(response)
        self._write_pending()
        # From here on only frames flow. A fresh frame-level protocol in OPEN state drops
        # the handshake request that ServerProtocol's suspended parser keeps alive (~2 KiB
        # per connection). Clients wait for the 101 before sending frames (RFC 6455 4.1),
        # so nothing is buffered yet; carry it over anyway if something is.
        leftover = bytes(conn.reader.buffer)
        self.conn = Protocol(
            Side.SERVER,
            state=State.OPEN,
            max_size=self.gateway.settings.max_message_bytes,
            logger=protocol_logger,
        )
        self.session = self.gateway.open_session(principal, self)
        if self.endpoint is not None:
            endpoint, value = self.endpoint
            endpoint.open(self.session, value, creq.query)
        if leftover:  # pragma: no cover - see above
            self.data_received(leftover)

    def _reject(self, response: Response) -> None:
        assert isinstance(self.conn, ServerProtocol)
        assert self.transport is not None
        self.conn.send_response(response)
        self._write_pending()
        self.transport.close()


def protocol_class(
    gateway: Gateway, paths: Collection[str] = ("/ws",)
) -> type[NativeWebSocketProtocol]:
    """A :class:`NativeWebSocketProtocol` subclass bound to ``gateway``, for uvicorn's ``ws``."""
    return type(
        "AgentcastWebSocketProtocol",
        (NativeWebSocketProtocol,),
        {"gateway": gateway, "paths": frozenset(paths), "__slots__": ()},
    )


def _subprotocol(conn: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``agentcast.v1`` when offered (never a ``bearer.<token>`` one: see
    :mod:`agentcast.security.credentials`)."""
    chosen = select_subprotocol(offered)
    return Subprotocol(chosen) if chosen is not None else None


def _limit_response(conn: ServerProtocol, status: int, message: str) -> Response:
    """A handshake refused by a connection limit: HTTP 429 or 503 with ``Retry-After``."""
    response = conn.reject(status, f"{message}\n")
    response.headers["Retry-After"] = "1"
    return response


def _refusal(exc: AuthenticationError) -> str:
    """The first word of a refused handshake's body."""
    return "unauthorized" if exc.status == 401 else "forbidden"
