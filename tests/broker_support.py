"""Brokers for tests, built over the real in-memory broker through the broker contract only.

:class:`WrappedBroker` forwards every call to a real :class:`MemoryBroker` (on its own or
on a shared :class:`MemoryBackend`) and routes each notification through
:meth:`WrappedBroker.notified`, so subclasses can lose, delay or reorder nothing but
notifications, as a remote broker's connection would. Without ``sync=True`` it has no
synchronous capability: the gateway batches its publishes as it would for Redis.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from agentcast.brokers.base import Broker, Draft, Listener
from agentcast.brokers.memory import MemoryBackend, MemoryBroker
from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryLimits, HistoryPage


class WrappedBroker(Broker):
    """A real memory broker behind the contract; ``batches`` records each batch's size."""

    def __init__(
        self,
        limits: HistoryLimits | None = None,
        *,
        backend: MemoryBackend | None = None,
        sync: bool = False,
    ) -> None:
        self.inner = MemoryBroker(limits, backend=backend)
        self.backend = self.inner.backend
        self.publish_sync = self.inner.publish_sync if sync else None
        self.listener: Listener | None = None
        self.batches: list[int] = []

    async def start(self, listener: Listener) -> None:
        self.listener = listener
        await self.inner.start(self.notified)

    async def stop(self) -> None:
        await self.inner.stop()
        self.listener = None

    def notified(self, pub: Publication) -> None:
        """A notification from the backend; delivers it (override to lose or delay it)."""
        if self.listener is not None:
            self.listener(pub)

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Publication]:
        self.batches.append(len(drafts))
        return await self.inner.publish_many(drafts)

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        return await self.inner.history(topic, since, limit)

    async def listen(self, topic: str) -> None:
        await self.inner.listen(topic)

    async def unlisten(self, topic: str) -> None:
        await self.inner.unlisten(topic)

    async def listen_prefix(self, prefix: str) -> None:
        await self.inner.listen_prefix(prefix)

    def topics(self) -> dict[str, int]:
        return self.inner.topics()

    async def trim(self, now: float) -> None:
        await self.inner.trim(now)

    async def declare_durable(self, prefixes: Iterable[str]) -> None:
        await self.inner.declare_durable(prefixes)

    async def continue_numbering(self, last_seqs: Mapping[str, int]) -> None:
        await self.inner.continue_numbering(last_seqs)


class LossyBroker(WrappedBroker):
    """Loses the notifications ``lose(pub)`` says (history still has them)."""

    def __init__(
        self,
        lose: Callable[[Publication], bool],
        limits: HistoryLimits | None = None,
        *,
        backend: MemoryBackend | None = None,
        sync: bool = False,
    ) -> None:
        super().__init__(limits, backend=backend, sync=sync)
        self.lose = lose
        self.lost: list[Publication] = []

    def notified(self, pub: Publication) -> None:
        if self.lose(pub):
            self.lost.append(pub)
            return
        super().notified(pub)

    def redeliver_latest(self) -> None:
        """What the contract asks of a broker that may have lost notifications (it
        reconnected): deliver the latest publication of every listened topic again."""
        for topic, history in self.backend.histories.items():
            if self.inner.listens(topic) and len(history):
                (latest,) = history.since(history.last_seq - 1).publications
                self.deliver_again(latest)

    def deliver_again(self, pub: Publication) -> None:
        if self.listener is not None:
            self.listener(pub)


class RemoteLikeBroker(LossyBroker):
    """A broker that behaves like one over a network: every publish and history read takes
    ``steps()`` event-loop steps, notifications arrive in order but ``steps()`` loop steps
    late (so a history read can see seqs whose notifications are still on the way), and
    ``lose(pub)`` notifications never arrive."""

    def __init__(
        self,
        steps: Callable[[], int],
        lose: Callable[[Publication], bool] = lambda pub: False,
        limits: HistoryLimits | None = None,
        *,
        backend: MemoryBackend | None = None,
    ) -> None:
        super().__init__(lose, limits, backend=backend)
        self.steps = steps
        self._queue: deque[Publication] = deque()
        self._pump: asyncio.Task[None] | None = None

    async def _wait(self) -> None:
        for _ in range(self.steps()):
            await asyncio.sleep(0)

    def notified(self, pub: Publication) -> None:
        if self.lose(pub):
            self.lost.append(pub)
            return
        self.deliver_again(pub)

    def deliver_again(self, pub: Publication) -> None:
        self._queue.append(pub)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._deliver())

    async def _deliver(self) -> None:
        try:
            while self._queue:
                await self._wait()
                if self.listener is not None and self._queue:
                    self.listener(self._queue.popleft())
        finally:
            self._pump = None

    @property
    def idle(self) -> bool:
        """No notification on the way."""
        return not self._queue

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self._queue.clear()
        await super().stop()

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Publication]:
        await self._wait()
        return await super().publish_many(drafts)

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        await self._wait()
        page = await super().history(topic, since, limit)
        await self._wait()
        return page
