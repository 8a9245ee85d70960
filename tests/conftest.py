"""Shared fixtures: real servers on 127.0.0.1 with an ephemeral port.

Timeouts in tests are multiples of :data:`UNIT` (seconds), scaled by the environment
variable ``AGENTCAST_TEST_TIMEOUT_SCALE`` on slow machines. Tests wait on events with
these bounded timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from agentcast.app import create_gateway
from agentcast.brokers import Broker
from agentcast.gateway import Gateway
from agentcast.settings import Settings
from agentcast.transports import uvicorn_protocols
from agentcast.transports.http import create_app
from agentcast.transports.server import DrainingServer, build_server

# tests use no run store unless they ask for one (no agentcast.db in the working tree)
os.environ.setdefault("AGENTCAST_STORE_URL", "")
# one test process starts hundreds of gateways: do not pin their objects in memory
os.environ.setdefault("AGENTCAST_GC_FREEZE", "false")

UNIT = 2.0 * float(os.environ.get("AGENTCAST_TEST_TIMEOUT_SCALE", "1"))
"""One test timeout unit in seconds."""


@dataclass
class RunningServer:
    """A server started by a fixture: its gateway, base URL and WebSocket URL of /ws."""

    gateway: Gateway
    server: uvicorn.Server
    port: int
    transport: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


async def start_server(
    transport: str = "native",
    app_factory: Callable[[Gateway], Any] | None = None,
    *,
    broker: Broker | None = None,
    **settings: Any,
) -> tuple[RunningServer, asyncio.Task[None]]:
    """Start a server in this event loop on a free port; ``transport`` is native or asgi
    (``broker``: another broker than the settings' one)."""
    gateway = create_gateway(Settings(host="127.0.0.1", port=0, **settings), broker=broker)
    app = app_factory(gateway) if app_factory is not None else create_app(gateway)
    if transport == "native":
        server = build_server(gateway, app)
    else:
        # uvicorn's own WebSocket protocol and the ASGI adapter, draining on shutdown
        server = DrainingServer(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                lifespan="on",
                log_level="warning",
                http=uvicorn_protocols.http_protocol_class(gateway.settings.header_timeout),
                ws=uvicorn_protocols.protocol_class(gateway.settings.close_timeout),
                ws_max_size=gateway.settings.max_message_bytes,
            ),
            gateway,
        )
    task = asyncio.create_task(server.serve(sockets=None))
    deadline = time.monotonic() + 5 * UNIT
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(gateway, server, port, transport), task


async def stop_server(running: RunningServer, task: asyncio.Task[None]) -> None:
    running.server.should_exit = True
    await asyncio.wait_for(task, 10 * UNIT)


@pytest.fixture(params=["native", "asgi"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """A running server, once over the native transport and once over the ASGI adapter."""
    running, task = await start_server(request.param)
    try:
        yield running
    finally:
        await stop_server(running, task)


@pytest.fixture
async def native_server() -> AsyncIterator[RunningServer]:
    """A running server on the native transport only."""
    running, task = await start_server("native")
    try:
        yield running
    finally:
        await stop_server(running, task)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``agentcast serve`` in a subprocess (for CLI, restart and signal tests)."""

    def __init__(self, port: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the fixture

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentcast.cli", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10 * UNIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=UNIT).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError("server process did not become healthy")

    def stop(self, sig: int | None = None) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
        return self.proc.wait(10 * UNIT)

    def output(self) -> str:
        """Everything the server printed so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    """An ``agentcast serve`` subprocess on a free port (started by the fixture)."""
    proc = ServerProcess(free_port())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        proc.log.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 5 * UNIT) -> None:
    """Wait, at most ``timeout``, until ``predicate()`` holds: for server-side state that
    exposes no event to wait on (e.g. a subscription made inside an app's route)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling a condition, bounded above
            await asyncio.sleep(0.005)
