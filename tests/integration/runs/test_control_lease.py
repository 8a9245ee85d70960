"""Control (pause/resume/cancel) and publisher liveness (leases)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import websockets

from agentcast.app import create_gateway
from agentcast.runs.engine import NodeContext, Workflow
from agentcast.runs.registry import Runs
from agentcast.runs.tracker import WorkflowTracker
from agentcast.settings import Settings
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, recv_until, send, subscribe


async def test_control_an_engine_run_over_ws_and_http(server: RunningServer) -> None:
    gate = asyncio.Event()

    async def waits(ctx: NodeContext) -> str:
        await gate.wait()
        return ctx.node_id

    server.gateway.feature(Runs).workflows.register(
        "ctl", Workflow({"a": waits, "b": waits}, [("a", "b")])
    )
    async with (
        websockets.connect(server.ws_url) as ws,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        await subscribe(ws, "workflow:ctl")
        await http.post("/api/workflows/ctl/execute", json={})
        await recv_until(ws, "node_status", 5 * UNIT)  # a is running
        await send(ws, {"type": "control", "topic": "workflow:ctl", "action": "pause", "id": "p"})
        paused = await recv_until(ws, "run_paused", 5 * UNIT)
        ack = await recv_until(ws, "ack", 5 * UNIT)
        assert (ack["id"], ack["data"]) == ("p", {"topic": "workflow:ctl", "seq": paused["seq"]})
        r = await http.post("/api/runs/workflow:ctl/control", json={"action": "resume"})
        assert r.status_code == 200
        assert r.json()["action"] == "resume"
        await recv_until(ws, "run_resumed", 5 * UNIT)
        r = await http.post("/api/runs/workflow:ctl/control", json={"action": "cancel"})
        assert r.status_code == 200
        complete = await recv_until(ws, "workflow_complete", 5 * UNIT)
        assert complete["data"]["success"] is False
        snap = server.gateway.feature(Runs).snapshot("workflow:ctl")
        assert snap is not None
        assert snap[1]["status"] in ("cancelled", "failed")
        # the run is over: control is refused
        r = await http.post("/api/runs/workflow:ctl/control", json={"action": "pause"})
        assert r.status_code in (400, 409)


async def test_control_errors(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await send(ws, {"type": "control", "topic": "workflow:nobody", "action": "pause"})
        assert (await recv(ws))["data"]["code"] == "unavailable"
        await send(ws, {"type": "control", "topic": "board:1", "action": "pause"})
        assert (await recv(ws))["data"]["code"] == "invalid_topic"
        await send(ws, {"type": "control", "topic": "workflow:1", "action": "explode"})
        assert (await recv(ws))["data"]["field"] == "action"
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/api/runs/workflow:nobody/control", json={"action": "cancel"})
        assert r.status_code == 409
        assert r.json()["detail"]["code"] == "unavailable"


async def test_a_silent_producer_is_sealed_with_publisher_lost() -> None:
    running, task = await start_server("native", run_lease_ttl=0.2)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await subscribe(ws, "execution:gone")
            await running.gateway.publish(
                "execution:gone", "status_update", {"execution_id": "gone", "status": "running"}
            )
            assert (await recv(ws))["type"] == "status_update"
            lost = await recv(ws, 10 * UNIT)  # the producer went silent
            assert lost["type"] == "publisher_lost"
            assert lost["data"]["lease_ttl"] == 0.2
        snap = running.gateway.feature(Runs).snapshot("execution:gone")
        assert snap is not None
        assert snap[1]["status"] == "lost"
    finally:
        await stop_server(running, task)


async def test_explicit_leases_over_ws_and_http(server: RunningServer) -> None:
    gw = server.gateway
    await gw.publish(
        "workflow:l",
        "log",
        {"workflow_id": "l", "execution_id": "e", "level": "info", "message": "x"},
    )
    async with websockets.connect(server.ws_url) as ws:
        await send(ws, {"type": "lease", "topic": "workflow:l", "ttl": 120, "id": 1})
        renewed = await recv(ws)
        assert (renewed["type"], renewed["data"]) == (
            "lease_renewed",
            {"topic": "workflow:l", "ttl": 120.0},
        )
    now = time.monotonic()
    assert await gw.feature(Runs).expire(now + 100) == []  # still alive at +100 s
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.put("/api/runs/workflow:l/lease", json={"ttl": 5})
        assert r.json()["ttl"] == 5.0
        r = await http.put("/api/runs/board:1/lease", json={"ttl": 5})
        assert r.status_code == 400
    assert await gw.feature(Runs).expire(now + 10) == ["workflow:l"]
    snap = gw.feature(Runs).snapshot("workflow:l")
    assert snap is not None
    assert snap[1]["status"] == "lost"


async def test_tracker_keeps_its_lease_through_a_quiet_node() -> None:
    gw = create_gateway(Settings(run_lease_ttl=0.15))
    await gw.start()
    renewals = 0
    renewed = asyncio.Event()
    runs = gw.feature(Runs)
    original = runs.renew

    def counting(topic: str, ttl: float | None = None) -> float:
        nonlocal renewals
        renewals += 1
        if renewals >= 6:
            renewed.set()
        return original(topic, ttl)

    runs.renew = counting  # type: ignore[method-assign]
    try:
        async with WorkflowTracker(gw, "quiet", ["slow"]) as run:
            await run.node_started("slow")
            await asyncio.wait_for(renewed.wait(), 10 * UNIT)  # ~0.25 s of silence
            await run.node_completed("slow")
        page: Any = gw.broker.history_now("workflow:quiet", 0)  # type: ignore[attr-defined]
        kinds = [p.type for p in page.publications]
        assert "publisher_lost" not in kinds
        assert kinds[-1] == "workflow_complete"
    finally:
        await gw.stop()
