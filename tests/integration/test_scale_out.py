"""Several ``agentcast serve`` processes on one Redis (real processes, real Redis on
loopback): what a client on one node sees of what is published through another, resuming
on another node, ``--workers``, a node killed under its clients, and the start-up errors.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets

from tests.conftest import UNIT, ServerProcess, eventually, free_port
from tests.integration.wsutil import recv, recv_until, send, subscribe
from tests.services import delete_prefix, redis_prefix, require_redis


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis broker URL with a key prefix of its own (deleted afterwards)."""
    url = require_redis()
    prefix = redis_prefix()
    yield f"{url}?prefix={prefix}"
    asyncio.run(delete_prefix(url, prefix))


class Nodes:
    """Server processes on one broker, stopped (and their logs closed) at the end."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.procs: list[ServerProcess] = []

    async def start(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(free_port(), "--broker", self.broker_url, *args, env=env)
        self.procs.append(proc)
        await asyncio.to_thread(proc.start)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.proc is not None:
                proc.stop()
            proc.log.close()


@pytest.fixture
async def nodes(broker_url: str) -> AsyncIterator[Nodes]:
    n = Nodes(broker_url)
    try:
        yield n
    finally:
        await asyncio.to_thread(n.close)


def ws_url(node: ServerProcess) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


async def read_events(ws: Any, topic: str, count: int, timeout: float = 10 * UNIT) -> list[Any]:
    frames = []
    async with asyncio.timeout(timeout):
        while len(frames) < count:
            frame = await recv(ws, timeout)
            if frame.get("topic") == topic and "seq" in frame and frame["type"] != "ack":
                frames.append(frame)
    return frames


def test_unreachable_redis_is_one_line_and_a_failure() -> None:
    port = free_port()
    result = run_cli(
        "serve", "--port", str(free_port()), "--broker", f"redis://:s3cret@127.0.0.1:{port}/0"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot connect to Redis at redis://:***@127.0.0.1")
    assert "s3cret" not in result.stderr + result.stdout


def test_workers_refuse_the_memory_broker() -> None:
    result = run_cli("serve", "--port", str(free_port()), "--workers", "2")
    assert result.returncode == 2
    assert "needs a shared broker" in result.stderr
    assert "own history" in " ".join(result.stderr.split())


async def test_a_client_on_node_a_receives_what_node_b_publishes_in_order(nodes: Nodes) -> None:
    a, b = await nodes.start(), await nodes.start()
    async with (
        websockets.connect(ws_url(a)) as reader,
        websockets.connect(ws_url(b)) as producer,
        httpx.AsyncClient(base_url=b.url) as http,
    ):
        assert (await subscribe(reader, "orders"))["data"]["seq"] == 0
        for n in range(20):
            if n % 2:
                await send(
                    producer,
                    {"type": "publish", "topic": "orders", "event": "e", "data": {"n": n}, "id": n},
                )
                assert (await recv_until(producer, "ack"))["data"]["seq"] == n + 1
            else:
                r = await http.post(
                    "/api/topics/orders/events", json={"type": "e", "data": {"n": n}}
                )
                assert r.status_code == 200, r.text
                assert r.json()["seqs"] == [n + 1]
        got = await read_events(reader, "orders", 20)
        assert [(f["seq"], f["data"]["n"]) for f in got] == [(n + 1, n) for n in range(20)]
        # both nodes know the topic and its history
        for node in (a, b):
            r = await http.get(f"{node.url}/api/topics/orders/events", params={"since": 15})
            assert [e["seq"] for e in r.json()["events"]] == [16, 17, 18, 19, 20]


async def test_resume_on_node_b_of_a_subscription_started_on_node_a(nodes: Nodes) -> None:
    a, b = await nodes.start(), await nodes.start()
    async with httpx.AsyncClient() as http:

        async def publish(n: int) -> None:
            r = await http.post(
                f"{a.url}/api/topics/job/events", json={"type": "step", "data": {"n": n}}
            )
            assert r.status_code == 200, r.text

        async with websockets.connect(ws_url(a)) as ws:
            await subscribe(ws, "job", since=0)
            for n in range(5):
                await publish(n)
            first = await read_events(ws, "job", 5)
        for n in range(5, 12):  # while the client is away
            await publish(n)
        async with websockets.connect(ws_url(b)) as ws:
            reply = await subscribe(ws, "job", since=first[-1]["seq"])
            assert reply["data"]["recovered"] is True
            assert reply["data"]["epoch"]
            rest = await read_events(ws, "job", 7)
            await publish(12)
            rest += await read_events(ws, "job", 1)
    seqs = [f["seq"] for f in first + rest]
    assert seqs == list(range(1, 14))
    assert [f["data"]["n"] for f in first + rest] == list(range(13))


async def test_workers_serve_one_port_and_deliver(nodes: Nodes, tmp_path: Any) -> None:
    """``--workers 2`` with a SQLite run store: both workers start (the supervisor
    migrated the store once), clients on the one port get every event of a workflow run,
    and the stored run reads the same through every worker."""
    node = await nodes.start(
        "--workers", "2", env={"AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'runs.db'}"}
    )
    prefix = nodes.broker_url.rsplit("prefix=", 1)[1]
    r = redis.Redis.from_url(nodes.broker_url.split("?")[0])

    def workers() -> set[str]:
        return {c["name"] for c in r.client_list() if c["name"].startswith(prefix + "@")}

    try:  # two worker processes, each with its Redis connections (the second may be starting)
        await eventually(lambda: len(workers()) == 2, 10 * UNIT)
    finally:
        r.close()
    clients = [await websockets.connect(ws_url(node)) for _ in range(6)]
    try:
        for ws in clients:
            await subscribe(ws, "workflow:w2", since=0)
        async with httpx.AsyncClient(base_url=node.url) as http:
            r2 = await http.post("/api/workflows/w2/execute", json={"initial_inputs": {}})
            assert r2.status_code == 202, r2.text
            execution = r2.json()["execution_id"]
            seen = []
            for ws in clients:
                frames = []
                async with asyncio.timeout(20 * UNIT):
                    while not frames or frames[-1]["type"] != "workflow_complete":
                        frame = await recv(ws, 20 * UNIT)
                        if "seq" in frame:
                            frames.append(frame)
                seen.append([(f["seq"], f["type"]) for f in frames])
            assert all(s == seen[0] for s in seen)
            assert [q for q, _ in seen[0]] == list(range(1, len(seen[0]) + 1))
            for _ in range(6):  # through whichever worker accepts
                got = await http.get("/api/runs/workflow:w2/events", params={"since": 0})
                assert got.status_code == 200, got.text
                body = got.json()
                assert [e["seq"] for e in body["events"]] == [q for q, _ in seen[0]], body
                assert body["events"][0]["data"]["execution_id"] == execution
    finally:
        for ws in clients:
            await ws.close()
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.proc.wait, 30 * UNIT) == 0, node.output()
    output = node.output()
    assert "Traceback" not in output and "ERROR" not in output, output


async def test_sigkill_a_node_its_clients_resume_on_another_without_loss(nodes: Nodes) -> None:
    """20 clients on node A read a steady stream published through node B; A is killed
    (SIGKILL) mid-stream; every client reconnects to B and resumes from its last seq:
    counted, zero lost and zero duplicated."""
    a, b = await nodes.start(), await nodes.start()
    total, clients = 400, 20
    received: list[list[int]] = [[] for _ in range(clients)]
    progress = asyncio.Event()
    killed = asyncio.Event()

    async def client(i: int) -> None:
        url = ws_url(a)
        last: int | None = None
        while len(received[i]) < total:
            try:
                async with websockets.connect(url) as ws:
                    await subscribe(ws, "stream", since=last if last is not None else 0)
                    while len(received[i]) < total:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == "tick":
                            received[i].append(frame["seq"])
                            last = frame["seq"]
                            progress.set()
            except (OSError, websockets.ConnectionClosed):
                await killed.wait()
                url = ws_url(b)  # the surviving node

    async def producer() -> None:
        async with httpx.AsyncClient(base_url=b.url) as http:
            for n in range(total):
                r = await http.post("/api/topics/stream/events", json={"type": "tick", "data": {}})
                assert r.status_code == 200, r.text
                if n == total // 3:
                    assert a.proc is not None
                    a.proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(a.proc.wait, 10 * UNIT)
                    killed.set()

    readers = [asyncio.create_task(client(i)) for i in range(clients)]
    # every client subscribed before the stream starts (they all have seq 0 to start from)
    async with asyncio.timeout(10 * UNIT):
        while not await _subscribers(a, clients):  # noqa: ASYNC110 - bounded above
            await asyncio.sleep(0.05)
    async with asyncio.timeout(60 * UNIT):
        await producer()
        await asyncio.gather(*readers)
    lost = sum(total - len(set(r)) for r in received)
    duplicated = sum(len(r) - len(set(r)) for r in received)
    assert (lost, duplicated) == (0, 0)
    assert all(r == list(range(1, total + 1)) for r in received)


async def _subscribers(a: ServerProcess, count: int, name: str = "stream") -> bool:
    """Whether node A reports ``count`` subscribers of ``name``."""
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{a.url}/api/topics")
    for topic in r.json():
        if topic["topic"] == name:
            return bool(topic["subscribers"] >= count)
    return False


async def test_rolling_restart_under_a_stream_loses_and_repeats_nothing(nodes: Nodes) -> None:
    """Each of two nodes is stopped in turn with SIGTERM (a drain: its clients get 1001)
    and started again on its port while a steady stream is published through the other
    one; every client reconnects to whichever node is up and resumes with ``since``:
    counted, zero lost and zero duplicated, in order; every node stops gracefully."""
    a, b = await nodes.start(), await nodes.start()
    urls = [ws_url(a), ws_url(b)]
    clients = 10
    received: list[list[int]] = [[] for _ in range(clients)]
    target = [b]  # the node the producer publishes through (never the one restarting)
    published = [0]

    async def client(i: int) -> None:
        turn, last = i % 2, 0  # half start on A, half on B
        while True:
            try:
                async with websockets.connect(urls[turn]) as ws:
                    await subscribe(ws, "roll", since=last)
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") in ("tick", "end"):
                            received[i].append(frame["seq"])
                            last = frame["seq"]
                        if frame.get("type") == "end":
                            return
            except (OSError, websockets.ConnectionClosed, websockets.InvalidStatus):
                turn = 1 - turn  # the other node
                await asyncio.sleep(0.02)  # a client's reconnect backoff

    async def producer(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient() as http:
            while not stop.is_set():
                node = target[0]
                r = await http.post(
                    f"{node.url}/api/topics/roll/events", json={"type": "tick", "data": {}}
                )
                assert r.status_code == 200, r.text
                published[0] = r.json()["seqs"][0]
                await asyncio.sleep(0.005)  # a paced stream, ~200 events/s

    readers = [asyncio.create_task(client(i)) for i in range(clients)]
    async with asyncio.timeout(10 * UNIT):
        while not (  # noqa: ASYNC110 - bounded above
            await _subscribers(a, clients // 2, "roll")
            and await _subscribers(b, clients // 2, "roll")
        ):
            await asyncio.sleep(0.05)
    stop = asyncio.Event()
    async with asyncio.timeout(90 * UNIT):
        stream = asyncio.create_task(producer(stop))
        for i, survivor in ((0, 1), (1, 0)):
            node = nodes.procs[i]
            target[0] = nodes.procs[survivor]
            seen = published[0]  # the producer is on the survivor once it published more
            await eventually(lambda s=seen: published[0] >= s + 20, 10 * UNIT)
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(node.proc.wait, 30 * UNIT)
            assert code in (0, -signal.SIGTERM), node.output()  # a graceful stop
            assert "Traceback" not in node.output(), node.output()
            node.log.close()
            restarted = ServerProcess(node.port, "--broker", nodes.broker_url)
            nodes.procs[i] = restarted
            await asyncio.to_thread(restarted.start)
            seen = published[0]  # the stream goes on with the node back
            await eventually(lambda s=seen: published[0] >= s + 50, 10 * UNIT)
        stop.set()
        await stream
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{a.url}/api/topics/roll/events", json={"type": "end", "data": {}})
            assert r.status_code == 200, r.text
        await asyncio.gather(*readers)
    total = r.json()["seqs"][0]
    assert total > 140  # the stream went on through both restarts
    lost = sum(total - len(set(r)) for r in received)
    duplicated = sum(len(r) - len(set(r)) for r in received)
    assert (lost, duplicated) == (0, 0)
    assert all(r == list(range(1, total + 1)) for r in received)
