"""What a subscription yields: typed events, run snapshots and history-loss markers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "HistoryLost", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Event:
    """One topic event, as the server sent it.

    ``seq`` is gapless per topic (per topic *epoch*): a subscription yields seq N+1 right
    after seq N, never twice, never out of order. ``timestamp`` is the server's ISO-8601
    UTC publication time (informative: order by ``seq``). ``type`` and ``data`` are the
    publisher's.
    """

    type: str
    topic: str
    seq: int
    timestamp: str
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """The wire-format envelope: ``{"type", "topic", "seq", "timestamp", "data"}``."""
        return {
            "type": self.type,
            "topic": self.topic,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Snapshot(Event):
    """A run topic's folded state as of ``seq`` (``type == "snapshot"``).

    Sent by the server first on a subscription without ``since`` to a run it knows, or
    after history was lost: replace your state of the run with ``data``; the events that
    follow start at ``seq + 1``.
    """


@dataclass(frozen=True, slots=True)
class HistoryLost:
    """Yielded in ``on_history_lost="reset"`` mode when a resume could not be complete.

    Events ``since + 1`` … ``first_seq - 1`` are lost (evicted from the server's history),
    or the topic was reset (its numbering restarted, e.g. the in-memory server restarted)
    and nothing after ``since`` refers to the same life of the topic. Drop your state of
    the topic: the items that follow rebuild it from the server's retained history (from
    ``first_seq``, or from a :class:`Snapshot`).
    """

    topic: str
    since: int
    first_seq: int
