"""The runs feature on two gateways sharing one broker backend and one SQLite run store,
in process: the broker is the real in-memory one reached as over a network
(:class:`~tests.broker_support.RemoteLikeBroker`: publishes and notifications a few loop
steps late, so a node's own publication may be answered before it is folded).

* Lapsed leases checked by both nodes at once: one ``publisher_lost``, the other node's
  seal refused as a conflict.
* A seal racing an event of the producer that the node has not folded yet is refused,
  and the lease is renewed instead.
* Each event is recorded by the node that published it; the store gets every event once
  and the summary of the finished run.
* A node that lost the notification of a run event folds the run again from history:
  the same snapshot as the node that saw every event; when the event was its own, it
  records it in the store then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentcast.brokers.memory import MemoryBackend
from agentcast.core.envelope import Publication
from agentcast.gateway import Gateway
from agentcast.runs.registry import Runs
from agentcast.settings import Settings
from agentcast.storage import create_store
from agentcast.storage.feature import Storage
from tests.broker_support import RemoteLikeBroker
from tests.conftest import UNIT

TTL = 30.0


class Pair:
    def __init__(self, a: Gateway, b: Gateway, backend: MemoryBackend) -> None:
        self.a, self.b, self.backend = a, b, backend

    @staticmethod
    def runs(gw: Gateway) -> Runs:
        return gw.feature(Runs)

    def history(self, topic: str) -> list[Publication]:
        history = self.backend.histories.get(topic)
        return history.since(0).publications if history is not None else []


def lost_by_b(pub: Publication) -> bool:
    """Node B never gets the notification of ``workflow:gap``'s seq 2 (pub/sub is at most
    once)."""
    return pub.topic == "workflow:gap" and pub.seq == 2


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    backend = MemoryBackend()
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    made: list[Gateway] = []
    for lose in (lambda pub: False, lost_by_b):
        store = create_store(url)
        assert store is not None
        gw = Gateway(
            Settings(store_url=url, run_lease_ttl=TTL),
            broker=RemoteLikeBroker(lambda: 3, lose, backend=backend),
            features=[Storage(store), Runs(store)],
        )
        await gw.start()  # one after the other: the first migrates the file
        made.append(gw)
    try:
        yield Pair(made[0], made[1], backend)
    finally:
        for gw in made:
            await gw.stop()


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5 * UNIT):
        while not check():  # noqa: ASYNC110 - the other gateway's tasks, bounded
            await asyncio.sleep(0.01)


async def start(gw: Gateway, run: str) -> Publication:
    return await gw.publish(
        f"workflow:{run}",
        "workflow_start",
        {"execution_id": f"e-{run}", "execution_order": ["n"], "total_nodes": 1},
    )


def folded(gw: Gateway, topic: str, seq: int) -> Callable[[], bool]:
    def check() -> bool:
        state = gw.feature(Runs).states.get(topic)
        return state is not None and state.seq >= seq

    return check


async def test_two_nodes_sealing_at_once_make_one_seal(pair: Pair) -> None:
    topic = "workflow:race"
    await start(pair.a, "race")
    await until(folded(pair.b, topic, 1))
    later = time.monotonic() + 2 * TTL
    sealed = await asyncio.gather(pair.runs(pair.a).expire(later), pair.runs(pair.b).expire(later))
    assert sorted(sealed, key=len) == [[], [topic]]
    assert [p.type for p in pair.history(topic)] == ["workflow_start", "publisher_lost"]
    counters = [pair.runs(gw).counters for gw in (pair.a, pair.b)]
    assert sorted((c["seals"], c["seal_conflicts"]) for c in counters) == [(0, 1), (1, 0)]
    for gw in (pair.a, pair.b):  # the loser folds the winner's seal: no lease left
        await until(folded(gw, topic, 2))
        assert topic not in pair.runs(gw).leases
        assert pair.runs(gw).snapshot(topic) == pair.runs(pair.a).snapshot(topic)


async def test_a_seal_racing_the_producers_event_is_refused_and_the_lease_renewed(
    pair: Pair,
) -> None:
    topic = "workflow:alive"
    await start(pair.a, "alive")
    await until(folded(pair.b, topic, 1))
    event = pair.a.publish(topic, "node_status", {"node_id": "n", "status": "running"})
    await event  # published; B has not folded it yet (its notification is on the way)
    runs_b = pair.runs(pair.b)
    assert runs_b.states[topic].seq == 1
    assert await runs_b.expire(time.monotonic() + 2 * TTL) == []
    assert runs_b.counters["seal_conflicts"] == 1
    assert [p.type for p in pair.history(topic)] == ["workflow_start", "node_status"]
    assert topic in runs_b.leases  # renewed, not dropped: the run is alive
    await until(folded(pair.b, topic, 2))


async def test_each_event_is_recorded_by_the_node_that_published_it(pair: Pair) -> None:
    topic = "workflow:rec"
    await start(pair.a, "rec")
    for i in range(6):
        gw = pair.a if i % 2 else pair.b
        await gw.publish(topic, "node_status", {"node_id": "n", "status": "running"})
    await pair.b.publish(topic, "workflow_complete", {"success": True, "execution_time": 1.0})
    runs_a, runs_b = pair.runs(pair.a), pair.runs(pair.b)
    await until(lambda: runs_a.counters["recorded"] + runs_b.counters["recorded"] == 8)
    assert (runs_a.counters["recorded"], runs_b.counters["recorded"]) == (4, 4)
    for runs in (runs_a, runs_b):
        assert runs.recorder is not None
        await runs.recorder.flush()
    store = runs_a.store
    assert store is not None
    assert [e.seq for e in await store.events(topic, 0)] == list(range(1, 9))
    summary = await store.get_run(topic)
    assert summary is not None and (summary.status, summary.last_seq) == ("completed", 8)
    assert not runs_a._mine and not runs_b._mine  # nothing left waiting for its fold


async def test_a_node_that_lost_an_event_folds_the_run_again_from_history(pair: Pair) -> None:
    topic = "workflow:gap"
    await start(pair.a, "gap")
    await pair.a.publish(topic, "node_status", {"node_id": "n", "status": "completed"})
    await pair.a.publish(topic, "log", {"level": "info", "message": "after"})
    for gw in (pair.a, pair.b):
        await until(folded(gw, topic, 3))
    runs_b = pair.runs(pair.b)
    assert runs_b.counters["catch_ups"] == 1
    snap_b = await runs_b.snapshot_async(topic)
    assert snap_b == pair.runs(pair.a).snapshot(topic)
    assert snap_b is not None and snap_b[1]["nodes"]["n"]["status"] == "completed"


async def test_a_node_that_lost_its_own_events_notification_records_it_once_folded(
    pair: Pair,
) -> None:
    """B publishes the run's end and never gets its notification: the seal of the lapsed
    lease is refused (a conflict), B folds the run from history, and records its own
    event then (no other node records it)."""
    topic = "workflow:gap"
    await start(pair.a, "gap")
    await until(folded(pair.b, topic, 1))
    await pair.b.publish(topic, "workflow_complete", {"success": True, "execution_time": 1.0})
    await until(folded(pair.a, topic, 2))
    runs_a, runs_b = pair.runs(pair.a), pair.runs(pair.b)
    assert runs_b.states[topic].seq == 1  # its notification never comes
    assert await runs_b.expire(time.monotonic() + 2 * TTL) == []  # refused: seq 2 exists
    await until(lambda: runs_b.states[topic].finished)  # folded from history
    for runs in (runs_a, runs_b):
        assert runs.recorder is not None
        await runs.recorder.flush()
    assert runs_a.store is not None
    assert [e.seq for e in await runs_a.store.events(topic, 0)] == [1, 2]
    assert not runs_b._mine


def test_the_publish_observer_is_installed_only_with_a_run_store(tmp_path: Path) -> None:
    """Without a store nothing is recorded: no call per publication."""
    assert Gateway(Settings(store_url=""), features=[Runs()]).publish_observers == []
    store = create_store(f"sqlite:///{tmp_path / 'runs.db'}")
    runs = Runs(store)
    assert Gateway(Settings(store_url=""), features=[runs]).publish_observers == [runs.published]
