"""The LLM queue contract (``agentcast/cluster/queue.py``) over every cluster state:
in-process (``memory://``: one node, both "instances" are the node's one queue) and two
nodes on one real Redis (``redis://127.0.0.1:6379``, a fresh key prefix per test, deleted
afterwards; never a FLUSH).

The limit, the round-robin order between users and the positions must hold across the
two nodes; a cancelled waiter leaves at once; a dead node's slot is freed after its TTL;
no wakeup is lost when releases and acquires race, nor when a notification is lost.
Waits are bounded (``eventually``, ``asyncio.timeout``), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentcast.cluster.queue import FairQueue, RedisFairQueue, UpstreamQueue
from tests.conftest import UNIT
from tests.contract.test_cluster_state import (
    REDIS,
    SYNC,
    TTL,
    Cluster,
    Node,
    Proxy,
    _build,
    _close,
    abandon,
    eventually,
    proxied_pair,
)

KEY = "http://upstream.test/v1"


class CutProxy(Proxy):
    """:class:`Proxy`, whose cut also closes a connection accepted just before it (its
    upstream connection still being opened): nothing gets through a cut proxy, and the
    cut never waits for a connection it did not close."""

    cutting = False

    async def start(self) -> None:
        self.cutting = False
        await super().start()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cutting:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        if self.cutting:
            writer.close()
            up_writer.close()
            return
        self.writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    async def cut(self) -> None:
        self.cutting = True
        await super().cut()


@pytest.fixture(params=["memory", "redis, two nodes"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    made = await _build(request.param)
    try:
        yield made
    finally:
        await _close(made)


def two(cluster: Cluster, limit: int, key: str = KEY) -> tuple[UpstreamQueue, UpstreamQueue]:
    """The queue of ``key`` on two instances (in process: the one queue twice)."""
    first = cluster.nodes[0].state.queue(key, limit)
    if len(cluster.nodes) < 2:
        return first, first
    return first, cluster.nodes[1].state.queue(key, limit)


class Request:
    """One generation: waits for a slot, reports its positions, holds the slot until
    :meth:`finish`."""

    def __init__(self, queue: UpstreamQueue, name: str, user: str, served: list[str]) -> None:
        self.name = name
        self.positions: list[int] = []
        self.started = asyncio.Event()
        self._done = asyncio.Event()
        self.task = asyncio.create_task(self._run(queue, user, served))

    async def _run(self, queue: UpstreamQueue, user: str, served: list[str]) -> int:
        async with queue.slot(user, self.positions.append) as arrival:
            served.append(self.name)
            self.started.set()
            await self._done.wait()
        return arrival

    @property
    def position(self) -> int | None:
        return self.positions[-1] if self.positions else None

    def finish(self) -> None:
        self._done.set()


async def holder(queue: UpstreamQueue, served: list[str], name: str = "holder") -> Request:
    req = Request(queue, name, name, served)
    async with asyncio.timeout(2 * UNIT):
        await req.started.wait()
    return req


async def cleanup(*requests: Request) -> None:
    for req in requests:
        req.finish()
        if not req.task.done():
            req.task.cancel()
    await asyncio.gather(*(r.task for r in requests), return_exceptions=True)


async def test_the_limit_holds_across_instances(cluster: Cluster) -> None:
    a, b = two(cluster, 2)
    served: list[str] = []
    first = await holder(a, served, "a-1")
    second = await holder(b, served, "b-1")
    third = Request(a, "a-2", "u3", served)
    await eventually(lambda: third.position == 1)  # arrivals on two nodes: one at a time
    fourth = Request(b, "b-2", "u4", served)
    await eventually(lambda: third.position == 1 and fourth.position == 2)
    assert served == ["a-1", "b-1"]
    first.finish()  # a slot of a's goes to the next waiter: on a
    async with asyncio.timeout(2 * UNIT):
        await third.started.wait()
    await eventually(lambda: fourth.position == 1)
    assert not fourth.started.is_set()
    third.finish()
    async with asyncio.timeout(2 * UNIT):
        await fourth.started.wait()
    assert served == ["a-1", "b-1", "a-2", "b-2"]
    await cleanup(first, second, third, fourth)


def in_order(requests: list[Request]) -> bool:
    return [r.position for r in requests] == list(range(1, len(requests) + 1))


async def test_round_robin_between_users_and_positions_across_instances(
    cluster: Cluster,
) -> None:
    a, b = two(cluster, 1)
    served: list[str] = []
    first = await holder(a, served)
    waiting: dict[str, Request] = {}
    # arrivals: a1 a2 a3 (user a) then b1, c1; spread over both instances
    for n, (name, user, queue) in enumerate(
        [("a1", "a", a), ("a2", "a", b), ("a3", "a", a), ("b1", "b", b), ("c1", "c", a)], 1
    ):
        req = waiting[name] = Request(queue, name, user, served)
        await eventually(functools.partial(lambda r: r.positions != [], req))
        assert req.positions[0] <= n
    expected = {"a1": 1, "b1": 2, "c1": 3, "a2": 4, "a3": 5}
    await eventually(lambda: {k: r.position for k, r in waiting.items()} == expected)
    # every waiter was told: a3 arrived 3rd and was pushed back by b1 and c1
    assert waiting["a3"].positions[0] == 3 and waiting["a3"].positions[-1] == 5
    current = first
    order = ["a1", "b1", "c1", "a2", "a3"]
    for i, name in enumerate(order):
        current.finish()
        current = waiting[name]
        async with asyncio.timeout(2 * UNIT):
            await current.started.wait()
        rest = [waiting[k] for k in order[i + 1 :]]
        await eventually(functools.partial(in_order, rest))
    assert served == ["holder", *order]
    assert waiting["a3"].positions[-1] == 1 and waiting["a1"].positions == [1]
    await cleanup(first, *waiting.values())


async def test_cancel_while_waiting_leaves_the_queue_at_once(cluster: Cluster) -> None:
    a, b = two(cluster, 1)
    served: list[str] = []
    first = await holder(a, served)
    leaving = Request(b, "y", "y", served)
    await eventually(lambda: leaving.position == 1)
    staying = Request(a, "z", "z", served)
    await eventually(lambda: leaving.position == 1 and staying.position == 2)
    leaving.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving.task
    assert b.waiting == (1 if a is b else 0)  # gone from this node at once
    await eventually(lambda: staying.position == 1)  # and from the cluster's queue
    first.finish()
    async with asyncio.timeout(2 * UNIT):
        await staying.started.wait()
    assert served == ["holder", "z"]  # the cancelled one never held a slot
    await cleanup(first, staying)


async def test_cancel_right_after_a_grant_gives_the_slot_back(cluster: Cluster) -> None:
    a, b = two(cluster, 1)
    served: list[str] = []
    first = await holder(a, served)
    granted = asyncio.Event()

    positions: list[int] = []

    async def wait_then_cancelled() -> None:
        async with b.slot("y", positions.append):
            granted.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait_then_cancelled())
    await eventually(lambda: positions == [1])
    later = Request(a, "z", "z", served)
    await eventually(lambda: later.position is not None and later.position >= 1)
    first.finish()
    async with asyncio.timeout(2 * UNIT):
        await granted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2 * UNIT):
        await later.started.wait()  # the cancelled holder's slot went on
    await cleanup(first, later)


async def test_no_lost_wakeups_under_concurrent_release_and_acquire(cluster: Cluster) -> None:
    limit = 2
    a, b = two(cluster, limit)
    held = 0
    most = 0
    done = 0
    rng = random.Random(7)

    async def one(i: int) -> None:
        nonlocal held, most, done
        queue = a if i % 2 else b
        async with queue.slot(f"user{rng.randrange(5)}"):
            held += 1
            most = max(most, held)
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            held -= 1
        done += 1

    async with asyncio.timeout(20 * UNIT):
        for _ in range(3):  # waves: arrivals race the releases of the wave before
            await asyncio.gather(*(one(i) for i in range(40)))
    assert done == 120 and most <= limit
    assert most == limit  # the limit was reached (the test exercised waiting)
    await eventually(lambda: a.active == 0 and b.active == 0 and a.waiting == b.waiting == 0)
    if isinstance(a, RedisFairQueue):  # nothing left in Redis
        await eventually(lambda: redis_state(a), 2 * UNIT)


async def holders_of(queue: UpstreamQueue) -> list[str]:
    """The nodes holding slots of ``queue`` in Redis."""
    from redis.asyncio import Redis

    assert isinstance(queue, RedisFairQueue)
    client = Redis.from_url(REDIS)
    try:
        found = await client.hgetall(queue.keys[1])
        return [v.decode() if isinstance(v, bytes) else v for v in found.values()]
    finally:
        await client.aclose()


async def redis_state(queue: RedisFairQueue) -> bool:
    """True when Redis holds no slot, no waiter and no turn of ``queue``."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS)
    try:
        _, holders, waiters, turns = queue.keys
        found = (await client.hlen(holders), await client.hlen(waiters), await client.llen(turns))
        return found == (0, 0, 0)
    finally:
        await client.aclose()


async def test_a_burst_of_arrivals_never_exceeds_the_limit(cluster: Cluster) -> None:
    """300 generations asked at once (more calls than a connection pool holds: they wait
    for a connection, none fails over to the node's own queue)."""
    limit = 3
    a, b = two(cluster, limit)
    held = most = 0

    async def one(i: int) -> None:
        nonlocal held, most
        async with (a if i % 2 else b).slot(f"user{i % 30}"):
            held += 1
            most = max(most, held)
            await asyncio.sleep(0)
            held -= 1

    async with asyncio.timeout(20 * UNIT):
        await asyncio.gather(*(one(i) for i in range(300)))
    assert most == limit
    assert all(node.state.errors == 0 for node in cluster.nodes)


async def test_one_request_after_another_leaves_nothing_behind(cluster: Cluster) -> None:
    """Each release's notification races the next acquire (a poll must not take the
    request in flight for lost and queue it twice: a phantom slot)."""
    a, b = two(cluster, 1)
    async with asyncio.timeout(10 * UNIT):
        for i in range(100):
            async with (a if i % 3 else b).slot("u") as arrival:
                assert arrival in (0, 1)
    await eventually(lambda: a.active == 0 and b.active == 0)
    if isinstance(a, RedisFairQueue):
        await eventually(lambda: redis_state(a), 2 * UNIT)


async def test_unlimited_never_waits(cluster: Cluster) -> None:
    queue = cluster.nodes[0].state.queue(KEY, None)
    assert isinstance(queue, FairQueue)  # nothing to share: no round trip
    async with queue.slot("u") as arrival:
        assert arrival == 0


# -- across nodes on Redis -----------------------------------------------------------------


@pytest.fixture
async def pair() -> AsyncIterator[Cluster]:
    made = await _build("redis, two nodes")
    try:
        yield made
    finally:
        await _close(made)


async def abandon_node(node: Node) -> None:
    """The node dies (as after SIGKILL): no heartbeat, nothing given back, no more polls."""
    queues: Any = node.state.queues  # type: ignore[attr-defined]
    queues._closed = True
    tasks = [*queues._loops, *queues._tasks]
    for task in tasks:
        task.cancel()
    if tasks:  # its sockets closed, as by a kill
        await asyncio.wait(tasks, timeout=2 * UNIT)
    queues._loops = []
    queues._closed = True
    if queues._client is not None:
        await queues._client.aclose()
        queues._client = None
    queues.queues.clear()
    await abandon(node)


async def test_a_dead_nodes_slot_is_freed_after_its_ttl(pair: Cluster) -> None:
    a_node, _ = pair.nodes
    a, b = two(pair, 1)
    served: list[str] = []
    first = await holder(a, served)
    waiter = Request(b, "b1", "b", served)
    await eventually(lambda: waiter.position == 1)
    await abandon_node(a_node)
    loop = asyncio.get_running_loop()
    died = loop.time()
    async with asyncio.timeout(TTL + 4 * UNIT):
        await waiter.started.wait()
    waited = loop.time() - died
    assert TTL * 0.5 <= waited <= TTL + SYNC + 2 * UNIT  # expired, not withdrawn
    first.task.cancel()
    await cleanup(waiter)
    await asyncio.gather(first.task, return_exceptions=True)


async def test_a_dead_nodes_waiters_are_dropped(pair: Cluster) -> None:
    a_node, _ = pair.nodes
    a, b = two(pair, 1)
    served: list[str] = []
    first = await holder(b, served)
    dead = Request(a, "a1", "a", served)
    await eventually(lambda: dead.position == 1)
    live = Request(b, "b1", "b", served)
    await eventually(lambda: dead.position == 1 and live.position == 2)
    await abandon_node(a_node)
    await eventually(lambda: live.position == 1, TTL + 4 * UNIT)  # swept by b's poll
    first.finish()
    async with asyncio.timeout(2 * UNIT):
        await live.started.wait()
    dead.task.cancel()
    await cleanup(first, live)
    await asyncio.gather(dead.task, return_exceptions=True)


async def test_a_lost_notification_delays_a_wakeup_never_loses_it(pair: Cluster) -> None:
    a, b = two(pair, 1)
    served: list[str] = []
    first = await holder(a, served)
    waiter = Request(b, "b1", "b", served)
    await eventually(lambda: waiter.position == 1)
    assert isinstance(b, RedisFairQueue)
    b.queues._apply = lambda raw: None  # type: ignore[method-assign]  # deaf to pub/sub
    first.finish()
    async with asyncio.timeout(SYNC + 2 * UNIT):  # the next poll finds the grant
        await waiter.started.wait()
    await cleanup(first, waiter)


async def test_stop_gives_slots_back_at_once(pair: Cluster) -> None:
    a_node, _ = pair.nodes
    a, b = two(pair, 1)
    served: list[str] = []
    first = await holder(a, served)
    waiter = Request(b, "b1", "b", served)
    await eventually(lambda: waiter.position == 1)
    await a_node.state.stop()  # a clean stop: no TTL to wait for
    # given back by the stop itself (not expired): no slot of a's is left in Redis
    assert a_node.state.node not in await holders_of(b)
    async with asyncio.timeout(2 * UNIT):
        await waiter.started.wait()
    first.task.cancel()
    await cleanup(waiter)
    await asyncio.gather(first.task, return_exceptions=True)


async def test_redis_unreachable_on_arrival_falls_back_to_the_node_and_a_waiter_keeps_waiting() -> (
    None
):
    async with proxied_pair(CutProxy()) as (a, b, proxy):
        qa, qb = a.state.queue(KEY, 1), b.state.queue(KEY, 1)
        served: list[str] = []
        requests: list[Request] = []
        try:
            first = await holder(qb, served)
            queued = Request(qa, "a1", "a", served)
            requests += [first, queued]
            await eventually(lambda: queued.position == 1)
            await proxy.cut()
            # a new request on a while Redis is unreachable from a: a's own queue (limit 1)
            local = await holder(qa, served, "local")
            requests.append(local)
            assert a.state.errors > 0
            assert queued.position == 1 and not queued.started.is_set()  # keeps its place
            await proxy.start()  # back within the TTL: the waiter is still in Redis
            first.finish()
            async with asyncio.timeout(TTL + 4 * UNIT):
                await queued.started.wait()
        finally:
            await cleanup(*requests)


async def test_a_cancel_while_redis_is_unreachable_leaves_when_it_is_back() -> None:
    async with proxied_pair(CutProxy()) as (a, b, proxy):
        qa, qb = a.state.queue(KEY, 1), b.state.queue(KEY, 1)
        served: list[str] = []
        requests: list[Request] = []
        try:
            first = await holder(qb, served)
            leaving = Request(qa, "x", "x", served)
            requests += [first, leaving]
            await eventually(lambda: leaving.position == 1)
            behind = Request(qb, "z", "z", served)
            requests.append(behind)
            await eventually(lambda: behind.position == 2)
            await proxy.cut()
            leaving.task.cancel()  # its leave fails: Redis is unreachable from a
            await asyncio.gather(leaving.task, return_exceptions=True)
            await eventually(lambda: a.state.errors > 0)
            await proxy.start()
            first.finish()  # the slot may go to x (a is live again): a's poll gives it back
            async with asyncio.timeout(TTL + 4 * UNIT):
                await behind.started.wait()
            assert served == ["holder", "z"]
        finally:
            await cleanup(*requests)


async def test_stop_does_not_wait_for_a_loop_that_holds_on(pair: Cluster) -> None:
    """redis-py can absorb the cancellation of a blocked pub/sub read: a loop of the
    queues that does (a stand-in here) is left behind, the stop still ends."""
    a_node, _ = pair.nodes
    a, _ = two(pair, 1)
    async with a.slot("u"):  # the queues are started
        pass
    queues: Any = a_node.state.queues  # type: ignore[attr-defined]
    release = asyncio.Event()

    async def holding_on() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    stubborn = asyncio.get_running_loop().create_task(holding_on())
    queues._loops.append(stubborn)
    try:
        async with asyncio.timeout(5 * UNIT):
            await a_node.state.stop()
        assert not stubborn.done()  # left behind, not waited for
    finally:
        release.set()
        await stubborn


async def test_a_waiter_cancelled_while_redis_is_unreachable_never_keeps_a_slot() -> None:
    """Its leave fails: retried by the polls once Redis is back, so the grant that reaches
    its id (nobody waits for it on that node) is given back, not held for ever."""
    async with proxied_pair(CutProxy()) as (a, b, proxy):
        qa, qb = a.state.queue(KEY, 1), b.state.queue(KEY, 1)
        assert isinstance(qa, RedisFairQueue) and isinstance(qb, RedisFairQueue)
        served: list[str] = []
        requests: list[Request] = []
        try:
            first = await holder(qb, served)
            queued = Request(qa, "a1", "a", served)
            requests += [first, queued]
            await eventually(lambda: queued.position == 1)
            await proxy.cut()
            queued.task.cancel()  # its leave cannot reach Redis
            await asyncio.gather(queued.task, return_exceptions=True)
            await eventually(lambda: not qa.queues._tasks)  # the leave failed
            await proxy.start()  # back well within the TTL: a is alive all along
            # a's polls retried what failed (before the slot is handed on)
            await eventually(lambda: not qa._unreleased and not qa._unleft)
            first.finish()
            later = Request(qb, "b2", "b2", served)
            requests.append(later)
            async with asyncio.timeout(TTL + 4 * UNIT):  # not behind a slot nobody uses
                await later.started.wait()
            later.finish()
            await eventually(lambda: redis_state(qb), 2 * UNIT)
        finally:
            await cleanup(*requests)
