"""A publisher retrying through a node that died mid-request (issue 12's fault test; real
processes, real Redis on loopback): two ``agentcast serve`` processes on one Redis, the
Python client publishing a numbered stream through a load balancer (a TCP proxy in this
test: each connection goes to the first node that accepts it, A before B).

The ack of one publish is held back by the proxy (the server published it, the answer is
on its way), more publishes wait behind it, and node A is killed with SIGKILL: the client
reconnects through the proxy to node B and sends the publish again with the same producer
seq; B's broker recognises it and answers the original seq. A subscriber on node B counts:
every acknowledged event present exactly once, none twice, in the order published.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import websockets

from agentcast.client import connect
from tests.conftest import UNIT, ServerProcess, free_port
from tests.integration.wsutil import recv, subscribe
from tests.services import delete_prefix, redis_prefix, require_redis


class Balancer:
    """A TCP proxy: each connection to it goes to the first backend port that accepts.
    ``hold_answers`` set: bytes from the backends to the clients are dropped (answers lost
    on the way, as when a node dies after acting and before its answer left)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.hold_answers = False
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            for port in self.ports:
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    continue
            else:
                return
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer, answers=False)),
                asyncio.create_task(self._pipe(up_reader, writer, answers=True)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                up_writer.close()
        finally:
            writer.close()
            self.tasks.discard(task)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, answers: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := await src.read(65536):
                if answers and self.hold_answers:
                    continue
                dst.write(chunk)
                await dst.drain()


@pytest.fixture
def broker_url() -> Iterator[str]:
    url = require_redis()
    prefix = redis_prefix()
    yield f"{url}?prefix={prefix}"
    asyncio.run(delete_prefix(url, prefix))


@pytest.fixture
async def two_nodes(broker_url: str) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    procs = [ServerProcess(free_port(), "--broker", broker_url) for _ in range(2)]
    try:
        for proc in procs:
            await asyncio.to_thread(proc.start)
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            if proc.proc is not None:
                await asyncio.to_thread(proc.stop)
            proc.log.close()


async def test_a_publisher_retrying_through_a_node_that_died_mid_request_publishes_once(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    balancer = Balancer([a.port, b.port])
    await balancer.start()
    total, cut, waiting = 120, 50, 5
    acked: dict[int, int] = {}  # n -> the seq the publisher was told
    seen: list[tuple[int, int]] = []  # (seq, n) as the subscriber on B received them
    got = asyncio.Event()

    async def read(ws: Any) -> None:
        while True:
            frame = await recv(ws, 30 * UNIT)
            if frame.get("type") == "tick":
                seen.append((frame["seq"], frame["data"]["n"]))
                got.set()

    async def saw(n: int) -> None:
        async with asyncio.timeout(10 * UNIT):
            while not any(m == n for _, m in seen):
                got.clear()
                await got.wait()

    try:
        async with (
            websockets.connect(f"ws://127.0.0.1:{b.port}/ws") as sub,
            connect(
                f"http://127.0.0.1:{balancer.port}",
                producer_id="fault-test",
                initial_delay=0.05,
                max_delay=0.5,
                reply_timeout=20 * UNIT,
            ) as client,
        ):
            await subscribe(sub, "stream", since=0)
            reader = asyncio.create_task(read(sub))

            async def publish(n: int) -> None:
                acked[n] = await client.publish("stream", "tick", {"n": n})

            async with asyncio.timeout(60 * UNIT):
                for n in range(cut):
                    await publish(n)
                # n = cut is published by A but its ack is held back; more publishes are
                # queued behind it (one idempotent publish in flight at a time)
                balancer.hold_answers = True
                in_flight = [asyncio.create_task(publish(n)) for n in range(cut, cut + waiting)]
                await saw(cut)  # A published it (B's subscriber has it): only the ack is lost
                assert cut not in acked
                assert a.proc is not None
                a.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(a.proc.wait, 10 * UNIT)
                balancer.hold_answers = False
                await asyncio.gather(*in_flight)  # retried through B
                for n in range(cut + waiting, total):
                    await publish(n)
                await saw(total - 1)
                # a last event published through B directly: anything published twice
                # before it would have arrived before it
                await client.publish("stream", "tick", {"n": -1})
                await saw(-1)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            retries, duplicates = client.publish_retries, client.publish_duplicates
    finally:
        await balancer.close()
    seen.pop()  # the sentinel
    ns = [n for _, n in seen]
    lost = len(set(range(total)) - set(ns))
    duplicated = len(ns) - len(set(ns))
    assert (lost, duplicated) == (0, 0), (lost, duplicated)
    assert ns == list(range(total))  # in the order published
    assert [s for s, _ in seen] == list(range(1, total + 1))
    assert acked == {n: n + 1 for n in range(total)}  # every ack is the event's real seq
    # the held-back publish was sent again and recognised as already published
    assert retries >= 1 and duplicates == 1, (retries, duplicates)
