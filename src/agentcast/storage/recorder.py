"""The event recorder: publications into the store's event log, in batches, off the hot path.

A feature hands each publication to :meth:`EventRecorder.record` (an append to a list).
A background task (:meth:`EventRecorder.run`) writes what accumulated in one transaction
whenever there is something to write, at most every ``interval`` seconds, so a stream of
tokens costs a fraction of a write per token, never a write of its own;
:meth:`EventRecorder.flush` writes at once (history reads and shutdown call it). After
the events, ``after(topics)`` runs with the topics the batch touched (the runs feature
stores their summaries there). If the database is unreachable the batch is kept and
retried; a flush that is cancelled (the gateway stopping) keeps its batch too, and the
store's append is idempotent on ``(topic, seq)``, so a batch written twice is stored once.
Past ``max_pending`` events the oldest are dropped with an error log (they stay in the
broker's history, which is the source of truth for delivery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agentcast.core.envelope import Publication, encode_json
from agentcast.core.history import HistoryPage
from agentcast.storage.base import RunStore, StoreError

__all__ = ["EventRecorder", "stored_page"]

logger = logging.getLogger("agentcast.store")


class EventRecorder:
    """Batches publications into a :class:`RunStore`'s event log."""

    def __init__(
        self,
        store: RunStore,
        *,
        after: Callable[[set[str]], Awaitable[None]] | None = None,
        interval: float = 0.2,
        max_pending: int = 200_000,
        name: str = "event",
    ) -> None:
        self.store = store
        self.after = after
        self.interval = interval
        self.max_pending = max_pending
        self.name = name
        self.pending: list[Publication] = []
        self.wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self.written = 0
        self.batches = 0

    def record(self, pub: Publication) -> None:
        """Queue ``pub`` for the next batch (no I/O)."""
        pending = self.pending
        pending.append(pub)
        if len(pending) > self.max_pending:
            dropped = len(pending) - self.max_pending
            del pending[:dropped]
            logger.error("%s store behind: dropped %d oldest unstored events", self.name, dropped)
        if not self.wakeup.is_set():
            self.wakeup.set()

    async def flush(self) -> None:
        """Write everything recorded so far (one transaction), then ``after``."""
        async with self._lock:
            batch, self.pending = self.pending, []
            if not batch:
                return
            try:
                await self.store.append(batch)
                if self.after is not None:
                    await self.after({pub.topic for pub in batch})
            except BaseException:
                self.pending[:0] = batch  # retried by the next flush (append is idempotent)
                raise
            self.written += len(batch)
            self.batches += 1

    async def run(self) -> None:
        """The background writer."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            try:
                # not cut short when the gateway stops: a write in flight finishes (the
                # shutdown flush then waits for it), a database connection is never
                # abandoned mid-transaction
                await asyncio.shield(self.flush())
            except StoreError as exc:
                logger.error("%s store write failed, will retry: %s", self.name, exc)
            await asyncio.sleep(self.interval)


async def stored_page(
    store: RunStore,
    recorder: EventRecorder,
    topic: str,
    since: int,
    page: HistoryPage,
    limit: int | None = None,
) -> HistoryPage | None:
    """The recorded events of ``topic`` after ``since`` joined to the broker's ``page``,
    at most ``limit``: what a feature's history source answers (runs, chat). None when the
    store does not reach back to ``since + 1`` either (pruned, never recorded, a hole) or
    is unavailable. The recorder is flushed first, so that nothing recorded is missed."""
    upto = page.first_seq - 1 if page.publications else page.last_seq
    wanted = upto - since if limit is None else min(upto - since, limit)
    if wanted <= 0:
        return None
    try:
        await recorder.flush()
        stored = await store.events(topic, since, wanted)
    except StoreError:
        return None
    if not stored or stored[0].seq != since + 1 or stored[-1].seq != since + wanted:
        return None
    pubs = [
        Publication(e.topic, e.seq, e.type, encode_json(e.data), e.timestamp, e.at, page.epoch)
        for e in stored
    ]
    room = None if limit is None else limit - len(pubs)
    pubs.extend(page.publications if room is None else page.publications[:room])
    return HistoryPage(pubs, since + 1, page.last_seq, since, page.epoch)
