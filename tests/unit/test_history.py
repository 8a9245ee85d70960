from __future__ import annotations

import gc

import pytest

from agentcast.core.envelope import Publication
from agentcast.core.history import History, HistoryLimits


def pub(seq: int, at: float = 0.0, size: int = 10) -> Publication:
    return Publication("t", seq, "e", b"0" * size, "ts", at)


def fill(history: History, n: int, **kw: float) -> None:
    for seq in range(history.last_seq + 1, history.last_seq + 1 + n):
        history.append(pub(seq, **kw))  # type: ignore[arg-type]


def test_empty_history_is_complete_from_zero() -> None:
    h = History(HistoryLimits())
    page = h.since(0)
    assert (page.publications, page.first_seq, page.last_seq, page.complete) == ([], 1, 0, True)


def test_since_returns_later_events_in_order() -> None:
    h = History(HistoryLimits())
    fill(h, 5)
    page = h.since(2)
    assert [p.seq for p in page.publications] == [3, 4, 5]
    assert page.complete
    assert [p.seq for p in h.since(2, limit=2).publications] == [3, 4]
    assert h.since(5).publications == []
    assert h.since(0, limit=0).publications == []


def test_count_bound_evicts_oldest_and_reports_loss() -> None:
    h = History(HistoryLimits(max_events=3))
    fill(h, 10)
    assert len(h) == 3 and h.first_seq == 8
    lost = h.since(5)
    assert not lost.complete
    assert [p.seq for p in lost.publications] == [8, 9, 10]
    assert h.since(7).complete


def test_byte_bound_keeps_at_least_the_newest() -> None:
    h = History(HistoryLimits(max_bytes=300))
    fill(h, 5, size=100)
    assert h.nbytes <= 300 or len(h) == 1
    assert h.last_seq == 5
    h.append(pub(6, size=10_000))
    assert len(h) == 1 and h.first_seq == 6


def test_age_bound() -> None:
    h = History(HistoryLimits(max_age=10))
    h.append(pub(1, at=0))
    h.append(pub(2, at=5))
    h.append(pub(3, at=20))
    assert h.trim(now=16) == 2
    assert h.first_seq == 3
    assert History(HistoryLimits(max_age=0)).trim(now=1e9) == 0


def test_since_beyond_last_seq_means_reset() -> None:
    h = History(HistoryLimits())
    fill(h, 3)
    page = h.since(50)
    assert not page.complete
    assert [p.seq for p in page.publications] == [1, 2, 3]


def test_retained_history_adds_nothing_for_the_garbage_collector_to_walk() -> None:
    """Retained publications are not tracked by the cyclic GC once it has seen them, so a
    full history does not make every full collection longer; reads still return
    publications."""
    h = History(HistoryLimits(max_events=10_000))
    gc.collect()
    before = len(gc.get_objects())
    fill(h, 5000)
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # objects: 5,000 more tracked
    page = h.since(4998)
    assert [(p.topic, p.seq, p.type, p.data) for p in page.publications] == [
        ("t", 4999, "e", b"0" * 10),
        ("t", 5000, "e", b"0" * 10),
    ]
    assert h.nbytes == 5000 * (10 + 128)


def test_append_rejects_gaps() -> None:
    h = History(HistoryLimits())
    with pytest.raises(ValueError, match="does not follow"):
        h.append(pub(2))


def test_read_publications_carry_the_topics_epoch() -> None:
    """History keeps entries as tuples; the publications it builds carry its epoch (the
    hub resyncs subscribers on a publication of another epoch)."""
    from agentcast.core.envelope import Publication

    history = History(HistoryLimits(), epoch="e1")
    history.append(Publication("t", 1, "x", b"{}", "ts", 1.0, "e1"))
    (pub,) = history.since(0).publications
    assert (pub.seq, pub.epoch) == (1, "e1")
