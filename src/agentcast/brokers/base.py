"""The broker contract.

A broker carries publications between the processes of one agentcast deployment. Every
implementation (the in-memory default, Redis, …) passes the same contract suite
(``tests/contract/test_brokers.py``) and must guarantee:

1. **Gapless sequence numbers.** :meth:`Broker.publish` assigns the next ``seq`` of the
   topic atomically across every process sharing the broker: a topic's seqs are 1, 2, 3,
   … each assigned exactly once, in the order the publishes are serialized by the broker.
2. **History before notification.** A publication is appended to the topic's history
   before any listener is notified of it, so a reader that sees seq N in a notification
   can always read N from history (unless it was evicted by the history bounds).
3. **Ordered notification.** Each listening process receives the publications of a topic
   in seq order. A broker that can lose notifications (e.g. on reconnect) must still
   deliver later ones in order; the hub reports the gap and the gateway reads the missing
   seqs from history.
4. **Bounded history.** :meth:`Broker.history` returns the retained publications after
   ``since`` in seq order with the topic's first retained and last assigned seq, read
   atomically (no publication can be half-visible). Retention is bounded by the
   :class:`~agentcast.core.history.HistoryLimits` the broker was created with.
5. **Epochs.** Every history page carries the topic's ``epoch``: a token that changes
   whenever the topic's numbering restarts (a broker without persistence restarted, or a
   forgotten topic was created again). A seq is only meaningful with its epoch.
6. **Acknowledged means durable for the broker's lifetime.** When :meth:`publish`
   returns, the publication is in history; if it raises :class:`~agentcast.errors.BrokerError`
   nothing was assigned.

The listener is called from the event loop thread, never concurrently with itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryPage

__all__ = ["Broker", "Listener"]

Listener = Callable[[Publication], None]


class Broker(ABC):
    """Publish/subscribe across processes, sequence assignment, history read."""

    @abstractmethod
    async def start(self, listener: Listener) -> None:
        """Connect, and call ``listener`` with every publication of the listened topics."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect; no listener call happens after this returns."""

    @abstractmethod
    async def publish(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        """Assign the next seq of ``topic``, store, notify listeners; return the publication.

        ``data`` is the JSON encoding of the event's data object; ``at`` the publish time
        (seconds since the epoch). Raises :class:`~agentcast.errors.BrokerError` when
        nothing could be assigned.
        """

    @abstractmethod
    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        """The retained publications of ``topic`` with seq > ``since`` (at most ``limit``)."""

    @abstractmethod
    async def listen(self, topic: str) -> None:
        """This process wants notifications of ``topic`` (idempotent)."""

    @abstractmethod
    async def unlisten(self, topic: str) -> None:
        """This process no longer needs notifications of ``topic`` (idempotent)."""

    @abstractmethod
    async def listen_prefix(self, prefix: str) -> None:
        """This process wants notifications of every topic starting with ``prefix``
        (idempotent; used by features that fold whole families of topics, e.g. runs)."""

    @abstractmethod
    def topics(self) -> dict[str, int]:
        """Known topics with their last seq (for this process's view; may be partial)."""
