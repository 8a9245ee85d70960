"""The gateway over the broker contract: batching, the synchronous capability, unknown
outcomes, gap filling from history and numbering restarts.

Real gateways and real memory backends, reached through the wrappers of
``tests/broker_support.py`` (which only lose or delay notifications, or take loop steps,
as a remote broker would); connections are recording writers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest

from agentcast.brokers.base import Broker, Draft
from agentcast.brokers.memory import MemoryBackend, MemoryBroker
from agentcast.codes import CloseCode
from agentcast.core.envelope import Publication, payload_of_frame
from agentcast.core.history import HistoryLimits
from agentcast.errors import BrokerError, PublishOutcomeUnknownError
from agentcast.gateway import Gateway
from agentcast.policy import Principal
from agentcast.settings import Settings
from tests.broker_support import LossyBroker, RemoteLikeBroker, WrappedBroker
from tests.conftest import UNIT


class Conn:
    """One connection: its writer records every frame and the close."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.changed = asyncio.Event()
        self.session = gateway.open_session(Principal("u"), self)

    def write_frames(self, frames: list[bytes]) -> None:
        self.frames += [orjson.loads(payload_of_frame(f)) for f in frames]
        self.changed.set()

    def send_ping(self) -> None: ...

    def hold_reading(self, seconds: float) -> None: ...

    def close(self, code: CloseCode, reason: str) -> None:
        self.close_code = code
        self.changed.set()
        self.gateway.close_session(self.session)

    def subscribe(self, topic: str, since: int | None = None, epoch: str | None = None) -> None:
        command: dict[str, Any] = {"type": "subscribe", "topic": topic, "since": since}
        if epoch is not None:
            command["epoch"] = epoch
        self.gateway.receive_text(self.session, orjson.dumps(command).decode())

    def seqs(self, topic: str) -> list[int]:
        return [f["seq"] for f in self.frames if f.get("topic") == topic and "seq" in f]

    def subscribed(self, topic: str) -> dict[str, Any]:
        (reply,) = [f for f in self.frames if f["type"] == "subscribed" and f["topic"] == topic]
        return dict(reply["data"])

    async def wait_for(self, check: Callable[[], bool], timeout: float = UNIT) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


async def started(broker: Broker) -> Gateway:
    gateway = Gateway(Settings(), broker=broker)
    await gateway.start()
    return gateway


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    made: list[Gateway] = []
    try:
        yield made
    finally:
        for gateway in made:
            await gateway.stop()


async def live(gateway: Gateway, topic: str, since: int | None = 0) -> Conn:
    conn = Conn(gateway)
    conn.subscribe(topic, since)
    await conn.wait_for(lambda: any(f["type"] == "subscribed" for f in conn.frames))
    return conn


# -- batching and the synchronous capability --------------------------------------------------


async def test_publishes_of_one_loop_iteration_go_to_the_broker_in_one_batch(
    gateways: list[Gateway],
) -> None:
    broker = WrappedBroker()
    gateway = await started(broker)
    gateways.append(gateway)
    assert not gateway.publishes_now
    with pytest.raises(BrokerError, match="publish_nowait"):
        gateway.publish_now("t", "e", {})
    futures = [gateway.publish_nowait("t", "token", {"i": i}) for i in range(100)]
    futures.append(gateway.publish_nowait("u", "other", {}))
    pubs = await asyncio.gather(*futures)
    assert broker.batches == [101]
    assert [p.seq for p in pubs[:100]] == list(range(1, 101))
    assert [orjson.loads(p.data)["i"] for p in pubs[:100]] == list(range(100))
    assert (pubs[100].topic, pubs[100].seq) == ("u", 1)
    both = await asyncio.gather(gateway.publish("t", "e", {}), gateway.publish("t", "e", {}))
    assert [p.seq for p in both] == [101, 102] and broker.batches == [101, 2]


async def test_batches_are_sent_one_at_a_time_so_a_producer_keeps_its_order(
    gateways: list[Gateway],
) -> None:
    broker = RemoteLikeBroker(lambda: 4)  # each round trip takes loop steps
    gateway = await started(broker)
    gateways.append(gateway)
    conn = await live(gateway, "chat")
    futures: list[asyncio.Future[Publication]] = []
    for i in range(30):  # a token stream: one token per loop iteration, never awaited
        futures.append(gateway.publish_nowait("chat", "chat:streaming", {"i": i}))
        await asyncio.sleep(0)
    pubs = await asyncio.gather(*futures)
    assert [p.seq for p in pubs] == list(range(1, 31))
    assert len(broker.batches) < 30 and sum(broker.batches) == 30
    await conn.wait_for(lambda: len(conn.seqs("chat")) == 30)
    assert conn.seqs("chat") == list(range(1, 31))


async def test_a_future_cancelled_before_its_batch_is_sent_is_not_published(
    gateways: list[Gateway],
) -> None:
    broker = WrappedBroker()
    gateway = await started(broker)
    gateways.append(gateway)
    kept, dropped = gateway.publish_nowait("t", "a", {}), gateway.publish_nowait("t", "b", {})
    dropped.cancel()
    assert (await kept).seq == 1
    page = await broker.history("t", 0)
    assert [p.type for p in page.publications] == ["a"]


async def test_the_sync_capability_publishes_at_once(gateways: list[Gateway]) -> None:
    broker = MemoryBroker()
    gateway = await started(broker)
    gateways.append(gateway)
    assert gateway.publishes_now
    assert gateway.publish_now("t", "e", {}).seq == 1
    future = gateway.publish_nowait("t", "e", {})
    assert future.done() and future.result().seq == 2
    assert (await gateway.publish("t", "e", {})).seq == 3
    with pytest.raises(Exception, match="invalid topic"):
        gateway.publish_nowait("", "e", {})


async def test_publish_nowait_before_start_is_a_broker_error() -> None:
    gateway = Gateway(Settings(), broker=WrappedBroker())
    with pytest.raises(BrokerError):
        gateway.publish_nowait("t", "e", {})


class FailingBroker(WrappedBroker):
    """Fails every batch: ``unknown`` publishes it first, then loses the answer."""

    def __init__(self, unknown: bool) -> None:
        super().__init__()
        self.unknown = unknown

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Publication]:
        if self.unknown:
            await super().publish_many(drafts)
            raise PublishOutcomeUnknownError("timed out waiting for the broker's answer")
        raise BrokerError("connection refused")


@pytest.mark.parametrize("unknown", [False, True], ids=["not assigned", "outcome unknown"])
async def test_a_failed_batch_fails_every_publish_of_it_distinctly(
    gateways: list[Gateway], unknown: bool
) -> None:
    broker = FailingBroker(unknown)
    gateway = await started(broker)
    gateways.append(gateway)
    futures = [gateway.publish_nowait("t", "e", {"i": i}) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, BrokerError) for r in results)
    assert all(isinstance(r, PublishOutcomeUnknownError) == unknown for r in results)
    with pytest.raises(PublishOutcomeUnknownError if unknown else BrokerError) as raised:
        await gateway.publish("t", "e", {})
    assert isinstance(raised.value, PublishOutcomeUnknownError) == unknown
    # what the publisher can learn: with an unknown outcome the events may be there
    assert (await broker.history("t", 0)).last_seq == (4 if unknown else 0)


# -- gap filling ------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False], ids=["sync broker", "async broker"])
async def test_lost_notifications_are_filled_from_history_in_order(
    gateways: list[Gateway], sync: bool
) -> None:
    broker = LossyBroker(lambda pub: pub.topic == "t" and pub.seq in (3, 4), sync=sync)
    gateway = await started(broker)
    gateways.append(gateway)
    conn, other = await live(gateway, "t"), await live(gateway, "t", since=None)
    for i in range(6):
        await gateway.publish("t", "e", {"i": i})
    await conn.wait_for(lambda: len(conn.seqs("t")) == 6)
    await other.wait_for(lambda: len(other.seqs("t")) == 6)
    assert conn.seqs("t") == other.seqs("t") == [1, 2, 3, 4, 5, 6]
    assert [p.seq for p in broker.lost] == [3, 4]
    assert conn.close_code is None


async def test_publications_arriving_while_a_gap_is_filled_wait_their_turn(
    gateways: list[Gateway],
) -> None:
    broker = RemoteLikeBroker(lambda: 3, lose=lambda pub: pub.seq in (2, 7, 8))
    gateway = await started(broker)
    gateways.append(gateway)
    conn = await live(gateway, "t")
    futures = []
    for i in range(20):
        futures.append(gateway.publish_nowait("t", "e", {"i": i}))
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    await conn.wait_for(lambda: len(conn.seqs("t")) == 20)
    assert conn.seqs("t") == list(range(1, 21))
    assert conn.close_code is None


async def test_subscribers_are_resynced_when_history_lost_the_missing_events(
    gateways: list[Gateway],
) -> None:
    limits = HistoryLimits(max_events=2)
    broker = LossyBroker(lambda pub: 2 <= pub.seq <= 5, limits)
    gateway = await started(broker)
    gateways.append(gateway)
    conn, elsewhere = await live(gateway, "t"), await live(gateway, "u")
    epoch = conn.subscribed("t")["epoch"]
    for _ in range(6):
        await gateway.publish("t", "e", {})
    await gateway.publish("u", "e", {})
    await conn.wait_for(lambda: conn.close_code is not None)
    assert conn.close_code == CloseCode.RESYNC
    assert conn.seqs("t") == [1]  # nothing out of order was delivered
    await elsewhere.wait_for(lambda: elsewhere.seqs("u") == [1])
    assert elsewhere.close_code is None
    again = Conn(gateway)  # the client's resume after the close
    again.subscribe("t", since=1, epoch=epoch)
    await again.wait_for(lambda: len(again.seqs("t")) == 2)
    reply = again.subscribed("t")
    assert (reply["recovered"], reply["first_seq"], reply["seq"]) == (False, 5, 6)
    assert again.seqs("t") == [5, 6]


# -- numbering restarts -----------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False], ids=["sync broker", "async broker"])
async def test_a_topic_whose_numbering_restarts_resyncs_its_subscribers(
    gateways: list[Gateway], sync: bool
) -> None:
    broker = WrappedBroker(sync=sync)
    gateway = await started(broker)
    gateways.append(gateway)
    conn = await live(gateway, "t")
    old = conn.subscribed("t")["epoch"]
    for _ in range(3):
        await gateway.publish("t", "e", {"life": 1})
    await conn.wait_for(lambda: conn.seqs("t") == [1, 2, 3])
    broker.backend.flush()  # the broker's server lost everything
    first = await gateway.publish("t", "e", {"life": 2})
    assert first.seq == 1 and first.epoch != old
    await conn.wait_for(lambda: conn.close_code is not None)
    assert conn.close_code == CloseCode.RESYNC and conn.seqs("t") == [1, 2, 3]
    again = Conn(gateway)
    again.subscribe("t", since=3, epoch=old)
    await again.wait_for(lambda: len(again.seqs("t")) == 1)
    reply = again.subscribed("t")
    assert (reply["recovered"], reply["epoch"], reply["seq"]) == (False, first.epoch, 1)
    second = await gateway.publish("t", "e", {"life": 2})
    await again.wait_for(lambda: again.seqs("t") == [1, 2])
    assert second.seq == 2 and again.close_code is None


async def test_two_gateways_on_one_backend_each_fill_their_own_gaps(
    gateways: list[Gateway],
) -> None:
    lossy = LossyBroker(lambda pub: pub.seq == 2)
    a = await started(lossy)
    b = await started(WrappedBroker(backend=lossy.backend))
    gateways += [a, b]
    on_a, on_b = await live(a, "t"), await live(b, "t")
    for gateway in (a, b, a, b):
        await gateway.publish("t", "e", {})
    await on_a.wait_for(lambda: len(on_a.seqs("t")) == 4)
    await on_b.wait_for(lambda: len(on_b.seqs("t")) == 4)
    assert on_a.seqs("t") == on_b.seqs("t") == [1, 2, 3, 4]


# -- housekeeping -----------------------------------------------------------------------------


class TrimRecorder(WrappedBroker):
    def __init__(self) -> None:
        super().__init__()
        self.trimmed = asyncio.Event()
        self.at: list[float] = []

    async def trim(self, now: float) -> None:
        self.at.append(now)
        self.trimmed.set()
        await super().trim(now)


async def test_the_sweep_trims_history_through_the_contract(gateways: list[Gateway]) -> None:
    broker = TrimRecorder()
    gateway = await started(broker)
    gateways.append(gateway)
    before = time.time()
    gateway.sweep(gateway.loop.time())
    gateway.sweep(gateway.loop.time())  # one trim at a time
    async with asyncio.timeout(UNIT):
        await broker.trimmed.wait()
    assert len(broker.at) == 1 and broker.at[0] >= before


class SlowListen(WrappedBroker):
    """``listen`` waits for ``opened``: a remote broker's subscribe round trip."""

    def __init__(self, backend: MemoryBackend) -> None:
        super().__init__(backend=backend)
        self.opened = asyncio.Event()
        self.listening = asyncio.Event()

    async def listen(self, topic: str) -> None:
        self.listening.set()
        await self.opened.wait()
        await super().listen(topic)


async def test_a_second_subscriber_waits_for_the_first_ones_listen(
    gateways: list[Gateway],
) -> None:
    """While the first subscriber's ``listen()`` is under way, publications elsewhere are
    not delivered here yet: a second subscriber that read history then would miss them."""
    backend = MemoryBackend()
    slow = SlowListen(backend)
    here = await started(slow)
    elsewhere = await started(WrappedBroker(backend=backend))
    gateways += [here, elsewhere]
    first, second = Conn(here), Conn(here)
    first.subscribe("t", since=0)
    await asyncio.wait_for(slow.listening.wait(), UNIT)
    second.subscribe("t", since=0)
    await elsewhere.publish("t", "e", {"n": 1})  # another node, before listen() returned
    slow.opened.set()
    for conn in (first, second):
        await conn.wait_for(lambda conn=conn: conn.seqs("t") == [1])  # type: ignore[misc]
