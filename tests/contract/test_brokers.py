"""The broker contract (``agentcast/brokers/base.py``), run against every broker.

A new broker joins by adding a factory to ``BROKERS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from agentcast.brokers import Broker, MemoryBroker
from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryLimits

BROKERS: dict[str, Callable[[HistoryLimits], Broker]] = {"memory": MemoryBroker}


class Recorder:
    def __init__(self) -> None:
        self.got: list[Publication] = []

    def __call__(self, pub: Publication) -> None:
        self.got.append(pub)


@pytest.fixture(params=sorted(BROKERS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Recorder]]:
    b = BROKERS[request.param](HistoryLimits(max_events=5, max_bytes=1 << 20, max_age=60))
    rec = Recorder()
    await b.start(rec)
    try:
        yield b, rec
    finally:
        await b.stop()


async def test_gapless_sequence_per_topic(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    seqs = [(await b.publish("a", "e", b"{}", 1.0)).seq for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert (await b.publish("b", "e", b"{}", 1.0)).seq == 1
    assert b.topics() == {"a": 3, "b": 1}


async def test_concurrent_publishes_get_distinct_gapless_seqs(
    broker: tuple[Broker, Recorder],
) -> None:
    b, _ = broker
    pubs = await asyncio.gather(*(b.publish("c", "e", b"{}", 1.0) for _ in range(50)))
    assert sorted(p.seq for p in pubs) == list(range(1, 51))


async def test_listeners_get_listened_topics_in_order(broker: tuple[Broker, Recorder]) -> None:
    b, rec = broker
    await b.listen("x")
    await b.listen("x")  # idempotent
    for n in range(4):
        await b.publish("x", "e", b'{"n":%d}' % n, 1.0)
        await b.publish("y", "e", b"{}", 1.0)
    assert [(p.topic, p.seq, p.data) for p in rec.got] == [
        ("x", n + 1, b'{"n":%d}' % n) for n in range(4)
    ]
    await b.unlisten("x")
    await b.unlisten("x")
    await b.publish("x", "e", b"{}", 1.0)
    assert len(rec.got) == 4


async def test_history_is_written_before_notification(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    seen_in_history: list[bool] = []

    async def check(pub: Publication) -> None:
        page = await b.history(pub.topic, pub.seq - 1)
        seen_in_history.append([p.seq for p in page.publications] == [pub.seq])

    tasks: list[asyncio.Task[None]] = []
    await b.stop()
    await b.start(lambda pub: tasks.append(asyncio.create_task(check(pub))))
    await b.listen("h")
    await b.publish("h", "e", b"{}", 1.0)
    await asyncio.gather(*tasks)
    assert seen_in_history == [True]


async def test_history_bounds_and_loss_report(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    for _ in range(8):
        await b.publish("k", "e", b"{}", 1.0)
    page = await b.history("k", 0)
    assert [p.seq for p in page.publications] == [4, 5, 6, 7, 8]
    assert (page.first_seq, page.last_seq, page.complete) == (4, 8, False)
    page = await b.history("k", 5, limit=2)
    assert [p.seq for p in page.publications] == [6, 7]
    assert page.complete
    empty = await b.history("never", 0)
    assert (empty.publications, empty.first_seq, empty.last_seq, empty.complete) == ([], 1, 0, True)


async def test_publication_fields(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    pub = await b.publish("f", "node_status", b'{"a":1}', 1700000000.25)
    assert (pub.topic, pub.type, pub.data, pub.at) == (
        "f",
        "node_status",
        b'{"a":1}',
        1700000000.25,
    )
    assert pub.timestamp == "2023-11-14T22:13:20.250000Z"


@pytest.mark.parametrize("name", sorted(BROKERS))
async def test_publish_before_start_assigns_nothing(name: str) -> None:
    from agentcast.errors import BrokerError

    b = BROKERS[name](HistoryLimits())
    with pytest.raises(BrokerError):
        await b.publish("z", "e", b"{}", 1.0)
    await b.start(Recorder())
    try:
        assert (await b.publish("z", "e", b"{}", 1.0)).seq == 1
    finally:
        await b.stop()


async def test_prefix_listen(broker: tuple[Broker, Recorder]) -> None:
    b, rec = broker
    await b.listen_prefix("run:")
    await b.listen_prefix("run:")
    await b.publish("run:1", "e", b"{}", 1.0)
    await b.publish("other", "e", b"{}", 1.0)
    await b.publish("run:2", "e", b"{}", 1.0)
    assert [p.topic for p in rec.got] == ["run:1", "run:2"]
