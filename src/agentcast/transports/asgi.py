"""The ASGI adapter: wire protocol v1 as a Starlette/FastAPI WebSocket route.

Mount it in any app (``app.add_api_websocket_route("/ws", websocket_route(gateway))``)
to serve the same hub through the ASGI server of your choice. It is slower than the
native path (one ASGI ``send`` per frame, no write coalescing) but shares the
guarantees of ordering, resume and slow-consumer closing.

The drain on shutdown: :func:`drain` stops the gateway's producers, sends every
connection its last frames (what the stopping producers published: a cancelled run's or
answer's last events), then closes it with 1001, and returns when those closes are sent.
An ASGI app only learns of a shutdown through its lifespan, and ASGI servers close their
WebSockets *before* the lifespan's shutdown (uvicorn with 1012, a reconnect code), so the
server has to call :func:`drain` itself first: :class:`agentcast.transports.server.
DrainingServer` is uvicorn doing so. Under another server the lifespan still drains
(producers stop, partial answers and runs are stored), but the clients were closed
already; they get those events when they resume (from the store).

Handshakes that cannot succeed are refused with an HTTP answer, as on the native path:
401 when authentication fails, 404 for a feature endpoint's value it does not accept (a
run id that makes no valid topic) and for a path that no WebSocket route serves
(:func:`websocket_not_found`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import ClassVar

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agentcast.codes import CloseCode
from agentcast.core.envelope import payload_of_frame
from agentcast.core.session import Session
from agentcast.gateway import Gateway
from agentcast.plugin import SocketEndpoint
from agentcast.policy import AuthenticationError, Principal, resolve
from agentcast.security.credentials import select_subprotocol
from agentcast.web import request_of

__all__ = ["AsgiWriter", "drain", "websocket_not_found", "websocket_route"]

_senders: weakref.WeakKeyDictionary[Gateway, set[asyncio.Task[None]]] = weakref.WeakKeyDictionary()
"""Per gateway, the tasks sending to its ASGI connections (what :func:`drain` waits for)."""


class AsgiWriter:
    """Frames for one ASGI WebSocket, sent by one task with back-pressure.

    While more than ``high_water`` bytes wait to be sent the session counts as paused,
    so its outbox grows and, past its bound, the gateway closes it as a slow consumer.
    """

    transport_kind: ClassVar[str] = "asgi"
    """The ``transport`` label of ``agentcast_connections`` (``/metrics``)."""

    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        self.websocket = websocket
        self.gateway = gateway
        self.session: Session | None = None
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.high_water = gateway.settings.write_high_water
        self.wakeup = asyncio.Event()
        self.closing: tuple[int, str] | None = None
        self.hold = 0.0
        """Seconds the receive loop waits before its next frame (:meth:`hold_reading`)."""

    def write_frames(self, frames: list[bytes]) -> None:
        self.queue.extend(frames)
        self.queued_bytes += sum(map(len, frames))
        if self.queued_bytes > self.high_water and self.session is not None:
            self.gateway.set_paused(self.session, True)
        self.wakeup.set()

    def send_ping(self) -> None:
        """The ASGI server pings (uvicorn's ``ws_ping_interval``); nothing to do here."""
        if self.session is not None:
            self.session.ping_sent = 0.0

    def hold_reading(self, seconds: float) -> None:
        """The receive loop waits ``seconds`` before it asks for the next frame: uvicorn
        keeps a connection's reading paused while a received message waits for the app,
        so the client meets TCP back-pressure."""
        self.hold = seconds

    def close(self, code: CloseCode, reason: str) -> None:
        if self.closing is None:
            self.closing = (int(code), reason)
            self.wakeup.set()

    async def run(self) -> None:
        """Send queued frames until the connection closes."""
        ws = self.websocket
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            queue = self.queue
            # a shutdown close (1001) comes after the frames queued before it: the stopping
            # producers' last events; any other close sends them too, unless they are a
            # slow consumer's backlog
            going_away = self.closing is not None and self.closing[0] == CloseCode.GOING_AWAY
            while queue and (
                self.closing is None or going_away or self.queued_bytes <= self.high_water
            ):
                frame = queue.popleft()
                self.queued_bytes -= len(frame)
                await ws.send_text(payload_of_frame(frame).decode())
                if (
                    self.session is not None
                    and self.session.paused
                    and self.queued_bytes <= self.high_water // 4
                ):
                    self.gateway.set_paused(self.session, False)
            if self.closing is not None:
                code, reason = self.closing
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await ws.close(code, reason)
                return


def websocket_route(
    gateway: Gateway, socket_endpoint: SocketEndpoint | None = None
) -> Callable[[WebSocket], Awaitable[None]]:
    """An ASGI WebSocket endpoint speaking wire protocol v1 on ``gateway``.

    With ``socket_endpoint`` it serves a feature's endpoint (mount it at
    ``socket_endpoint.path``): its path parameter goes to the endpoint's ``open``, and a
    value the endpoint does not accept is refused with 404 before the upgrade.
    """

    async def endpoint(websocket: WebSocket) -> None:
        value = None
        if socket_endpoint is not None:
            value = str(websocket.path_params.get(socket_endpoint.param, ""))
            if not socket_endpoint.accepts(value):
                await _deny(websocket, 404, "no such endpoint")
                return
        if gateway.server_full():
            await _deny(websocket, 503, "server full")
            return
        try:
            result = gateway.authenticate(request_of(websocket))
            if inspect.isawaitable(result):
                if not gateway.begin_handshake():
                    if inspect.iscoroutine(result):
                        result.close()
                    await _deny(websocket, 503, "too many handshakes in progress")
                    return
                try:
                    principal: Principal = await result
                finally:
                    gateway.end_handshake()
            else:
                principal = result
        except AuthenticationError as exc:
            gateway.auth_refused(exc)
            # HTTP 401 (403) on the handshake, as on the native path, where the server
            # supports the ASGI denial-response extension; a 403 close otherwise
            word = "unauthorized" if exc.status == 401 else "forbidden"
            await _deny(websocket, exc.status, f"{word}: {exc}")
            return
        refusal = await resolve(gateway.admit(principal))
        if refusal is not None:  # HTTP 429 (per user, across the cluster) or 503 (full)
            await _deny(websocket, *refusal)
            return
        try:
            await websocket.accept(select_subprotocol(websocket.scope.get("subprotocols", [])))
        except BaseException:
            gateway.release_admission(principal)
            raise
        writer = AsgiWriter(websocket, gateway)
        session = writer.session = gateway.open_session(principal, writer)
        if socket_endpoint is not None and value is not None:
            socket_endpoint.open(session, value, dict(websocket.query_params))
        sender = asyncio.create_task(writer.run())
        senders = _senders.setdefault(gateway, set())
        senders.add(sender)
        sender.add_done_callback(senders.discard)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                gateway.activity(session)
                text = message.get("text")
                if text is not None:
                    gateway.receive_text(session, text)
                else:
                    gateway.receive_binary(session)
                if writer.hold:  # over a rate limit: read nothing more for a while
                    hold, writer.hold = writer.hold, 0.0
                    await asyncio.sleep(hold)
        finally:
            gateway.close_session(session)
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if websocket.client_state is WebSocketState.CONNECTED and writer.closing is None:
                with contextlib.suppress(RuntimeError):
                    await websocket.close()

    return endpoint


async def drain(gateway: Gateway) -> None:
    """Drain ``gateway`` (:meth:`Gateway.drain`: producers stop, their last events are
    delivered, every connection is closed with 1001) and wait, up to ``shutdown_timeout``,
    until its ASGI connections have sent those frames and their close. Call it before the
    ASGI server closes its connections."""
    if gateway.started:
        await gateway.drain()
    senders = [t for t in _senders.get(gateway, ()) if not t.done()]
    if senders:
        await asyncio.wait(senders, timeout=gateway.settings.shutdown_timeout)


def websocket_not_found(fallback: ASGIApp) -> ASGIApp:
    """A router's default app: a WebSocket handshake to a path that no route serves gets
    HTTP 404 (Starlette's own default refuses it with 403, which reads as "not allowed");
    other requests go to ``fallback``, the router's usual not-found answer.

    ``app.router.default = websocket_not_found(app.router.default)`` installs it.
    """

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await fallback(scope, receive, send)
            return
        path = scope.get("path", "")
        await _deny(WebSocket(scope, receive, send), 404, f"no WebSocket endpoint at {path}")

    return default


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse a handshake with HTTP ``status`` where the server supports the ASGI
    denial-response extension (429 and 503 with ``Retry-After``); otherwise by closing
    before accepting, which ASGI servers answer with HTTP 403 (no close code reaches the
    client)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        await websocket.send_denial_response(
            PlainTextResponse(f"{message}\n", status_code=status, headers=headers)
        )
    else:  # pragma: no cover - depends on the ASGI server
        await websocket.close()
