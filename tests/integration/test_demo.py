from __future__ import annotations

import asyncio

import websockets

from agentcast.demo import run_demo
from tests.conftest import UNIT, RunningServer, ServerProcess, free_port
from tests.integration.wsutil import recv, subscribe


async def test_demo_run_publishes_a_whole_workflow_in_order(native_server: RunningServer) -> None:
    gw = native_server.gateway
    async with websockets.connect(native_server.ws_url) as ws:
        await subscribe(ws, "workflow:demo")
        gw.add_background(lambda: run_demo(gw, pace=0.001))
        kinds = []
        async with asyncio.timeout(10 * UNIT):
            while not kinds or kinds[-1] != "workflow_complete":
                msg = await recv(ws)
                kinds.append(msg["type"])
                assert msg["data"]["workflow_id"] == "demo"
        assert kinds[0] == "workflow_start"
        assert kinds.count("node_status") == 8
        assert kinds.count("edge_flow") == 4
        assert kinds.count("progress") == 4


async def test_serve_demo_process_has_live_data() -> None:
    proc = ServerProcess(free_port(), "--demo")
    await asyncio.to_thread(proc.start)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{proc.port}/ws") as ws:
            reply = await subscribe(ws, "workflow:demo", since=0)
            assert reply["data"]["recovered"]
            first = await recv(ws, 5 * UNIT)
            assert first["topic"] == "workflow:demo"
            assert first["seq"] == 1
            assert first["type"] == "workflow_start"
    finally:
        await asyncio.to_thread(proc.stop)
        proc.log.close()


async def test_the_demo_run_can_be_paused_and_resumed(native_server: RunningServer) -> None:
    gw = native_server.gateway
    async with websockets.connect(native_server.ws_url) as ws:
        await subscribe(ws, "workflow:demo")
        gw.add_background(lambda: run_demo(gw, pace=0.2))
        async with asyncio.timeout(10 * UNIT):
            while (await recv(ws))["type"] != "workflow_start":
                pass
        for action, event in (("pause", "run_paused"), ("resume", "run_resumed")):
            await ws.send(
                f'{{"type": "control", "topic": "workflow:demo", "action": "{action}", "id": 1}}'
            )
            async with asyncio.timeout(10 * UNIT):
                while True:
                    msg = await recv(ws)
                    assert msg["type"] != "error", msg
                    if msg["type"] == event:
                        break


async def test_the_demo_lets_a_hand_executed_run_go_first(native_server: RunningServer) -> None:
    """``POST /api/workflows/demo/execute`` between two demo runs: that run goes first,
    the demo loop goes on after it (it used to die of the conflict)."""
    import httpx

    from agentcast.runs.engine import NodeContext, Workflow
    from agentcast.runs.registry import Runs

    gw = native_server.gateway
    gate = asyncio.Event()

    async def waits(ctx: NodeContext) -> None:
        await gate.wait()

    gw.feature(Runs).workflows.register("demo", Workflow({"hand": waits}, []))
    async with websockets.connect(native_server.ws_url) as ws:
        await subscribe(ws, "workflow:demo")
        async with httpx.AsyncClient(base_url=native_server.url) as http:
            r = await http.post("/api/workflows/demo/execute", json={})
            assert r.status_code == 202
        demo = gw.add_background(lambda: run_demo(gw, pace=0.001))
        assert demo is not None
        starts = []
        async with asyncio.timeout(10 * UNIT):
            while len(starts) < 2:
                msg = await recv(ws)
                if msg["type"] == "workflow_start":
                    starts.append(msg["data"]["execution_order"])
                    gate.set()  # the hand run may end: the demo's turn comes
        assert starts == [["hand"], ["fetch", "analyze", "summarize", "report"]]
        assert not demo.done()
