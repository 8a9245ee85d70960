"""The plain-int histogram behind /metrics' latency and time-to-first-token series."""

from __future__ import annotations

import pytest

from agentcast.core.histogram import LATENCY_BUCKETS, Histogram


def test_buckets_are_inclusive_upper_bounds_and_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0, -2.0):  # a negative value (clock skew) counts as 0
        h.observe(v)
    assert h.counts == [3, 2, 1]
    assert h.cumulative() == [(0.1, 3), (1.0, 5), (float("inf"), 6)]
    assert h.count == 6
    assert h.sum == pytest.approx(0.05 + 0.1 + 0.5 + 1.0 + 3.0)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))
    assert Histogram(LATENCY_BUCKETS).cumulative()[-1] == (float("inf"), 0)
