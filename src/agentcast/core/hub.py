"""The hub: which session listens to which topic, and local fan-out.

The hub receives every publication of the topics this process listens to, in seq order
per topic (the broker's contract), and pushes the publication's shared frame into the
outbox of each live subscriber. A subscription first *recovers*: live publications are
buffered while the gateway reads history, then merged by seq (:meth:`Hub.complete`), so
the subscriber sees every seq after its starting point exactly once and in order.

Per topic the hub tracks the last seq it dispatched and the epoch of the numbering. What
the broker's notifications can do wrong, the hub turns into work for the gateway:

* **A gap** (a seq above the next one expected: the broker lost notifications): the
  publication and every later one of the topic are *held*, and :attr:`Hub.on_gap` is
  called with the topic. The gateway reads history after :meth:`Hub.fill_from` and hands
  the page to :meth:`Hub.fill`, which delivers the missing publications, then the held
  ones, in order. When history no longer holds them, every subscriber of the topic is
  handed to :attr:`Hub.on_resync` (the gateway closes it with ``RESYNC``: its resume is
  answered ``recovered: false``).
* **A new epoch** (the topic's numbering restarted): the topic's subscribers are handed
  to :attr:`Hub.on_resync` and the topic is forgotten; their resume replays the new
  numbering's history.
* **A duplicate** (a seq already dispatched) is ignored.

A subscription whose history read saw seqs whose notifications had not arrived yet (a
remote broker) waits, live but without duplicates, until dispatch catches up.

Sessions whose outbox became non-empty are appended to :attr:`Hub.dirty` (the gateway
flushes them once per loop iteration); sessions whose outbox overflowed are appended to
:attr:`Hub.overflowed` (the gateway closes them as slow consumers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryPage
from agentcast.core.outbox import OVERFLOW
from agentcast.core.session import Session

__all__ = ["RESET", "Hub", "TopicState"]

RESET = -1
"""What :meth:`Hub.dispatch` returns for a publication of a new epoch."""

_UNKNOWN = -1


class TopicState:
    """Subscribers of one topic and what has been dispatched of it locally."""

    __slots__ = ("epoch", "filling", "last_seq", "live", "name", "recovering", "waiting")

    def __init__(self, name: str) -> None:
        self.name = name
        self.live: dict[Session, None] = {}
        self.recovering: dict[Session, list[Publication]] = {}
        self.waiting: dict[Session, int] = {}
        """Recovered sessions that already hold every seq up to the value, beyond
        :attr:`last_seq`: they become live when dispatch reaches it."""
        self.last_seq = _UNKNOWN
        """Highest seq every live subscriber holds: dispatched on this node, or read from
        history by the first subscription. -1 until the first subscription completes
        or the first publication arrives."""
        self.epoch: str | None = None
        """The epoch of :attr:`last_seq` (None until known)."""
        self.filling: list[Publication] | None = None
        """While a gap is being filled: the publications held meanwhile, in order."""

    def __len__(self) -> int:
        return len(self.live) + len(self.recovering) + len(self.waiting)


class Hub:
    """Topics, subscriptions, presence and local fan-out. Single-threaded, no I/O."""

    __slots__ = ("dirty", "on_gap", "on_resync", "overflowed", "published", "pushes", "topics")

    def __init__(
        self,
        on_gap: Callable[[str], None] | None = None,
        on_resync: Callable[[Session, str], None] | None = None,
    ) -> None:
        self.topics: dict[str, TopicState] = {}
        self.dirty: list[Session] = []
        self.overflowed: list[Session] = []
        self.published = 0
        """Count of publications dispatched (metrics)."""
        self.pushes = 0
        """Count of frames pushed to live subscribers (metrics, producer back-pressure)."""
        self.on_gap = on_gap
        """Called with a topic that started holding publications because of a gap: the
        gateway reads history and calls :meth:`fill` (until it returns False)."""
        self.on_resync = on_resync
        """Called with a session and a topic whose events the session can no longer be
        given in order (lost from history, or a new epoch), after the subscription was
        removed: the gateway closes the session with ``RESYNC``."""

    # -- subscriptions -------------------------------------------------------------

    def begin(self, session: Session, topic: str) -> bool:
        """Start a recovering subscription of ``session`` to ``topic``.

        Live publications of the topic are buffered for the session from now on, up to
        the session's ``outbox.max_frames`` (beyond that it is reported as overflowed).
        Returns False when the session is already subscribed (nothing changes).
        """
        state = self.topics.get(topic)
        if state is None:
            state = self.topics[topic] = TopicState(topic)
        if session in state.live or session in state.recovering or session in state.waiting:
            return False
        state.recovering[session] = []
        session.topics.add(topic)
        return True

    def complete(self, session: Session, topic: str, upto: int, epoch: str | None = None) -> bool:
        """End recovery: the session has been given every seq up to ``upto``.

        Buffered publications with ``seq > upto`` are pushed, in order, and the
        subscription becomes live (or waits, without duplicates, when ``upto`` is beyond
        what has been dispatched). ``epoch`` is the epoch of the history read, when
        known: one that differs from the topic's means the session read another life of
        the topic, and it is resynced. Returns False if the subscription vanished
        meanwhile (unsubscribed or closed) or was resynced (its buffered publications do
        not continue ``upto``: notifications were lost before the topic had a baseline).
        """
        state = self.topics.get(topic)
        if state is None:
            return False
        buffered = state.recovering.pop(session, None)
        if buffered is None:
            return False
        if epoch:
            if state.epoch is None:
                state.epoch = epoch
            elif epoch != state.epoch:
                self._resync(state, [session])
                return False
        if state.last_seq == _UNKNOWN:  # nothing dispatched yet: this read is the baseline
            state.last_seq = upto
            state.live[session] = None
            return True
        position = upto
        for pub in buffered:
            seq = pub.seq
            if seq <= position:
                continue
            if seq != position + 1:
                self._resync(state, [session])
                return False
            self._push(session, pub.frame)
            position = seq
        last = state.last_seq
        if position == last:
            state.live[session] = None
        elif position > last:
            if state.live or state.waiting or state.filling is not None:
                state.waiting[session] = position
            else:  # nobody needs the seqs up to `position` dispatched: skip them
                state.last_seq = position
                state.live[session] = None
        else:  # the buffer does not reach what was dispatched: cannot happen in order
            self._resync(state, [session])
            return False
        return True

    def remove(self, session: Session, topic: str) -> bool:
        """Remove one subscription. Returns False if there was none."""
        session.topics.discard(topic)
        state = self.topics.get(topic)
        if state is None:
            return False
        found = (
            state.live.pop(session, False) is None  # live values are None
            or state.recovering.pop(session, None) is not None
            or state.waiting.pop(session, None) is not None
        )
        if not state:
            del self.topics[topic]
        return found

    def remove_all(self, session: Session) -> list[str]:
        """Remove every subscription of ``session``; returns the topics that became empty."""
        emptied = []
        for topic in list(session.topics):
            self.remove(session, topic)
            if topic not in self.topics:
                emptied.append(topic)
        session.topics.clear()
        return emptied

    def presence(self, topic: str) -> int:
        """Number of local subscribers of ``topic``."""
        state = self.topics.get(topic)
        return len(state) if state is not None else 0

    def subscribers(self, topic: str) -> Iterable[Session]:
        state = self.topics.get(topic)
        if state is None:
            return ()
        return [*state.live, *state.waiting, *state.recovering]

    # -- delivery ------------------------------------------------------------------

    def dispatch(self, pub: Publication) -> int:
        """Deliver ``pub`` to the local subscribers of its topic.

        Publications of a topic must arrive in seq order. Returns 0 when ``pub`` was
        delivered, held (its topic is filling a gap) or ignored (a duplicate, or a topic
        without subscribers here); the gap size when ``pub`` skips seqs never dispatched
        here (the topic now holds its publications and :attr:`on_gap` was called);
        :data:`RESET` when ``pub`` starts a new epoch (the subscribers were resynced).
        """
        self.published += 1
        state = self.topics.get(pub.topic)
        if state is None:
            return 0
        seq = pub.seq
        if (
            seq == state.last_seq + 1
            and pub.epoch == state.epoch
            and state.filling is None
            and not state.recovering
            and not state.waiting
        ):  # the common case, inline: the next seq to live subscribers only
            state.last_seq = seq
            live = state.live
            self.pushes += len(live)
            frame = pub.frame
            dirty = self.dirty
            for session in live:
                r = session.outbox.push(frame)
                if r:
                    if r == OVERFLOW:
                        self.overflowed.append(session)
                    else:
                        dirty.append(session)
            return 0
        gap = self._dispatch(state, pub)
        if gap > 0 and self.on_gap is not None:
            self.on_gap(pub.topic)
        return gap

    def _dispatch(self, state: TopicState, pub: Publication) -> int:
        held = state.filling
        if held is not None:
            held.append(pub)
            return 0
        if pub.epoch != state.epoch:
            if state.epoch is not None:
                self._resync(state, list(self.subscribers(state.name)))
                return RESET
            state.epoch = pub.epoch
        seq = pub.seq
        last = state.last_seq
        if seq != last + 1 and last != _UNKNOWN:
            if seq <= last:  # a duplicate, or a seq a subscription read from history
                for session, buffered in state.recovering.items():
                    self._buffer(session, buffered, pub)
                return 0
            state.filling = [pub]
            return seq - last - 1
        self._deliver(state, pub)
        return 0

    def _buffer(self, session: Session, buffered: list[Publication], pub: Publication) -> None:
        buffered.append(pub)
        if len(buffered) > session.outbox.max_frames and not session.outbox.overflowed:
            session.outbox.overflowed = True
            self.overflowed.append(session)

    def _deliver(self, state: TopicState, pub: Publication) -> None:
        """Deliver the next publication of the topic (``last_seq + 1``) here."""
        seq = state.last_seq = pub.seq
        if state.recovering:
            for session, buffered in state.recovering.items():
                self._buffer(session, buffered, pub)
        live = state.live
        if live:
            self.pushes += len(live)
            frame = pub.frame
            dirty = self.dirty
            for session in live:
                r = session.outbox.push(frame)
                if r:
                    if r == OVERFLOW:
                        self.overflowed.append(session)
                    else:
                        dirty.append(session)
        waiting = state.waiting
        if waiting:
            for session, upto in list(waiting.items()):
                if seq >= upto:
                    del waiting[session]
                    live[session] = None

    def fill_from(self, topic: str) -> int | None:
        """The seq after which ``topic`` needs history to fill its gap (the last one
        dispatched), or None when it is not filling (any more)."""
        state = self.topics.get(topic)
        if state is None or state.filling is None:
            return None
        return state.last_seq

    def fill(self, topic: str, page: HistoryPage | None) -> bool:
        """Fill ``topic``'s gap from ``page`` (history read after :meth:`fill_from`; None
        when it could not be read): deliver its missing publications, then the held ones,
        in order. Returns True when the topic fills again (the held publications have
        another gap: read history again and call this again), False when done.

        When the page does not continue the topic (evicted, another epoch, no progress),
        every subscriber of the topic is resynced (:attr:`on_resync`) and the topic is
        forgotten here.
        """
        state = self.topics.get(topic)
        if state is None or state.filling is None:
            return False
        held = state.filling
        last = state.last_seq
        if page is None or page.epoch != state.epoch or page.first_seq > last + 1:
            self._resync(state, list(self.subscribers(topic)))
            return False
        state.filling = None
        for pub in page.publications:
            if pub.seq == state.last_seq + 1:
                self._deliver(state, pub)
        if held[0].seq > state.last_seq + 1 and state.last_seq == last:
            # history does not hold what the notification says exists: give up
            self._resync(state, list(self.subscribers(topic)))
            return False
        for i, pub in enumerate(held):
            if self._dispatch(state, pub) == RESET:
                return False
            if state.filling is not None:  # another gap: hold the rest too
                state.filling.extend(held[i + 1 :])
                return True
        return False

    def _resync(self, state: TopicState, sessions: list[Session]) -> None:
        """Remove the subscriptions of ``sessions`` to the topic, then report them."""
        topic = state.name
        for session in sessions:
            self.remove(session, topic)
        on_resync = self.on_resync
        if on_resync is not None:
            for session in sessions:
                on_resync(session, topic)

    def push(self, session: Session, frame: bytes) -> None:
        """Queue a control or replay frame for one session (not bounded by the outbox)."""
        if session.outbox.push_unbounded(frame):
            self.dirty.append(session)

    _push = push

    def take_dirty(self) -> list[Session]:
        """The sessions to flush, emptied."""
        dirty = self.dirty
        self.dirty = []
        return dirty

    def take_overflowed(self) -> list[Session]:
        """The sessions to close as slow consumers, emptied."""
        over = self.overflowed
        self.overflowed = []
        return over
