"""Per-topic history: a ring buffer bounded by event count, bytes and age.

The history of a topic always holds a contiguous run of sequence numbers
``first_seq .. last_seq`` (``first_seq = last_seq + 1`` when it is empty). Eviction only
removes from the oldest end, so a reader asking for events after ``since`` either gets
every one of them, or learns from :attr:`HistoryPage.complete` that some were evicted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agentcast.core.envelope import Publication

__all__ = ["History", "HistoryLimits", "HistoryPage"]

_OVERHEAD = 128
"""Bytes counted per retained publication besides its data (as :attr:`Publication.size`)."""


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """Bounds applied to every topic's history. ``max_age`` is in seconds (0: no age bound).

    ``max_total_bytes`` bounds the histories of all topics of one in-process broker
    together (0: no such bound): past it the least recently published topics lose their
    history first (see :meth:`History.clear`)."""

    max_events: int = 1000
    max_bytes: int = 4 * 1024 * 1024
    max_age: float = 3600.0
    max_total_bytes: int = 0


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Publications after ``since`` (in seq order) and the topic's bounds when read.

    ``complete`` is False when history no longer reaches back to ``since + 1`` (events
    ``since + 1 .. first_seq - 1`` are lost for this reader), or when ``since`` is beyond
    ``last_seq`` (the topic was reset, e.g. an in-memory broker restarted): either way the
    reader must reset its state, and ``publications`` then holds all retained history.
    """

    publications: list[Publication]
    first_seq: int
    last_seq: int
    since: int
    epoch: str = ""
    """Identifies this life of the topic's numbering: it changes when the topic is reset
    (an in-memory broker restarted, or forgot an idle topic), so seqs from another epoch
    mean nothing here."""

    @property
    def complete(self) -> bool:
        return self.first_seq <= self.since + 1 <= self.last_seq + 1


_Entry = tuple[str, int, str, bytes, str, float]
"""A retained publication: ``(topic, seq, type, data, timestamp, at)``, the arguments of
:class:`Publication` (index 1: seq, 3: data, 5: at)."""


class History:
    """The retained publications of one topic.

    Publications are kept as plain tuples of strings, bytes and numbers, not as
    :class:`Publication` objects: CPython's cyclic garbage collector stops tracking such a
    tuple at its first collection, so a full history (1,000 events × every topic) is not
    walked by every later collection. (Kept as objects, 150,000 retained publications made
    each full collection stall the event loop for ~30 ms.) :meth:`since` builds the
    publications it returns.
    """

    __slots__ = ("_events", "_nbytes", "epoch", "last_seq", "limits")

    def __init__(self, limits: HistoryLimits, last_seq: int = 0, epoch: str = "") -> None:
        self.limits = limits
        self.last_seq = last_seq
        self.epoch = epoch
        self._events: deque[_Entry] = deque()
        self._nbytes = 0

    @property
    def first_seq(self) -> int:
        return self._events[0][1] if self._events else self.last_seq + 1

    def __len__(self) -> int:
        return len(self._events)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def append(self, pub: Publication) -> None:
        """Append the next publication; its seq must be ``last_seq + 1``."""
        seq = pub.seq
        if seq != self.last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self.last_seq} on {pub.topic!r}")
        events = self._events
        events.append((pub.topic, seq, pub.type, pub.data, pub.timestamp, pub.at))
        self._nbytes += len(pub.data) + _OVERHEAD
        self.last_seq = seq
        limits = self.limits
        while len(events) > limits.max_events or (
            self._nbytes > limits.max_bytes and len(events) > 1
        ):
            self._nbytes -= len(events.popleft()[3]) + _OVERHEAD

    @property
    def last_at(self) -> float:
        """When the newest retained publication was published (0.0 when none is)."""
        return self._events[-1][5] if self._events else 0.0

    def clear(self) -> int:
        """Drop every retained publication (a memory budget's eviction); the numbering
        stays, so a reader resuming here learns that history is gone (``complete`` is
        False). Returns the bytes freed."""
        freed = self._nbytes
        self._events.clear()
        self._nbytes = 0
        return freed

    def trim(self, now: float) -> int:
        """Drop events older than ``max_age`` at time ``now``; returns how many were dropped."""
        if self.limits.max_age <= 0:
            return 0
        horizon = now - self.limits.max_age
        events = self._events
        dropped = 0
        while events and events[0][5] < horizon:
            self._nbytes -= len(events.popleft()[3]) + _OVERHEAD
            dropped += 1
        return dropped

    def since(self, since: int, limit: int | None = None) -> HistoryPage:
        """Publications with ``seq > since`` (at most ``limit``), oldest first.

        When ``since`` is beyond ``last_seq`` every retained publication is returned.
        """
        events = self._events
        first = self.first_seq
        start = 0 if since > self.last_seq else max(since + 1, first) - first
        stop = len(events) if limit is None else min(len(events), start + max(limit, 0))
        epoch = self.epoch
        pubs = [Publication(*events[i], epoch) for i in range(start, stop)] if start < stop else []
        return HistoryPage(pubs, first, self.last_seq, since, epoch)
