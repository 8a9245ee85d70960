"""Gateway start, drain and stop against real servers: what happens at the edges."""

from __future__ import annotations

import asyncio
import time

import httpx
import uvicorn
import websockets

from agentcast.app import create_gateway
from agentcast.runs.engine import NodeContext, Workflow
from agentcast.runs.registry import Runs
from agentcast.runs.tracker import WorkflowTracker
from agentcast.settings import Settings
from agentcast.transports.http import create_app
from tests.conftest import UNIT, free_port, start_server, stop_server
from tests.integration.wsutil import send


async def test_stop_called_twice_at_once_stops_once() -> None:
    """Two concurrent ``stop()`` calls (a signal handler and the lifespan, say) run the
    shutdown hooks and stop the broker once."""
    gateway = create_gateway(Settings(store_url=""))
    hooks = 0
    broker_stops = 0

    async def hook() -> None:
        nonlocal hooks
        hooks += 1
        await asyncio.sleep(0)

    broker_stop = gateway.broker.stop

    async def counting_stop() -> None:
        nonlocal broker_stops
        broker_stops += 1
        await broker_stop()

    gateway.add_shutdown(hook)
    gateway.broker.stop = counting_stop  # type: ignore[method-assign]
    await gateway.start()
    await asyncio.wait_for(asyncio.gather(gateway.stop(), gateway.stop()), 5 * UNIT)
    assert (hooks, broker_stops, gateway.started) == (1, 1, False)


async def test_run_started_while_draining_is_cancelled_and_stop_returns() -> None:
    """A workflow executed over HTTP while the gateway drains (a command in flight holds
    the drain) is a producer like the others: it is cancelled, its claim released, and
    ``stop`` returns within its timeouts instead of waiting for the run to end."""
    timeout = UNIT / 2
    running, task = await start_server("native", shutdown_timeout=timeout)
    gw = running.gateway
    runs = gw.feature(Runs)
    entered, release, node_started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class SlowAuthorizer:
        async def can_subscribe(self, principal: object, topic: str) -> bool:
            entered.set()
            await release.wait()
            return True

        def can_publish(self, principal: object, topic: str) -> bool:
            return True

    async def forever(ctx: NodeContext) -> None:
        node_started.set()
        await asyncio.Event().wait()

    runs.workflows.register("long", Workflow({"a": forever}, []))
    try:
        async with websockets.connect(running.ws_url) as ws:
            gw.authorizer = SlowAuthorizer()
            await send(ws, {"type": "subscribe", "topic": "t", "id": "s"})
            await asyncio.wait_for(entered.wait(), UNIT)
            stopping = asyncio.create_task(gw.stop())
            async with httpx.AsyncClient(base_url=running.url) as http:
                r = await http.post("/api/workflows/long/execute", json={})
            if r.status_code == 202:  # accepted during the drain: it must not outlive it
                await asyncio.wait_for(node_started.wait(), UNIT)
            release.set()
            began = time.monotonic()
            await asyncio.wait_for(asyncio.shield(stopping), 6 * timeout + UNIT)
            assert time.monotonic() - began < 6 * timeout + UNIT
            assert "workflow:long" not in runs.producers
    finally:
        release.set()
        await stop_server(running, task)


async def test_execute_on_a_gateway_that_is_not_running_is_refused() -> None:
    """The app served without its lifespan (mounted in another app, ``lifespan="off"``):
    ``execute`` cannot start a run, so it answers 503 and keeps no claim (not 202 for a
    run that never starts and a workflow that answers 409 for ever after)."""
    gateway = create_gateway(Settings(store_url=""))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(gateway), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(5 * UNIT):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes no event
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            first = await http.post("/api/workflows/w/execute", json={})
            again = await http.post("/api/workflows/w/execute", json={})
        assert (first.status_code, again.status_code) == (503, 503)
        assert first.json()["detail"]["code"] == "unavailable"
        assert gateway.feature(Runs).producers == {}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10 * UNIT)


async def test_execute_is_refused_while_a_tracker_run_of_the_workflow_is_live() -> None:
    """README: while a run of ``workflow:<id>`` is live, a second ``execute`` answers 409
    (two runs never interleave on one topic) - also when the live run is a tracker's."""
    running, task = await start_server("native")
    try:
        async with WorkflowTracker(running.gateway, "tr", nodes=["a"]) as run:
            await run.node_started("a")
            async with httpx.AsyncClient(base_url=running.url) as http:
                r = await http.post("/api/workflows/tr/execute", json={})
            assert r.status_code == 409
    finally:
        await stop_server(running, task)


async def test_a_running_replay_does_not_hold_up_shutdown() -> None:
    """A replay has nothing to finish: draining cancels it at once instead of waiting for
    ``shutdown_timeout`` (60 s here)."""
    running, task = await start_server("native", shutdown_timeout=60.0)
    gw = running.gateway
    for i in range(3):
        await gw.publish("slow", "tick", {"i": i})
        await asyncio.sleep(0.01)  # recorded 10 ms apart: the data of the test, not a wait
    async with websockets.connect(running.ws_url) as ws:
        # at 1e-5x speed a 10 ms gap is 1,000 s (max_gap 3600): the replay would go on
        await send(ws, {"type": "replay", "topic": "slow", "speed": 0.00001, "max_gap": 3600})
        assert '"replay_started"' in await asyncio.wait_for(ws.recv(), 5 * UNIT)
        started = time.monotonic()
        await asyncio.wait_for(stop_server(running, task), 20 * UNIT)
        assert time.monotonic() - started < 10 * UNIT
