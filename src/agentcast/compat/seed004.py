"""Seed 004's workflow WebSocket helpers, on agentcast.

``from agentcast.compat.seed004 import ws_manager, WebSocketHandler, WorkflowEngine``:

* ``WebSocketHandler.create_*_message(...)`` build the seed's messages
  ``{"type", "timestamp", "data"}`` for every type (workflow_start, workflow_complete,
  node_status, edge_flow, progress, log, error).
* ``await ws_manager.broadcast_to_workflow(message, workflow_id=...)`` publishes on
  ``workflow:<id>``; ``broadcast_all(message)`` reaches every connected client;
  ``send_personal_message(message, websocket)`` one client;
  ``connect(websocket, workflow_id)`` / ``disconnect(websocket, workflow_id)`` manage a
  socket of your own FastAPI route (agentcast also serves ``/api/ws/workflow/{id}`` itself).
* ``WorkflowEngine(workflow_id=..., enable_websocket=True|False)`` runs a graph with the
  built-in engine and reports through the hub, or silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.websockets import WebSocket

from agentcast.compat._binding import FacadeBinding, split_message
from agentcast.core.commands import encode_reply
from agentcast.gateway import Gateway
from agentcast.runs.engine import NodeFn, Workflow, WorkflowRun

__all__ = ["WebSocketHandler", "WebSocketManager", "WorkflowEngine", "ws_manager"]


def _message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "timestamp": datetime.now(UTC).isoformat(), "data": data}


class WebSocketHandler:
    """Builders of seed 004's messages."""

    @staticmethod
    def create_workflow_start_message(
        workflow_id: str,
        execution_id: str,
        execution_order: Sequence[str],
        total_nodes: int | None = None,
    ) -> dict[str, Any]:
        return _message(
            "workflow_start",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "execution_order": list(execution_order),
                "total_nodes": len(execution_order) if total_nodes is None else total_nodes,
            },
        )

    @staticmethod
    def create_workflow_complete_message(
        workflow_id: str,
        execution_id: str,
        success: bool,
        execution_time: float,
        errors: Sequence[Any] = (),
    ) -> dict[str, Any]:
        return _message(
            "workflow_complete",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "success": success,
                "execution_time": execution_time,
                "errors": list(errors),
            },
        )

    @staticmethod
    def create_node_status_message(
        workflow_id: str,
        execution_id: str,
        node_id: str,
        status: str,
        result: Any = None,
        error: str | None = None,
        progress: float | None = None,
    ) -> dict[str, Any]:
        return _message(
            "node_status",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "node_id": node_id,
                "status": status,
                "result": result,
                "error": error,
                "progress": progress,
            },
        )

    @staticmethod
    def create_edge_flow_message(
        workflow_id: str,
        execution_id: str,
        source_node_id: str,
        target_node_id: str,
        edge_id: str | None = None,
        data: Any = None,
    ) -> dict[str, Any]:
        return _message(
            "edge_flow",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "source_node_id": source_node_id,
                "target_node_id": target_node_id,
                "edge_id": edge_id,
                "data": data,
            },
        )

    @staticmethod
    def create_progress_message(
        workflow_id: str,
        execution_id: str,
        current_step: int,
        total_steps: int,
        progress: float | None = None,
        current_node_id: str | None = None,
    ) -> dict[str, Any]:
        if progress is None:
            progress = round(100.0 * current_step / total_steps, 2) if total_steps else 0.0
        return _message(
            "progress",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "current_step": current_step,
                "total_steps": total_steps,
                "progress": progress,
                "current_node_id": current_node_id,
            },
        )

    @staticmethod
    def create_log_message(
        workflow_id: str, execution_id: str, level: str, message: str
    ) -> dict[str, Any]:
        return _message(
            "log",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "level": level,
                "message": message,
            },
        )

    @staticmethod
    def create_error_message(
        workflow_id: str, execution_id: str, error: str, node_id: str | None = None
    ) -> dict[str, Any]:
        return _message(
            "error",
            {
                "workflow_id": workflow_id,
                "execution_id": execution_id,
                "error": error,
                "node_id": node_id,
            },
        )


class WebSocketManager:
    """Seed 004's ``ws_manager``."""

    def __init__(self) -> None:
        self.binding = FacadeBinding()

    def bind(self, gateway: Gateway) -> None:
        self.binding.bind(gateway)

    async def connect(self, websocket: WebSocket, workflow_id: str) -> None:
        await self.binding.attach(websocket, f"workflow:{workflow_id}")

    def disconnect(self, websocket: WebSocket, workflow_id: str | None = None) -> None:
        self.binding.detach(websocket)

    async def broadcast_to_workflow(self, message: dict[str, Any], workflow_id: str) -> int:
        """Publish the message on ``workflow:<workflow_id>``; returns its seq."""
        kind, data = split_message(message)
        data.setdefault("workflow_id", workflow_id)
        gateway = await self.binding.gateway()
        return (await gateway.publish(f"workflow:{workflow_id}", kind, data)).seq

    async def broadcast_all(self, message: dict[str, Any]) -> int:
        """Send the message to every connected client (not sequenced); returns how many."""
        kind, data = split_message(message)
        gateway = await self.binding.gateway()
        frame = encode_reply(kind, gateway.now_iso(), data)
        sessions = list(gateway.sessions.values())
        for session in sessions:
            gateway.send(session, frame)
        return len(sessions)

    async def send_personal_message(self, message: dict[str, Any], websocket: WebSocket) -> None:
        """Send the message to one client."""
        session = self.binding.session_of(websocket)
        if session is None:  # a socket agentcast does not manage
            await websocket.send_text(orjson.dumps(message).decode())
            return
        kind, data = split_message(message)
        gateway = await self.binding.gateway()
        gateway.send(session, encode_reply(kind, gateway.now_iso(), data))


ws_manager = WebSocketManager()


class _Silent:
    """A publisher that drops everything (``enable_websocket=False``)."""

    async def publish(self, topic: str, type: str, data: dict[str, Any]) -> None:
        return None


class WorkflowEngine:
    """Seed 004's engine: runs a graph, reporting through the hub when enabled."""

    def __init__(
        self,
        workflow_id: str,
        enable_websocket: bool = True,
        manager: WebSocketManager | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.enable_websocket = enable_websocket
        self.manager = manager or ws_manager
        self.run: WorkflowRun | None = None

    async def execute(
        self,
        nodes: Mapping[str, NodeFn] | Workflow,
        edges: Sequence[tuple[str, str]] = (),
        initial_inputs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run the graph (a :class:`Workflow`, or node callables and edges); returns results."""
        workflow = nodes if isinstance(nodes, Workflow) else Workflow(dict(nodes), edges)
        publisher: Any = (
            await self.manager.binding.gateway() if self.enable_websocket else _Silent()
        )
        self.run = WorkflowRun(workflow, publisher, self.workflow_id)
        return await self.run.run(initial_inputs)
