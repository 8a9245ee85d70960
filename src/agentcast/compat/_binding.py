"""Shared plumbing of the facades: the gateway they use, and managed Starlette sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.websockets import WebSocket

from agentcast.core.session import Session
from agentcast.gateway import Gateway
from agentcast.policy import Principal
from agentcast.transports.asgi import AsgiWriter


class FacadeBinding:
    """A gateway (bound or default) and the WebSockets a facade manages."""

    def __init__(self) -> None:
        self._gateway: Gateway | None = None
        self.sockets: dict[int, tuple[WebSocket, Session, asyncio.Task[None]]] = {}

    def bind(self, gateway: Gateway) -> None:
        """Use ``gateway`` (start and stop it in your app's lifespan)."""
        self._gateway = gateway

    async def gateway(self) -> Gateway:
        """The bound gateway, or a default one created and started on first use."""
        if self._gateway is None:
            from agentcast.app import create_gateway

            self._gateway = create_gateway()
        if not self._gateway.started:
            await self._gateway.start()
        return self._gateway

    async def attach(self, websocket: WebSocket, topic: str) -> Session:
        """Accept ``websocket`` and subscribe it to ``topic`` (no ``subscribed`` reply)."""
        gateway = await self.gateway()
        await websocket.accept()
        existing = self.sockets.get(id(websocket))
        if existing is not None:
            session = existing[1]
        else:
            writer = AsgiWriter(websocket, gateway)
            # the app's own route authenticated the socket (as in the seeds)
            session = writer.session = gateway.open_session(Principal.new_anonymous(), writer)
            task = asyncio.get_running_loop().create_task(writer.run())
            self.sockets[id(websocket)] = (websocket, session, task)
        await gateway.subscribe(session, topic, None, reply=False)
        return session

    def detach(self, websocket: WebSocket) -> None:
        """Forget ``websocket`` (after the client disconnected)."""
        entry = self.sockets.pop(id(websocket), None)
        if entry is None or self._gateway is None:
            return
        _, session, task = entry
        self._gateway.close_session(session)
        task.cancel()

    def session_of(self, websocket: WebSocket) -> Session | None:
        entry = self.sockets.get(id(websocket))
        return entry[1] if entry is not None else None

    async def close_all(self) -> None:
        for websocket, _, _ in list(self.sockets.values()):
            self.detach(websocket)
            with contextlib.suppress(Exception):
                await websocket.close()


def split_message(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A seed message ``{"type", "data", "timestamp"?}`` as (type, data)."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ValueError("a message needs a string 'type'")
    data = message.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError("a message's 'data' must be an object")
    return kind, dict(data)
