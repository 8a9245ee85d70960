"""The embedded in-memory broker: one process, no persistence across restarts.

Every topic ever published keeps a :class:`~agentcast.core.history.History` (bounded
by count, bytes and age) and its last seq. :meth:`MemoryBroker.publish` is atomic
because it runs to completion on the event loop without awaiting: seq assignment, the
history append and the listener call happen in one step, so the contract's ordering
holds trivially. Topics whose history is empty and that nobody listens to are forgotten
after ``max_age`` (their seq counter too), so memory stays bounded by live topics.
"""

from __future__ import annotations

import secrets

from agentcast.brokers.base import Broker, Listener
from agentcast.core.envelope import Publication, format_timestamp
from agentcast.core.history import History, HistoryLimits, HistoryPage
from agentcast.errors import BrokerError

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """In-process broker; the default (``memory://``)."""

    def __init__(self, limits: HistoryLimits | None = None) -> None:
        self.limits = limits or HistoryLimits()
        self._histories: dict[str, History] = {}
        self._listener: Listener | None = None
        self._listened: set[str] = set()
        self._prefixes: tuple[str, ...] = ()
        self.durable_prefixes: tuple[str, ...] = ()
        """Topics whose numbering a run store continues across restarts: their epoch is
        stable (``durable``) instead of new with every broker."""

    async def start(self, listener: Listener) -> None:
        self._listener = listener

    async def stop(self) -> None:
        self._listener = None

    def publish_now(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        """:meth:`publish` without the coroutine (the in-process fast path)."""
        listener = self._listener
        if listener is None:
            raise BrokerError("broker not started")
        history = self._histories.get(topic)
        if history is None:
            history = self._new_history(topic)
        pub = Publication(topic, history.last_seq + 1, type, data, format_timestamp(at), at)
        history.append(pub)
        if topic in self._listened or topic.startswith(self._prefixes):
            listener(pub)
        return pub

    async def publish(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        return self.publish_now(topic, type, data, at)

    def history_now(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        """:meth:`history` without the coroutine."""
        history = self._histories.get(topic)
        if history is None:
            return HistoryPage([], 1, 0, since)
        return history.since(since, limit)

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        return self.history_now(topic, since, limit)

    def seed_last_seq(self, topic: str, seq: int) -> None:
        """Continue ``topic``'s numbering after ``seq`` (a run store restored after a
        restart): the topic keeps one life across restarts, so its epoch is the run's."""
        history = self._histories.get(topic)
        if history is None:
            history = self._histories[topic] = History(self.limits, seq, epoch="durable")
        elif history.last_seq < seq and not len(history):
            history.last_seq = seq

    def _new_history(self, topic: str) -> History:
        durable = self.durable_prefixes and topic.startswith(self.durable_prefixes)
        epoch = "durable" if durable else secrets.token_hex(4)
        history = self._histories[topic] = History(self.limits, epoch=epoch)
        return history

    async def listen(self, topic: str) -> None:
        self._listened.add(topic)
        if topic not in self._histories:
            self._new_history(topic)  # a subscribed topic exists: its epoch is stable

    async def unlisten(self, topic: str) -> None:
        self._listened.discard(topic)

    async def listen_prefix(self, prefix: str) -> None:
        if prefix not in self._prefixes:
            self._prefixes = (*self._prefixes, prefix)

    def topics(self) -> dict[str, int]:
        return {name: h.last_seq for name, h in self._histories.items()}

    def trim(self, now: float) -> None:
        """Apply the age bound at time ``now`` and forget idle, empty topics."""
        for name in list(self._histories):
            history = self._histories[name]
            history.trim(now)
            if (
                not len(history)
                and name not in self._listened
                and not name.startswith(self._prefixes)
            ):
                del self._histories[name]
