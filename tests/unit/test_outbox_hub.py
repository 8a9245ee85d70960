from __future__ import annotations

from agentcast.codes import CloseCode
from agentcast.core.envelope import Publication
from agentcast.core.hub import Hub
from agentcast.core.outbox import OVERFLOW, SCHEDULE, Outbox
from agentcast.core.session import Session
from agentcast.policy import Principal


class NullWriter:
    def write_frames(self, frames: list[bytes]) -> None: ...
    def send_ping(self) -> None: ...
    def close(self, code: CloseCode, reason: str) -> None: ...


def session(n: int = 1, max_frames: int = 100, max_bytes: int = 1 << 20) -> Session:
    return Session(n, Principal("u"), NullWriter(), Outbox(max_bytes, max_frames), 0.0)


def pub(seq: int, topic: str = "t") -> Publication:
    return Publication(topic, seq, "e", b"{}", "ts", 0.0)


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


def test_duplicate_and_gap_detection() -> None:
    hub = Hub()
    s = session()
    hub.begin(s, "t")
    hub.complete(s, "t", 0)
    assert hub.dispatch(pub(1)) == 0
    assert hub.dispatch(pub(1)) == 0  # duplicate ignored
    assert hub.dispatch(pub(4)) == 2  # 2 and 3 never arrived
    assert len(s.outbox) == 2
    assert hub.dispatch(pub(1, topic="nobody")) == 0


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
