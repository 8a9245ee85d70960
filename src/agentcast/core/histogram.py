"""A cumulative histogram of plain ints, cheap enough for once-per-flush observations.

The gateway observes the publish-to-write latency of each flushed batch into one
:class:`Histogram`; the chat feature observes each generation's time to first token. The
metrics feature reads them at scrape time (``/metrics``), so observing costs a bisect and
two additions, with no lock, no label lookup and no object per observation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS", "TTFT_BUCKETS", "Histogram"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds in seconds of the publish-to-delivery histogram (100 µs … 2.5 s, +Inf)."""

TTFT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds in seconds of the time-to-first-token histogram (50 ms … 60 s, +Inf)."""


class Histogram:
    """Counts of observations per bucket (``le`` upper bounds, inclusive), their sum.

    ``counts[i]`` counts the observations in bucket ``i`` only (not cumulative); the last
    one is ``+Inf``. :meth:`cumulative` gives Prometheus' cumulative view.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be increasing and distinct")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a negative one, a clock step between nodes, counts as 0)."""
        if value < 0.0:
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
