"""The seeds' per-run endpoints (seed 004's wscat session, seed 000's per-execution socket)."""

from __future__ import annotations

import json

import httpx
import websockets

from tests.conftest import RunningServer
from tests.integration.wsutil import recv

W = {"workflow_id": "123", "execution_id": "uuid-string"}


async def test_seed_004_wscat_session(server: RunningServer) -> None:
    port = server.port
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/ws/workflow/123") as ws:
        # `> ping` / `< {"type": "pong", "workflow_id": "123"}`
        await ws.send("ping")
        pong = await recv(ws)
        assert pong["type"] == "pong"
        assert pong["workflow_id"] == "123"
        async with httpx.AsyncClient(base_url=server.url) as http:
            events = [
                {
                    "type": "workflow_start",
                    "data": {**W, "execution_order": ["node1", "node2"], "total_nodes": 2},
                },
                {"type": "node_status", "data": {**W, "node_id": "node1", "status": "running"}},
                {
                    "type": "edge_flow",
                    "data": {**W, "source_node_id": "node1", "target_node_id": "node2"},
                },
                {
                    "type": "progress",
                    "data": {
                        **W,
                        "current_step": 1,
                        "total_steps": 2,
                        "progress": 50.0,
                        "current_node_id": "node1",
                    },
                },
                {"type": "log", "data": {**W, "level": "info", "message": "hello"}},
                {"type": "error", "data": {**W, "error": "boom", "node_id": "node2"}},
                {
                    "type": "workflow_complete",
                    "data": {**W, "success": False, "execution_time": 0.5, "errors": ["boom"]},
                },
            ]
            r = await http.post("/api/topics/workflow:123/events", json=events)
            assert r.json()["seqs"] == list(range(1, 8))
        for expected in events:
            raw = await ws.recv()
            msg = json.loads(raw)  # one JSON message per frame
            assert msg["type"] == expected["type"]
            assert msg["data"]["workflow_id"] == "123"
            assert msg["timestamp"].endswith("Z")
            for key, value in expected["data"].items():
                assert msg["data"][key] == value


async def test_seed_000_execution_socket(server: RunningServer) -> None:
    eid = "00000000-0000-0000-0000-000000000003"
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/ws/executions/{eid}") as ws:
        await ws.send("ping")
        assert (await recv(ws))["execution_id"] == eid
        await server.gateway.publish(
            f"execution:{eid}",
            "status_update",
            {"execution_id": eid, "status": "running", "progress": 50.0},
        )
        msg = await recv(ws)
        assert (msg["type"], msg["data"]["progress"]) == ("status_update", 50.0)


async def test_late_join_on_seed_endpoint_gets_snapshot_and_resume_by_since(
    server: RunningServer,
) -> None:
    gw = server.gateway
    await gw.publish(
        "workflow:9",
        "workflow_start",
        {**W, "workflow_id": "9", "execution_order": ["a"], "total_nodes": 1},
    )
    await gw.publish(
        "workflow:9", "node_status", {**W, "workflow_id": "9", "node_id": "a", "status": "running"}
    )
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/ws/workflow/9") as ws:
        snap = await recv(ws)
        assert snap["type"] == "snapshot"
        assert snap["data"]["nodes"]["a"]["status"] == "running"
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/ws/workflow/9?since=1") as ws:
        msg = await recv(ws)
        assert (msg["type"], msg["seq"]) == ("node_status", 2)


async def test_unknown_paths_are_not_websocket_endpoints(native_server: RunningServer) -> None:
    import pytest
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"ws://127.0.0.1:{native_server.port}/api/ws/nothing/1"):
            pass
    assert info.value.response.status_code in (403, 404)
