"""The seeds' own APIs as drop-in facades inside a FastAPI app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from agentcast.compat.seed000 import WebSocketManager as Seed000Manager
from agentcast.compat.seed004 import WebSocketHandler, WorkflowEngine
from agentcast.compat.seed004 import WebSocketManager as Seed004Manager
from agentcast.gateway import Gateway
from agentcast.runs.engine import NodeContext
from agentcast.transports.http import create_app
from tests.conftest import UNIT, eventually, start_server, stop_server
from tests.integration.wsutil import recv

E = "00000000-0000-0000-0000-000000000003"


async def test_seed_000_websocket_manager_in_a_fastapi_app() -> None:
    websocket_manager = Seed000Manager()

    def factory(gateway: Gateway) -> FastAPI:
        app = create_app(gateway)
        websocket_manager.bind(gateway)

        # seed 000's route, as its users wrote it
        @app.websocket("/ws/executions/{execution_id}")
        async def execution_socket(websocket: WebSocket, execution_id: str) -> None:
            await websocket_manager.connect(websocket, execution_id)
            try:
                while True:
                    await websocket.receive_text()
            except WebSocketDisconnect:
                websocket_manager.disconnect(websocket, execution_id)

        return app

    running, task = await start_server("native", app_factory=factory)
    try:
        async with (
            websockets.connect(f"ws://127.0.0.1:{running.port}/ws/executions/{E}") as ws,
            websockets.connect(running.ws_url) as dashboard,
        ):
            await dashboard.send(json.dumps({"type": "subscribe", "topic": f"execution:{E}"}))
            assert (await recv(dashboard))["type"] == "subscribed"
            await eventually(lambda: running.gateway.hub.presence(f"execution:{E}") == 2)
            seq = await websocket_manager.broadcast(
                E, {"type": "status_update", "data": {"status": "running", "progress": 50.0}}
            )
            assert seq == 1
            for client in (ws, dashboard):
                msg = await recv(client)
                assert (msg["type"], msg["seq"], msg["data"]["progress"]) == (
                    "status_update",
                    1,
                    50.0,
                )
                assert msg["data"]["execution_id"] == E
                assert msg["timestamp"].endswith("Z")
        await eventually(lambda: not websocket_manager.binding.sockets)  # the route disconnected
    finally:
        await stop_server(running, task)


def test_seed_004_message_builders_match_the_seed() -> None:
    h = WebSocketHandler
    msgs: dict[str, dict[str, Any]] = {
        "workflow_start": h.create_workflow_start_message(
            "123", "uuid", ["node1", "node2", "node3"]
        ),
        "workflow_complete": h.create_workflow_complete_message("123", "uuid", True, 5.23, []),
        "node_status": h.create_node_status_message(
            workflow_id="123", execution_id="uuid", node_id="node1", status="running"
        ),
        "edge_flow": h.create_edge_flow_message("123", "uuid", "node1", "node2"),
        "progress": h.create_progress_message("123", "uuid", 2, 5, current_node_id="node2"),
        "log": h.create_log_message("123", "uuid", "info", "로그 메시지"),
        "error": h.create_error_message("123", "uuid", "에러 메시지", node_id="node1"),
    }
    for kind, msg in msgs.items():
        assert msg["type"] == kind
        assert set(msg) == {"type", "timestamp", "data"}
        assert msg["data"]["workflow_id"] == "123"
    assert msgs["workflow_start"]["data"]["total_nodes"] == 3
    assert msgs["progress"]["data"]["progress"] == 40.0
    assert msgs["node_status"]["data"] == {
        "workflow_id": "123",
        "execution_id": "uuid",
        "node_id": "node1",
        "status": "running",
        "result": None,
        "error": None,
        "progress": None,
    }


async def test_seed_004_ws_manager_and_engine() -> None:
    ws_manager = Seed004Manager()
    personal: dict[str, WebSocket] = {}

    def factory(gateway: Gateway) -> FastAPI:
        app = create_app(gateway)
        ws_manager.bind(gateway)

        @app.websocket("/my/workflow/{workflow_id}")
        async def socket(websocket: WebSocket, workflow_id: str) -> None:
            await ws_manager.connect(websocket, workflow_id)
            personal[workflow_id] = websocket
            try:
                while True:
                    await websocket.receive_text()
            except WebSocketDisconnect:
                ws_manager.disconnect(websocket, workflow_id)

        return app

    running, task = await start_server("native", app_factory=factory)
    try:
        async with (
            websockets.connect(f"ws://127.0.0.1:{running.port}/my/workflow/123") as mine,
            websockets.connect(f"ws://127.0.0.1:{running.port}/api/ws/workflow/123") as builtin,
        ):
            await eventually(
                lambda: running.gateway.hub.presence("workflow:123") == 2 and "123" in personal
            )
            message = WebSocketHandler.create_node_status_message(
                workflow_id="123", execution_id="uuid", node_id="node1", status="running"
            )
            await ws_manager.broadcast_to_workflow(message, workflow_id="123")
            for client in (mine, builtin):
                got = await recv(client)
                assert (got["type"], got["data"]["node_id"], got["seq"]) == (
                    "node_status",
                    "node1",
                    1,
                )
            assert await ws_manager.broadcast_all({"type": "notice", "data": {"msg": "hi"}}) == 2
            for client in (mine, builtin):
                assert (await recv(client))["data"] == {"msg": "hi"}
            await ws_manager.send_personal_message({"type": "hello", "data": {}}, personal["123"])
            assert (await recv(mine))["type"] == "hello"

            async def double(ctx: NodeContext) -> int:
                return int(ctx.initial_inputs["x"]) * 2

            engine = WorkflowEngine(workflow_id="123", enable_websocket=True, manager=ws_manager)
            results = await engine.execute({"double": double}, initial_inputs={"x": 21})
            assert results == {"double": 42}
            kinds = []
            async with asyncio.timeout(5 * UNIT):
                while not kinds or kinds[-1] != "workflow_complete":
                    kinds.append((await recv(builtin))["type"])
            assert kinds[0] == "workflow_start"
            silent = WorkflowEngine(workflow_id="123", enable_websocket=False, manager=ws_manager)
            assert await silent.execute({"double": double}, initial_inputs={"x": 1}) == {
                "double": 2
            }
            await builtin.send("ping")
            assert (await recv(builtin))["type"] == "pong"  # nothing from the silent run came first
    finally:
        await stop_server(running, task)
