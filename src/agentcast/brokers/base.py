"""The broker contract.

A broker carries publications between the processes of one agentcast deployment. Every
implementation (the in-memory default, Redis, …) passes the same contract suite
(``tests/contract/test_brokers.py``, which also runs it over two instances sharing one
backend, as two nodes would) and the gateway uses nothing but this class: no check of a
broker's type, no optional attribute looked up. A broker guarantees:

1. **Gapless sequence numbers.** :meth:`Broker.publish` and :meth:`Broker.publish_many`
   assign the next ``seq`` of the topic atomically across every process sharing the
   backend: a topic's seqs are 1, 2, 3, … each assigned exactly once, in the order the
   broker serializes the publishes.
2. **History before notification.** A publication is in the topic's history before any
   listener is notified of it, so a reader that sees seq N in a notification can read N
   from history (unless the history bounds evicted it since).
3. **Listening, in order.** Once :meth:`Broker.listen` (or :meth:`Broker.listen_prefix`)
   has returned, every publication of that topic assigned afterwards, by any process, is
   delivered to this process's listener, in seq order. The gateway's resume merge relies
   on exactly this: a subscription starts buffering live publications, awaits
   ``listen()``, then reads history; every seq after the last one that history returned
   then arrives as a notification. A broker that can lose notifications (a dropped
   connection to its server) must still deliver the later ones in order: the hub notices
   the gap (a seq above the next one expected) and the gateway reads the missing seqs from
   :meth:`Broker.history` and delivers them first; if history no longer holds them, the
   subscribers of the topic are closed with
   :attr:`~agentcast.codes.CloseCode.RESYNC` and resume (told ``recovered: false``). So
   that a loss of a topic's *last* notifications is noticed too, a broker that knows it
   may have lost some (it reconnected) delivers the latest publication of every listened
   topic again. A publication may be delivered twice (the hub drops a seq it already
   dispatched), and publications of topics nobody listens to may be delivered too (the
   hub ignores them).
4. **Bounded history.** :meth:`Broker.history` returns the retained publications after
   ``since`` in seq order with the topic's first retained and last assigned seq and its
   epoch, read atomically (no publication is half-visible). Retention is bounded by the
   :class:`~agentcast.core.history.HistoryLimits` of the broker: ``max_events`` and
   ``max_bytes`` at every publish (the newest publication is always kept), ``max_age`` at
   the latest after the next :meth:`Broker.trim`.
5. **Epochs.** Every history page and every publication carries the topic's ``epoch``: a
   token that changes whenever the topic's numbering restarts (the broker's server lost
   its data or was flushed, an in-memory broker restarted, or an idle topic was forgotten
   and created again). A seq is only meaningful with its epoch: the hub compares each
   publication's epoch with the one it saw before, and a new one makes the gateway close
   the topic's subscribers with ``RESYNC`` (their resume is answered ``recovered:
   false`` and replays the new numbering's history). Topics under the prefixes declared
   with :meth:`Broker.declare_durable` carry :data:`DURABLE_EPOCH` as long as their
   numbering continues (a store continues it across restarts with
   :meth:`Broker.continue_numbering`). A durable topic is never forgotten: when
   :meth:`Broker.trim` drops an idle durable topic's history, its last seq is kept and its
   next publication continues it (with :data:`DURABLE_EPOCH`). A broker whose server lost
   a durable topic's numbering while processes kept running must give the restarted
   numbering another epoch, never :data:`DURABLE_EPOCH` again.
6. **What a publisher learns.** When :meth:`Broker.publish` returns, the publication is
   in history (durable for the lifetime of the broker's server). If it raises
   :class:`~agentcast.errors.BrokerError`, nothing was assigned: the publish can be
   retried. If the outcome is unknown (a timeout or a lost connection after the request
   may have left: the server may have assigned the seq and only the answer was lost) it
   raises :class:`~agentcast.errors.PublishOutcomeUnknownError` (a subclass): the event
   may or may not be in history, and a publisher that must not duplicate reads history
   before publishing again. A broker must never report an unknown outcome as plain
   ``BrokerError``. The gateway answers an unknown outcome with its own error code
   (``outcome_unknown``, HTTP 503), never as "not applied".
7. **Batches.** :meth:`Broker.publish_many` publishes a list of drafts in one request
   (one round trip for a remote broker: the gateway gathers the publishes of one
   event-loop iteration into one batch, so a chat's tokens do not cost a round trip
   each). It is atomic: the batch's publications of a topic get consecutive seqs in list
   order (no other publication of the topic in between), listeners see them in that
   order, and a failure concerns the whole batch (``BrokerError``: none assigned;
   ``PublishOutcomeUnknownError``: all or none).
8. **The synchronous capability.** :attr:`Broker.publish_sync` is None, or a callable that
   does what :meth:`Broker.publish` does without awaiting: when it returns, the
   publication is in history and this process's listener has been called with it (if
   the topic is listened to). It shares the numbering of ``publish`` and
   ``publish_many``. Only a broker that needs no I/O to publish (the in-memory one) offers
   it; the gateway's synchronous fast path (:meth:`Gateway.publish_now
   <agentcast.gateway.Gateway.publish_now>`) exists exactly when it is set.

9. **Idempotent producers.** A draft may carry a ``producer`` (an id the producer chose,
   unique among producers) and ``producer_seq`` (that producer's own numbering: 1, 2, 3,
   … across every topic it publishes to, one number per draft, never reused). The broker
   remembers per producer the highest ``producer_seq`` it published and, for the last
   :data:`PRODUCER_WINDOW` of them, the publication each became, for ``producer_ttl``
   seconds after the producer's last publish, across every process sharing the backend.
   A draft whose ``producer_seq`` is at or below the remembered highest one is a retry
   (of a publish whose outcome was unknown, possibly sent through another process): it
   is not appended and nobody is notified; :meth:`Broker.publish_many` returns a
   :class:`Duplicate` in its place, with the original publication's topic, seq and
   epoch when it is within the window, and ``seq`` 0 when it is older (published once,
   long ago; the seq is no longer known). A ``producer_seq`` above the highest one is
   published (a producer may skip numbers, never go back): a producer must therefore
   have one publish in flight at a time (or one batch), else a later number overtaking
   an earlier one would make the earlier one a "duplicate" and lose it. Drafts without
   a producer cost nothing and are never deduplicated. The producer state is as durable
   as history: a broker server that lost its data lost it too (and the topics' epochs
   changed).

10. **Conditional publishes.** A draft may carry ``expect_last_seq``: it is published only
    if the topic's last assigned seq, at that draft's place in the serialized order
    (after the drafts before it in its batch), is still exactly that number, across every
    process sharing the backend; otherwise nothing is appended, nobody is notified, and
    :meth:`Broker.publish_many` returns a :class:`Conflict` in its place, carrying the
    topic's actual last seq (and its epoch). The check and the append are one atomic
    step: of N processes publishing with the same ``expect_last_seq``, exactly one
    succeeds. A topic never published has last seq 0. Used by the runs feature to seal a
    lapsed run with ``publisher_lost`` once per deployment (the seal expects the last seq
    the node folded: of the nodes racing, one wins; an event of the producer that arrived
    meanwhile makes every seal fail). With a producer (item 9), a retry is answered as a
    :class:`Duplicate` first; a draft refused by its condition does not count as
    published for its producer.

The listener is called from the event loop thread, never concurrently with itself; an
in-process broker may call it from within ``publish``. It must not raise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryPage

__all__ = [
    "DURABLE_EPOCH",
    "PRODUCER_TTL",
    "PRODUCER_WINDOW",
    "Broker",
    "Conflict",
    "Draft",
    "Duplicate",
    "Listener",
    "SyncPublish",
]

Listener = Callable[[Publication], None]
"""Called with every publication of the listened topics (see the module docstring)."""

SyncPublish = Callable[[str, str, bytes, float], Publication]
"""``publish_sync(topic, type, data, at)``: :meth:`Broker.publish` without awaiting."""

DURABLE_EPOCH = "durable"
"""The epoch of topics under durable prefixes whose numbering a store continues."""

PRODUCER_WINDOW = 1024
"""How many of a producer's latest ``producer_seq`` s a broker answers with their original
seq (contract item 9); at least the largest batch one request may publish."""

PRODUCER_TTL = 3600.0
"""Seconds a broker remembers an idle producer by default (contract item 9)."""


class Draft(NamedTuple):
    """One publication to be: what :meth:`Broker.publish_many` takes, in order.

    ``data`` is the JSON encoding of the event's data object; ``at`` the publish time
    (seconds since the epoch). ``producer`` and ``producer_seq`` (both or neither) make
    the publish idempotent (contract item 9); ``expect_last_seq`` makes it conditional
    (contract item 10).
    """

    topic: str
    type: str
    data: bytes
    at: float
    producer: str | None = None
    producer_seq: int | None = None
    expect_last_seq: int | None = None


class Duplicate(Publication):
    """What :meth:`Broker.publish_many` returns for a draft recognised as a producer's retry
    (contract item 9): the original publication's ``topic``, ``seq`` and ``epoch`` (``seq``
    0 when older than :data:`PRODUCER_WINDOW`), with the retry's ``type`` and ``data``.
    Nothing was published for it."""

    __slots__ = ()


class Conflict(Publication):
    """What :meth:`Broker.publish_many` returns for a draft whose ``expect_last_seq`` was
    not the topic's last seq (contract item 10): ``seq`` is the topic's actual last seq
    (0: never published), ``epoch`` its epoch (meaningful when ``seq`` > 0), with the
    draft's ``type`` and ``data``. Nothing was published for it."""

    __slots__ = ()


class Broker(ABC):
    """Publish/subscribe across processes, sequence assignment, history read."""

    publish_sync: SyncPublish | None = None
    """The synchronous capability (contract item 8): None unless the broker publishes
    without I/O. Set per instance or class; never changes after construction."""

    @abstractmethod
    async def start(self, listener: Listener) -> None:
        """Connect, and call ``listener`` with every publication of the listened topics.

        Publishing before ``start`` raises :class:`~agentcast.errors.BrokerError`.
        """

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect; no listener call happens after this returns."""

    async def publish(self, topic: str, type: str, data: bytes, at: float) -> Publication:
        """Assign the next seq of ``topic``, store, notify listeners; return the publication.

        ``data`` is the JSON encoding of the event's data object; ``at`` the publish time
        (seconds since the epoch). Raises :class:`~agentcast.errors.BrokerError` when
        nothing was assigned, :class:`~agentcast.errors.PublishOutcomeUnknownError` when
        the outcome is unknown. The default is a batch of one.
        """
        return (await self.publish_many([Draft(topic, type, data, at)]))[0]

    @abstractmethod
    async def publish_many(self, drafts: Sequence[Draft]) -> list[Publication]:
        """Publish ``drafts`` atomically, in order, in one request (contract item 7).

        Returns their publications in the same order. Raises as :meth:`publish` does, for
        the whole batch. An empty batch returns ``[]`` without I/O.
        """

    @abstractmethod
    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        """The retained publications of ``topic`` with seq > ``since`` (at most ``limit``).

        A topic never published has an empty page with ``first_seq`` 1, ``last_seq`` 0.
        """

    @abstractmethod
    async def listen(self, topic: str) -> None:
        """This process wants notifications of ``topic`` (idempotent): every publication
        assigned after this returns is delivered (contract item 3). While listened to, a
        topic is never forgotten (its epoch stays)."""

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

    @abstractmethod
    async def trim(self, now: float) -> None:
        """Housekeeping at time ``now`` (seconds since the epoch): drop publications older
        than ``max_age``, forget topics left with no retained publication that no process
        listens to (their numbering restarts with a new epoch). The gateway calls it from
        its periodic sweep; a broker whose server expires entries by itself may do little
        here. Raises :class:`~agentcast.errors.BrokerError` when the server is unreachable.
        """

    async def ping(self) -> None:
        """Return when the broker answers, raise :class:`~agentcast.errors.BrokerError`
        when it does not (``/readyz``; the caller bounds the wait). The default reads an
        empty page of history (one cheap request on any broker); a broker with a cheaper
        round trip overrides it."""
        await self.history("agentcast:ping", 1 << 62, limit=0)

    def metrics(self) -> dict[str, int]:
        """Cumulative counters this broker keeps for ``/metrics``: ``round_trips``,
        ``errors``, ``reconnects`` (absent keys mean not applicable)."""
        return {}

    def history_usage(self) -> dict[str, int] | None:
        """The in-process history held for every topic together and its budget
        (``bytes``, ``budget``, ``topics``, ``evicted_topics``), for ``/healthz``; None
        (the default) when the history lives in a broker server, bounded there."""
        return None

    @abstractmethod
    async def declare_durable(self, prefixes: Iterable[str]) -> None:
        """Topics starting with one of ``prefixes`` have a numbering that a store keeps
        across restarts (run topics): from now on they are created with
        :data:`DURABLE_EPOCH`. Called at start-up, before any publish; adds to earlier
        declarations (each feature with a store declares its own prefixes)."""

    @abstractmethod
    async def continue_numbering(self, last_seqs: Mapping[str, int]) -> None:
        """Continue each topic's numbering after the given seq (a store restored after a
        restart): a topic whose last seq is below it and that retains no publication
        gets it as its last seq, so its next publication is ``last_seq + 1``, and
        :data:`DURABLE_EPOCH` as its epoch. A topic already numbered at or beyond it, or
        retaining publications, is left as is. One request for the whole mapping."""
