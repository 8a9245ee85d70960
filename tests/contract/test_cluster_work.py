"""The owned-work contract (``agentcast/cluster/work.py``) over every cluster state:
in-process (``memory://``, one node) and Redis (real Redis on 127.0.0.1:6379, a fresh key
prefix per test, deleted afterwards), one node and several. Waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentcast.cluster import ClusterState, create_cluster_state
from agentcast.cluster.work import MemoryWork, RedisWork
from agentcast.errors import BrokerError
from tests.conftest import UNIT
from tests.contract.test_cluster_state import (
    HEARTBEAT,
    REDIS,
    SYNC,
    TTL,
    View,
    delete_prefix,
    eventually,
    redis_reachable,
)
from tests.services import require_service


class Nodes:
    """Cluster states on one backend, started with a real local view, stopped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.states: list[ClusterState] = []

    async def open(self, ttl: float = TTL) -> ClusterState:
        state = create_cluster_state(self.url, heartbeat=HEARTBEAT, ttl=ttl, sync_interval=SYNC)
        await state.start(View())
        self.states.append(state)
        return state

    async def close(self) -> None:
        for state in self.states:
            await state.stop()


async def _redis_url() -> tuple[str, str]:
    why = await redis_reachable()
    if why is not None:
        require_service(f"Redis not reachable at {REDIS} ({why})")
    prefix = f"test-work-{time.monotonic_ns():x}"
    return f"{REDIS}?prefix={prefix}", prefix


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    url, prefix = ("memory://", "") if request.param == "memory" else await _redis_url()
    made = Nodes(url)
    try:
        yield made
    finally:
        await made.close()
        if prefix:
            await delete_prefix(prefix)


@pytest.fixture
async def redis_nodes() -> AsyncIterator[Nodes]:
    url, prefix = await _redis_url()
    made = Nodes(url)
    try:
        yield made
    finally:
        await made.close()
        await delete_prefix(prefix)


class Recorder:
    """A node's handlers for kind ``gen``: control echoes, seals and losses recorded."""

    def __init__(self, state: ClusterState, fail_seals: int = 0) -> None:
        self.controls: list[tuple[str, dict[str, Any]]] = []
        self.seals: list[tuple[str, dict[str, Any], str]] = []
        self.losses: list[str] = []
        self.fail_seals = fail_seals
        self.hang = asyncio.Event()
        state.work.handle("gen", control=self.control, seal=self.seal, lost=self.losses.append)

    async def control(self, key: str, payload: dict[str, Any]) -> Any:
        self.controls.append((key, payload))
        if payload.get("op") == "fail":
            raise ValueError("refused")
        if payload.get("op") == "hang":
            await self.hang.wait()
        return {"key": key, "echo": payload}

    async def seal(self, key: str, info: dict[str, Any], dead: str) -> None:
        if self.fail_seals:
            self.fail_seals -= 1
            raise RuntimeError("store down")
        self.seals.append((key, info, dead))


async def abandon(state: ClusterState) -> None:
    """The node dies (as after SIGKILL): no more heartbeats, nothing released."""
    work = state.work
    assert isinstance(work, RedisWork)
    for task in work._tasks:
        task.cancel()
    await asyncio.wait(work._tasks, timeout=UNIT)
    work._tasks = []
    await state.stop()


# -- every implementation ------------------------------------------------------------------


async def test_one_owner_per_key(nodes: Nodes) -> None:
    a = await nodes.open()
    assert a.work.distributed is (not isinstance(a.work, MemoryWork))
    assert await a.work.acquire("gen", "c1", {"x": 1}) is None
    assert a.work.fresh()  # its entry was refreshed just now (in one process: always)
    assert await a.work.acquire("gen", "c1", {"x": 2}) == a.node  # owned (by this node)
    assert await a.work.acquire("other", "c1", {}) is None  # per kind
    assert await a.work.owners("gen", ["c1", "c2"]) == {"c1": a.node}
    assert await a.work.owner("gen", "c2") is None
    assert await a.work.finish("gen", "c1") is True  # released: it was still its own
    assert await a.work.owner("gen", "c1") is None
    await a.work.release("gen", "c1")  # twice: nothing
    assert await a.work.acquire("gen", "c1", {}) is None
    with pytest.raises(ValueError, match="without ':'"):
        await a.work.acquire("g:en", "c1", {})


async def test_request_to_this_node_calls_its_handler(nodes: Nodes) -> None:
    a = await nodes.open()
    handlers = Recorder(a)
    reply = await a.work.request(a.node, "gen", "c1", {"op": "ping"}, within=UNIT)
    assert reply == {"key": "c1", "echo": {"op": "ping"}}
    with pytest.raises(BrokerError, match="refused"):
        await a.work.request(a.node, "gen", "c1", {"op": "fail"}, within=UNIT)
    with pytest.raises(BrokerError, match="no control handler"):
        await a.work.request(a.node, "nokind", "c1", {}, within=UNIT)
    assert len(handlers.controls) == 2


async def test_adopted_work_is_registered(nodes: Nodes) -> None:
    a = await nodes.open()
    a.work.adopt("gen", "c9", {"since": 3})
    await eventually(lambda: a.work.owners("gen", ["c9"]))
    assert await a.work.owner("gen", "c9") == a.node
    assert await a.work.acquire("gen", "c9", {}) == a.node


# -- across nodes (Redis) ----------------------------------------------------------------


async def test_a_key_owned_elsewhere_conflicts_and_answers_requests(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.open(), await redis_nodes.open()
    on_a = Recorder(a)
    Recorder(b)
    results = await asyncio.gather(a.work.acquire("gen", "c1", {}), b.work.acquire("gen", "c1", {}))
    assert sorted(r is None for r in results) == [False, True], "exactly one wins"
    owner = a if results[0] is None else b
    await owner.work.release("gen", "c1")
    assert await a.work.acquire("gen", "c1", {"since": 7}) is None
    assert await b.work.acquire("gen", "c1", {}) == a.node
    assert await b.work.owners("gen", ["c1"]) == {"c1": a.node}
    t0 = time.perf_counter()
    reply = await b.work.request(a.node, "gen", "c1", {"op": "cancel"}, within=UNIT)
    took = time.perf_counter() - t0
    assert reply == {"key": "c1", "echo": {"op": "cancel"}} and on_a.controls[-1][0] == "c1"
    assert took < UNIT
    with pytest.raises(BrokerError, match="refused"):
        await b.work.request(a.node, "gen", "c1", {"op": "fail"}, within=UNIT)
    with pytest.raises(BrokerError, match="did not answer"):
        await b.work.request(a.node, "gen", "c1", {"op": "hang"}, within=0.2)
    on_a.hang.set()
    with pytest.raises(BrokerError, match="not listening"):
        await b.work.request("nobody:1:abcdef", "gen", "c1", {}, within=UNIT)


async def test_a_dead_nodes_work_is_sealed_once(redis_nodes: Nodes) -> None:
    a, b, c = [await redis_nodes.open() for _ in range(3)]
    on_a, on_b = Recorder(a), Recorder(b)
    for key in ("c1", "c2", "c3"):
        assert await c.work.acquire("gen", key, {"key": key}) is None
    t0 = time.perf_counter()
    await abandon(c)
    await eventually(lambda: len(on_a.seals) + len(on_b.seals) >= 3, timeout=TTL + 4 * UNIT)
    sealed_after = time.perf_counter() - t0
    seals = sorted(on_a.seals + on_b.seals)
    assert seals == [(k, {"key": k}, c.node) for k in ("c1", "c2", "c3")], "each once"
    assert TTL - HEARTBEAT - 0.05 <= sealed_after < TTL + 2 * UNIT  # not before it could
    await eventually(lambda: a.work.sealed + b.work.sealed == 3)
    await eventually(lambda: _none(b.work.owners("gen", ["c1", "c2", "c3"])))
    assert await b.work.acquire("gen", "c1", {}) is None  # free again, and owned: the
    assert isinstance(b.work, RedisWork)  # claim of the sealed entry is not this one's
    await b.work.beat()
    assert not on_b.losses and await b.work.owner("gen", "c1") == b.node
    assert await b.work.finish("gen", "c1") is True
    for state in (a, b, a, b):  # later heartbeats seal nothing again
        assert isinstance(state.work, RedisWork)
        await state.work.beat()
    assert len(on_a.seals) + len(on_b.seals) == 3


async def _none(pending: Any) -> bool:
    return not await pending


async def test_a_failed_seal_is_retried(redis_nodes: Nodes) -> None:
    a, c = await redis_nodes.open(), await redis_nodes.open()
    on_a = Recorder(a, fail_seals=1)
    assert await c.work.acquire("gen", "c1", {}) is None
    await abandon(c)
    await eventually(lambda: on_a.seals, timeout=TTL + 4 * UNIT)
    assert on_a.fail_seals == 0 and len(on_a.seals) == 1


async def test_a_node_taken_for_dead_drops_its_end(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.open(), await redis_nodes.open()
    on_a, on_b = Recorder(a), Recorder(b)
    assert await a.work.acquire("gen", "c1", {}) is None
    assert await a.work.acquire("gen", "c2", {}) is None
    work = a.work
    assert isinstance(work, RedisWork)
    assert work.fresh()
    beat = work._tasks[1]
    beat.cancel()  # a pause longer than the TTL (a stalled process, a partition)
    await asyncio.wait([beat], timeout=UNIT)
    await eventually(lambda: len(on_b.seals) == 2, timeout=TTL + 4 * UNIT)
    assert not work.fresh(), "it may have been taken for dead: it must know"
    assert await work.finish("gen", "c1") is False  # it comes back: ending c1, or
    await work.beat()  # at its next heartbeat
    assert on_a.losses == ["c2"] and work.lost == 1 and not work.own
    assert work.fresh()
    assert not on_a.seals
    assert await b.work.acquire("gen", "c1", {}) is None


async def test_a_refreshed_entry_is_never_claimed(redis_nodes: Nodes) -> None:
    ttl = 2 * TTL  # twenty heartbeats: a loaded machine must not miss them all
    a, b = await redis_nodes.open(ttl), await redis_nodes.open(ttl)
    on_a, on_b = Recorder(a), Recorder(b)
    assert await a.work.acquire("gen", "c1", {}) is None
    with pytest.raises(AssertionError, match="not true"):  # two TTLs of heartbeats
        await eventually(lambda: on_b.seals or on_a.losses, timeout=2 * ttl)
    assert await b.work.owner("gen", "c1") == a.node


async def test_stop_is_fast_with_requests_in_flight(redis_nodes: Nodes) -> None:
    """redis-py can absorb a cancellation in a blocked pub/sub read: stop must not hang."""
    a, b = await redis_nodes.open(), await redis_nodes.open()
    Recorder(a)
    Recorder(b)
    waiting = asyncio.ensure_future(
        b.work.request(a.node, "gen", "c1", {"op": "hang"}, within=30 * UNIT)
    )
    await eventually(lambda: isinstance(b.work, RedisWork) and b.work._pending)
    t0 = time.perf_counter()
    await b.stop()
    stopped_b = time.perf_counter() - t0
    with pytest.raises(BrokerError, match="stopped"):
        await waiting
    t0 = time.perf_counter()
    await a.stop()  # its handler is still hanging
    stopped_a = time.perf_counter() - t0
    redis_nodes.states.clear()
    print(
        f"\nstop: {stopped_b * 1000:.0f} ms (a request waiting), {stopped_a * 1000:.0f} ms (a handler hanging)"
    )
    assert stopped_b < 0.5 * UNIT and stopped_a < 1.5 * UNIT, (stopped_b, stopped_a)


async def test_an_unreachable_backend_is_an_error_and_adopted_work_waits() -> None:
    """Redis gone (here: nothing listens on the port): acquire, owners and requests raise
    BrokerError at once; an adopted entry stays this node's, ending it fails open."""
    from redis.asyncio import Redis

    from tests.conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    work = RedisWork(
        lambda **kw: Redis.from_url(url, socket_timeout=UNIT, socket_connect_timeout=UNIT, **kw),
        "{test-down}",
        "node-a:1:abcdef",
        heartbeat=HEARTBEAT,
        ttl=TTL,
        timeout=UNIT,
    )
    await work.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(BrokerError, match="unreachable"):
            await work.acquire("gen", "c1", {})
        with pytest.raises(BrokerError, match="unreachable"):
            await work.owners("gen", ["c1"])
        with pytest.raises(BrokerError, match="unreachable"):
            await work.request("node-b:2:abcdef", "gen", "c1", {}, within=UNIT)
        assert time.perf_counter() - t0 < 2 * UNIT
        work.adopt("gen", "c1", {})
        with pytest.raises(Exception):  # noqa: B017 - a heartbeat fails, and is retried
            await work.beat()
        assert "gen:c1" in work.own and work.errors >= 4
        assert await work.finish("gen", "c1") is True and not work.own
    finally:
        t0 = time.perf_counter()
        await work.stop()
        assert time.perf_counter() - t0 < 1.5 * UNIT


async def _stubborn_reader(client: Any, reading: asyncio.Event, released: asyncio.Event) -> None:
    """A pub/sub read that absorbs its cancellation (what redis-py can do), until the test
    releases it."""
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("agentcast-test-stubborn")
        reading.set()
        while not released.is_set():
            try:
                await pubsub.get_message(timeout=0.05)
            except (asyncio.CancelledError, Exception):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.05)  # a closed connection: do not spin
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


async def test_stop_is_bounded_when_a_read_absorbs_its_cancellation(redis_nodes: Nodes) -> None:
    from agentcast.cluster.redis import RedisClusterState

    a = await redis_nodes.open()
    assert isinstance(a, RedisClusterState) and isinstance(a.work, RedisWork)
    loop = asyncio.get_running_loop()
    released = asyncio.Event()
    reading = [asyncio.Event(), asyncio.Event()]
    stubborn = [
        loop.create_task(_stubborn_reader(a._subscriber, reading[0], released)),
        loop.create_task(_stubborn_reader(a.work._subscriber, reading[1], released)),
    ]
    a._tasks.append(stubborn[0])
    a.work._tasks.append(stubborn[1])
    async with asyncio.timeout(5 * UNIT):
        for event in reading:
            await event.wait()
    t0 = time.perf_counter()
    try:
        await a.stop()
        took = time.perf_counter() - t0
        redis_nodes.states.clear()
        assert not any(task.done() for task in stubborn), "they absorbed the cancellation"
    finally:
        released.set()
        await asyncio.wait(stubborn, timeout=5 * UNIT)
    print(f"\nstop with two reads absorbing their cancellation: {took:.2f} s")
    assert took < 3 * UNIT, took  # each of the two parts waits at most twice half a second
