"""The broker contract (``agentcast/brokers/base.py``), run against every broker.

Each broker is reached through a :class:`Backend`: the broker's server (for the memory
broker, a :class:`MemoryBackend` object) and a way to open instances on it. Every test
that takes ``nodes`` runs twice: with one instance that publishes and listens, and with
two instances on one backend (two nodes: one publishes, the other listens). A new broker
joins by adding a factory to ``BACKENDS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from agentcast.brokers import base as contract
from agentcast.brokers.base import DURABLE_EPOCH, Broker, Draft
from agentcast.brokers.memory import MemoryBackend, MemoryBroker
from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryLimits
from agentcast.errors import BrokerError, PublishOutcomeUnknownError
from tests.broker_support import RemoteLikeBroker
from tests.conftest import UNIT
from tests.services import delete_prefix, redis_prefix, require_redis

LIMITS = HistoryLimits(max_events=5, max_bytes=1 << 20, max_age=60)


@dataclass
class Backend:
    """One broker server as the suite sees it."""

    open: Callable[[], Broker]
    """A new, unstarted instance on this backend (another node)."""
    lose_data: Callable[[], Awaitable[None]]
    """Lose everything, as a restarted or flushed server does."""
    close: Callable[[], Awaitable[None]]


def memory_backend(limits: HistoryLimits, remote_like: bool = False) -> Backend:
    backend = MemoryBackend(limits)

    def open() -> Broker:
        if remote_like:
            return RemoteLikeBroker(lambda: 3, backend=backend)
        return MemoryBroker(backend=backend)

    async def lose_data() -> None:
        backend.flush()

    async def close() -> None:
        pass

    return Backend(open, lose_data, close)


def remote_like_backend(limits: HistoryLimits) -> Backend:
    """The memory backend reached as if over a network (no synchronous capability; every
    call and notification a few loop steps late): checks that the suite waits as it must
    for a remote broker."""
    return memory_backend(limits, remote_like=True)


def redis_backend(limits: HistoryLimits) -> Backend:
    """A real Redis server (``tests.services.REDIS``), under a key prefix of its own: its
    data is lost by deleting every key of that prefix, as a flushed server would be."""
    from agentcast.brokers.redis import RedisBroker

    url = require_redis()
    prefix = redis_prefix()

    def open() -> Broker:
        return RedisBroker(f"{url}?prefix={prefix}", limits, name=prefix)

    async def lose_data() -> None:
        await delete_prefix(url, prefix)

    return Backend(open, lose_data, lambda: delete_prefix(url, prefix))


BACKENDS: dict[str, Callable[[HistoryLimits], Backend]] = {
    "memory": memory_backend,
    "memory, remote-like": remote_like_backend,
    "redis": redis_backend,
}


class Recorder:
    """A listener that records what it is given and wakes waiters."""

    def __init__(self) -> None:
        self.got: list[Publication] = []
        self.changed = asyncio.Event()

    def __call__(self, pub: Publication) -> None:
        self.got.append(pub)
        self.changed.set()

    def seqs(self, topic: str) -> list[int]:
        return [p.seq for p in self.got if p.topic == topic]

    async def wait_for(self, check: Callable[[], bool], timeout: float = UNIT) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Nodes:
    """``pub`` publishes, ``sub`` listens (``rec``); the same instance or two nodes."""

    backend: Backend
    pub: Broker
    sub: Broker
    rec: Recorder
    pub_rec: Recorder
    started: list[Broker] = field(default_factory=list)

    async def node(self) -> tuple[Broker, Recorder]:
        """One more started instance on the backend."""
        broker, rec = self.backend.open(), Recorder()
        await broker.start(rec)
        self.started.append(broker)
        return broker, rec


@pytest.fixture(params=sorted(BACKENDS))
async def backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[HistoryLimits], Backend]]:
    made: list[Backend] = []

    def make(limits: HistoryLimits = LIMITS) -> Backend:
        made.append(BACKENDS[request.param](limits))
        return made[-1]

    try:
        yield make
    finally:
        for b in made:
            await b.close()


async def open_nodes(backend: Backend, two: bool) -> Nodes:
    pub, pub_rec = backend.open(), Recorder()
    await pub.start(pub_rec)
    if two:
        sub, rec = backend.open(), Recorder()
        await sub.start(rec)
    else:
        sub, rec = pub, pub_rec
    return Nodes(backend, pub, sub, rec, pub_rec, [pub, sub] if two else [pub])


@pytest.fixture(params=["one node", "two nodes"])
async def nodes(
    request: pytest.FixtureRequest, backend: Callable[[HistoryLimits], Backend]
) -> AsyncIterator[Nodes]:
    n = await open_nodes(backend(LIMITS), request.param == "two nodes")
    try:
        yield n
    finally:
        for b in n.started:
            await b.stop()


# -- 1. gapless sequence numbers ------------------------------------------------------------


async def test_gapless_sequence_per_topic(nodes: Nodes) -> None:
    b = nodes.pub
    seqs = [(await b.publish("a", "e", b"{}", 1.0)).seq for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert (await nodes.sub.publish("b", "e", b"{}", 1.0)).seq == 1
    assert (await b.publish("a", "e", b"{}", 1.0)).seq == 4
    assert nodes.sub.topics()["a"] == 4 and nodes.sub.topics()["b"] == 1


async def test_concurrent_publishes_on_two_nodes_get_distinct_gapless_seqs(
    backend: Callable[[HistoryLimits], Backend],
) -> None:
    n = await open_nodes(backend(HistoryLimits(max_events=1000)), two=True)
    try:
        await n.pub.listen("c")
        await n.sub.listen("c")

        def batch(k: int) -> list[Draft]:
            return [Draft("c", "e", b'{"k":%d}' % k, 1.0)] * 3

        pubs = await asyncio.gather(
            *(b.publish("c", "e", b"{}", 1.0) for _ in range(40) for b in (n.pub, n.sub)),
            *(b.publish_many(batch(k)) for k in range(10) for b in (n.pub, n.sub)),
        )
        flat = [p for item in pubs for p in (item if isinstance(item, list) else [item])]
        assert sorted(p.seq for p in flat) == list(range(1, 80 + 60 + 1))
        for rec in (n.rec, n.pub_rec):  # every node is told of every publication, in order
            await rec.wait_for(lambda rec=rec: len(rec.seqs("c")) == 140)
            assert rec.seqs("c") == list(range(1, 141))
    finally:
        await n.pub.stop()
        await n.sub.stop()


# -- 2. history before notification -----------------------------------------------------------


async def test_history_is_written_before_notification(nodes: Nodes) -> None:
    seen: list[bool] = []
    tasks: list[asyncio.Task[None]] = []

    async def check(pub: Publication) -> None:
        page = await nodes.pub.history(pub.topic, pub.seq - 1)
        seen.append([p.seq for p in page.publications][:1] == [pub.seq])

    rec = Recorder()

    def listener(pub: Publication) -> None:
        tasks.append(asyncio.create_task(check(pub)))
        rec(pub)

    await nodes.sub.stop()
    await nodes.sub.start(listener)
    await nodes.sub.listen("h")
    for _ in range(3):
        await nodes.pub.publish("h", "e", b"{}", 1.0)
    await rec.wait_for(lambda: len(tasks) == 3)
    async with asyncio.timeout(UNIT):
        await asyncio.gather(*tasks)
    assert seen == [True, True, True]


# -- 3. listening, in order -------------------------------------------------------------------


async def test_listeners_get_listened_topics_in_order(nodes: Nodes) -> None:
    b, rec = nodes.pub, nodes.rec
    await nodes.sub.listen("x")
    await nodes.sub.listen("x")  # idempotent
    for n in range(4):
        await b.publish("x", "e", b'{"n":%d}' % n, 1.0)
        await b.publish("y", "e", b"{}", 1.0)
    await rec.wait_for(lambda: len(rec.seqs("x")) == 4)
    assert [(p.topic, p.seq, p.data) for p in rec.got if p.topic == "x"] == [
        ("x", n + 1, b'{"n":%d}' % n) for n in range(4)
    ]
    await nodes.sub.unlisten("x")
    await nodes.sub.unlisten("x")
    await b.publish("x", "e", b"{}", 1.0)
    await nodes.sub.listen("y")
    await b.publish("y", "e", b"{}", 1.0)
    await rec.wait_for(lambda: 5 in rec.seqs("y"))
    assert rec.seqs("x") == [1, 2, 3, 4]  # nothing of x after unlisten (before y's 5)


async def test_listen_then_every_later_publication_is_delivered(nodes: Nodes) -> None:
    """What the resume merge relies on: after ``listen()`` returns, a history read's last
    seq L, then every seq after L arrives as a notification, in order."""
    stop = asyncio.Event()
    published: list[int] = []
    progress = asyncio.Event()

    async def producer() -> None:
        while not stop.is_set():
            published.append((await nodes.pub.publish("l", "e", b"{}", 1.0)).seq)
            progress.set()
            await asyncio.sleep(0)

    async def until(count: int) -> None:
        async with asyncio.timeout(UNIT):
            while len(published) < count:
                progress.clear()
                await progress.wait()

    task = asyncio.create_task(producer())
    try:
        await until(20)
        await nodes.sub.listen("l")
        last = (await nodes.sub.history("l", 0, limit=0)).last_seq
        await until(last + 20)
    finally:
        stop.set()
        await task
    final = published[-1]
    rec = nodes.rec
    await rec.wait_for(lambda: bool(rec.seqs("l")) and rec.seqs("l")[-1] == final)
    got = rec.seqs("l")
    assert got == sorted(set(got)), "notifications in seq order, each once"
    assert set(range(last + 1, final + 1)) <= set(got)


async def test_prefix_listen(nodes: Nodes) -> None:
    rec = nodes.rec
    await nodes.sub.listen_prefix("run:")
    await nodes.sub.listen_prefix("run:")
    await nodes.pub.publish("run:1", "e", b"{}", 1.0)
    await nodes.pub.publish("other", "e", b"{}", 1.0)
    await nodes.pub.publish("run:2", "e", b"{}", 1.0)
    await rec.wait_for(lambda: len(rec.got) >= 2)
    assert [p.topic for p in rec.got] == ["run:1", "run:2"]


async def test_no_listener_call_after_stop(nodes: Nodes) -> None:
    await nodes.sub.listen("s")
    await nodes.sub.stop()
    nodes.started.remove(nodes.sub)
    if nodes.sub is nodes.pub:
        with pytest.raises(BrokerError):
            await nodes.pub.publish("s", "e", b"{}", 1.0)
        return
    await nodes.pub.publish("s", "e", b"{}", 1.0)
    await nodes.pub.publish("s", "e", b"{}", 1.0)
    marker = nodes.pub_rec
    await nodes.pub.listen("m")
    await nodes.pub.publish("m", "e", b"{}", 1.0)
    await marker.wait_for(lambda: bool(marker.got))  # the backend delivered meanwhile
    assert nodes.rec.got == []


# -- 4. bounded history -----------------------------------------------------------------------


async def test_history_count_bound_and_loss_report(nodes: Nodes) -> None:
    b = nodes.pub
    for _ in range(8):
        await b.publish("k", "e", b"{}", 1.0)
    page = await nodes.sub.history("k", 0)
    assert [p.seq for p in page.publications] == [4, 5, 6, 7, 8]
    assert (page.first_seq, page.last_seq, page.complete) == (4, 8, False)
    page = await nodes.sub.history("k", 5, limit=2)
    assert [p.seq for p in page.publications] == [6, 7]
    assert page.complete
    assert (await nodes.sub.history("k", 8)).publications == []
    empty = await nodes.sub.history("never", 0)
    assert (empty.publications, empty.first_seq, empty.last_seq, empty.complete) == ([], 1, 0, True)


async def test_history_byte_bound_keeps_the_newest(
    backend: Callable[[HistoryLimits], Backend],
) -> None:
    n = await open_nodes(backend(HistoryLimits(max_events=100, max_bytes=3 * 228)), two=True)
    try:
        for _ in range(6):
            await n.pub.publish("b", "e", b"x" * 100, 1.0)  # 100 + 128 bytes each
        page = await n.sub.history("b", 0)
        assert [p.seq for p in page.publications] == [4, 5, 6]
        await n.pub.publish("b", "e", b"y" * 5000, 1.0)  # alone beyond the bound: kept
        page = await n.sub.history("b", 0)
        assert [p.seq for p in page.publications] == [7]
        assert page.publications[0].data == b"y" * 5000
    finally:
        await n.pub.stop()
        await n.sub.stop()


async def test_history_age_bound_applied_by_trim(nodes: Nodes) -> None:
    for at in (100.0, 130.0, 170.0):
        await nodes.pub.publish("g", "e", b"{}", at)
    await nodes.sub.listen("g")
    await nodes.sub.trim(now=100.0 + 60 + 1)  # max_age 60: seq 1 is too old
    page = await nodes.pub.history("g", 0)
    assert ([p.seq for p in page.publications], page.first_seq, page.last_seq) == ([2, 3], 2, 3)
    await nodes.pub.trim(now=1e6)
    page = await nodes.sub.history("g", 0)
    assert (page.publications, page.first_seq, page.last_seq) == ([], 4, 3)  # numbering kept


# -- 5. epochs --------------------------------------------------------------------------------


async def test_epochs_are_stable_within_a_life_and_change_on_reset(nodes: Nodes) -> None:
    p1 = await nodes.pub.publish("ep", "e", b"{}", 1.0)
    await nodes.sub.listen("ep")
    p2 = await nodes.pub.publish("ep", "e", b"{}", 1.0)
    page = await nodes.sub.history("ep", 0)
    assert p1.epoch and p1.epoch == p2.epoch == page.epoch
    await nodes.rec.wait_for(lambda: bool(nodes.rec.got))
    assert nodes.rec.got[-1].epoch == page.epoch

    await nodes.backend.lose_data()
    again = await nodes.pub.publish("ep", "e", b"{}", 1.0)
    assert again.seq == 1 and again.epoch != page.epoch
    assert (await nodes.sub.history("ep", 0)).epoch == again.epoch
    await nodes.rec.wait_for(lambda: nodes.rec.got[-1].seq == 1)
    assert nodes.rec.got[-1].epoch == again.epoch  # listeners learn the new life


async def test_a_forgotten_topic_gets_a_new_epoch_a_listened_one_does_not(nodes: Nodes) -> None:
    idle = await nodes.pub.publish("idle", "e", b"{}", 1.0)
    kept = await nodes.pub.publish("kept", "e", b"{}", 1.0)
    await nodes.sub.listen("kept")
    await nodes.sub.trim(now=1e6)  # both histories age out; only "idle" is listened to by nobody
    idle2 = await nodes.pub.publish("idle", "e", b"{}", 1e6)
    kept2 = await nodes.pub.publish("kept", "e", b"{}", 1e6)
    assert idle2.seq == 1 and idle2.epoch != idle.epoch
    assert kept2.seq == 2 and kept2.epoch == kept.epoch


async def test_durable_topics_continue_numbering_with_the_durable_epoch(nodes: Nodes) -> None:
    await nodes.pub.declare_durable(["run:"])
    assert (await nodes.sub.publish("run:new", "e", b"{}", 1.0)).epoch == DURABLE_EPOCH
    await nodes.pub.publish("run:busy", "e", b"{}", 1.0)
    await nodes.pub.continue_numbering({"run:old": 41, "run:busy": 10, "run:new": 0})
    old = await nodes.sub.publish("run:old", "e", b"{}", 1.0)
    assert (old.seq, old.epoch) == (42, DURABLE_EPOCH)
    page = await nodes.pub.history("run:old", 0)
    assert (page.first_seq, page.last_seq, page.epoch) == (42, 42, DURABLE_EPOCH)
    # retaining publications (or numbered beyond): left as is
    assert (await nodes.pub.publish("run:busy", "e", b"{}", 1.0)).seq == 2
    assert (await nodes.pub.publish("run:new", "e", b"{}", 1.0)).seq == 2
    assert (await nodes.pub.publish("plain", "e", b"{}", 1.0)).epoch != DURABLE_EPOCH


async def test_a_forgotten_durable_topic_keeps_its_numbering(nodes: Nodes) -> None:
    await nodes.pub.declare_durable(["run:"])
    await nodes.pub.declare_durable(["chat:"])  # adds to the first declaration
    for topic in ("run:idle", "chat:idle"):
        for _ in range(3):
            await nodes.pub.publish(topic, "e", b"{}", 1.0)
    await nodes.sub.trim(now=1e6)  # aged out, listened to by nobody
    for topic in ("run:idle", "chat:idle"):
        page = await nodes.sub.history(topic, 3)
        assert (page.last_seq, page.epoch, page.complete) == (3, DURABLE_EPOCH, True)
        again = await nodes.pub.publish(topic, "e", b"{}", 1e6)
        assert (again.seq, again.epoch) == (4, DURABLE_EPOCH)
    # continued from a store before first use: history says so before any publish
    await nodes.pub.continue_numbering({"chat:stored": 9})
    page = await nodes.sub.history("chat:stored", 9)
    assert (page.first_seq, page.last_seq, page.epoch, page.complete) == (
        10,
        9,
        DURABLE_EPOCH,
        True,
    )
    assert not (await nodes.sub.history("chat:stored", 5)).complete


async def test_a_lost_durable_numbering_does_not_keep_the_durable_epoch(nodes: Nodes) -> None:
    await nodes.pub.declare_durable(["run:"])
    await nodes.pub.publish("run:r", "e", b"{}", 1.0)
    await nodes.backend.lose_data()
    restarted = await nodes.pub.publish("run:r", "e", b"{}", 1.0)
    assert restarted.seq == 1 and restarted.epoch != DURABLE_EPOCH
    await nodes.pub.continue_numbering({"run:s": 7})
    assert (await nodes.pub.publish("run:s", "e", b"{}", 1.0)).epoch == DURABLE_EPOCH


# -- 6. what a publisher learns ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BACKENDS))
async def test_publish_before_start_assigns_nothing(name: str) -> None:
    backend = BACKENDS[name](LIMITS)
    b = backend.open()
    try:
        for attempt in (b.publish("z", "e", b"{}", 1.0), b.publish_many([Draft("z", "e", b"", 1)])):
            with pytest.raises(BrokerError) as raised:
                await attempt
            assert not isinstance(raised.value, PublishOutcomeUnknownError)  # never sent
        if b.publish_sync is not None:
            with pytest.raises(BrokerError):
                b.publish_sync("z", "e", b"{}", 1.0)
        await b.start(Recorder())
        assert (await b.publish("z", "e", b"{}", 1.0)).seq == 1  # nothing was assigned
        await b.stop()
    finally:
        await backend.close()


def test_unknown_outcome_is_a_broker_error_and_documented() -> None:
    assert issubclass(PublishOutcomeUnknownError, BrokerError)
    doc = " ".join((contract.__doc__ or "").split())
    assert "PublishOutcomeUnknownError" in doc
    assert "never report an unknown outcome as plain ``BrokerError``" in doc
    assert (
        "every publication of that topic assigned afterwards, by any process, is delivered" in doc
    )


async def test_publication_fields(nodes: Nodes) -> None:
    pub = await nodes.pub.publish("f", "node_status", b'{"a":1}', 1700000000.25)
    assert (pub.topic, pub.seq, pub.type, pub.data, pub.at) == (
        "f",
        1,
        "node_status",
        b'{"a":1}',
        1700000000.25,
    )
    assert pub.timestamp == "2023-11-14T22:13:20.250000Z"
    (stored,) = (await nodes.sub.history("f", 0)).publications
    assert (stored.topic, stored.seq, stored.type, stored.data, stored.at, stored.timestamp) == (
        pub.topic,
        pub.seq,
        pub.type,
        pub.data,
        pub.at,
        pub.timestamp,
    )


# -- 7. batches -------------------------------------------------------------------------------


async def test_batch_publish_is_ordered_and_atomic(nodes: Nodes) -> None:
    assert await nodes.pub.publish_many([]) == []
    await nodes.sub.listen("p")
    await nodes.sub.listen("q")
    drafts = [Draft("p" if i % 3 else "q", f"e{i}", b'{"i":%d}' % i, 1.0 + i) for i in range(9)]
    pubs = await nodes.pub.publish_many(drafts)
    assert [(p.topic, p.type, p.data, p.at) for p in pubs] == [tuple(d)[:4] for d in drafts]
    assert [p.seq for p in pubs if p.topic == "p"] == [1, 2, 3, 4, 5, 6]
    assert [p.seq for p in pubs if p.topic == "q"] == [1, 2, 3]
    rec = nodes.rec
    await rec.wait_for(lambda: len(rec.got) == 9)
    assert [(p.topic, p.seq) for p in rec.got if p.topic == "p"] == [("p", s) for s in range(1, 7)]
    assert [p.type for p in rec.got] == [p.type for p in pubs]


async def test_concurrent_batches_from_two_nodes_do_not_interleave(
    backend: Callable[[HistoryLimits], Backend],
) -> None:
    n = await open_nodes(backend(HistoryLimits(max_events=1000)), two=True)
    try:
        await n.sub.listen("i")

        def batch(node: int, k: int) -> list[Draft]:
            return [Draft("i", f"n{node}b{k}", b"{}", 1.0) for _ in range(5)]

        results = await asyncio.gather(
            *(b.publish_many(batch(i, k)) for k in range(20) for i, b in enumerate((n.pub, n.sub)))
        )
        for pubs in results:
            seqs = [p.seq for p in pubs]
            assert seqs == list(range(seqs[0], seqs[0] + 5)), "a batch's seqs are consecutive"
            assert len({p.type for p in pubs}) == 1
        await n.rec.wait_for(lambda: len(n.rec.got) == 200)
        assert n.rec.seqs("i") == list(range(1, 201))
    finally:
        await n.pub.stop()
        await n.sub.stop()


# -- 8. the synchronous capability ------------------------------------------------------------


async def test_sync_capability_is_consistent(nodes: Nodes) -> None:
    sync = nodes.pub.publish_sync
    assert sync is None or callable(sync)
    if sync is None:
        # no capability: a gateway on this broker says so and refuses the sync path
        from agentcast.errors import BrokerError
        from agentcast.gateway import Gateway

        gateway = Gateway(broker=nodes.pub)
        assert gateway.publishes_now is False
        with pytest.raises(BrokerError):
            gateway.publish_now("sy", "e", {})
        return
    await nodes.pub.listen("sy")
    first = sync("sy", "e", b"{}", 1.0)
    assert [p.seq for p in nodes.pub_rec.got] == [1]  # notified before it returned
    assert nodes.pub_rec.got[0].seq == first.seq == 1
    assert [p.seq for p in (await nodes.sub.history("sy", 0)).publications] == [1]
    second = await nodes.pub.publish("sy", "e", b"{}", 1.0)
    third = await nodes.sub.publish_many([Draft("sy", "e", b"{}", 1.0)])
    fourth = sync("sy", "e", b"{}", 1.0)
    assert [first.seq, second.seq, third[0].seq, fourth.seq] == [1, 2, 3, 4]
    assert first.epoch == fourth.epoch == (await nodes.sub.history("sy", 0)).epoch
    assert nodes.pub_rec.seqs("sy") == [1, 2, 3, 4]


def test_every_contract_method_is_abstract_or_defined_on_the_base() -> None:
    """A broker implements the contract, nothing besides it is needed by the gateway."""
    for name in (
        "start",
        "stop",
        "publish_many",
        "history",
        "listen",
        "unlisten",
        "listen_prefix",
        "topics",
        "trim",
        "declare_durable",
        "continue_numbering",
    ):
        assert name in Broker.__abstractmethods__, name
    assert Broker.publish_sync is None


# -- 9. idempotent producers ------------------------------------------------------------------


def _p(topic: str, pseq: int, producer: str = "prod-1", k: int = 0) -> Draft:
    return Draft(topic, "e", b'{"k":%d}' % k, 1.0, producer, pseq)


async def test_a_producers_retry_through_any_node_is_answered_with_the_original_seq(
    nodes: Nodes,
) -> None:
    await nodes.sub.listen("ip")
    first = (await nodes.pub.publish_many([_p("ip", 1)]))[0]
    assert not isinstance(first, contract.Duplicate) and first.seq == 1
    await nodes.rec.wait_for(lambda: nodes.rec.seqs("ip") == [1])
    # the answer was lost; the producer retries through the other node
    retry = (await nodes.sub.publish_many([_p("ip", 1)]))[0]
    assert isinstance(retry, contract.Duplicate)
    assert (retry.topic, retry.seq, retry.epoch) == ("ip", 1, first.epoch)
    second = (await nodes.sub.publish_many([_p("ip", 2)]))[0]
    assert not isinstance(second, contract.Duplicate) and second.seq == 2
    older = (await nodes.pub.publish_many([_p("ip", 1)]))[0]  # not the latest: still known
    assert isinstance(older, contract.Duplicate) and older.seq == 1
    # another producer, and drafts without one, are independent
    other = await nodes.pub.publish_many([_p("ip", 1, "prod-2"), Draft("ip", "e", b"{}", 1.0)])
    assert [type(p) for p in other] == [Publication, Publication]
    assert [p.seq for p in other] == [3, 4]
    await nodes.rec.wait_for(lambda: len(nodes.rec.seqs("ip")) >= 4)
    page = await nodes.sub.history("ip", 0)
    assert [p.seq for p in page.publications] == [1, 2, 3, 4]  # nothing published twice
    assert nodes.rec.seqs("ip") == [1, 2, 3, 4]  # and nobody notified of a retry
    final = (await nodes.pub.publish_many([Draft("ip", "e", b"{}", 1.0)]))[0]
    await nodes.rec.wait_for(lambda: final.seq in nodes.rec.seqs("ip"))
    assert nodes.rec.seqs("ip") == [1, 2, 3, 4, 5]


async def test_a_retried_batch_publishes_only_what_is_new(nodes: Nodes) -> None:
    pubs = await nodes.pub.publish_many([_p("ib", 1, k=1), _p("ib", 2, k=2), _p("jb", 3, k=3)])
    assert [(p.topic, p.seq) for p in pubs] == [("ib", 1), ("ib", 2), ("jb", 1)]
    again = await nodes.sub.publish_many(
        [_p("ib", 1, k=1), _p("ib", 2, k=2), _p("jb", 3, k=3), _p("ib", 4, k=4), _p("ib", 4)]
    )
    assert [isinstance(p, contract.Duplicate) for p in again] == [True, True, True, False, True]
    expected = [("ib", 1), ("ib", 2), ("jb", 1), ("ib", 3), ("ib", 3)]
    assert [(p.topic, p.seq) for p in again] == expected
    page = await nodes.pub.history("ib", 0)
    assert [(p.seq, p.data) for p in page.publications] == [
        (1, b'{"k":1}'),
        (2, b'{"k":2}'),
        (3, b'{"k":4}'),
    ]
    assert [p.seq for p in (await nodes.pub.history("jb", 0)).publications] == [1]


async def test_a_retry_older_than_the_window_is_a_duplicate_without_seq(nodes: Nodes) -> None:
    await nodes.pub.publish_many([_p("iw", 1)])
    far = 2 + contract.PRODUCER_WINDOW
    assert (await nodes.pub.publish_many([_p("iw", far)]))[0].seq == 2  # numbers may skip
    old = (await nodes.sub.publish_many([_p("iw", 1)]))[0]
    assert isinstance(old, contract.Duplicate) and old.seq == 0
    assert [p.seq for p in (await nodes.sub.history("iw", 0)).publications] == [1, 2]


async def test_an_idle_producer_is_forgotten_after_producer_ttl_memory() -> None:
    backend = MemoryBackend(HistoryLimits(max_events=5, max_age=3600), producer_ttl=60.0)
    broker = MemoryBroker(backend=backend)
    await broker.start(Recorder())
    try:
        await broker.publish_many([Draft("it", "e", b"{}", 1000.0, "prod-1", 1)])
        await broker.trim(1000.0 + 59.0)  # within the TTL: still a retry
        assert isinstance((await broker.publish_many([_p("it", 1)]))[0], contract.Duplicate)
        await broker.trim(1000.0 + 61.0)
        assert backend.producers == {}
        again = (await broker.publish_many([_p("it", 1)]))[0]  # forgotten: published again
        assert not isinstance(again, contract.Duplicate) and again.seq == 2
    finally:
        await broker.stop()


async def test_an_idle_producer_is_forgotten_after_producer_ttl_redis() -> None:
    import redis.asyncio as aioredis

    from agentcast.brokers.redis import RedisBroker

    url = require_redis()
    prefix = redis_prefix()
    broker = RedisBroker(f"{url}?prefix={prefix}", LIMITS, producer_ttl=0.3)
    await broker.start(Recorder())
    r = aioredis.Redis.from_url(url)
    try:
        await broker.publish_many([_p("it", 1)])
        key = f"{prefix}:p:prod-1"
        assert 0 < await r.pttl(key) <= 300
        async with asyncio.timeout(5 * UNIT):
            while await r.exists(key):  # noqa: ASYNC110 - Redis expires it, bounded above
                await asyncio.sleep(0.05)
        again = (await broker.publish_many([_p("it", 1)]))[0]
        assert not isinstance(again, contract.Duplicate) and again.seq == 2
        # a batch of nothing but retries for a topic that does not exist creates nothing
        assert isinstance((await broker.publish_many([_p("nt", 1)]))[0], contract.Duplicate)
        assert not await r.exists(f"{prefix}:m:nt")
    finally:
        await broker.stop()
        await r.aclose()
        await delete_prefix(url, prefix)


# -- 10. conditional publishes ----------------------------------------------------------------


def _x(topic: str, expect: int, k: int = 0) -> Draft:
    return Draft(topic, "e", b'{"k":%d}' % k, 1.0, expect_last_seq=expect)


async def test_a_conditional_publish_is_made_only_on_the_expected_last_seq(nodes: Nodes) -> None:
    await nodes.sub.listen("cx")
    await nodes.pub.publish_many([Draft("cx", "e", b"{}", 1.0)] * 2)
    made = (await nodes.pub.publish_many([_x("cx", 2, k=1)]))[0]
    assert type(made) is Publication and made.seq == 3
    refused = (await nodes.sub.publish_many([_x("cx", 2, k=2)]))[0]  # the other node, late
    assert isinstance(refused, contract.Conflict)
    assert (refused.topic, refused.seq, refused.epoch) == ("cx", 3, made.epoch)
    assert refused.data == b'{"k":2}'
    final = await nodes.pub.publish("cx", "e", b"{}", 1.0)
    await nodes.rec.wait_for(lambda: final.seq in nodes.rec.seqs("cx"))
    assert nodes.rec.seqs("cx") == [1, 2, 3, 4]  # nobody notified of the conflict
    page = await nodes.sub.history("cx", 0)
    assert [p.seq for p in page.publications] == [1, 2, 3, 4]
    assert page.publications[2].data == b'{"k":1}'


async def test_a_conditional_publish_on_a_new_topic_expects_zero(nodes: Nodes) -> None:
    refused = (await nodes.pub.publish_many([_x("cn", 5)]))[0]
    assert isinstance(refused, contract.Conflict) and refused.seq == 0
    assert (await nodes.sub.history("cn", 0)).last_seq == 0  # nothing made
    made = (await nodes.sub.publish_many([_x("cn", 0)]))[0]
    assert type(made) is Publication and made.seq == 1


async def test_conditions_in_a_batch_see_the_drafts_before_them(nodes: Nodes) -> None:
    pubs = await nodes.pub.publish_many(
        [_x("cb", 0), Draft("cb", "e", b"{}", 1.0), _x("cb", 2), _x("cb", 2), _x("cd", 0)]
    )
    assert [type(p).__name__ for p in pubs] == [
        "Publication",
        "Publication",
        "Publication",
        "Conflict",
        "Publication",
    ]
    assert [(p.topic, p.seq) for p in pubs] == [
        ("cb", 1),
        ("cb", 2),
        ("cb", 3),
        ("cb", 3),
        ("cd", 1),
    ]
    assert [p.seq for p in (await nodes.sub.history("cb", 0)).publications] == [1, 2, 3]


async def test_a_refused_condition_does_not_count_for_its_producer(nodes: Nodes) -> None:
    await nodes.pub.publish("cp", "e", b"{}", 1.0)
    cond = Draft("cp", "e", b"{}", 1.0, "prod-c", 1, expect_last_seq=0)
    assert isinstance((await nodes.pub.publish_many([cond]))[0], contract.Conflict)
    again = (await nodes.sub.publish_many([cond._replace(expect_last_seq=1)]))[0]
    assert type(again) is Publication and again.seq == 2  # not taken for a retry
    retry = (await nodes.pub.publish_many([cond._replace(expect_last_seq=1)]))[0]
    assert isinstance(retry, contract.Duplicate) and retry.seq == 2  # a retry, answered so


async def test_of_conditional_publishes_racing_on_two_nodes_exactly_one_is_made(
    backend: Callable[[HistoryLimits], Backend],
) -> None:
    n = await open_nodes(backend(HistoryLimits(max_events=1000)), two=True)
    try:
        await n.pub.publish_many([Draft("cr", "e", b"{}", 1.0)] * 3)
        for round in range(5):
            last = 3 + round
            answers = await asyncio.gather(
                *(b.publish_many([_x("cr", last, k=i)]) for i in range(8) for b in (n.pub, n.sub))
            )
            kinds = [type(a[0]) for a in answers]
            assert kinds.count(Publication) == 1, kinds
            assert kinds.count(contract.Conflict) == 15
            assert {a[0].seq for a in answers} == {last + 1}
        assert (await n.sub.history("cr", 0)).last_seq == 8
    finally:
        await n.pub.stop()
        await n.sub.stop()
