"""The run store contract.

* :meth:`RunStore.append` stores events idempotently: an event is identified by
  ``(topic, seq)``; storing it twice keeps the first copy. Events of a topic are returned
  in seq order.
* :meth:`RunStore.prune` bounds the log of topics that are not kept for ever (chat
  topics): it never deletes a topic's last event, so ``last_seqs`` still continues the
  numbering of a pruned topic.
* :meth:`RunStore.upsert_runs` replaces each run's summary (status, state) atomically.
* Every method raises :class:`~agentcast.errors.BrokerError`-like failures as
  :class:`StoreError` when the database is unreachable; callers retry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from agentcast.core.envelope import Publication
from agentcast.errors import AgentcastError

__all__ = ["RunStore", "RunSummary", "RunVisibility", "StoreError", "StoredEvent"]


class StoreError(AgentcastError):
    """The store failed; the operation was not applied."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    topic: str
    kind: str
    run_id: str
    status: str
    execution_id: str | None
    started_at: str | None
    finished_at: str | None
    last_seq: int
    state: dict[str, Any]
    owner: str | None = None
    """The subject of the principal the run belongs to; None: nobody (the server made
    it). Once stored, an owner is never replaced (:meth:`RunStore.upsert_runs`)."""


@dataclass(frozen=True, slots=True)
class RunVisibility:
    """The runs one principal may list: those ``owner`` owns, and those whose topic
    matches one of ``patterns`` (a ``topics`` claim: ``*``, ``?``, the rest literal; see
    :func:`agentcast.security.ownership.topic_granted`)."""

    owner: str
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    topic: str
    seq: int
    type: str
    timestamp: str
    at: float
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "topic": self.topic,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "data": self.data,
        }


class RunStore(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Connect and apply migrations."""

    @abstractmethod
    async def stop(self) -> None: ...

    async def ping(self) -> None:
        """Return when the store answers a trivial query; raise when it does not
        (``/readyz``). The default reads a run that does not exist."""
        await self.get_run("agentcast:ping")

    @abstractmethod
    async def append(self, events: list[Publication]) -> None:
        """Store events (idempotent on ``(topic, seq)``), in one transaction. A store may
        keep a run of consecutive events of one topic as one record (the SQL store does):
        :meth:`events` gives them back one by one, exactly as appended. A seq stored
        already keeps its stored copy, except where the SQL store replaces a record by a
        longer one starting at the same seq (a batch re-sent with more events behind it,
        whose copies are the same)."""

    @abstractmethod
    async def upsert_runs(self, runs: list[RunSummary]) -> None:
        """Insert or replace run summaries, in one transaction; a stored ``owner`` is
        kept (a summary's owner only fills one that is not stored yet), and a stored
        summary with a higher ``last_seq`` is kept (nodes writing one run's summary
        concurrently never move it back)."""

    @abstractmethod
    async def list_runs(
        self,
        kind: str | None,
        status: str | None,
        limit: int,
        offset: int,
        visibility: RunVisibility | None = None,
    ) -> tuple[list[RunSummary], int]:
        """Runs, most recently updated first, and the total matching the filters (only
        those ``visibility`` lets see, when given)."""

    @abstractmethod
    async def get_run(self, topic: str) -> RunSummary | None: ...

    @abstractmethod
    async def events(self, topic: str, since: int, limit: int | None = None) -> list[StoredEvent]:
        """Stored events of ``topic`` with seq > ``since``, in seq order."""

    @abstractmethod
    async def last_seqs(self, prefix: str | None = None) -> dict[str, int]:
        """Last stored seq of every topic (of the topics starting with ``prefix``): to
        continue their numbering after a restart."""

    @abstractmethod
    async def prune(self, prefix: str, before: float) -> int:
        """Delete the events of topics starting with ``prefix`` published before
        ``before`` (seconds since the epoch), except each topic's last event (which keeps
        its numbering across restarts); returns how many were deleted."""

    @abstractmethod
    async def delete_events(self, topic: str) -> None:
        """Delete every stored event of ``topic``."""

    @abstractmethod
    async def unfinished(self) -> list[str]:
        """Topics of runs stored as not finished."""
