"""Redis restarted under two running nodes: a private ``redis-server`` (not the shared
one) is stopped and started again on the same port while a WebSocket client on node B
follows a topic that node A publishes.

* With persistence (AOF, ``appendfsync always``) the numbering survives: B reconnects by
  itself and the client gets every seq once, in order, without a close.
* Without persistence the numbering is lost: the next publication starts a new epoch,
  the client is closed with 4003 (resync) and its resume says ``recovered: false``.
Publishing while Redis is down answers HTTP 503 (never a silent drop).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import websockets

from agentcast.brokers.redis import RedisBroker
from agentcast.codes import CloseCode
from tests.conftest import UNIT, free_port, start_server, stop_server
from tests.services import require_service


class PrivateRedis:
    """``redis-server`` on a free port in ``dir``, stopped and started at will."""

    def __init__(self, dir: Path, persistent: bool) -> None:
        self.dir = dir
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            for _ in range(200):
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if self.proc.poll() is not None:
                        raise RuntimeError("redis-server exited") from None
                    time.sleep(0.05)  # bounded above: 200 attempts
            raise TimeoutError("redis-server did not answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10 * UNIT)
        self.proc = None


@pytest.fixture(params=["persistent", "volatile"])
def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        require_service("redis-server is not installed (a private server for restart tests)")
    server = PrivateRedis(tmp_path, request.param == "persistent")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def two_nodes(private_redis: PrivateRedis) -> AsyncIterator[tuple[object, object]]:
    a, a_task = await start_server(broker=RedisBroker(private_redis.url, name="restart-a"))
    b, b_task = await start_server(broker=RedisBroker(private_redis.url, name="restart-b"))
    try:
        yield a, b
    finally:
        await stop_server(a, a_task)
        await stop_server(b, b_task)


async def test_redis_restarted_under_a_stream(
    private_redis: PrivateRedis, two_nodes: tuple[object, object]
) -> None:
    a, b = two_nodes
    a_url, b_ws = a.url, b.ws_url  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=a_url) as http:

        async def publish(n: int) -> httpx.Response:
            return await http.post("/api/topics/s/events", json={"type": "tick", "data": {"n": n}})

        ws = await websockets.connect(b_ws)
        try:
            await ws.send(json.dumps({"type": "subscribe", "topic": "s", "since": 0}))
            first = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
            assert first["type"] == "subscribed"
            got: list[tuple[int, int]] = []

            async def read(count: int) -> None:
                async with asyncio.timeout(20 * UNIT):
                    while len(got) < count:
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "tick":
                            got.append((frame["seq"], frame["data"]["n"]))

            for n in range(10):
                assert (await publish(n)).status_code == 200
            await read(10)

            await asyncio.to_thread(private_redis.stop)
            down = await publish(-1)
            assert down.status_code == 503, down.text  # an error, never a silent drop
            await asyncio.to_thread(private_redis.start)

            if private_redis.persistent:
                for n in range(10, 20):
                    r = await publish(n)
                    assert r.status_code == 200, r.text
                await read(20)
                assert got == [(n + 1, n) for n in range(20)]  # continued, once each
                return

            # the numbering was lost: the next publication is seq 1 of a new epoch
            r = await publish(100)
            assert r.status_code == 200 and r.json()["seqs"] == [1]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await read(11)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.RESYNC
        finally:
            await ws.close()
        async with websockets.connect(b_ws) as again:
            await again.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "topic": "s",
                        "since": 10,
                        "epoch": first["data"]["epoch"],
                    }
                )
            )
            reply = json.loads(await asyncio.wait_for(again.recv(), UNIT))
            assert reply["type"] == "subscribed"
            assert reply["data"]["recovered"] is False
            assert reply["data"]["epoch"] != first["data"]["epoch"]
            replay = json.loads(await asyncio.wait_for(again.recv(), UNIT))
            assert (replay["seq"], replay["data"]["n"]) == (1, 100)
