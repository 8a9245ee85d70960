"""The cluster-state contract (``agentcast/cluster/base.py``), run against every
implementation: in-process (``memory://``, one node), one Redis node, and two nodes on one
Redis (``redis://``: real Redis on 127.0.0.1:6379, a fresh key prefix per test, its keys
deleted afterwards; never a FLUSH).

Each node is given a real :class:`~agentcast.core.ratelimit.RateLimiter` and a presence
table as its :class:`~agentcast.cluster.base.LocalView`. Waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import pytest

from agentcast.cluster import ClusterState, LocalState, create_cluster_state
from agentcast.core.ratelimit import Rate, RateLimiter
from agentcast.errors import BrokerError, ConfigError
from tests.conftest import UNIT
from tests.services import require_service

REDIS = os.environ.get("AGENTCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
HEARTBEAT, TTL, SYNC = 0.1, 0.5, 0.05


class View:
    """A node's local side: a real rate limiter and a table of local subscribers."""

    def __init__(self) -> None:
        self.limiter = RateLimiter()
        self.limiter.set_rate("chat", Rate.per_minute(60))
        self.subscribers: dict[str, tuple[dict[str, int], int]] = {}
        self.now = 0.0

    def local_presence(self, topic: str) -> tuple[dict[str, int], int]:
        return self.subscribers.get(topic, ({}, 0))

    def local_topics(self) -> Iterable[str]:
        return list(self.subscribers)

    def take_drawn(self) -> dict[str, dict[str, float]]:
        return self.limiter.take_drawn()

    def charge(self, subject: str, kind: str, tokens: float) -> None:
        self.limiter.charge(subject, kind, tokens, self.now)


@dataclass
class Node:
    state: ClusterState
    view: View = field(default_factory=View)


async def redis_reachable() -> str | None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS, socket_connect_timeout=UNIT)
    try:
        await client.ping()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


async def delete_prefix(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS)
    try:
        keys = [key async for key in client.scan_iter(match="{" + prefix + "}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass
class Cluster:
    kind: str
    url: str
    nodes: list[Node]
    prefix: str = ""

    def open(self) -> Node:
        """Start one more node on the same backend (not yet started)."""
        return Node(
            create_cluster_state(self.url, heartbeat=HEARTBEAT, ttl=TTL, sync_interval=SYNC)
        )


CASES = ["memory", "redis", "redis, two nodes"]


async def _build(kind: str) -> Cluster:
    if kind == "memory":
        url, prefix = "memory://", ""
    else:
        why = await redis_reachable()
        if why is not None:
            require_service(f"Redis not reachable at {REDIS} ({why})")
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        url = f"{REDIS}?prefix={prefix}"
    made = Cluster(kind, url, [], prefix)
    made.nodes = [made.open() for _ in range(2 if "two" in kind else 1)]
    for node in made.nodes:
        await node.state.start(node.view)
    return made


async def _close(made: Cluster) -> None:
    for node in made.nodes:
        await node.state.stop()
    if made.prefix:
        await delete_prefix(made.prefix)


@pytest.fixture(params=CASES)
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Every implementation: memory (one node), one Redis node, two Redis nodes."""
    made = await _build(request.param)
    try:
        yield made
    finally:
        await _close(made)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes on one Redis (the in-process state is one node by definition)."""
    made = await _build("redis, two nodes")
    try:
        yield made.nodes[0], made.nodes[1]
    finally:
        await _close(made)


async def eventually(check: Callable[[], object], timeout: float = 4 * UNIT) -> None:
    """Poll ``check`` (sync or async) until it is truthy, within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await asyncio.sleep(0.01)


async def reserve(node: Node, subject: str, limit: int) -> int | None:
    pending = node.state.reserve(subject, limit)
    return None if pending is None else await pending


async def abandon(node: Node) -> None:
    """The node dies: no more heartbeats, nothing withdrawn (as after SIGKILL)."""
    state = node.state
    for task in getattr(state, "_tasks", []):
        task.cancel()
    client = getattr(state, "_client", None)
    state._client = None  # type: ignore[attr-defined]
    state._tasks = []  # type: ignore[attr-defined]
    if client is not None:
        await client.aclose()


# -- every implementation ------------------------------------------------------------------


async def test_node_id_is_host_pid_random(cluster: Cluster) -> None:
    ids = [node.state.node for node in cluster.nodes]
    for node_id in ids:
        host, pid, random = node_id.rsplit(":", 2)
        assert host and pid == str(os.getpid()) and len(random) == 6
    assert len(set(ids)) == len(ids)


async def test_reserve_counts_up_to_the_limit(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    if not node.state.distributed:  # one process: the gateway's own count is the total
        assert node.state.reserve("alice", 1) is None
        assert isinstance(node.state, LocalState) and node.state.nodes() == 1
        return
    assert await reserve(node, "alice", 2) is None
    assert await reserve(node, "alice", 2) is None
    assert await reserve(node, "alice", 2) == 2  # refused: the user holds 2
    assert await reserve(node, "bob", 2) is None  # per user
    node.state.release("alice")
    assert await reserve(node, "alice", 2) is None


async def test_a_storm_of_reservations_is_granted_in_order_up_to_the_limit(
    cluster: Cluster,
) -> None:
    node = cluster.nodes[0]
    if not node.state.distributed:
        return  # nothing to reserve in one process (see above)
    asked = [("alice" if i % 3 else "bob", i) for i in range(60)]  # 40 alice, 20 bob
    results = await asyncio.gather(*(reserve(node, user, 10) for user, _ in asked))
    for user in ("alice", "bob"):
        mine = [r for (u, _), r in zip(asked, results, strict=True) if u == user]
        # the first 10 asked are granted, every later one refused with the count held
        assert mine[:10] == [None] * 10 and mine[10:] == [10] * (len(mine) - 10), mine
    state = node.state
    assert state.counts == {"alice": 10, "bob": 10}  # type: ignore[attr-defined]


async def test_presence_of_the_others(cluster: Cluster) -> None:
    first = cluster.nodes[0]
    first.view.subscribers["room:1"] = ({"alice": 2}, 1)
    first.state.topic_changed("room:1")
    # a node's own subscribers are never reported back to it (the gateway adds its hub's)
    found = await first.state.presence("room:1")
    assert found.users == {} and found.connections == 0
    if len(cluster.nodes) < 2:
        return
    second = cluster.nodes[1]

    async def seen() -> bool:
        found = await second.state.presence("room:1")
        return found.users == {"alice": 2} and found.anonymous == 1 and found.nodes == 1

    await eventually(seen)
    first.view.subscribers.pop("room:1")
    first.state.topic_changed("room:1")

    async def gone() -> bool:
        return (await second.state.presence("room:1")).connections == 0

    await eventually(gone)


async def test_stop_withdraws_at_once(cluster: Cluster) -> None:
    if len(cluster.nodes) < 2:
        await cluster.nodes[0].state.stop()  # and a second stop is harmless
        return
    first, second = cluster.nodes
    assert await reserve(first, "alice", 1) is None
    assert await reserve(second, "alice", 1) == 1
    first.view.subscribers["room:2"] = ({"alice": 1}, 0)
    first.state.topic_changed("room:2")
    await eventually(lambda: _users(second, "room:2"))
    await first.state.stop()
    # no TTL to wait for: a clean stop withdrew the counts and the presence
    assert await reserve(second, "alice", 1) is None
    assert (await second.state.presence("room:2")).connections == 0


async def _users(node: Node, topic: str) -> dict[str, int]:
    return (await node.state.presence(topic)).users


# -- across nodes (two Redis nodes) --------------------------------------------------------


async def test_the_limit_holds_across_nodes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await reserve(a, "alice", 2) is None
    assert await reserve(b, "alice", 2) is None
    assert await reserve(a, "alice", 2) == 2
    assert await reserve(b, "alice", 2) == 2
    a.state.release("alice")  # propagated by the next sync, woken at once

    async def free_on_b() -> bool:
        granted = await reserve(b, "alice", 2) is None
        return granted

    await eventually(free_on_b)
    assert await reserve(a, "alice", 2) == 2


async def test_concurrent_reservations_never_exceed_the_limit(pair: tuple[Node, Node]) -> None:
    a, b = pair
    for round in range(20):
        user = f"u{round}"
        results = await asyncio.gather(
            *(reserve(node, user, 3) for node in (a, b, a, b, a, b, a, b))
        )
        assert sum(1 for r in results if r is None) == 3, results


async def test_a_dead_nodes_counts_and_presence_expire(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await reserve(a, "alice", 1) is None
    a.view.subscribers["room:3"] = ({"alice": 1}, 0)
    a.state.topic_changed("room:3")
    await eventually(lambda: _users(b, "room:3"))
    assert await reserve(b, "alice", 1) == 1
    await abandon(a)
    loop = asyncio.get_running_loop()
    died = loop.time()
    assert await reserve(b, "alice", 1) == 1  # still counted: within its TTL

    async def expired() -> bool:
        return await reserve(b, "alice", 1) is None

    await eventually(expired, TTL + 4 * UNIT)
    assert loop.time() - died >= TTL * 0.5  # it expired, it was not withdrawn
    assert (await b.state.presence("room:3")).connections == 0
    await eventually(lambda: b.state.nodes() == 1)  # and it is no longer listed as live


async def test_rate_consumption_is_charged_on_the_other_node(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # bob makes a connection on each node (his user bucket exists on both)
    a_bucket = a.view.limiter.user_bucket("bob", "chat", 0.0)
    b_bucket = b.view.limiter.user_bucket("bob", "chat", 0.0)
    assert a_bucket is not None and b_bucket is not None
    for _ in range(50):
        assert a.view.limiter.take("bob", "chat", 0.0) == 0.0
    await eventually(lambda: b_bucket.tokens <= 60 - 50 + 1e-9)
    assert b_bucket.tokens == pytest.approx(10.0)
    # b's bucket now refuses the 11th message: the limit is the user's, not the node's
    for _ in range(10):
        assert b.view.limiter.take("bob", "chat", 0.0) == 0.0
    assert b.view.limiter.take("bob", "chat", 0.0) > 0
    # and b's draws reach a: together they drew 60 of 60
    await eventually(lambda: a_bucket.tokens <= 1e-9)


async def test_bad_rate_messages_are_skipped(pair: tuple[Node, Node]) -> None:
    _, b = pair
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS)
    channel = "{" + b.state.prefix + "}:rates"  # type: ignore[attr-defined]
    try:
        for junk in (
            b"not json",
            b"[]",
            b'{"n": "x", "d": {"bob": {"chat": "many"}}}',
            b'{"n": "x", "d": {"bob": 3}}',
            b'{"n": "x"}',
        ):
            await client.publish(channel, junk)
        await client.publish(channel, b'{"n": "x", "d": {"bob": {"chat": 5}}}')
    finally:
        await client.aclose()
    bucket = b.view.limiter.user_bucket("bob", "chat", 0.0)
    assert bucket is not None
    await eventually(lambda: bucket.tokens <= 55 + 1e-9)
    assert bucket.tokens == pytest.approx(55.0)


# -- configuration -------------------------------------------------------------------------


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown cluster URL scheme"):
        create_cluster_state("nats://x")


async def test_unreachable_redis_is_a_clear_error() -> None:
    state = create_cluster_state("redis://127.0.0.1:1/0", heartbeat=0.1, ttl=0.5)
    with pytest.raises(BrokerError, match="Redis unreachable"):
        await state.start(View())
    await state.stop()


# -- Redis lost and back -------------------------------------------------------------------


class Proxy:
    """A TCP proxy to Redis that the test can cut and restore (the shared Redis itself is
    never stopped)."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._pipe, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
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
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def proxied_pair(proxy: Proxy | None = None) -> AsyncIterator[tuple[Node, Node, Proxy]]:
    """Two nodes on one real Redis (a fresh prefix, deleted afterwards), the first through
    ``proxy`` (a :class:`Proxy` by default), which the test can cut and start again."""
    why = await redis_reachable()
    if why is not None or not REDIS.startswith("redis://127.0.0.1:6379"):
        require_service(f"Redis not reachable at 127.0.0.1:6379 ({why})")
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    proxy = proxy or Proxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"
    a = Node(create_cluster_state(url, heartbeat=HEARTBEAT, ttl=TTL, sync_interval=SYNC))
    b = Node(
        create_cluster_state(
            f"{REDIS}?prefix={prefix}", heartbeat=HEARTBEAT, ttl=TTL, sync_interval=SYNC
        )
    )
    await a.state.start(a.view)
    await b.state.start(b.view)
    try:
        yield a, b, proxy
    finally:
        await a.state.stop()
        await b.state.stop()
        with contextlib.suppress(Exception):
            await proxy.cut()
        await delete_prefix(prefix)


async def test_redis_lost_fails_open_and_the_node_rewrites_its_part_when_back() -> None:
    async with proxied_pair() as (a, b, proxy):
        assert await reserve(a, "alice", 2) is None
        await proxy.cut()
        # Redis unreachable from a: its handshakes are admitted on its own count (fail open)
        assert await reserve(a, "alice", 2) is None
        assert a.state.errors > 0
        # b still admits alice: Redis holds 1 of a's (the fail-open one was never written)

        async def b_admits() -> bool:
            return await reserve(b, "alice", 2) is None

        await eventually(b_admits, TTL + 4 * UNIT)
        await proxy.start()  # back, on the same port

        async def a_counted_again() -> bool:
            held = await reserve(b, "alice", 2)
            if held is None:
                b.state.release("alice")
                return False
            return held == 3  # a's 2 (rewritten in full) and b's 1

        await eventually(a_counted_again, TTL + 8 * UNIT)


def test_a_shared_broker_urls_own_parameters_are_not_given_to_redis_py() -> None:
    from agentcast.cluster.redis import RedisClusterState

    state = RedisClusterState("redis://h:6379/2?prefix=prod&stream_maxlen=1000&socket_timeout=2")
    assert state.prefix == "prod" and state.url == "redis://h:6379/2?socket_timeout=2"
    assert state.k_conns == "{prod}:conns:" + state.node
