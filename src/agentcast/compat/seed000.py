"""Seed 000's WebSocket manager, on agentcast.

::

    from agentcast.compat.seed000 import websocket_manager

    @app.websocket("/ws/executions/{execution_id}")
    async def execution_socket(websocket: WebSocket, execution_id: str):
        await websocket_manager.connect(websocket, execution_id)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            websocket_manager.disconnect(websocket, execution_id)

    await websocket_manager.broadcast(
        execution_id, {"type": "status_update", "data": {"status": "running", "progress": 50.0}}
    )

Messages are published on ``execution:<execution_id>`` (validated against seed 000's
vocabulary; a missing ``execution_id`` in ``data`` is filled in), so every subscriber of
the execution, on any transport, receives them with sequence numbers and history.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket

from agentcast.compat._binding import FacadeBinding, split_message
from agentcast.gateway import Gateway

__all__ = ["WebSocketManager", "websocket_manager"]


class WebSocketManager:
    """``connect``, ``disconnect`` and ``broadcast`` as in seed 000."""

    def __init__(self) -> None:
        self.binding = FacadeBinding()

    def bind(self, gateway: Gateway) -> None:
        """Use ``gateway`` instead of a default in-memory one."""
        self.binding.bind(gateway)

    async def connect(self, websocket: WebSocket, execution_id: str) -> None:
        """Accept the client and subscribe it to the execution's events."""
        await self.binding.attach(websocket, f"execution:{execution_id}")

    def disconnect(self, websocket: WebSocket, execution_id: str) -> None:
        """Forget the client (call it when the socket closed)."""
        self.binding.detach(websocket)

    async def broadcast(self, execution_id: str, message: dict[str, Any]) -> int:
        """Send ``{"type", "data"}`` to every client of the execution; returns its seq."""
        kind, data = split_message(message)
        data.setdefault("execution_id", execution_id)
        gateway = await self.binding.gateway()
        return (await gateway.publish(f"execution:{execution_id}", kind, data)).seq


websocket_manager = WebSocketManager()
