"""Rate limits: token buckets per connection and per user, with times passed in.

Each limited *kind* (``commands``: every client frame; ``publish``; ``chat``: ``chat:send``)
has a :class:`Rate`: tokens per second and a bucket size (the burst). A connection draws
every command of a kind from two buckets at once: its own, and its user's (shared by every
connection of one principal ``subject`` in this process). A command is admitted only when
both hold a token; otherwise it is refused with the seconds until both would
(:meth:`ConnectionLimits.take` returns it: the ``retry_after`` of the error frame) and
nothing is drawn. Refusals are counted: ``close_after`` of them within ``close_window``
seconds is sustained abuse (:meth:`ConnectionLimits.refused` says to close).

A user with a single connection (the common case: one tab, one service connection) has
no separate user buckets: its connection's own buckets stand for the user's (they would
hold exactly the same tokens, since both are drawn together from the same full start).
When a second connection of that user opens, or an HTTP request of that user draws from
its user bucket, the user's buckets are made as copies of the first connection's and
shared from then on (:meth:`RateLimiter.connection`): the same limits, without ~450 bytes
of user buckets per connection when every connection is its own user.

Cost: one dict lookup and a few float operations per command and kind; nothing per event.

Across nodes (a cluster state: ``agentcast.cluster``) the user buckets stay local and
synchronous; each bucket counts what it gave out (``drawn``), :meth:`RateLimiter.take_drawn`
collects it for the other nodes, and :meth:`RateLimiter.charge` takes what they report
from the bucket here (which may go below zero: the user then waits until it refills).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

__all__ = ["ConnectionLimits", "Rate", "RateLimiter", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens flow into a bucket holding at most ``burst`` (≥ 1)."""

    per_second: float
    burst: float

    @classmethod
    def per_minute(cls, count: float, burst_minutes: float = 1.0) -> Rate:
        """``count`` a minute, a bucket of ``burst_minutes`` minutes' worth (at least 1)."""
        return cls(count / 60.0, max(1.0, count * burst_minutes))


class TokenBucket:
    """A token bucket, full at creation time ``now``."""

    __slots__ = ("burst", "drawn", "per_second", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_second = rate.per_second
        self.burst = rate.burst
        self.tokens = rate.burst
        self.stamp = now
        self.drawn = 0.0
        """Tokens given out since :meth:`RateLimiter.take_drawn` last collected them (user
        buckets only)."""

    def wait(self, now: float) -> float:
        """Refill up to ``now``; 0.0 when a token is there, else the seconds until one is."""
        tokens = self.tokens + (now - self.stamp) * self.per_second
        if tokens > self.burst:
            tokens = self.burst
        self.tokens = tokens
        self.stamp = now
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.per_second

    def full(self, now: float) -> bool:
        """True when the bucket would be full at ``now`` (it may be forgotten)."""
        return self.tokens + (now - self.stamp) * self.per_second >= self.burst


HOLD_AFTER = 3
"""Refusals in a window answered at once before the connection's reading is held."""
HOLD_MAX = 1.0
"""The longest one hold (seconds): well under any ping timeout, so a held connection's
pongs are read in time."""


class ConnectionLimits:
    """The buckets one connection draws from (its own and its user's), and its refusals."""

    __slots__ = ("close_after", "close_window", "hold_after", "pairs", "strikes", "window_start")

    def __init__(
        self,
        pairs: dict[str, tuple[TokenBucket, TokenBucket]],
        close_after: int,
        close_window: float,
    ) -> None:
        self.pairs = pairs
        self.close_after = close_after
        self.close_window = close_window
        self.strikes = 0
        self.window_start = 0.0
        self.hold_after = min(HOLD_AFTER, close_after)

    def take(self, kind: str, now: float) -> float:
        """Draw one token of ``kind`` from both buckets: 0.0 when admitted, else the
        seconds to wait (nothing drawn). A kind without a rate is always admitted."""
        pair = self.pairs.get(kind)
        if pair is None:
            return 0.0
        own, user = pair
        wait = own.wait(now)
        if own is user:  # an anonymous connection is its own user
            if not wait:
                own.tokens -= 1.0
                own.drawn += 1.0  # collected only where the bucket is a user's
            return wait
        user_wait = user.wait(now)
        if wait or user_wait:
            return wait if wait > user_wait else user_wait
        own.tokens -= 1.0
        user.tokens -= 1.0
        user.drawn += 1.0
        return 0.0

    def refused(self, now: float) -> bool:
        """Count one refusal at ``now``; True when ``close_after`` refusals fell within
        ``close_window`` seconds (close the connection)."""
        if now - self.window_start > self.close_window:
            self.window_start = now
            self.strikes = 0
        self.strikes += 1
        return self.strikes >= self.close_after

    def hold(self, wait: float) -> float:
        """Seconds to stop reading the connection after a refusal that must wait ``wait``
        (after :meth:`refused`): 0.0 for its first ``HOLD_AFTER`` refusals in the window
        (each answered at once with an error frame), then ``wait``, at most ``HOLD_MAX``.
        A client that keeps sending over its limit is read no faster than its bucket
        refills (TCP back-pressure) instead of having every refused frame parsed."""
        if self.strikes < self.hold_after:
            return 0.0
        return wait if wait < HOLD_MAX else HOLD_MAX


class RateLimiter:
    """The rates of one gateway and the buckets of its users.

    ``close_after`` and ``close_window``: see :meth:`ConnectionLimits.refused`.
    """

    def __init__(self, close_after: int = 20, close_window: float = 10.0) -> None:
        self.rates: dict[str, Rate] = {}
        self.close_after = close_after
        self.close_window = close_window
        self.users: dict[str, dict[str, TokenBucket]] = {}
        """Per principal subject, its buckets by kind (kept while they are not full)."""
        self.solo: dict[str, ConnectionLimits] = {}
        """Users with one connection (the last one opened), whose own buckets stand for the
        user's; such a user has no entry in :attr:`users`."""

    def set_rate(self, kind: str, rate: Rate | None) -> None:
        """Limit ``kind`` to ``rate`` (None: no limit) for connections opened from now."""
        if rate is None:
            self.rates.pop(kind, None)
        else:
            self.rates[kind] = rate

    def user_bucket(self, subject: str, kind: str, now: float) -> TokenBucket | None:
        """The bucket of ``kind`` of the user ``subject`` (None when ``kind`` has no rate)."""
        rate = self.rates.get(kind)
        if rate is None:
            return None
        if subject in self.solo:
            self._share(subject)
        buckets = self.users.get(subject)
        if buckets is None:
            buckets = self.users[subject] = {}
        bucket = buckets.get(kind)
        if bucket is None:
            bucket = buckets[kind] = TokenBucket(rate, now)
        return bucket

    def take(self, subject: str, kind: str, now: float) -> float:
        """Draw one ``kind`` token from the user bucket of ``subject`` only (an HTTP
        request): 0.0 when admitted (or ``kind`` has no rate), else the seconds to wait."""
        bucket = self.user_bucket(subject, kind, now)
        if bucket is None:
            return 0.0
        wait = bucket.wait(now)
        if not wait:
            bucket.tokens -= 1.0
            bucket.drawn += 1.0
        return wait

    def take_drawn(self) -> dict[str, dict[str, float]]:
        """The tokens drawn from each user bucket since the last call, per subject and
        kind (only those that drew); resets the counts. Every bucket that stands for a
        user's must be collected here (a design where a lone connection's buckets stand
        for its user's must collect those too)."""
        out: dict[str, dict[str, float]] = {}
        for subject, buckets in self.users.items():
            for kind, bucket in buckets.items():
                if bucket.drawn:
                    out.setdefault(subject, {})[kind] = bucket.drawn
                    bucket.drawn = 0.0
        for subject, limits in self.solo.items():  # a lone connection's buckets are its user's
            for kind, (own, _) in limits.pairs.items():
                if own.drawn:
                    out.setdefault(subject, {})[kind] = own.drawn
                    own.drawn = 0.0
        return out

    def charge(self, subject: str, kind: str, tokens: float, now: float) -> None:
        """Take ``tokens`` of ``kind`` from ``subject``'s bucket (drawn on another node),
        creating the bucket if needed, down to at most one burst below empty (a debt is
        repaid at the rate; a larger one would lock the user out for longer than any
        single node could). Unknown kinds are ignored."""
        bucket = self.user_bucket(subject, kind, now)
        if bucket is None or tokens <= 0:
            return
        bucket.wait(now)  # refill up to now first
        bucket.tokens = max(bucket.tokens - tokens, -bucket.burst)

    def connection(
        self, subject: str, now: float, *, anonymous: bool = False
    ) -> ConnectionLimits | None:
        """The limits of a new connection of ``subject`` (None when nothing is limited).
        An ``anonymous`` connection (open dev mode: each is its own user) has one bucket
        per kind, no user bucket (half the memory)."""
        if not self.rates:
            return None
        solo = anonymous or (subject not in self.users and subject not in self.solo)
        pairs = {}
        for kind, rate in self.rates.items():
            own = TokenBucket(rate, now)
            user = own if solo else self.user_bucket(subject, kind, now)
            assert user is not None
            pairs[kind] = (own, user)
        limits = ConnectionLimits(pairs, self.close_after, self.close_window)
        if solo and not anonymous:
            self.solo[subject] = limits
        return limits

    def _share(self, subject: str) -> None:
        """Give the solo user ``subject`` user buckets of its own: copies of its connection's
        (the same tokens), which that connection draws from from now on too."""
        first = self.solo.pop(subject)
        buckets = self.users.setdefault(subject, {})
        for kind, (own, _) in first.pairs.items():
            user = TokenBucket(Rate(own.per_second, own.burst), own.stamp)
            user.tokens = own.tokens
            user.drawn, own.drawn = own.drawn, 0.0  # not yet collected: the user's now
            buckets[kind] = user
            first.pairs[kind] = (own, user)

    def forget_idle(self, now: float, active: Container[str]) -> int:
        """Forget the buckets of users not in ``active`` whose buckets are all full at
        ``now`` (a new bucket would be the same), and the solo users not in ``active`` (their
        connection closed); returns how many users were forgotten."""
        gone = [subject for subject in self.solo if subject not in active]
        for subject in gone:
            del self.solo[subject]
        idle = [
            subject
            for subject, buckets in self.users.items()
            if subject not in active and all(b.full(now) for b in buckets.values())
        ]
        for subject in idle:
            del self.users[subject]
        return len(idle) + len(gone)

    @property
    def tracked(self) -> int:
        """Users whose limits this limiter holds (with user buckets, or solo)."""
        return len(self.users) + len(self.solo)
