"""A subscription's resume logic, frame by frame: position, duplicates, gaps, losses.

Uses a real, unstarted :class:`~agentcast.client.Client` (no connection: a resync only
marks the subscription for the next connection).
"""

from __future__ import annotations

from typing import Any

import pytest

from agentcast.client import Client, Event, HistoryLost, HistoryLostError, Snapshot, Subscription


def subscribed(
    topic: str, *, seq: int, since: int | None, recovered: bool = True, first_seq: int = 1
) -> dict[str, Any]:
    data = {"seq": seq, "recovered": recovered, "since": since, "first_seq": first_seq}
    return {
        "type": "subscribed",
        "topic": topic,
        "timestamp": "ts",
        "data": {**data, "epoch": "e1"},
    }


def feed(sub: Subscription[Any], *seqs: int, kind: str = "e") -> None:
    for seq in seqs:
        sub.on_event(kind, seq, "ts", {"seq": seq})


def buffered(sub: Subscription[Any]) -> list[Any]:
    return list(sub._items)


def test_live_only_starts_after_the_topic_seq_and_drops_duplicates() -> None:
    client = Client("http://127.0.0.1:1")
    sub = client.subscribe("t")
    assert sub.subscribe_command() == {"type": "subscribe", "topic": "t"}
    feed(sub, 1)  # before `subscribed`: not part of the subscription
    assert buffered(sub) == []
    assert sub.on_subscribed(subscribed("t", seq=4, since=None))
    feed(sub, 5, 6, 5, 6, 7)
    assert [e.seq for e in buffered(sub)] == [5, 6, 7]
    assert sub.subscribe_command() == {"type": "subscribe", "topic": "t", "since": 7, "epoch": "e1"}


def test_resume_after_reconnect_never_duplicates() -> None:
    client = Client("http://127.0.0.1:1")
    sub = client.subscribe("t", since=0)
    assert sub.subscribe_command()["since"] == 0
    sub.on_subscribed(subscribed("t", seq=2, since=0))
    feed(sub, 1, 2)
    sub.offline()
    feed(sub, 3)  # the old connection's last frames: ignored until the next `subscribed`
    sub.on_subscribed(subscribed("t", seq=5, since=2))
    feed(sub, 2, 3, 4, 5)
    assert [e.seq for e in buffered(sub)] == [1, 2, 3, 4, 5]


def test_a_gap_is_never_delivered() -> None:
    client = Client("http://127.0.0.1:1")
    sub = client.subscribe("t", since=0)
    sub.on_subscribed(subscribed("t", seq=0, since=0))
    feed(sub, 1, 3)
    assert [e.seq for e in buffered(sub)] == [1]
    assert not sub.live  # waits for a resubscribe from seq 1
    assert sub.subscribe_command()["since"] == 1


def test_snapshot_first_then_events_after_it() -> None:
    client = Client("http://127.0.0.1:1")
    sub = client.subscribe("workflow:1")
    sub.on_subscribed(subscribed("workflow:1", seq=9, since=None))
    feed(sub, 6, kind="snapshot")
    feed(sub, 7, 8, 9)
    items = buffered(sub)
    assert isinstance(items[0], Snapshot)
    assert [(type(i), i.seq) for i in items] == [(Snapshot, 6), (Event, 7), (Event, 8), (Event, 9)]


async def test_history_lost_raise_mode_after_buffered_events() -> None:
    client = Client("http://127.0.0.1:1")
    sub = client.subscribe("t", since=0)
    sub.on_subscribed(subscribed("t", seq=1, since=0))
    feed(sub, 1)
    assert not sub.on_subscribed(subscribed("t", seq=20, since=1, recovered=False, first_seq=15))
    assert (await anext(sub)).seq == 1
    with pytest.raises(HistoryLostError) as info:
        await anext(sub)
    assert (info.value.since, info.value.first_available) == (1, 15)
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_history_lost_reset_mode_continues_from_first_seq() -> None:
    client = Client("http://127.0.0.1:1")
    sub = client.subscribe("t", since=3, on_history_lost="reset")
    assert sub.on_subscribed(subscribed("t", seq=20, since=3, recovered=False, first_seq=15))
    feed(sub, 15, 16)
    assert await anext(sub) == HistoryLost("t", 3, 15)
    assert sub.last_seq is None
    assert [(await anext(sub)).seq for _ in range(2)] == [15, 16]  # type: ignore[union-attr]
    assert sub.last_seq == 16


def test_full_buffer_stalls_and_keeps_the_resume_point() -> None:
    client = Client("http://127.0.0.1:1", queue_size=4)
    sub = client.subscribe("t", since=0)
    sub.on_subscribed(subscribed("t", seq=0, since=0))
    feed(sub, 1, 2, 3, 4, 5, 6)
    assert [e.seq for e in buffered(sub)] == [1, 2, 3, 4]
    assert sub.stalled
    assert not sub.live
    assert sub.subscribe_command()["since"] == 4


def test_arguments_are_checked() -> None:
    client = Client("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="since"):
        client.subscribe("t", since=-1)
    with pytest.raises(ValueError, match="on_history_lost"):
        client.subscribe("u", on_history_lost="ignore")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:1", queue_size=1)
    with pytest.raises(ValueError):
        Client("ws://", token="x")
