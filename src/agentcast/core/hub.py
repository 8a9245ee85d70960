"""The hub: which session listens to which topic, and local fan-out.

The hub receives every publication of the topics this process listens to, in seq order
per topic (the broker's contract), and pushes the publication's shared frame into the
outbox of each live subscriber. A subscription first *recovers*: live publications are
buffered while the gateway reads history, then merged by seq (:meth:`Hub.complete`), so
the subscriber sees every seq after its starting point exactly once and in order.

Sessions whose outbox became non-empty are appended to :attr:`Hub.dirty` (the gateway
flushes them once per loop iteration); sessions whose outbox overflowed are appended to
:attr:`Hub.overflowed` (the gateway closes them as slow consumers).
"""

from __future__ import annotations

from collections.abc import Iterable

from agentcast.core.envelope import Publication
from agentcast.core.outbox import OVERFLOW
from agentcast.core.session import Session

__all__ = ["Hub", "TopicState"]


class TopicState:
    """Subscribers of one topic and the last seq dispatched locally."""

    __slots__ = ("last_seq", "live", "name", "recovering")

    def __init__(self, name: str) -> None:
        self.name = name
        self.live: dict[Session, None] = {}
        self.recovering: dict[Session, list[Publication]] = {}
        self.last_seq = 0
        """Highest seq dispatched on this node (0 before the first one)."""

    def __len__(self) -> int:
        return len(self.live) + len(self.recovering)


class Hub:
    """Topics, subscriptions, presence and local fan-out. Single-threaded, no I/O."""

    __slots__ = ("dirty", "overflowed", "published", "pushes", "topics")

    def __init__(self) -> None:
        self.topics: dict[str, TopicState] = {}
        self.dirty: list[Session] = []
        self.overflowed: list[Session] = []
        self.published = 0
        """Count of publications dispatched (metrics)."""
        self.pushes = 0
        """Count of frames pushed to live subscribers (metrics, producer back-pressure)."""

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
        if session in state.live or session in state.recovering:
            return False
        state.recovering[session] = []
        session.topics.add(topic)
        return True

    def complete(self, session: Session, topic: str, upto: int) -> bool:
        """End recovery: the session has been given every seq up to ``upto``.

        Buffered publications with ``seq > upto`` are pushed, in order, and the
        subscription becomes live. Returns False if the subscription vanished meanwhile
        (unsubscribed or closed).
        """
        state = self.topics.get(topic)
        if state is None:
            return False
        buffered = state.recovering.pop(session, None)
        if buffered is None:
            return False
        last = upto
        for pub in buffered:
            if pub.seq > last:
                self._push(session, pub.frame)
                last = pub.seq
        state.live[session] = None
        return True

    def remove(self, session: Session, topic: str) -> bool:
        """Remove one subscription. Returns False if there was none."""
        session.topics.discard(topic)
        state = self.topics.get(topic)
        if state is None:
            return False
        found = False
        if session in state.live:
            del state.live[session]
            found = True
        elif state.recovering.pop(session, None) is not None:
            found = True
        if not state.live and not state.recovering:
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
        return [*state.live, *state.recovering]

    # -- delivery ------------------------------------------------------------------

    def dispatch(self, pub: Publication) -> int:
        """Deliver ``pub`` to the local subscribers of its topic.

        Publications of a topic must arrive in seq order; one whose seq is not above the
        last dispatched is ignored (a duplicate). Returns the gap size: how many seqs
        between the last dispatched and ``pub`` were never dispatched here (0 normally),
        so that a broker that can lose notifications lets the gateway fill the gap.
        """
        self.published += 1
        state = self.topics.get(pub.topic)
        if state is None:
            return 0
        last = state.last_seq
        if pub.seq <= last:
            return 0
        state.last_seq = pub.seq
        gap = pub.seq - last - 1 if last else 0
        if state.recovering:
            for session, buffered in state.recovering.items():
                buffered.append(pub)
                if len(buffered) > session.outbox.max_frames and not session.outbox.overflowed:
                    session.outbox.overflowed = True
                    self.overflowed.append(session)
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
        return gap

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
