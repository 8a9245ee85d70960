"""The fair queue in front of an upstream that serves only a few generations at once.

:class:`FairQueue` admits at most ``limit`` holders; the others wait. Waiters are served
round-robin between users: each user's requests wait in FIFO order, and users take turns,
so one user's ten requests do not starve another user's one. Every waiter is told its
position (1 = next) whenever it changes. A waiter cancelled while queued leaves the queue
without ever holding a slot (its request never reaches the upstream).

The queue is plain asyncio, single event loop, no I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["FairQueue"]

logger = logging.getLogger("agentcast.chat")

PositionCallback = Callable[[int], None]


class _Waiter:
    __slots__ = ("future", "notify", "position", "user")

    def __init__(self, user: str, notify: PositionCallback | None) -> None:
        self.user = user
        self.notify = notify
        self.position = 0
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class FairQueue:
    """At most ``limit`` concurrent holders (None: unlimited), round-robin between users."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1 or None")
        self.limit = limit
        self.active = 0
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._turns: deque[str] = deque()  # users with waiters, in serving order

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    def _free(self) -> bool:
        return self.limit is None or self.active < self.limit

    @asynccontextmanager
    async def slot(
        self, user: str, on_position: PositionCallback | None = None
    ) -> AsyncIterator[int]:
        """Hold one slot for the block; yields the position the request had on arrival
        (0 when it got a slot at once). ``on_position(n)`` is called whenever the
        position of this waiting request changes (first with its arrival position).
        Cancelling while waiting leaves the queue; the block never runs.
        """
        arrival = await self.acquire(user, on_position)
        try:
            yield arrival
        finally:
            self.release()

    async def acquire(self, user: str, on_position: PositionCallback | None = None) -> int:
        """Wait for a slot (see :meth:`slot`); the caller must :meth:`release` it."""
        if self._free() and not self._turns:
            self.active += 1
            return 0
        waiter = _Waiter(user, on_position)
        queue = self._waiting.get(user)
        if queue is None:
            queue = self._waiting[user] = deque()
            self._turns.append(user)
        queue.append(waiter)
        self._renumber()
        arrival = waiter.position
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # granted just before the cancel: give the slot back
            else:
                self._remove(waiter)
            raise
        return arrival

    def release(self) -> None:
        """Give a slot back; the next waiter in fair order gets it."""
        self.active -= 1
        while self._turns and self._free():
            user = self._turns.popleft()
            queue = self._waiting[user]
            waiter = queue.popleft()
            if queue:
                self._turns.append(user)  # the user's next request waits for its next turn
            else:
                del self._waiting[user]
            self.active += 1
            waiter.future.set_result(None)
        self._renumber()

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._waiting.get(waiter.user)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._waiting[waiter.user]
            self._turns.remove(waiter.user)
        self._renumber()

    def order(self) -> list[str]:
        """Users of the waiting requests in the order they will be served."""
        return [w.user for w in self._order()]

    def _order(self) -> list[_Waiter]:
        queues = [self._waiting[u] for u in self._turns]
        order: list[_Waiter] = []
        depth = 0
        while queues:
            queues = [q for q in queues if len(q) > depth]
            order.extend(q[depth] for q in queues)
            depth += 1
        return order

    def _renumber(self) -> None:
        for position, waiter in enumerate(self._order(), 1):
            if waiter.position != position:
                waiter.position = position
                if waiter.notify is not None:
                    try:
                        waiter.notify(position)
                    except Exception:  # pragma: no cover - a callback must not break the queue
                        logger.exception("position callback failed")
