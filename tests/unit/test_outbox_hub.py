from __future__ import annotations

import orjson
import pytest

from agentcast.codes import CloseCode
from agentcast.core.envelope import Publication, payload_of_frame
from agentcast.core.history import HistoryPage
from agentcast.core.hub import RESET, Hub
from agentcast.core.outbox import OVERFLOW, SCHEDULE, Outbox
from agentcast.core.session import Session
from agentcast.policy import Principal


class NullWriter:
    def write_frames(self, frames: list[bytes]) -> None: ...
    def send_ping(self) -> None: ...
    def hold_reading(self, seconds: float) -> None: ...
    def close(self, code: CloseCode, reason: str) -> None: ...


def session(n: int = 1, max_frames: int = 100, max_bytes: int = 1 << 20) -> Session:
    return Session(n, Principal("u"), NullWriter(), Outbox(max_bytes, max_frames), 0.0)


def pub(seq: int, topic: str = "t", epoch: str = "") -> Publication:
    return Publication(topic, seq, "e", b"{}", "ts", 0.0, epoch)


def test_outbox_schedule_then_overflow_then_refuse() -> None:
    box = Outbox(max_bytes=10, max_frames=100)
    assert box.push(b"12345") == SCHEDULE
    assert box.push(b"1234") == 0
    assert box.push(b"12") == OVERFLOW
    assert box.overflowed and box.push(b"x") == 0
    assert box.drain() == [b"12345", b"1234", b"12"]
    assert len(box) == 0 and box.nbytes == 0
    assert not box.push_unbounded(b"x")


def test_outbox_drain_hands_out_a_new_list_and_keeps_its_own() -> None:
    """The drained list is the caller's; the outbox's own list lives as long as the
    outbox (no new long-lived object per flush for the garbage collector to promote)."""
    box = Outbox(max_bytes=1 << 20, max_frames=100)
    own = box.frames
    box.push(b"a")
    box.push(b"b")
    drained = box.drain()
    assert drained == [b"a", b"b"] and drained is not own
    assert box.frames is own and len(box) == 0 and box.nbytes == 0
    assert box.push(b"c") == SCHEDULE
    assert drained == [b"a", b"b"] and box.drain() == [b"c"] and box.frames is own


def test_outbox_frame_bound() -> None:
    box = Outbox(max_bytes=1 << 20, max_frames=2)
    assert [box.push(b"a"), box.push(b"b"), box.push(b"c")] == [SCHEDULE, 0, OVERFLOW]


def test_dispatch_shares_one_frame_and_marks_dirty_once() -> None:
    hub = Hub()
    a, b = session(1), session(2)
    for s in (a, b):
        hub.begin(s, "t")
        assert hub.complete(s, "t", 0)
    p1, p2 = pub(1), pub(2)
    hub.dispatch(p1)
    hub.dispatch(p2)
    assert hub.take_dirty() == [a, b]
    assert a.outbox.frames[0] is b.outbox.frames[0]  # framed once, shared
    assert a.outbox.frames[0] == p1.frame
    assert hub.presence("t") == 2 and set(hub.subscribers("t")) == {a, b}


def test_recovering_subscription_buffers_and_merges_without_duplicates() -> None:
    hub = Hub()
    s = session()
    assert hub.begin(s, "t")
    assert not hub.begin(s, "t")
    for seq in (5, 6, 7):
        hub.dispatch(pub(seq))
    assert s.outbox.frames == []
    hub.complete(s, "t", upto=6)  # history replay already covered 5 and 6
    assert s.outbox.frames == [pub(7).frame]


class Calls:
    """The hub's callbacks, recorded."""

    def __init__(self) -> None:
        self.gaps: list[str] = []
        self.resyncs: list[tuple[Session, str]] = []

    def hub(self) -> Hub:
        return Hub(
            on_gap=self.gaps.append,
            on_resync=lambda session, topic: self.resyncs.append((session, topic)),
        )


def page(first: int, last: int, since: int, epoch: str = "") -> HistoryPage:
    """A history page holding seqs ``first .. last`` from which those after ``since``."""
    pubs = [pub(seq, epoch=epoch) for seq in range(max(first, since + 1), last + 1)]
    return HistoryPage(pubs, first, last, since, epoch)


def seqs(s: Session) -> list[int]:
    return [orjson.loads(payload_of_frame(f))["seq"] for f in s.outbox.frames]


def live_session(hub: Hub, n: int = 1, upto: int = 0, topic: str = "t") -> Session:
    s = session(n)
    hub.begin(s, topic)
    assert hub.complete(s, topic, upto)
    return s


def test_duplicates_are_ignored_and_a_gap_holds_the_topic_until_filled() -> None:
    calls = Calls()
    hub = calls.hub()
    s = live_session(hub)
    assert hub.dispatch(pub(1)) == 0
    assert hub.dispatch(pub(1)) == 0  # duplicate ignored
    assert hub.dispatch(pub(4)) == 2  # 2 and 3 never arrived
    assert calls.gaps == ["t"]
    assert hub.dispatch(pub(5)) == 0  # held behind the gap
    assert seqs(s) == [1]
    assert hub.fill_from("t") == 1
    assert hub.fill("t", page(1, 5, since=1)) is False
    assert seqs(s) == [1, 2, 3, 4, 5]
    assert hub.fill_from("t") is None
    assert hub.dispatch(pub(6)) == 0
    assert seqs(s) == [1, 2, 3, 4, 5, 6] and calls.gaps == ["t"] and calls.resyncs == []
    assert hub.fill_from("nobody") is None and hub.fill("nobody", None) is False


def test_a_second_gap_among_the_held_publications_fills_again() -> None:
    calls = Calls()
    hub = calls.hub()
    s = live_session(hub)
    hub.dispatch(pub(1))
    for seq in (3, 4, 8):
        hub.dispatch(pub(seq))
    assert hub.fill("t", page(1, 4, since=1)) is True  # history read before 5..7 existed
    assert seqs(s) == [1, 2, 3, 4] and hub.fill_from("t") == 4
    hub.dispatch(pub(9))
    assert hub.fill("t", page(1, 8, since=4)) is False
    assert seqs(s) == list(range(1, 10))
    assert calls.gaps == ["t"]  # one gap report: the gateway keeps filling while True


def test_recovering_and_waiting_subscribers_get_the_filled_publications_in_order() -> None:
    calls = Calls()
    hub = calls.hub()
    a = live_session(hub, 1)
    hub.dispatch(pub(1))
    b = session(2)
    hub.begin(b, "t")
    hub.dispatch(pub(4))  # gap: 2, 3 lost
    c = session(3)
    hub.begin(c, "t")
    assert hub.complete(c, "t", 3)  # its history read reached 3: waits for dispatch to
    hub.fill("t", page(1, 4, since=1))
    hub.dispatch(pub(5))
    assert hub.complete(b, "t", 1)
    assert seqs(a) == [1, 2, 3, 4, 5]
    assert seqs(b) == [2, 3, 4, 5]
    assert seqs(c) == [4, 5]
    assert calls.resyncs == []


@pytest.mark.parametrize(
    "history",
    [
        page(3, 5, since=1),  # 2 was evicted
        page(1, 5, since=1, epoch="other"),  # the topic restarted meanwhile
        None,  # history could not be read
        HistoryPage([], 1, 1, 1, ""),  # history does not hold what was notified
    ],
    ids=["evicted", "other epoch", "unreadable", "no progress"],
)
def test_a_gap_history_cannot_fill_resyncs_every_subscriber(history: HistoryPage | None) -> None:
    calls = Calls()
    hub = calls.hub()
    a = live_session(hub, 1)
    hub.dispatch(pub(1))
    b = session(2)
    hub.begin(b, "t")
    hub.dispatch(pub(5))
    assert hub.fill("t", history) is False
    assert sorted(s.id for s, topic in calls.resyncs if topic == "t") == [1, 2]
    assert hub.topics == {} and a.topics == set() and b.topics == set()
    assert hub.dispatch(pub(6)) == 0 and seqs(a) == [1]


def test_a_new_epoch_resyncs_the_subscribers_of_the_topic_only() -> None:
    calls = Calls()
    hub = calls.hub()
    a = live_session(hub, 1)
    other = live_session(hub, 2, topic="u")
    hub.dispatch(pub(1, epoch="e1"))
    hub.dispatch(pub(2, epoch="e1"))
    hub.dispatch(pub(1, topic="u", epoch="x"))
    r = session(3)
    hub.begin(r, "t")
    assert hub.dispatch(pub(1, epoch="e2")) == RESET  # numbering restarted: not a duplicate
    assert sorted((s.id, t) for s, t in calls.resyncs) == [(1, "t"), (3, "t")]
    assert "t" not in hub.topics and seqs(a) == [1, 2]
    assert not hub.complete(r, "t", 1)
    hub.dispatch(pub(2, topic="u", epoch="x"))
    assert seqs(other) == [1, 2]


def test_a_recovery_from_another_epoch_is_resynced() -> None:
    calls = Calls()
    hub = calls.hub()
    live_session(hub, 1)
    hub.dispatch(pub(1, epoch="e2"))
    s = session(2)
    hub.begin(s, "t")
    assert not hub.complete(s, "t", 7, epoch="e1")  # read the topic's previous life
    assert calls.resyncs == [(s, "t")] and hub.presence("t") == 1
    fresh = session(3)
    hub.begin(fresh, "t")
    assert hub.complete(fresh, "t", 1, epoch="e2")


def test_a_recovery_ahead_of_dispatch_waits_without_duplicates() -> None:
    """A remote broker's history read can see seqs whose notifications are on the way."""
    hub = Hub()
    a = live_session(hub, 1)
    hub.dispatch(pub(1))
    b = session(2)
    hub.begin(b, "t")
    assert hub.complete(b, "t", 3)  # read 1..3; notifications of 2 and 3 still to come
    assert hub.presence("t") == 2 and set(hub.subscribers("t")) == {a, b}
    hub.dispatch(pub(2))
    hub.dispatch(pub(3))
    hub.dispatch(pub(4))
    assert seqs(a) == [1, 2, 3, 4]
    assert seqs(b) == [4]


def test_the_first_recovery_is_the_baseline_and_later_recoveries_still_get_theirs() -> None:
    hub = Hub()
    a, b = session(1), session(2)
    hub.begin(a, "t")
    hub.begin(b, "t")
    assert hub.complete(a, "t", 5)  # nothing dispatched yet: 5 is where the topic is
    hub.dispatch(pub(4))  # late notifications, already read by a
    hub.dispatch(pub(5))
    assert hub.complete(b, "t", 3)  # b read earlier: it still gets 4 and 5
    hub.dispatch(pub(6))
    assert seqs(a) == [6]
    assert seqs(b) == [4, 5, 6]
    assert hub.dispatch(pub(8)) == 1  # and gaps after the baseline are noticed


def test_a_notification_lost_before_any_baseline_resyncs_the_subscription() -> None:
    calls = Calls()
    hub = calls.hub()
    s = session()
    hub.begin(s, "t")
    hub.dispatch(pub(9))  # 8 was lost, and nothing tells the hub where the topic was
    assert not hub.complete(s, "t", 7)
    assert calls.resyncs == [(s, "t")] and hub.topics == {}


def test_overflow_reported_for_live_and_recovering() -> None:
    hub = Hub()
    live, slow = session(1, max_frames=2), session(2, max_frames=2)
    hub.begin(live, "t")
    hub.complete(live, "t", 0)
    hub.begin(slow, "t")
    for seq in range(1, 5):
        hub.dispatch(pub(seq))
    assert set(hub.take_overflowed()) == {live, slow}
    assert hub.take_overflowed() == []


def test_remove_and_remove_all() -> None:
    hub = Hub()
    s = session()
    hub.begin(s, "a")
    hub.begin(s, "b")
    hub.complete(s, "b", 0)
    assert hub.remove(s, "a")
    assert not hub.remove(s, "a")
    assert hub.remove_all(s) == ["b"]
    assert hub.topics == {} and s.topics == set()
    assert not hub.complete(s, "b", 0)
    assert hub.presence("b") == 0 and list(hub.subscribers("b")) == []
