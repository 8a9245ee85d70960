"""Timed replay of a run's recorded events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import websockets

from agentcast.gateway import Gateway
from tests.conftest import UNIT, RunningServer, ServerProcess, free_port
from tests.integration.wsutil import RawClient, recv, send

W = {"workflow_id": "r", "execution_id": "e", "level": "info"}


async def record(server: RunningServer, n: int) -> None:
    for i in range(n):
        await server.gateway.publish("workflow:r", "log", {**W, "message": f"line {i}"})


async def test_replay_at_once_and_paced(server: RunningServer) -> None:
    await record(server, 5)
    async with websockets.connect(server.ws_url) as ws:
        await send(ws, {"type": "replay", "topic": "workflow:r", "speed": 0, "id": "r1"})
        started = await recv(ws)
        assert (started["type"], started["id"], started["data"]["events"]) == (
            "replay_started",
            "r1",
            5,
        )
        got = [await recv(ws) for _ in range(5)]
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5]
        assert [m["data"]["message"] for m in got] == [f"line {i}" for i in range(5)]
        assert (await recv(ws))["type"] == "replay_complete"
        # paced, from seq 3, while the connection keeps answering other commands
        await send(ws, {"type": "replay", "topic": "workflow:r", "speed": 1000, "since": 3})
        assert (await recv(ws))["data"]["events"] == 2
        await send(ws, "ping")
        kinds = [(await recv(ws))["type"] for _ in range(4)]
        assert sorted(kinds) == ["log", "log", "pong", "replay_complete"]
        replay_only = [k for k in kinds if k != "pong"]
        assert replay_only == ["log", "log", "replay_complete"]


async def two_events_an_hour_apart(gw: Gateway) -> None:
    """``log`` "a" now and "b" one hour later on ``workflow:r`` (publish times given to the
    broker, as a recorded run's would be)."""
    now = time.time()
    for message, at in (("a", now), ("b", now + 3600)):
        data = gw.check_event("workflow:r", "log", {**W, "message": message})
        await gw.broker.publish("workflow:r", "log", data, at)


async def test_replay_stop_and_errors(server: RunningServer) -> None:
    gw = server.gateway
    # the second event one hour after the first: a speed-1 replay would wait
    await two_events_an_hour_apart(gw)
    async with websockets.connect(server.ws_url) as ws:
        await send(ws, {"type": "replay", "topic": "workflow:r", "speed": 1, "max_gap": 3600})
        assert (await recv(ws))["type"] == "replay_started"
        assert (await recv(ws))["data"]["message"] == "a"
        await send(ws, {"type": "replay", "topic": "workflow:r"})
        assert (await recv(ws))["data"]["field"] == "topic"  # one at a time per topic
        await send(ws, {"type": "replay_stop", "topic": "workflow:r", "id": "s"})
        assert (await recv(ws))["type"] == "replay_stopped"
        await send(ws, {"type": "replay_stop", "topic": "workflow:r"})
        assert (await recv(ws))["data"]["code"] == "not_subscribed"
        await send(ws, "ping")
        assert (await recv(ws))["type"] == "pong"  # "b" never came


async def test_cli_replay(tmp_path: object) -> None:
    proc = ServerProcess(free_port())
    await asyncio.to_thread(proc.start)
    try:
        for i in range(3):
            out = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "agentcast.cli",
                    "publish",
                    "workflow:cli",
                    "log",
                    json.dumps({**W, "workflow_id": "cli", "message": f"m{i}"}),
                    "--url",
                    proc.url,
                ],
                capture_output=True,
                text=True,
                timeout=30 * UNIT,
            )
            assert out.stdout.strip() == str(i + 1), out.stderr
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "agentcast.cli",
                "replay",
                "workflow:cli",
                "--speed",
                "0",
                "--json",
                "--url",
                proc.url,
            ],
            capture_output=True,
            text=True,
            timeout=30 * UNIT,
        )
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [m["data"]["message"] for m in lines] == ["m0", "m1", "m2"]
        bad = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agentcast.cli", "replay", "bad topic", "--url", proc.url],
            capture_output=True,
            text=True,
            timeout=30 * UNIT,
        )
        assert bad.returncode == 1
        assert "invalid_topic" in bad.stderr
        for args, expected in [
            (["workflow:never"], "nothing to replay: workflow:never has no recorded events"),
            (["workflow:cli", "--since", "3"], "workflow:cli has no recorded events after seq 3"),
        ]:
            empty = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "agentcast.cli", "replay", *args, "--url", proc.url],
                capture_output=True,
                text=True,
                timeout=30 * UNIT,
            )
            assert empty.returncode == 1, empty.stderr
            assert expected in empty.stderr
            assert empty.stdout == ""
    finally:
        await asyncio.to_thread(proc.stop)
        proc.log.close()


async def test_replay_as_a_subscribe_option(server: RunningServer) -> None:
    await record(server, 3)
    async with websockets.connect(server.ws_url) as ws:
        await send(
            ws, {"type": "subscribe", "topic": "workflow:r", "since": 1, "replay": 0, "id": "s"}
        )
        started = await recv(ws)
        assert (started["type"], started["id"], started["data"]["events"]) == (
            "replay_started",
            "s",
            2,
        )
        assert [(await recv(ws))["seq"] for _ in range(2)] == [2, 3]
        assert (await recv(ws))["type"] == "replay_complete"


async def test_replay_restarted_right_after_stop_is_tracked(server: RunningServer) -> None:
    """``replay_stop`` then ``replay`` of the same topic, back to back: the stopped
    replay's end must not make the gateway forget the new one (it stays stoppable and
    unique per topic)."""
    gw = server.gateway
    await two_events_an_hour_apart(gw)  # a speed-1 replay waits an hour before "b"
    slow = {"type": "replay", "topic": "workflow:r", "speed": 1, "max_gap": 3600}

    async def read(client: RawClient) -> dict[str, Any]:
        opcode, payload = await client.read_frame()
        assert opcode == 0x1
        result: dict[str, Any] = json.loads(payload)
        return result

    client = await RawClient.connect(server.port)
    try:
        client.send_text(json.dumps(slow))
        assert (await read(client))["type"] == "replay_started"
        assert (await read(client))["data"]["message"] == "a"
        # one write: the new replay starts before the stopped one's task has ended
        stop = {"type": "replay_stop", "topic": "workflow:r"}
        client.send_texts(json.dumps({**stop, "id": "s1"}), json.dumps({**slow, "id": "r2"}))
        assert (await read(client))["type"] == "replay_stopped"
        assert (await read(client))["id"] == "r2"
        assert (await read(client))["data"]["message"] == "a"
        client.send_text(json.dumps({**slow, "id": "r3"}))  # still one replay per topic
        refused = await read(client)
        assert (refused["type"], refused["id"], refused["data"]["field"]) == (
            "error",
            "r3",
            "topic",
        )
        client.send_text(json.dumps({**stop, "id": "s2"}))
        assert (await read(client))["type"] == "replay_stopped"
    finally:
        client.close()
