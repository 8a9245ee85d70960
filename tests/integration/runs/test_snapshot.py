"""Late joiners get the run's state as a snapshot, then live events, no gap, no duplicate."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from agentcast.runs.state import RunState
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, subscribe

W = {"workflow_id": "7", "execution_id": "e1"}
NODES = [f"n{i}" for i in range(40)]


async def run_workflow(
    server: RunningServer, topic: str = "workflow:7", pause: bool = True
) -> None:
    gw = server.gateway
    await gw.publish(
        topic, "workflow_start", {**W, "execution_order": NODES, "total_nodes": len(NODES)}
    )
    for i, node in enumerate(NODES, start=1):
        await gw.publish(topic, "node_status", {**W, "node_id": node, "status": "running"})
        await gw.publish(topic, "log", {**W, "level": "info", "message": f"{node} ran"})
        await gw.publish(
            topic, "node_status", {**W, "node_id": node, "status": "completed", "result": {"i": i}}
        )
        await gw.publish(
            topic,
            "progress",
            {**W, "current_step": i, "total_steps": len(NODES), "progress": 100 * i / len(NODES)},
        )
        if pause:
            await asyncio.sleep(0)
    await gw.publish(
        topic, "workflow_complete", {**W, "success": True, "execution_time": 1.0, "errors": []}
    )


async def follow(server: RunningServer, topic: str, since: int | None = None) -> dict[str, Any]:
    """Join, fold what arrives like a dashboard would, until the run completes."""
    async with websockets.connect(server.ws_url) as ws:
        reply = await subscribe(ws, topic, since=since)
        state = RunState(topic)
        last = reply["data"]["seq"] if since is None else since
        first = (
            await recv(ws, 5 * UNIT) if since is None or not reply["data"]["recovered"] else None
        )
        kinds = []
        snap: dict[str, Any] | None = None
        if first is not None and first["type"] == "snapshot":
            snap = first["data"]
            assert first["seq"] == snap["seq"]
            last = first["seq"]
            kinds.append("snapshot")
            msg = None
        else:
            msg = first
        async with asyncio.timeout(10 * UNIT):
            while state.status not in ("completed", "failed") and not (
                snap and snap["status"] == "completed"
            ):
                if msg is None:
                    msg = await recv(ws, 5 * UNIT)
                assert msg["seq"] == last + 1, (msg["seq"], last)  # no gap, no duplicate
                last = msg["seq"]
                state.apply(msg["seq"], msg["type"], msg["data"], msg["timestamp"])
                kinds.append(msg["type"])
                msg = None
        return {"kinds": kinds, "last": last, "snapshot": snap}


async def test_late_joiner_gets_snapshot_then_live(native_server: RunningServer) -> None:
    gw = native_server.gateway
    await gw.publish(
        "workflow:7", "workflow_start", {**W, "execution_order": NODES, "total_nodes": len(NODES)}
    )
    for node in NODES[:3]:
        await gw.publish(
            "workflow:7",
            "node_status",
            {**W, "node_id": node, "status": "completed", "result": {"ok": node}},
        )
    async with websockets.connect(native_server.ws_url) as ws:
        reply = await subscribe(ws, "workflow:7")
        assert reply["data"]["seq"] == 4
        snap = await recv(ws)
        assert (snap["type"], snap["topic"], snap["seq"]) == ("snapshot", "workflow:7", 4)
        state = snap["data"]
        assert state["status"] == "running"
        assert state["nodes"]["n2"] == {
            "status": "completed",
            "result": {"ok": "n2"},
            "updated_at": state["nodes"]["n2"]["updated_at"],
        }
        assert state["nodes"]["n3"] == {"status": "pending"}
        await gw.publish("workflow:7", "node_status", {**W, "node_id": "n3", "status": "running"})
        live = await recv(ws)
        assert (live["type"], live["seq"]) == ("node_status", 5)


async def test_joins_racing_a_running_producer_never_gap(native_server: RunningServer) -> None:
    producer = asyncio.create_task(run_workflow(native_server))
    results = []
    for _ in range(6):
        results.append(asyncio.create_task(follow(native_server, "workflow:7")))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await producer
    done = await asyncio.gather(*results)
    total = 1 + 4 * len(NODES) + 1
    assert all(r["last"] == total for r in done)
    assert any(r["snapshot"] is not None and 1 < r["snapshot"]["seq"] < total for r in done)


async def test_finished_run_gives_final_state(native_server: RunningServer) -> None:
    await run_workflow(native_server, pause=False)
    async with websockets.connect(native_server.ws_url) as ws:
        await subscribe(ws, "workflow:7")
        snap = await recv(ws)
        assert snap["type"] == "snapshot"
        assert snap["data"]["status"] == "completed"
        assert snap["data"]["progress"] == 100.0
        assert all(n["status"] == "completed" for n in snap["data"]["nodes"].values())


async def test_resume_with_lost_history_gets_snapshot() -> None:
    running, task = await start_server("native", history_max_events=10)
    try:
        await run_workflow(running, pause=False)
        async with websockets.connect(running.ws_url) as ws:
            reply = await subscribe(ws, "workflow:7", since=3)
            assert reply["data"]["recovered"] is False
            snap = await recv(ws)
            assert snap["type"] == "snapshot"
            assert snap["seq"] == 1 + 4 * len(NODES) + 1
            assert snap["data"]["status"] == "completed"
        async with websockets.connect(
            running.ws_url
        ) as ws:  # a resume that is possible: no snapshot
            reply = await subscribe(ws, "workflow:7", since=158)
            assert reply["data"]["recovered"] is True
            nxt = await recv(ws)
            assert nxt["seq"] == 159
    finally:
        await stop_server(running, task)


async def test_non_run_topics_have_no_snapshot(native_server: RunningServer) -> None:
    await native_server.gateway.publish("board:1", "x", {})
    async with websockets.connect(native_server.ws_url) as ws:
        await subscribe(ws, "board:1")
        await ws.send("ping")
        assert (await recv(ws))["type"] == "pong"
