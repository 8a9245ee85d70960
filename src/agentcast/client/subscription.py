"""One topic's subscription: its buffer, its resume position and its iterator."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from agentcast.client.events import Event, HistoryLost, Snapshot
from agentcast.core.frames import SubscribedFrame
from agentcast.errors import ClientError, HistoryLostError

if TYPE_CHECKING:
    from agentcast.client.connection import Client

__all__ = ["OnHistoryLost", "Subscription"]

logger = logging.getLogger("agentcast.client")

T_co = TypeVar("T_co", bound=Event | HistoryLost, covariant=True)
OnHistoryLost = Literal["raise", "reset"]


class Subscription(Generic[T_co]):
    """An async iterator of one topic's events, resumed across reconnections.

    Made by :meth:`Client.subscribe`. Contract:

    * Events come in ``seq`` order, each exactly once: after a reconnection the client
      resubscribes with ``since`` = the last seq it received (and the topic's epoch) and
      drops any seq it already has; a seq that would skip one makes it resubscribe from
      the last one it has (a gap never reaches you).
    * When the server can no longer provide the missing events (history evicted, topic
      reset), the iterator raises :class:`~agentcast.errors.HistoryLostError` after the
      events received before (``on_history_lost="raise"``), or yields a
      :class:`~agentcast.client.HistoryLost` marker and continues from the server's
      retained history (``"reset"``).
    * Received events wait in a buffer of ``queue_size`` events. A consumer that falls
      behind does not hold up the connection's other subscriptions: when the buffer is
      full the subscription stops taking events and, once the consumer has drained half
      of it, resubscribes from the last buffered seq (within the server's history,
      nothing is lost).
    * Iteration ends (``StopAsyncIteration``) when you :meth:`unsubscribe` or the client
      is closed (buffered events are dropped then). It raises after the buffered events
      when the subscription failed: :class:`~agentcast.client.CommandFailedError` (the server
      refused the ``subscribe``), ``HistoryLostError``, or
      :class:`~agentcast.errors.ConnectionClosedError` (terminal close code).

    Use it once, from one task. ``async with client.subscribe(...) as sub:`` unsubscribes
    on exit.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        since: int | None,
        on_history_lost: OnHistoryLost,
        queue_size: int,
    ) -> None:
        if since is not None and since < 0:
            raise ValueError("since must be >= 0 (or None for live events only)")
        if on_history_lost not in ("raise", "reset"):
            raise ValueError("on_history_lost must be 'raise' or 'reset'")
        self.topic = topic
        self.since = since
        self.on_history_lost: OnHistoryLost = on_history_lost
        self._client = client
        self._queue_size = queue_size
        self._items: deque[Event | HistoryLost] = deque()
        self._wake = asyncio.Event()
        self._live_changed = asyncio.Event()
        self._error: BaseException | None = None
        self._ended = False
        self._position: int | None = since
        """Last seq taken into the buffer: the resume point and the duplicate filter."""
        self._delivered: int | None = None
        self.epoch: str | None = None
        """The topic epoch of the seqs received (from the last ``subscribed`` reply)."""
        self.live = False
        """True while the server streams this topic's events on the current connection."""
        self.stalled = False
        """True while the buffer was full: events are not taken until it has drained."""
        self.request: int | None = None
        """Id of the latest ``subscribe`` command; only its reply counts."""
        self.link: object | None = None
        """The connection the latest ``subscribe`` was sent on."""
        self._expect_snapshot = False
        self.retry: asyncio.TimerHandle | None = None
        self.retry_delays: Iterator[float] | None = None

    def __repr__(self) -> str:
        state = "ended" if self.finished else "live" if self.live else "pending"
        return f"<Subscription {self.topic!r} {state} last_seq={self._delivered}>"

    # -- public ----------------------------------------------------------------------

    @property
    def last_seq(self) -> int | None:
        """The seq of the last event yielded to you (None before the first, and again
        right after a :class:`~agentcast.client.HistoryLost` marker).

        With :attr:`epoch`, the position to resume from later: ``subscribe(topic,
        since=last_seq)``.
        """
        return self._delivered

    @property
    def finished(self) -> bool:
        """True once the subscription ended or failed (it is no longer resumed)."""
        return self._ended or self._error is not None

    def __aiter__(self) -> Subscription[T_co]:
        return self

    async def __anext__(self) -> T_co:
        while True:
            if self._ended:
                raise StopAsyncIteration
            if self._items:
                item = self._items.popleft()
                if isinstance(item, Event):
                    self._delivered = item.seq
                elif isinstance(item, HistoryLost):
                    self._delivered = None
                if self.stalled and len(self._items) <= self._queue_size // 2:
                    self.stalled = False
                    self._client._resync(self, "the buffer drained")
                return cast(T_co, item)
            if self._error is not None:
                self._ended = True
                raise self._error
            self._wake.clear()
            await self._wake.wait()

    async def wait_subscribed(self) -> None:
        """Return once the server confirmed this subscription on the current connection.

        Events published after that are delivered. Raises the subscription's error if it
        failed, :class:`~agentcast.errors.ClientError` if it ended.
        """
        while not self.live:
            if self._error is not None:
                raise self._error
            if self._ended:
                raise ClientError(f"subscription to {self.topic!r} ended")
            self._live_changed.clear()
            await self._live_changed.wait()

    async def unsubscribe(self) -> None:
        """End the subscription: iteration stops and the server stops sending the topic.

        Idempotent. Waits (bounded by the client's ``reply_timeout``) for the server's
        ``unsubscribed`` when connected.
        """
        if self._ended:
            return
        self.end()
        await self._client._unsubscribe(self)

    async def __aenter__(self) -> Subscription[T_co]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.unsubscribe()

    # -- driven by the client ----------------------------------------------------------

    def subscribe_command(self) -> dict[str, Any]:
        """The ``subscribe`` command resuming from the current position."""
        command: dict[str, Any] = {"type": "subscribe", "topic": self.topic}
        if self._position is not None:
            command["since"] = self._position
            if self.epoch is not None:
                command["epoch"] = self.epoch
        return command

    def offline(self) -> None:
        """The connection is gone: events will come again after the next ``subscribed``."""
        self._set_live(False)

    def on_subscribed(self, reply: dict[str, Any]) -> bool:
        """Apply the ``subscribed`` reply; False when the subscription failed on it."""
        data = SubscribedFrame.model_validate(reply).data
        self.epoch = data.epoch
        self.retry_delays = None
        since = data.since
        if since is None:
            self._position = data.seq
        elif data.recovered:
            self._position = since
        else:
            if self.on_history_lost == "raise":
                self.fail(HistoryLostError(self.topic, since, data.first_seq))
                return False
            logger.warning(
                "history of %s lost after seq %d: continuing from seq %d",
                self.topic,
                since,
                data.first_seq,
            )
            self._push(HistoryLost(self.topic, since, data.first_seq))
            self._position = data.first_seq - 1
        self._expect_snapshot = True
        self._set_live(True)
        return True

    def on_event(self, kind: str, seq: int, timestamp: str, data: dict[str, Any]) -> None:
        """Take one event frame of this topic (drop duplicates, resync on a gap or a full
        buffer)."""
        if not self.live:
            return
        snapshot = self._expect_snapshot and kind == "snapshot"
        self._expect_snapshot = False
        position = self._position
        if not snapshot and position is not None:
            if seq <= position:
                return  # already received: a duplicate after a resume
            if seq != position + 1:
                self._set_live(False)
                self._client._resync(self, f"gap: seq {seq} after {position}")
                return
        if len(self._items) >= self._queue_size:
            self.stalled = True
            self._set_live(False)
            logger.info("%s: buffer full (%d events), pausing", self.topic, self._queue_size)
            return
        self._position = seq
        cls = Snapshot if snapshot else Event
        self._push(cls(kind, self.topic, seq, timestamp, data))

    def fail(self, error: BaseException) -> None:
        """End with ``error``: raised after the buffered events."""
        if self.finished:
            return
        self._error = error
        self._set_live(False)
        self._wake.set()
        self._live_changed.set()

    def end(self) -> None:
        """End without error: iteration stops, buffered events are dropped."""
        self._ended = True
        self._items.clear()
        self._set_live(False)
        self._wake.set()
        self._live_changed.set()

    def _push(self, item: Event | HistoryLost) -> None:
        self._items.append(item)
        self._wake.set()

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            self._live_changed.set()
