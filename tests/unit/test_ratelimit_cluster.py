"""Token buckets (``agentcast/core/ratelimit.py``), with times passed in: what they admit,
and the accounting the cluster state exchanges between nodes (``drawn``, ``charge``)."""

from __future__ import annotations

import pytest

from agentcast.core.ratelimit import Rate, RateLimiter


def limiter(per_minute: float = 60) -> RateLimiter:
    made = RateLimiter(close_after=3, close_window=10)
    made.set_rate("chat", Rate.per_minute(per_minute))
    return made


def test_a_user_is_limited_across_connections_and_refills_at_the_rate() -> None:
    rl = limiter(60)  # 1 a second, a burst of 60
    one = rl.connection("alice", 0.0)
    two = rl.connection("alice", 0.0)
    assert one is not None and two is not None
    for i in range(60):
        assert (one if i % 2 else two).take("chat", 0.0) == 0.0
    assert one.take("chat", 0.0) == pytest.approx(1.0)  # the user's bucket is empty
    assert two.take("chat", 0.5) == pytest.approx(0.5)
    assert two.take("chat", 1.0) == 0.0


def test_drawn_counts_what_user_buckets_gave_out_and_resets() -> None:
    rl = limiter()
    conn = rl.connection("alice", 0.0)
    assert conn is not None
    for _ in range(5):
        conn.take("chat", 0.0)
    assert rl.take("bob", "chat", 0.0) == 0.0  # an HTTP request: the user bucket only
    assert rl.take("bob", "nothing", 0.0) == 0.0  # a kind without a rate: not counted
    assert rl.take_drawn() == {"alice": {"chat": 5.0}, "bob": {"chat": 1.0}}
    assert rl.take_drawn() == {}
    conn.take("chat", 0.0)
    assert rl.take_drawn() == {"alice": {"chat": 1.0}}


def test_anonymous_connections_draw_nothing_from_a_user_bucket() -> None:
    rl = limiter()
    conn = rl.connection("anon-1", 0.0, anonymous=True)
    assert conn is not None
    conn.take("chat", 0.0)
    assert rl.take_drawn() == {}


def test_charge_takes_another_nodes_draws_down_to_one_burst_of_debt() -> None:
    rl = limiter(60)
    rl.charge("alice", "chat", 50, 0.0)  # no connection here yet: the bucket is created
    assert rl.take("alice", "chat", 0.0) == 0.0
    assert rl.take_drawn() == {"alice": {"chat": 1.0}}  # charges are not reported back
    rl.charge("alice", "chat", 1000, 0.0)
    bucket = rl.user_bucket("alice", "chat", 0.0)
    assert bucket is not None and bucket.tokens == -60.0  # at most one burst below empty
    assert rl.take("alice", "chat", 0.0) == pytest.approx(61.0)  # repaid at the rate
    rl.charge("alice", "unknown", 5, 0.0)  # an unknown kind is ignored
    rl.charge("alice", "chat", -5, 0.0)  # so is a negative charge
    assert bucket.tokens == -60.0
