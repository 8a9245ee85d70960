"""The early-write group size chosen from the process's CPU use (``core/writes.py``)."""

from __future__ import annotations

import pytest

from agentcast.core.writes import AT_ONCE, GROUPED, WriteGrouping

W = 0.125  # a window (exact in binary: the sums below are exact)


def feed(g: WriteGrouping, busy: float, windows: int = 1) -> int:
    """``windows`` windows at ``busy`` of a core, after the last decision."""
    for _ in range(windows):
        g.observe(g.next_at, g._cpu0 + busy * W)
    return g.group


def test_starts_grouped_and_decides_once_per_window() -> None:
    g = WriteGrouping(window=W)
    assert g.observe(10.0, 1.0) == GROUPED  # the first call starts the window
    assert g.next_at == 10.125
    assert g.observe(10.1, 1.0) == GROUPED  # inside the window: no decision
    assert g.observe(10.125, 1.0125) == AT_ONCE  # 10 % of a core
    assert g.next_at == 10.25


def test_hysteresis_between_the_thresholds() -> None:
    g = WriteGrouping(window=W, at_once_below=0.6, grouped_above=0.85)
    g.observe(0.0, 0.0)
    assert feed(g, 0.7) == GROUPED  # in between: keeps its choice (grouped)
    assert feed(g, 0.5) == AT_ONCE
    assert feed(g, 0.8, windows=5) == AT_ONCE  # writing at once costs more: kept
    assert feed(g, 0.9) == GROUPED  # saturated: groups again
    assert feed(g, 0.84, windows=3) == GROUPED
    assert feed(g, 0.59) == AT_ONCE


def test_an_idle_spell_counts_as_idle_and_a_clock_going_back_restarts() -> None:
    g = WriteGrouping(window=W)
    g.observe(0.0, 0.0)
    assert g.observe(30.0, 0.5) == AT_ONCE  # 0.5 s of CPU in 30 s
    g.group = GROUPED
    assert g.observe(5.0, 0.5) == GROUPED  # went back: a new window, no decision
    assert g.next_at == 5.125
    assert g.observe(5.125, 0.625) == GROUPED  # a full core


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="at_once_below"):
        WriteGrouping(at_once_below=0.9, grouped_above=0.5)
    with pytest.raises(ValueError, match="at_once_below"):
        WriteGrouping(at_once_below=0.0)
    with pytest.raises(ValueError, match="window"):
        WriteGrouping(window=0)
