"""agentcast.client against real servers: typed events, commands, resume, losses, closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
import pytest

from agentcast.client import (
    ClientError,
    CommandFailedError,
    ConnectionClosedError,
    ConnectionLostError,
    Event,
    HandshakeRefusedError,
    HistoryLost,
    HistoryLostError,
    Snapshot,
    Subscription,
    connect,
)
from agentcast.codes import CloseCode, ErrorCode
from agentcast.gateway import Gateway
from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from tests.conftest import (
    UNIT,
    RunningServer,
    ServerProcess,
    eventually,
    free_port,
    start_server,
    stop_server,
)

T = TypeVar("T")


async def take(sub: AsyncIterator[T], n: int = 1) -> list[T]:
    """The next ``n`` items of ``sub``, each awaited with a bounded timeout."""
    return [await asyncio.wait_for(anext(sub), 5 * UNIT) for _ in range(n)]


async def one(sub: AsyncIterator[T]) -> T:
    return (await take(sub))[0]


def drop_connections(gateway: Gateway, code: CloseCode = CloseCode.SLOW_CONSUMER) -> None:
    for session in list(gateway.sessions.values()):
        gateway.close(session, code)


@pytest.fixture
async def tiny_history() -> AsyncIterator[RunningServer]:
    """A server that keeps only the last 5 events of each topic."""
    running, task = await start_server("native", history_max_events=5)
    try:
        yield running
    finally:
        await stop_server(running, task)


async def test_typed_events_on_many_topics_over_one_connection(server: RunningServer) -> None:
    gw = server.gateway
    await gw.publish("board:b", "note", {"n": 1})
    await gw.publish("board:b", "note", {"n": 2})
    async with connect(server.url) as client:
        a = client.subscribe("board:a")
        b = client.subscribe("board:b", since=0)
        assert isinstance(await client.ping(), float)  # answered after both subscribes
        assert a.live and b.live
        assert len(gw.sessions) == 1  # every subscription on one WebSocket
        assert await client.publish("board:a", "note", {"n": 10}) == 1
        assert await client.publish("board:b", "note", {"n": 3}) == 3
        got = await one(a)
        assert isinstance(got, Event)
        assert (got.type, got.topic, got.seq, got.data) == ("note", "board:a", 1, {"n": 10})
        assert got.timestamp.endswith("Z")
        assert got.to_wire() == {
            "type": "note",
            "topic": "board:a",
            "seq": 1,
            "timestamp": got.timestamp,
            "data": {"n": 10},
        }
        assert [(e.seq, e.data["n"]) for e in await take(b, 3)] == [(1, 1), (2, 2), (3, 3)]
        assert b.last_seq == 3
        assert set(client.subscriptions) == {"board:a", "board:b"}


async def test_commands_sent_before_the_connection_opens_are_kept_in_order(
    server: RunningServer,
) -> None:
    async with connect(server.url) as client:
        sub = client.subscribe("order:1")  # sent when the connection opens, before the publish
        seqs = await asyncio.gather(*(client.publish("order:1", "e", {"i": i}) for i in range(5)))
        assert seqs == [1, 2, 3, 4, 5]
        assert [e.data["i"] for e in await take(sub, 5)] == [0, 1, 2, 3, 4]


async def test_error_replies_raise_with_the_server_code(server: RunningServer) -> None:
    async with connect(server.url) as client:
        with pytest.raises(CommandFailedError) as info:
            await client.publish("bad topic", "x", {})
        assert (info.value.code, info.value.field) == (ErrorCode.INVALID_TOPIC, "topic")
        with pytest.raises(CommandFailedError) as unknown:
            await client.request({"type": "no_such_command"})
        assert unknown.value.code == "unknown_command"
        with pytest.raises(CommandFailedError) as refused:
            await one(client.subscribe("bad topic"))
        assert refused.value.code == ErrorCode.INVALID_TOPIC
        assert "bad topic" not in client.subscriptions
        with pytest.raises(ClientError, match="already subscribed"):
            client.subscribe("fine")
            client.subscribe("fine")
        assert (await client.request({"type": "ping"}))["type"] == "pong"  # still usable


async def test_unsubscribe_and_close_end_iteration(server: RunningServer) -> None:
    gw = server.gateway
    async with connect(server.url) as client:
        sub = client.subscribe("u:1")
        await sub.wait_subscribed()
        assert gw.hub.presence("u:1") == 1
        await sub.unsubscribe()
        assert gw.hub.presence("u:1") == 0
        with pytest.raises(StopAsyncIteration):
            await one(sub)
        async with client.subscribe("u:1", since=0) as again:  # a new subscription may follow
            await gw.publish("u:1", "e", {})
            assert (await one(again)).seq == 1
        assert "u:1" not in client.subscriptions
        waiting = client.subscribe("u:2")
        reader = asyncio.create_task(one(waiting))
        await waiting.wait_subscribed()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 5 * UNIT)
    with pytest.raises(ClientError, match="closed"):
        await client.ping()


async def test_resume_after_server_side_closes_while_publishing(server: RunningServer) -> None:
    """The server drops the connection twice mid-stream: every seq arrives once, in order."""
    gw = server.gateway
    total = 400

    async def producer() -> None:
        for n in range(1, total + 1):
            if n in (51, 151, 301):
                # the client is back (the server shows no event for that: poll, bounded)
                await eventually(lambda: gw.hub.presence("live:1") == 1)
                drop_connections(gw)  # events keep coming while the client is away
            await gw.publish("live:1", "tick", {"n": n})
            if n % 10 == 0:
                await asyncio.sleep(0)  # let the client read meanwhile

    async with connect(server.url, initial_delay=0.05) as client:
        live = client.subscribe("live:1")  # live only: starts at seq 1 as nothing came yet
        since = client.subscribe("other:1", since=0)
        await live.wait_subscribed()
        await since.wait_subscribed()
        task = asyncio.create_task(producer())
        async with asyncio.timeout(20 * UNIT):
            seqs = [event.seq async for event in _upto(live, total)]
        await task
        assert seqs == list(range(1, total + 1))
        assert client.connections == 4
        await gw.publish("other:1", "e", {})  # the other subscription was resumed as well
        assert (await one(since)).seq == 1


async def _upto(sub: Subscription[Event], last: int) -> AsyncIterator[Event]:
    async for event in sub:
        yield event
        if event.seq >= last:
            return


async def test_slow_consumer_of_one_topic_holds_up_nothing(native_server: RunningServer) -> None:
    """A full buffer pauses its subscription only; draining it resumes without loss."""
    gw = native_server.gateway
    async with connect(native_server.url, queue_size=8) as client:
        slow = client.subscribe("slow:1")
        fast = client.subscribe("fast:1")
        await client.ping()
        for n in range(1, 101):
            await gw.publish("slow:1", "e", {"n": n})
        await gw.publish("fast:1", "e", {})
        assert (await one(fast)).seq == 1  # not stuck behind slow:1's 100 events
        await client.ping()
        assert slow.stalled
        assert [e.seq for e in await take(slow, 100)] == list(range(1, 101))
        assert not slow.stalled
        await gw.publish("slow:1", "e", {"n": 101})
        assert (await one(slow)).seq == 101
        assert client.connections == 1  # resumed on the same connection


async def test_history_lost_raises_or_resets(tiny_history: RunningServer) -> None:
    gw = tiny_history.gateway
    for n in range(1, 13):
        await gw.publish("t", "e", {"n": n})
    async with connect(tiny_history.url) as client:
        with pytest.raises(HistoryLostError) as info:
            await one(client.subscribe("t", since=2))
        assert (info.value.topic, info.value.since, info.value.first_available) == ("t", 2, 8)
        assert "t" not in client.subscriptions  # ended: may subscribe again
        sub = client.subscribe("t", since=2, on_history_lost="reset")
        assert await one(sub) == HistoryLost("t", 2, 8)
        assert [e.seq for e in await take(sub, 5)] == [8, 9, 10, 11, 12]  # type: ignore[union-attr]


async def test_history_lost_while_disconnected(tiny_history: RunningServer) -> None:
    """Events evicted while the client was away: the resume says so, in both modes."""
    gw = tiny_history.gateway
    async with connect(tiny_history.url) as client:
        strict = client.subscribe("s")
        lenient = client.subscribe("l", on_history_lost="reset")
        await client.ping()
        await gw.publish("s", "e", {})
        await gw.publish("l", "e", {})
        assert (await one(strict)).seq == 1
        assert (await one(lenient)).seq == 1  # type: ignore[union-attr]
        drop_connections(gw)
        for _ in range(10):  # no await that yields: all published before the client is back
            await gw.publish("s", "e", {})
            await gw.publish("l", "e", {})
        with pytest.raises(HistoryLostError) as info:
            await one(strict)
        assert (info.value.since, info.value.first_available) == (1, 7)
        assert await one(lenient) == HistoryLost("l", 1, 7)
        assert [e.seq for e in await take(lenient, 5)] == [7, 8, 9, 10, 11]  # type: ignore[union-attr]


async def test_run_topics_start_with_a_snapshot(native_server: RunningServer) -> None:
    w = {"workflow_id": "c", "execution_id": "e"}
    gw = native_server.gateway
    await gw.publish(
        "workflow:c", "workflow_start", {**w, "execution_order": ["a"], "total_nodes": 1}
    )
    async with connect(native_server.url) as client:
        sub = client.subscribe("workflow:c")
        snap = await one(sub)
        assert isinstance(snap, Snapshot)
        assert (snap.type, snap.seq, snap.data["status"]) == ("snapshot", 1, "running")
        await gw.publish("workflow:c", "log", {**w, "level": "info", "message": "m"})
        event = await one(sub)
        assert (type(event), event.seq) == (Event, 2)


async def test_terminal_close_code_raises(server: RunningServer) -> None:
    gw = server.gateway
    async with connect(server.url) as client:
        sub = client.subscribe("t")
        await sub.wait_subscribed()
        await gw.publish("t", "e", {})
        await client.ping()  # the event is in the subscription's buffer
        drop_connections(gw, CloseCode.FORBIDDEN)
        assert (await one(sub)).seq == 1  # what came before the close is still delivered
        with pytest.raises(ConnectionClosedError) as info:
            await one(sub)
        assert info.value.code == CloseCode.FORBIDDEN
        with pytest.raises(ConnectionClosedError):
            await client.publish("t", "e", {})
        with pytest.raises(ConnectionClosedError):
            await one(client.subscribe("u"))
        assert client.connections == 1


async def test_oversized_command_closes_1009_terminally(server: RunningServer) -> None:
    async with connect(server.url) as client:
        sub = client.subscribe("t")
        await client.ping()
        with pytest.raises(ConnectionClosedError) as closed:
            await client.request({"type": "ping", "pad": "x" * 70_000})
        assert closed.value.code == 1009
        with pytest.raises(ConnectionClosedError):
            await one(sub)


class BearerGood:
    def authenticate(self, request: ConnectionRequest) -> Principal:
        if request.headers.get("authorization") != "Bearer good":
            raise AuthenticationError("bad token")
        return Principal("u")


async def test_token_is_sent_and_refusal_is_terminal(native_server: RunningServer) -> None:
    native_server.gateway.authenticator = BearerGood()
    async with connect(native_server.url, token="bad") as client:
        with pytest.raises(HandshakeRefusedError) as info:
            await one(client.subscribe("t"))
        assert (info.value.status, info.value.code) == (401, CloseCode.UNAUTHORIZED)
    async with connect(native_server.ws_url, token="good") as client:
        await client.ping()


async def test_transient_subscribe_errors_are_retried(native_server: RunningServer) -> None:
    """An ``internal`` error on subscribe is retried with backoff, not raised."""
    calls = 0

    class FlakyAuthorizer:
        def can_subscribe(self, principal: Any, topic: str) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("authorizer hiccup")
            return True

        def can_publish(self, principal: Any, topic: str) -> bool:
            return True

    native_server.gateway.authorizer = FlakyAuthorizer()
    async with connect(native_server.url, initial_delay=0.05) as client:
        sub = client.subscribe("flaky", since=0)
        await asyncio.wait_for(sub.wait_subscribed(), 5 * UNIT)
        assert calls == 2
        await native_server.gateway.publish("flaky", "e", {})
        assert (await one(sub)).seq == 1


async def test_reconnects_until_the_server_is_up_and_resets_after_a_restart() -> None:
    """Server down at first, then up; then restarted (the in-memory topic starts again)."""
    server = ServerProcess(free_port())
    async with connect(server.url, initial_delay=0.05, max_delay=0.5) as client:
        sub = client.subscribe("r:1", on_history_lost="reset")
        ping = asyncio.create_task(client.ping())  # waits for the connection
        try:
            await asyncio.to_thread(server.start)
            await asyncio.wait_for(ping, 10 * UNIT)
            async with httpx.AsyncClient(base_url=server.url) as http:
                await http.post("/api/topics/r:1/events", json={"type": "before", "data": {}})
            first = await one(sub)
            assert isinstance(first, Event)
            assert (first.seq, first.type) == (1, "before")
            await asyncio.to_thread(server.stop)
            server.log.close()
            server = ServerProcess(server.port)
            await asyncio.to_thread(server.start)
            async with httpx.AsyncClient(base_url=server.url) as http:
                await http.post("/api/topics/r:1/events", json=[{"type": "a1"}, {"type": "a2"}])
            assert await one(sub) == HistoryLost("r:1", 1, 1)
            rest = await take(sub, 2)
            assert [(e.seq, e.type) for e in rest] == [(1, "a1"), (2, "a2")]  # type: ignore[union-attr]
            assert client.connections == 2
        finally:
            if server.proc is not None:
                await asyncio.to_thread(server.stop)
            server.log.close()


async def test_event_types_may_look_like_replies(server: RunningServer) -> None:
    """Frames with a ``seq`` are events whatever their type (seed 004 publishes `error`)."""
    async with connect(server.url) as client:
        sub = client.subscribe("looks:1", since=0)
        for kind in ("error", "subscribed", "pong", "ack"):
            await client.publish("looks:1", kind, {"code": "not a reply"})
        events = await take(sub, 4)
        assert [(e.type, e.seq) for e in events] == [
            ("error", 1),
            ("subscribed", 2),
            ("pong", 3),
            ("ack", 4),
        ]
        assert all(e.data == {"code": "not a reply"} for e in events)


@pytest.mark.parametrize("idempotent", [False, True])
async def test_reply_lost_with_the_connection(
    native_server: RunningServer, idempotent: bool
) -> None:
    """A publish in flight when the connection drops raises ConnectionLostError (with
    ``idempotent=False``); the client reconnects and goes on. An idempotent publish (the
    default) is sent again on the new connection: published once, its seq returned."""
    gw = native_server.gateway
    entered = asyncio.Event()
    release = asyncio.Event()

    class SlowToPublish:
        def can_subscribe(self, principal: Any, topic: str) -> bool:
            return True

        async def can_publish(self, principal: Any, topic: str) -> bool:
            entered.set()
            await release.wait()
            return True

    gw.authorizer = SlowToPublish()
    async with connect(native_server.url, initial_delay=0.05) as client:
        assert repr(client).endswith("subscriptions=0>")
        publishing = asyncio.create_task(client.publish("p", "e", {}, idempotent=idempotent))
        await asyncio.wait_for(entered.wait(), 5 * UNIT)
        assert client.connected
        drop_connections(gw)
        release.set()
        if idempotent:
            assert await asyncio.wait_for(publishing, 5 * UNIT) == 1
            assert client.publish_retries == 1
            assert [p.seq for p in (await gw.history("p", 0)).publications] == [1]
        else:
            with pytest.raises(ConnectionLostError):
                await asyncio.wait_for(publishing, 5 * UNIT)
        await client.ping()
        assert client.connections == 2


async def test_requests_wait_for_a_connection_within_reply_timeout() -> None:
    async with connect(f"http://127.0.0.1:{free_port()}", reply_timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            await client.ping()
        assert not client.connected
        assert "connecting" in repr(client)
    with pytest.raises(ClientError, match="not started"):
        await connect("http://127.0.0.1:1").ping()


async def test_retry_and_connect_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    """``on_retry`` hears of each failed attempt (reason, delay) and of a closed connection
    (its close code); ``on_connect`` of each connection. A callback that raises is logged
    and does not stop the client."""
    port = free_port()
    retries: list[Any] = []
    connects: list[int] = []
    two_failures = asyncio.Event()
    connected = asyncio.Event()

    def on_retry(retry: Any) -> None:
        retries.append(retry)
        if len(retries) == 2:
            two_failures.set()
        raise RuntimeError("a broken callback")

    def on_connect() -> None:
        connects.append(1)
        connected.set()
        raise RuntimeError("another broken callback")

    options: dict[str, Any] = {"initial_delay": 0.05, "max_delay": 0.2}
    async with connect(
        f"http://127.0.0.1:{port}", on_retry=on_retry, on_connect=on_connect, **options
    ) as client:
        await asyncio.wait_for(two_failures.wait(), 10 * UNIT)
        assert all(r.reason == "connection refused" and r.close_code is None for r in retries)
        assert all(isinstance(r.error, ConnectionRefusedError) for r in retries)
        assert all(0 < r.delay <= 0.2 for r in retries)
        server = ServerProcess(port)
        await asyncio.to_thread(server.start)
        try:
            await asyncio.wait_for(connected.wait(), 10 * UNIT)
            assert await client.ping() >= 0
            retries.clear()
            await asyncio.to_thread(server.stop)  # SIGTERM: closed with 1001
            await eventually(lambda: bool(retries))
            assert retries[0].close_code == 1001
            assert retries[0].reason == "closed with 1001 (server shutting down)"
            assert retries[0].error is None
            server.log.close()
            server = ServerProcess(port)
            await asyncio.to_thread(server.start)
            await eventually(lambda: len(connects) == 2, 10 * UNIT)
        finally:
            await asyncio.to_thread(server.stop)
            server.log.close()
    assert "on_retry callback failed" in caplog.text
    assert "on_connect callback failed" in caplog.text
