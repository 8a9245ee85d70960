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
