"""The per-connection protocol decisions, without an event loop: command order and the
in-flight cap, keepalive pings, dead and idle connections."""

from __future__ import annotations

from agentcast.core.outbox import Outbox
from agentcast.core.session import Admission, Keepalive, Session
from agentcast.policy import Principal


class NullWriter:
    def write_frames(self, frames: list[bytes]) -> None:
        raise AssertionError("the session never writes by itself")

    def send_ping(self) -> None:
        raise AssertionError("the session never pings by itself")

    def hold_reading(self, seconds: float) -> None: ...

    def close(self, code: object, reason: str) -> None:
        raise AssertionError("the session never closes by itself")


def session(now: float = 100.0) -> Session:
    return Session(1, Principal("u"), NullWriter(), Outbox(1 << 20, 100), now)


def test_commands_run_one_at_a_time_in_order_up_to_the_cap() -> None:
    s = session()
    assert s.admit("a", max_pending=2) is Admission.RUN
    s.running = True
    assert s.admit("b", max_pending=2) is Admission.QUEUED
    assert s.admit("c", max_pending=2) is Admission.QUEUED
    assert s.admit("d", max_pending=2) is Admission.REFUSED
    assert [s.next_command(), s.next_command(), s.next_command()] == ["b", "c", None]
    s.admit("e", max_pending=2)
    s.closed = True
    assert s.next_command() is None  # a closed connection runs nothing more


def test_keepalive_pings_then_closes_a_silent_connection() -> None:
    s = session(now=0.0)
    s.topics.add("t")  # subscribed: never idle
    assert s.keepalive(5.0, 10.0, 3.0, 20.0) is Keepalive.NOTHING
    assert s.keepalive(10.0, 10.0, 3.0, 20.0) is Keepalive.PING
    assert s.ping_sent == 10.0
    assert s.keepalive(12.9, 10.0, 3.0, 20.0) is Keepalive.NOTHING  # waiting for the pong
    assert s.keepalive(13.0, 10.0, 3.0, 20.0) is Keepalive.CLOSE_DEAD


def test_idle_only_without_subscriptions_or_running_commands() -> None:
    s = session(now=0.0)
    s.last_seen = 25.0  # pongs keep it alive, but it asks nothing
    assert s.keepalive(30.0, 10.0, 3.0, 20.0) is Keepalive.CLOSE_IDLE
    s.running = True
    assert s.keepalive(30.0, 10.0, 3.0, 20.0) is Keepalive.NOTHING
    s.running = False
    s.topics.add("t")
    assert s.keepalive(30.0, 10.0, 3.0, 20.0) is Keepalive.NOTHING
    s.closed = True
    assert s.keepalive(99.0, 10.0, 3.0, 20.0) is Keepalive.NOTHING
