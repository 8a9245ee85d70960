"""Seed 001's monitoring and task commands on /ws."""

from __future__ import annotations

import asyncio

import websockets

from agentcast.monitoring import Monitoring
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, send


async def test_monitoring_metrics_at_once_then_periodically() -> None:
    running, task = await start_server("native", monitoring_interval=0.2)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await send(ws, {"type": "monitoring:subscribe", "id": "m"})
            first = await recv(ws)
            assert first["type"] == "monitoring:metrics"
            assert first["id"] == "m"
            data = first["data"]
            for key in (
                "cpu",
                "memory",
                "process",
                "connections",
                "subscriptions",
                "events_per_second",
            ):
                assert key in data
            assert data["connections"] == 1
            assert data["subscriptions"] == 1
            assert data["process"]["rss"] > 0
            periodic = await recv(ws, 5 * UNIT)
            assert (periodic["type"], periodic["topic"], periodic["seq"]) == (
                "monitoring:metrics",
                "monitoring",
                1,
            )
            await send(ws, {"type": "monitoring:unsubscribe"})
            reply = await recv(ws, 5 * UNIT)
            while reply["type"] == "monitoring:metrics":  # one may have been on its way
                reply = await recv(ws, 5 * UNIT)
            assert reply["type"] == "monitoring:unsubscribed"
            await send(ws, "ping")
            assert (await recv(ws))["type"] == "pong"
        # nobody subscribed: nothing is computed or published. A window of several ticks of
        # the 0.2 s loop (scaled with UNIT on slow machines), then the loop is shown alive
        # (a new subscriber gets the next periodic event) and to have published nothing
        # meanwhile (that event's seq follows the last one).
        seq_before = running.gateway.broker.topics().get("monitoring", 0)
        await asyncio.sleep(0.4 * UNIT)  # a negative check needs a window of time
        assert running.gateway.broker.topics().get("monitoring", 0) == seq_before
        async with websockets.connect(running.ws_url) as ws:
            await send(ws, {"type": "monitoring:subscribe", "id": "again"})
            assert (await recv(ws))["id"] == "again"
            periodic = await recv(ws, 5 * UNIT)
            assert (periodic["topic"], periodic["seq"]) == ("monitoring", seq_before + 1)
    finally:
        await stop_server(running, task)


async def test_task_updates(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await send(ws, {"type": "task:subscribe", "data": {"taskId": 42}})
        assert (await recv(ws))["data"] == {"taskId": "42"}
        seq = await server.gateway.feature(Monitoring).broadcast_task_update(
            42, {"status": "running", "subtask": 3}
        )
        assert seq == 1
        update = await recv(ws)
        assert (update["type"], update["topic"], update["data"]["subtask"]) == (
            "task:update",
            "task:42",
            3,
        )
        await send(ws, {"type": "task:subscribe", "data": {}})
        err = await recv(ws)
        assert (err["type"], err["data"]["field"]) == ("error", "data.taskId")
        await send(ws, {"type": "task:unsubscribe", "data": {"task_id": "42"}})
        assert (await recv(ws))["type"] == "task:unsubscribed"
        await send(ws, {"type": "task:unsubscribe", "data": {"id": "42"}})
        assert (await recv(ws))["data"]["code"] == "not_subscribed"
