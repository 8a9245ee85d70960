"""agentcast.client's pure parts: URLs, close-code policy, backoff, errors, event types."""

from __future__ import annotations

import itertools

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from agentcast.client import CommandFailedError, Event, HandshakeRefusedError, Snapshot, ws_url_of
from agentcast.client.retry import classify_failure, jittered_backoff, reconnectable
from agentcast.codes import CLOSE_CODES, CloseCode, ErrorCode
from agentcast.errors import ConnectionClosedError


def test_ws_url_of() -> None:
    assert ws_url_of("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_url_of("http://127.0.0.1:8000/") == "ws://127.0.0.1:8000/ws"
    assert ws_url_of("https://example.org") == "wss://example.org/ws"
    assert ws_url_of("https://example.org/gw/") == "wss://example.org/gw/ws"
    assert ws_url_of("ws://h/api/ws/workflow/1") == "ws://h/api/ws/workflow/1"
    assert ws_url_of("wss://h/ws") == "wss://h/ws"
    with pytest.raises(ValueError, match="URL"):
        ws_url_of("127.0.0.1:8000")


def test_close_code_policy_matches_the_code_table() -> None:
    for code, info in CLOSE_CODES.items():
        if code == CloseCode.NORMAL:
            continue  # the server never sends it; a proxy closing an idle socket may
        assert reconnectable(code) is info.reconnect, code
    assert reconnectable(1000)
    assert reconnectable(1006)  # lost without a close frame
    assert all(reconnectable(c) for c in (4000, 4123, 4499))
    assert not any(reconnectable(c) for c in (4500, 4777, 4999, 1002, 1007, 1008, 1009))


def test_backoff_is_exponential_and_jittered() -> None:
    runs = [list(itertools.islice(jittered_backoff(0.5, 30.0), 10)) for _ in range(50)]
    for delays in runs:
        assert 0 <= delays[0] <= 0.5
        for n, delay in enumerate(delays[1:]):
            nominal = min(0.5 * 2**n, 30.0)
            assert nominal / 2 <= delay <= nominal
    assert len({delays[3] for delays in runs}) > 1  # jittered, not lockstep
    assert max(max(delays) for delays in runs) <= 30.0


def status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers()))


def test_handshake_failures() -> None:
    refused = classify_failure(status(401))
    assert isinstance(refused, HandshakeRefusedError)
    assert isinstance(refused, ConnectionClosedError)
    assert (refused.status, refused.code) == (401, CloseCode.UNAUTHORIZED)
    forbidden = classify_failure(status(403))
    assert isinstance(forbidden, HandshakeRefusedError)
    assert forbidden.code == CloseCode.FORBIDDEN
    assert isinstance(classify_failure(status(404)), HandshakeRefusedError)
    for retried in (429, 500, 502, 503, 504):
        assert classify_failure(status(retried)) is None
    assert classify_failure(ConnectionRefusedError()) is None
    assert classify_failure(TimeoutError()) is None
    fatal = ValueError("bad")
    assert classify_failure(fatal) is fatal


def test_command_failed_codes() -> None:
    known = CommandFailedError("forbidden", "may not", None)
    assert known.code is ErrorCode.FORBIDDEN
    assert str(known) == "forbidden: may not"
    unknown = CommandFailedError("brand_new", "later server", "data.x")
    assert unknown.code == "brand_new"
    assert str(unknown) == "brand_new: later server (data.x)"


def test_events_are_typed_and_round_trip() -> None:
    wire = {
        "type": "t",
        "topic": "a",
        "seq": 3,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "data": {"k": 1},
    }
    event = Event(**wire)  # type: ignore[arg-type]
    assert event.to_wire() == wire
    snapshot = Snapshot("snapshot", "workflow:1", 7, "ts", {"status": "running"})
    assert isinstance(snapshot, Event)
    assert snapshot.to_wire()["seq"] == 7
    with pytest.raises(AttributeError):
        event.seq = 4  # type: ignore[misc]


def test_failures_described_for_people() -> None:
    import socket

    from agentcast.client.retry import describe_failure

    assert describe_failure(ConnectionRefusedError(111, "Connect call failed")) == (
        "connection refused"
    )
    both = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 8000, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 8000)"
    )
    assert describe_failure(both) == "connection refused"
    mixed = OSError("Multiple exceptions: [Errno 111] refused, [Errno 113] no route")
    assert describe_failure(mixed).startswith("multiple exceptions")
    assert describe_failure(socket.gaierror(-2, "Name or service not known")) == (
        "name or service not known"
    )
    assert describe_failure(status(503)) == "HTTP 503"
    assert describe_failure(TimeoutError()) == "timed out"
    assert describe_failure(TimeoutError("timed out during opening handshake")) == (
        "timed out during opening handshake"
    )
    assert describe_failure(None) == "unknown error"
