"""Per-agent generation figures: time to first token, tokens/s, cancel and error rates.

Kept in memory per ``(queue_key, model)``; the most recent 1,000 samples feed the
percentiles. Served by ``GET /api/llm/stats`` and printed by ``agentcast llm bench``; the
counters and the cumulative time-to-first-token histogram (every generation since the
start) are exported by ``/metrics``.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agentcast.core.histogram import TTFT_BUCKETS, Histogram

__all__ = ["AgentStats", "percentile"]

_SAMPLES = 1000


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0–1) of ``values`` by nearest rank, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class AgentStats:
    """Figures of one upstream and model (or one injected agent)."""

    key: str
    model: str
    generations: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    tokens_per_s: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    queue_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    """Every generation's time to first token, in seconds (cumulative, for /metrics)."""

    def record(
        self,
        status: str,
        tokens: int,
        ttft_ms: float | None,
        stream_s: float,
        queue_ms: float,
    ) -> None:
        self.generations += 1
        self.tokens += tokens
        if status == "complete":
            self.completed += 1
        elif status == "cancelled":
            self.cancelled += 1
        else:
            self.errors += 1
        if ttft_ms is not None:
            self.ttft_ms.append(ttft_ms)
            self.ttft.observe(ttft_ms / 1000)
            if tokens > 1 and stream_s > 0:
                self.tokens_per_s.append(tokens / stream_s)
        self.queue_ms.append(queue_ms)

    def to_dict(self) -> dict[str, Any]:
        ttft = list(self.ttft_ms)
        rates = list(self.tokens_per_s)
        queued = list(self.queue_ms)
        n = self.generations

        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        return {
            "key": self.key,
            "model": self.model,
            "generations": n,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "tokens": self.tokens,
            "cancel_rate": round(self.cancelled / n, 4) if n else 0.0,
            "error_rate": round(self.errors / n, 4) if n else 0.0,
            "ttft_ms": {
                "p50": rounded(percentile(ttft, 0.5)),
                "p99": rounded(percentile(ttft, 0.99)),
            },
            "tokens_per_s": {"median": rounded(statistics.median(rates)) if rates else None},
            "queue_ms": {
                "p50": rounded(percentile(queued, 0.5)),
                "p99": rounded(percentile(queued, 0.99)),
            },
        }
