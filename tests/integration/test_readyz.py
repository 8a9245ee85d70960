"""``GET /readyz`` on a real server: ready when the gateway runs and its broker and store
answer; 503 naming what is not while the store is unreachable (PostgreSQL behind a TCP
proxy that the test cuts, then blackholes) and while draining. ``/healthz`` (liveness)
stays 200 meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.services import POSTGRES, require_postgres


async def readyz(running: RunningServer) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{running.url}/readyz", timeout=5 * UNIT)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


async def healthz(running: RunningServer) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{running.url}/healthz", timeout=5 * UNIT)).status_code


@asynccontextmanager
async def serve(**settings: Any) -> AsyncIterator[RunningServer]:
    running, task = await start_server("native", **settings)
    try:
        yield running
    finally:
        await stop_server(running, task)


async def test_ready_with_a_store_then_not_while_draining(tmp_path: Path) -> None:
    async with serve(store_url=f"sqlite:///{tmp_path / 'runs.db'}") as running:
        status, body = await readyz(running)
        assert status == 200, body
        assert body == {
            "status": "ready",
            "checks": {"gateway": "ok", "broker": "ok", "store": "ok"},
        }
        await running.gateway.drain()  # what a shutdown does first
        status, body = await readyz(running)
        assert status == 503
        assert body["not_ready"] == ["gateway"]
        assert body["checks"]["gateway"] == "draining"
        assert await healthz(running) == 200  # liveness is another question


class Proxy:
    """A TCP proxy on loopback in front of ``target``: ``cut()`` closes it and every
    connection through it (the database is unreachable), ``blackhole()`` accepts and
    forwards nothing (the database hangs), ``restore()`` forwards again, on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.forward = True

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if not self.forward:  # hold the connection open, answer nothing
            with contextlib.suppress(ConnectionError):
                await reader.read()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def blackhole(self) -> None:
        await self.cut()
        self.forward = False
        await self.start()

    async def restore(self) -> None:
        await self.cut()
        self.forward = True
        await self.start()


async def test_not_ready_while_the_store_is_unreachable_or_hangs() -> None:
    url = await require_postgres()
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = Proxy((host, int(port or 5432)))
    await proxy.start()
    proxied = url.replace(host_port, f"127.0.0.1:{proxy.port}")
    assert proxied != POSTGRES or proxy.port == 5432
    try:
        async with serve(store_url=proxied, readyz_timeout=0.5 * UNIT) as running:
            status, body = await readyz(running)
            assert status == 200, body
            assert body["checks"]["store"] == "ok"

            await proxy.cut()  # the database goes away
            status, body = await readyz(running)
            assert status == 503, body
            assert body["not_ready"] == ["store"]
            assert body["checks"]["store"].startswith("error: ")
            assert body["checks"]["broker"] == "ok"
            assert await healthz(running) == 200

            await proxy.blackhole()  # it accepts connections and never answers
            status, body = await readyz(running)
            assert status == 503, body
            assert body["checks"]["store"] == "timeout"

            await proxy.restore()
            status, body = await readyz(running)
            assert status == 200, body
    finally:
        await proxy.cut()
