"""Token buckets per connection and per user (core/ratelimit.py), with times passed in."""

from __future__ import annotations

from agentcast.core.ratelimit import ConnectionLimits, Rate, RateLimiter


def limiter(per_minute: float = 60.0, burst_minutes: float = 0.05) -> RateLimiter:
    """3 tokens a bucket (60/min, a burst of 0.05 min), one a second after that."""
    rl = RateLimiter(close_after=100)
    rl.set_rate("commands", Rate.per_minute(per_minute, burst_minutes))
    return rl


def drain(limits: ConnectionLimits, now: float) -> int:
    """Commands admitted at ``now`` until the first refusal."""
    n = 0
    while limits.take("commands", now) == 0.0:
        n += 1
    return n


def test_a_users_connections_share_its_bucket_even_when_the_first_was_alone() -> None:
    rl = limiter()
    first = rl.connection("alice", 0.0)
    assert first is not None
    own, user = first.pairs["commands"]
    assert own is user and "alice" in rl.solo and "alice" not in rl.users  # no user bucket
    assert first.take("commands", 0.0) == 0.0  # one of alice's 3 tokens
    second = rl.connection("alice", 0.0)  # now alice has user buckets: copies of first's
    assert second is not None and "alice" not in rl.solo
    assert first.pairs["commands"][1] is second.pairs["commands"][1]
    assert drain(second, 0.0) == 2  # the user's bucket had 2 left, not a fresh 3
    assert first.take("commands", 0.0) > 0.0  # and the first connection shares it
    assert abs(first.take("commands", 0.0) - 1.0) < 1e-9  # a token a second


def test_solo_limits_are_those_of_a_user_bucket() -> None:
    """A solo connection is refused exactly when a connection with a separate user bucket
    would be."""
    solo, shared = limiter(), limiter()
    a = solo.connection("alice", 0.0)
    shared.user_bucket("bob", "commands", 0.0)  # bob has a user bucket from the start
    b = shared.connection("bob", 0.0)
    assert a is not None and b is not None
    for now in (0.0, 0.5, 1.0, 1.2, 3.0, 3.1, 10.0):
        assert drain(a, now) == drain(b, now), now


def test_an_http_request_shares_the_solo_connections_bucket() -> None:
    rl = limiter()
    conn = rl.connection("alice", 0.0)
    assert conn is not None and drain(conn, 0.0) == 3
    bucket = rl.user_bucket("alice", "commands", 0.0)  # e.g. an HTTP publish of alice's
    assert bucket is not None and bucket.wait(0.0) > 0.0  # the connection used them up
    assert conn.pairs["commands"][1] is bucket


def test_anonymous_connections_are_never_shared_and_gone_users_are_forgotten() -> None:
    rl = limiter()
    a = rl.connection("anon-1", 0.0, anonymous=True)
    assert a is not None and not rl.solo and not rl.users
    rl.connection("alice", 0.0)
    rl.connection("bob", 0.0)
    rl.connection("bob", 0.0)
    assert rl.tracked == 2 and set(rl.solo) == {"alice"} and set(rl.users) == {"bob"}
    assert rl.forget_idle(100.0, active={"bob"}) == 1  # alice's connection closed
    assert rl.tracked == 1
    assert rl.forget_idle(100.0, active=set()) == 1  # bob's buckets are full again
    assert rl.tracked == 0


def test_hold_after_a_few_refusals_for_the_retry_after_at_most_hold_max() -> None:
    """A connection that keeps sending over its limit is held (its reading paused) for the
    ``retry_after``, capped, from its ``HOLD_AFTER``-th refusal in the window; the first
    refusals are answered at once (no hold), and a new window starts over."""
    from agentcast.core.ratelimit import HOLD_AFTER, HOLD_MAX

    limits = ConnectionLimits({}, close_after=50, close_window=10.0)
    holds = []
    for _ in range(HOLD_AFTER + 2):
        assert not limits.refused(1.0)
        holds.append(limits.hold(0.25))
    assert holds == [0.0] * (HOLD_AFTER - 1) + [0.25] * 3
    assert limits.hold(30.0) == HOLD_MAX  # chat's 20 s retry_after: held 1 s at a time
    limits.refused(20.0)  # a new window: answered at once again
    assert limits.hold(0.25) == 0.0


def test_hold_never_later_than_the_close() -> None:
    """With ``close_after`` below ``HOLD_AFTER`` the close comes first: no hold before."""
    limits = ConnectionLimits({}, close_after=2, close_window=10.0)
    assert not limits.refused(0.0) and limits.hold(0.5) == 0.0
    assert limits.refused(0.0)


def test_retry_after_is_rounded_up_never_to_zero() -> None:
    """A client told ``retry_after`` 0 would retry at once: the frame rounds up to ms."""
    from agentcast.errors import RateLimitedError

    assert RateLimitedError("x", 0.0002).to_data()["retry_after"] == 0.001
    assert RateLimitedError("x", 0.0101).to_data()["retry_after"] == 0.011
    assert RateLimitedError("x", 2.0).to_data()["retry_after"] == 2.0
