"""Seed 004's test instructions: connect, then `curl -X POST .../execute`, watch it live."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from agentcast.runs.engine import NodeContext, Workflow
from agentcast.runs.registry import Runs
from tests.conftest import UNIT, RunningServer


async def test_execute_streams_every_message_type_in_order(server: RunningServer) -> None:
    async def fetch(ctx: NodeContext) -> dict[str, int]:
        await ctx.log("fetching")
        return {"rows": int(ctx.initial_inputs.get("rows", 0))}

    async def broken(ctx: NodeContext) -> None:
        raise ValueError("no data")

    server.gateway.feature(Runs).workflows.register(
        "123", Workflow({"fetch": fetch, "transform": broken}, [("fetch", "transform")])
    )
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/ws/workflow/123") as ws:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/workflows/123/execute", json={"initial_inputs": {"rows": 3}})
            assert r.status_code == 202
            execution_id = r.json()["execution_id"]
        seen = []
        async with asyncio.timeout(10 * UNIT):
            while not seen or seen[-1]["type"] != "workflow_complete":
                seen.append(json.loads(await ws.recv()))
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "workflow_start"
    assert {"node_status", "edge_flow", "progress", "log", "error", "workflow_complete"} <= set(
        kinds
    )
    assert all(m["data"]["execution_id"] == execution_id for m in seen)
    assert [m["seq"] for m in seen] == list(range(seen[0]["seq"], seen[0]["seq"] + len(seen)))
    assert seen[-1]["data"]["success"] is False
    completed = next(
        m for m in seen if m["type"] == "node_status" and m["data"]["status"] == "completed"
    )
    assert completed["data"]["result"] == {"rows": 3}


async def test_execute_unknown_workflow_runs_the_sample(server: RunningServer) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/ws/workflow/xyz") as ws:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/workflows/xyz/execute", json={"initial_inputs": {}})
            assert r.json()["topic"] == "workflow:xyz"
            r = await http.post("/api/workflows/bad id/execute", json={})
            assert r.status_code == 400
        first = json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
        assert first["type"] == "workflow_start"
        assert first["data"]["execution_order"] == ["fetch", "analyze", "summarize", "report"]


async def test_one_run_per_workflow_at_a_time(server: RunningServer) -> None:
    gate = asyncio.Event()

    async def waits(ctx: NodeContext) -> None:
        await gate.wait()

    server.gateway.feature(Runs).workflows.register("busy", Workflow({"a": waits}, []))
    url = f"ws://127.0.0.1:{server.port}/api/ws/workflow/busy"
    async with websockets.connect(url) as ws, httpx.AsyncClient(base_url=server.url) as http:
        first = await http.post("/api/workflows/busy/execute", json={})
        assert first.status_code == 202
        second = await http.post("/api/workflows/busy/execute", json={})
        assert second.status_code == 409
        assert second.json()["detail"]["code"] == "conflict"
        # another workflow is not held up
        other = await http.post("/api/workflows/elsewhere/execute", json={})
        assert other.status_code == 202
        gate.set()
        seen = []
        async with asyncio.timeout(10 * UNIT):
            while not seen or seen[-1]["type"] != "workflow_complete":
                seen.append(json.loads(await ws.recv()))
        # only the first run's events are on the topic
        ids = {m["data"]["execution_id"] for m in seen}
        assert ids == {first.json()["execution_id"]}
        # once it ended, the workflow runs again
        async with asyncio.timeout(10 * UNIT):
            while True:
                again = await http.post("/api/workflows/busy/execute", json={})
                if again.status_code == 202:
                    break
                assert again.status_code == 409  # the run is releasing its topic
                await asyncio.sleep(0.01)
