"""The run recorder: every run event into the run store, in batches, off the hot path.

The run registry hands each run publication to :meth:`RunRecorder.record` (an append to a
list). A background task writes what accumulated in one transaction (events, then the
summaries of the runs they touched) whenever there is something to write, at most every
``interval`` seconds; :meth:`RunRecorder.flush` writes at once (HTTP reads and shutdown
call it). If the database is unreachable the batch is kept and retried; past
``max_pending`` events the oldest are dropped with an error log (they stay in the
broker's history, which is the source of truth for delivery).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from agentcast.core.envelope import Publication
from agentcast.storage.base import RunStore, RunSummary, StoreError

if TYPE_CHECKING:
    from agentcast.runs.registry import Runs

__all__ = ["RunRecorder"]

logger = logging.getLogger("agentcast.store")


class RunRecorder:
    """Batches run events into a :class:`RunStore`."""

    def __init__(
        self,
        store: RunStore,
        registry: Runs,
        interval: float = 0.2,
        max_pending: int = 200_000,
    ) -> None:
        self.store = store
        self.registry = registry
        self.interval = interval
        self.max_pending = max_pending
        self.pending: list[Publication] = []
        self.wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self.written = 0

    def record(self, pub: Publication) -> None:
        self.pending.append(pub)
        if len(self.pending) > self.max_pending:
            dropped = len(self.pending) - self.max_pending
            del self.pending[:dropped]
            logger.error("run store behind: dropped %d oldest unstored events", dropped)
        self.wakeup.set()

    async def flush(self) -> None:
        """Write everything recorded so far (one transaction for events, one for runs)."""
        async with self._lock:
            batch, self.pending = self.pending, []
            if not batch:
                return
            topics = {pub.topic for pub in batch}
            try:
                await self.store.append(batch)
                await self.store.upsert_runs(
                    [s for t in sorted(topics) if (s := self.registry.summary(t)) is not None]
                )
            except StoreError:
                self.pending[:0] = batch  # retried by the next flush
                raise
            self.written += len(batch)

    async def run(self) -> None:
        """The background writer."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            try:
                await self.flush()
            except StoreError as exc:
                logger.error("run store write failed, will retry: %s", exc)
            await asyncio.sleep(self.interval)


def summary_of(
    topic: str, state: dict[str, object], seq: int, owner: str | None = None
) -> RunSummary:
    """A :class:`RunSummary` from a run snapshot (and the run's owner)."""
    kind, run_id = topic.split(":", 1)
    return RunSummary(
        topic=topic,
        kind=kind,
        run_id=run_id,
        status=str(state.get("status")),
        execution_id=state.get("execution_id"),  # type: ignore[arg-type]
        started_at=state.get("started_at"),  # type: ignore[arg-type]
        finished_at=state.get("finished_at"),  # type: ignore[arg-type]
        last_seq=seq,
        state=state,
        owner=owner,
    )
