"""The embedded in-memory broker: one process, no persistence across restarts.

The state lives in a :class:`MemoryBackend`: every topic ever published keeps a
:class:`~agentcast.core.history.History` (bounded by count, bytes and age) and its last
seq. A :class:`MemoryBroker` is one process's connection to a backend (by default its
own); several instances may share one backend, each with its own listener and listened
topics, as several nodes share one Redis (the contract suite runs that way).

Publishing is atomic because it runs to completion on the event loop without awaiting:
seq assignment, the history append and the listener calls of every instance happen in
one step, so the contract's ordering holds trivially and the broker offers the
synchronous capability (:attr:`MemoryBroker.publish_sync`). Topics whose history is empty
and that no instance listens to are forgotten by :meth:`MemoryBroker.trim` (their seq
counter too), so memory stays bounded by live topics; a durable topic keeps only its last
seq (one dict entry, :attr:`MemoryBackend.numbering`), so its numbering goes on.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

from agentcast.brokers.base import (
    DURABLE_EPOCH,
    PRODUCER_TTL,
    PRODUCER_WINDOW,
    Broker,
    Conflict,
    Draft,
    Duplicate,
    Listener,
)
from agentcast.core.envelope import Publication, format_timestamp
from agentcast.core.history import History, HistoryLimits, HistoryPage
from agentcast.errors import BrokerError

__all__ = ["MemoryBackend", "MemoryBroker"]


class MemoryBackend:
    """The state that the :class:`MemoryBroker` instances sharing it have in common: what
    a broker server holds (topics, numbering, history, durable prefixes), in process.

    Single-threaded: use it from one event loop.
    """

    def __init__(
        self, limits: HistoryLimits | None = None, *, producer_ttl: float = PRODUCER_TTL
    ) -> None:
        self.limits = limits or HistoryLimits()
        self.producer_ttl = producer_ttl
        self.producers: dict[str, _Producer] = {}
        """Idempotent producers (contract item 9), forgotten by :meth:`trim` after
        ``producer_ttl`` seconds without a publish."""
        self.histories: dict[str, History] = {}
        self.durable_prefixes: tuple[str, ...] = ()
        self.numbering: dict[str, int] = {}
        """Last seq of durable topics that have no history here (continued from a store, or
        forgotten by :meth:`trim`): their next publication continues it."""
        self.brokers: list[MemoryBroker] = []
        """The instances attached (started), notified in this order."""
        self._lost = False
        budget = self.limits.max_total_bytes
        self.evicted_topics = 0
        """Topics whose history the memory budget dropped (``max_total_bytes``)."""
        self._added = 0
        """Bytes appended since the budget was last checked."""
        self._check_every = max(budget // 16, 64 * 1024) if budget else 1 << 62
        """The budget is checked after this many bytes were appended (and at every trim):
        one addition per publish, the histories are summed once per 1/16 of the budget."""

    def flush(self) -> None:
        """Lose every topic, as a flushed or restarted broker server does: every topic's
        numbering restarts at 1 with a new epoch (durable topics too, until their numbering
        is continued again)."""
        self.histories.clear()
        self.numbering.clear()
        self.producers.clear()
        self._lost = True

    def publish_draft(self, d: Draft) -> Publication:
        """:meth:`publish` of one draft, deduplicated by its producer (contract item 9),
        under its condition (``expect_last_seq``, contract item 10)."""
        producer = d.producer
        if producer is None or d.producer_seq is None:
            if d.expect_last_seq is not None and (conflict := self.conflict(d)) is not None:
                return conflict
            return self.publish(d.topic, d.type, d.data, d.at)
        pseq = d.producer_seq
        state = self.producers.get(producer)
        if state is None:
            state = self.producers[producer] = _Producer()
        elif pseq <= state.last:
            orig = state.window.get(pseq) if pseq > state.last - PRODUCER_WINDOW else None
            if orig is None:
                return Duplicate(d.topic, 0, d.type, d.data, format_timestamp(d.at), d.at)
            return Duplicate(
                orig.topic, orig.seq, d.type, d.data, format_timestamp(d.at), d.at, orig.epoch
            )
        if d.expect_last_seq is not None and (conflict := self.conflict(d)) is not None:
            return conflict
        pub = self.publish(d.topic, d.type, d.data, d.at)
        state.last = pseq
        state.touched = d.at
        window = state.window
        window[pseq] = pub
        horizon = pseq - PRODUCER_WINDOW  # seqs increase: the oldest come first
        while (oldest := next(iter(window))) <= horizon:
            del window[oldest]
        return pub

    def conflict(self, d: Draft) -> Conflict | None:
        """A :class:`Conflict` when ``d.topic``'s last seq is not ``d.expect_last_seq``."""
        history = self.histories.get(d.topic)
        if history is not None:
            last, epoch = history.last_seq, history.epoch
        else:
            last = self.numbering.get(d.topic, 0)
            epoch = DURABLE_EPOCH if last else ""
        if last == d.expect_last_seq:
            return None
        return Conflict(d.topic, last, d.type, d.data, format_timestamp(d.at), d.at, epoch)

    def new_history(self, topic: str) -> History:
        last = self.numbering.pop(topic, None)
        if last is not None or (not self._lost and topic.startswith(self.durable_prefixes)):
            history = self.histories[topic] = History(self.limits, last or 0, epoch=DURABLE_EPOCH)
        else:
            history = self.histories[topic] = History(self.limits, epoch=secrets.token_hex(4))
        return history

    def publish(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        """Assign, append, notify every attached instance listening to ``topic``."""
        history = self.histories.get(topic)
        if history is None:
            history = self.new_history(topic)
        pub = Publication(
            topic, history.last_seq + 1, type, data, format_timestamp(at), at, history.epoch
        )
        history.append(pub)
        self._added += len(data)
        if self._added > self._check_every:
            self.enforce_budget()
        for broker in self.brokers:  # MemoryBroker.deliver, inline (once per publication)
            listener = broker._listener
            if listener is not None and (
                topic in broker._listened or topic.startswith(broker._prefixes)
            ):
                listener(pub)
        return pub

    def listened(self, topic: str) -> bool:
        return any(b.listens(topic) for b in self.brokers)

    def trim(self, now: float) -> None:
        for name in list(self.histories):
            history = self.histories[name]
            history.trim(now)
            if not len(history) and not self.listened(name):
                del self.histories[name]
                if history.epoch == DURABLE_EPOCH and history.last_seq:
                    self.numbering[name] = history.last_seq  # a durable numbering is kept
        horizon = now - self.producer_ttl
        for producer in [p for p, st in self.producers.items() if st.touched < horizon]:
            del self.producers[producer]
        self.enforce_budget()

    def history_bytes(self) -> int:
        """Bytes the histories of every topic hold together (as counted by the budget)."""
        return sum(h.nbytes for h in self.histories.values())

    def enforce_budget(self) -> int:
        """Past ``max_total_bytes``, drop the history of the least recently published
        topics until the histories hold at most 90 % of it (so that the next eviction is
        a tenth of the budget away). Their numbering stays: a client resuming there gets
        ``recovered: false``. Returns how many topics lost their history."""
        self._added = 0
        budget = self.limits.max_total_bytes
        if not budget:
            return 0
        total = self.history_bytes()
        if total <= budget:
            return 0
        goal = budget - budget // 10
        evicted = 0
        for history in sorted(
            (h for h in self.histories.values() if len(h)), key=lambda h: h.last_at
        ):
            total -= history.clear()
            evicted += 1
            if total <= goal:
                break
        self.evicted_topics += evicted
        return evicted

    def usage(self) -> dict[str, int]:
        """What ``/healthz`` shows of the histories and their budget."""
        return {
            "bytes": self.history_bytes(),
            "budget": self.limits.max_total_bytes,
            "topics": len(self.histories),
            "evicted_topics": self.evicted_topics,
        }

    def continue_numbering(self, topic: str, seq: int) -> None:
        history = self.histories.get(topic)
        if history is None:
            if seq > self.numbering.get(topic, 0):
                self.numbering[topic] = seq  # a History only once the topic is used
        elif history.last_seq < seq and not len(history):
            history.last_seq = seq
            history.epoch = DURABLE_EPOCH


class _Producer:
    """One idempotent producer: its highest ``producer_seq``, the publications of the
    latest ones (at most :data:`PRODUCER_WINDOW`), when it last published."""

    __slots__ = ("last", "touched", "window")

    def __init__(self) -> None:
        self.last = 0
        self.touched = 0.0
        self.window: dict[int, Publication] = {}


class MemoryBroker(Broker):
    """In-process broker; the default (``memory://``).

    ``backend``: the state to share with other instances (simulating several nodes over
    one broker server); by default a new one with ``limits``.
    """

    def __init__(
        self, limits: HistoryLimits | None = None, *, backend: MemoryBackend | None = None
    ) -> None:
        if backend is not None and limits is not None and limits != backend.limits:
            raise ValueError("limits belong to the backend: pass one or the other")
        self.backend = backend if backend is not None else MemoryBackend(limits)
        self.limits = self.backend.limits
        self._listener: Listener | None = None
        self._listened: set[str] = set()
        self._prefixes: tuple[str, ...] = ()
        self.publish_sync = self._publish_sync

    async def start(self, listener: Listener) -> None:
        if self._listener is None:
            self.backend.brokers.append(self)
        self._listener = listener

    async def stop(self) -> None:
        if self._listener is not None:
            self.backend.brokers.remove(self)
        self._listener = None

    def listens(self, topic: str) -> bool:
        """Whether this instance gets notifications of ``topic``."""
        return topic in self._listened or topic.startswith(self._prefixes)

    def deliver(self, pub: Publication) -> None:
        """Notify this instance's listener of ``pub`` if it listens to its topic (called by
        the backend, in publish order)."""
        listener = self._listener
        topic = pub.topic
        if listener is not None and (topic in self._listened or topic.startswith(self._prefixes)):
            listener(pub)

    def _publish_sync(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        """:meth:`publish` without the coroutine (the in-process fast path)."""
        if self._listener is None:
            raise BrokerError("broker not started")
        return self.backend.publish(topic, type, data, at)

    async def publish(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        return self._publish_sync(topic, type, data, at)

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Publication]:
        if drafts and self._listener is None:
            raise BrokerError("broker not started")
        publish = self.backend.publish
        draft = self.backend.publish_draft
        return [
            publish(d.topic, d.type, d.data, d.at)
            if d.producer is None and d.expect_last_seq is None
            else draft(d)
            for d in drafts
        ]

    def history_now(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        """:meth:`history` without the coroutine."""
        backend = self.backend
        history = backend.histories.get(topic)
        if history is None:
            last = backend.numbering.get(topic)
            if last is not None:
                return HistoryPage([], last + 1, last, since, DURABLE_EPOCH)
            return HistoryPage([], 1, 0, since)
        return history.since(since, limit)

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        return self.history_now(topic, since, limit)

    async def listen(self, topic: str) -> None:
        self._listened.add(topic)
        if topic not in self.backend.histories:
            self.backend.new_history(topic)  # a subscribed topic exists: its epoch is stable

    async def unlisten(self, topic: str) -> None:
        self._listened.discard(topic)

    async def listen_prefix(self, prefix: str) -> None:
        if prefix not in self._prefixes:
            self._prefixes = (*self._prefixes, prefix)

    def topics(self) -> dict[str, int]:
        return {name: h.last_seq for name, h in self.backend.histories.items()}

    async def trim(self, now: float) -> None:
        self.backend.trim(now)

    def history_usage(self) -> dict[str, int] | None:
        return self.backend.usage()

    async def declare_durable(self, prefixes: Iterable[str]) -> None:
        known = self.backend.durable_prefixes
        self.backend.durable_prefixes = (*known, *(p for p in prefixes if p not in known))

    async def continue_numbering(self, last_seqs: Mapping[str, int]) -> None:
        for topic, seq in last_seqs.items():
            self.backend.continue_numbering(topic, seq)
