"""The run recorder: every run event into the run store, in batches, off the hot path.

The run registry hands each run publication to :meth:`RunRecorder.record` (an append to a
list). The batching is :class:`~agentcast.storage.recorder.EventRecorder`'s: a background
task writes what accumulated in one transaction (events, then the summaries of the runs
they touched) at most every ``interval`` seconds; :meth:`RunRecorder.flush` writes at once
(HTTP reads and shutdown call it). A failed or cancelled write keeps its batch for the
next one; past ``max_pending`` events the oldest are dropped with an error log (they stay
in the broker's history, which is the source of truth for delivery).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentcast.storage.base import RunStore, RunSummary
from agentcast.storage.recorder import EventRecorder

if TYPE_CHECKING:
    from agentcast.runs.registry import Runs

__all__ = ["RunRecorder"]


class RunRecorder(EventRecorder):
    """Batches run events into a :class:`RunStore`, then the touched runs' summaries."""

    def __init__(
        self,
        store: RunStore,
        registry: Runs,
        interval: float = 0.2,
        max_pending: int = 200_000,
    ) -> None:
        super().__init__(
            store, after=self._summaries, interval=interval, max_pending=max_pending, name="run"
        )
        self.registry = registry

    async def _summaries(self, topics: set[str]) -> None:
        await self.store.upsert_runs(
            [s for t in sorted(topics) if (s := self.registry.summary(t)) is not None]
        )


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
