"""Limits over real sockets (issue 11): connections per user and in all, handshakes in
progress, rate limits, HTTP body size, replay size, the history budget, and the closing
handshake of every close the server initiates. Legitimate clients connected meanwhile
keep receiving their events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import resource
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from agentcast.security import mint_token
from agentcast.settings import Settings
from tests.conftest import UNIT, RunningServer, eventually, start_server, stop_server
from tests.integration.wsutil import RawClient, recv, recv_until, send, subscribe


class QueryUser:
    """A test authenticator: ``?user=NAME`` is the principal ``NAME``; with ``gate`` set,
    authentication waits for it (a slow authenticator: handshakes stay in progress)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate

    def authenticate(self, request: ConnectionRequest) -> Principal | Awaitable[Principal]:
        user = request.query.get("user")
        if not user:
            raise AuthenticationError("no user")
        # every topic granted: these tests are about limits, not ownership (test_ownership.py)
        principal = Principal(subject=user, scopes=frozenset({"publish"}), topics=("*",))
        if self.gate is None:
            return principal
        return self._later(principal)

    async def _later(self, principal: Principal) -> Principal:
        assert self.gate is not None
        await self.gate.wait()
        return principal


@contextlib.asynccontextmanager
async def serve(transport: str = "native", **settings: Any) -> AsyncIterator[RunningServer]:
    running, task = await start_server(transport, **settings)
    try:
        yield running
    finally:
        await stop_server(running, task)


async def live_check(ws: ClientConnection, gw_publish: Any, topic: str, n: int = 3) -> None:
    """The legitimate client ``ws`` (subscribed to ``topic``) receives ``n`` new events."""
    for i in range(n):
        await gw_publish(topic, "tick", {"i": i})
    got = [await recv_until(ws, "tick", 5 * UNIT) for _ in range(n)]
    assert [m["data"]["i"] for m in got] == list(range(n))


async def closed_code(ws: ClientConnection, timeout: float = 10 * UNIT) -> int | None:
    """Read until the server closes; the close code received (None: no close frame)."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


# -- connections ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_too_many_connections_for_one_user(transport: str) -> None:
    async with serve(transport, max_connections_per_user=2) as running:
        running.gateway.authenticator = QueryUser()
        url = running.ws_url + "?user=alice"
        async with websockets.connect(url) as a1, websockets.connect(url) as a2:
            await subscribe(a1, "alice-topic")
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(url)
            assert refused.value.response.status_code == 429
            assert refused.value.response.headers["Retry-After"] == "1"
            assert b"too many connections" in refused.value.response.body
            # another user gets in; alice's connections keep working
            async with websockets.connect(running.ws_url + "?user=bob") as bob:
                await subscribe(bob, "bob-topic")
                await live_check(bob, running.gateway.publish, "bob-topic")
            await live_check(a1, running.gateway.publish, "alice-topic")
            await send(a2, "ping")
            assert (await recv(a2))["type"] == "pong"
        # both closed: alice gets in again
        await eventually(lambda: not running.gateway.user_connections)
        async with websockets.connect(url) as again:
            await send(again, "ping")
            assert (await recv(again))["type"] == "pong"


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_first_auth_message_over_the_user_limit_closes_with_4529(transport: str) -> None:
    """A connection opened without credentials that authenticates (first ``auth``
    message) as a user already at ``max_connections_per_user`` is closed with 4529
    (terminal); the user's connection keeps working and the count is right afterwards."""
    secret = "limits-secret-" + "l" * 32
    async with serve(transport, jwt_secret=secret, max_connections_per_user=1) as running:
        token = mint_token(Settings(jwt_secret=secret), "alice", 60, topics=["*"])
        bearer = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(running.ws_url, additional_headers=bearer) as a1:
            await subscribe(a1, "alice-topic")
            async with websockets.connect(running.ws_url) as late:
                await send(late, {"type": "auth", "token": token, "id": 1})
                assert await closed_code(late) == 4529
            assert running.gateway.user_connections.get("alice") == 1
            await live_check(a1, running.gateway.publish, "alice-topic")
        await eventually(lambda: not running.gateway.user_connections)


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_max_connections_in_all(transport: str) -> None:
    async with serve(transport, max_connections=2) as running:  # noqa: SIM117 - the server, then clients
        async with websockets.connect(running.ws_url) as c1, websockets.connect(running.ws_url):
            await subscribe(c1, "t")
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(running.ws_url)
            assert refused.value.response.status_code == 503
            await live_check(c1, running.gateway.publish, "t")


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_handshakes_in_progress_are_bounded(transport: str) -> None:
    """A slow authenticator: at most ``max_pending_handshakes`` wait; more get 503 at once,
    and the waiting ones get in when authentication completes."""
    async with serve(transport, max_pending_handshakes=2) as running:
        gate = asyncio.Event()
        running.gateway.authenticator = QueryUser(gate)
        url = running.ws_url + "?user=carol"

        async def opened() -> ClientConnection:
            return await websockets.connect(url)

        pending = [asyncio.create_task(opened()) for _ in range(2)]
        await eventually(lambda: running.gateway.handshakes_pending == 2)
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
        gate.set()
        for conn in await asyncio.wait_for(asyncio.gather(*pending), 5 * UNIT):
            await send(conn, "ping")
            assert (await recv(conn))["type"] == "pong"
            await conn.close()
        assert running.gateway.handshakes_pending == 0


# -- rate limits ---------------------------------------------------------------------


async def flood_until_closed(ws: ClientConnection, frame: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``frame`` (with a fresh id) until the server closes; the errors received."""
    errors: list[dict[str, Any]] = []

    async def reader() -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "error":
                errors.append(msg)

    task = asyncio.create_task(reader())
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(10 * UNIT):
            # until closed: a server that holds reading (back-pressure) may let a fixed
            # number of frames sit in the socket buffers before it gets to close
            for i in itertools.count():
                await ws.send(json.dumps({**frame, "id": i}))
                if i % 20 == 0:
                    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5 * UNIT)
    return errors


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_flood_of_commands(transport: str) -> None:
    async with (
        serve(
            transport,
            rate_limit_commands_per_minute=60,
            rate_limit_close_after=5,
        ) as running,
        websockets.connect(running.ws_url) as legit,
        websockets.connect(running.ws_url) as flood,
    ):
        await subscribe(legit, "legit")
        # the burst (a minute's worth: 60, the subscribe above was another connection)
        for i in range(60):
            await send(flood, {"type": "ping", "id": i})
            assert (await recv(flood))["type"] == "pong"
        await send(flood, {"type": "ping", "id": "over"})
        err = await recv(flood)
        assert err["type"] == "error" and err["id"] == "over"
        assert err["data"]["code"] == "rate_limited"
        assert 0 < err["data"]["retry_after"] <= 1.0
        errors = await flood_until_closed(flood, {"type": "ping"})
        assert flood.close_code == 4530
        assert flood.close_reason == "rate limited"
        assert 1 <= len(errors) <= 4  # 5 refusals in all, the last one closes
        assert all(e["data"]["code"] == "rate_limited" for e in errors)
        await live_check(legit, running.gateway.publish, "legit")


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_flooding_over_the_rate_limit_is_held_and_others_get_their_stream(
    transport: str,
) -> None:
    """A client writing commands as fast as it can, over its rate limit: after a few
    refusals its reading is held for the ``retry_after`` (TCP back-pressure), so the
    server handles about its rate, not its flood; a subscriber meanwhile receives a
    paced stream completely and in order; the flooder still gets ``rate_limited`` error
    frames with ``retry_after``, then close 4530."""
    async with (
        serve(
            transport,
            rate_limit_commands_per_minute=1200,  # 20/s: retry_after 50 ms
            rate_limit_burst=0.05,  # a 60-command burst
            rate_limit_close_after=40,
        ) as running,
        websockets.connect(running.ws_url) as legit,
        websockets.connect(running.ws_url, max_queue=None) as flood,
    ):
        await subscribe(legit, "legit")
        gateway = running.gateway
        errors: list[dict[str, Any]] = []
        sent = 0

        async def reader() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in flood:
                    msg = json.loads(raw)
                    if msg["type"] == "error":
                        errors.append(msg)

        async def flooder() -> None:
            nonlocal sent
            frame = json.dumps({"type": "ping", "id": 0})
            # AttributeError: websockets 17 aborts a transport that asyncio already
            # closed when its buffer drained after close() (the client's own race, once
            # the server has closed it with 4530, checked below)
            with contextlib.suppress(ConnectionClosed, AttributeError):
                while True:
                    await flood.send(frame)  # waits when the server stops reading
                    sent += 1
                    if sent % 50 == 0:
                        await asyncio.sleep(0)

        start = time.monotonic()
        reading = asyncio.create_task(reader())
        flooding = asyncio.create_task(flooder())
        try:
            await eventually(lambda: gateway.stats.rate_limited.get("commands", 0) >= 3)
            handled_before = gateway.stats.commands
            n = 100
            for i in range(n):  # a paced stream, 2 ms apart, while the flood runs
                await gateway.publish("legit", "tick", {"i": i})
                await asyncio.sleep(0.002)
            assert not flooding.done()  # the stream was published during the flood
            got = [await recv_until(legit, "tick", 5 * UNIT) for _ in range(n)]
            assert [m["data"]["i"] for m in got] == list(range(n))
            await asyncio.wait_for(asyncio.gather(flooding, reading), 20 * UNIT)
        finally:
            flooding.cancel()
            reading.cancel()
        elapsed = time.monotonic() - start
        assert flood.close_code == 4530
        assert 3 <= len(errors) < 40
        assert all(e["data"]["code"] == "rate_limited" for e in errors)
        assert all(0 < e["data"]["retry_after"] <= 1.0 for e in errors)
        # what the server handled of the flood: its burst, its rate, its refusals (each
        # refusal after the third holds reading for the retry_after), not what it was sent
        handled = gateway.stats.commands - handled_before
        assert handled <= 60 + 40 * elapsed + 40 + 256, (handled, elapsed)
        assert sent >= 10 * handled, (sent, handled)
        await live_check(legit, gateway.publish, "legit")


async def test_flood_of_publishes_per_connection_and_per_user() -> None:
    async with serve(rate_limit_publish_per_minute=10, rate_limit_close_after=3) as running:
        running.gateway.authenticator = QueryUser()
        url = running.ws_url + "?user=dave"
        async with (
            websockets.connect(running.ws_url + "?user=erin") as legit,
            websockets.connect(url) as d1,
            websockets.connect(url) as d2,
        ):
            await subscribe(legit, "legit")
            pub = {"type": "publish", "topic": "d", "event": "e", "data": {}}
            for i in range(6):
                await send(d1, {**pub, "id": i})
                assert (await recv(d1))["type"] == "ack"
            for i in range(4):  # dave's bucket (10) is shared by his connections
                await send(d2, {**pub, "id": i})
                assert (await recv(d2))["type"] == "ack"
            await send(d2, {**pub, "id": "over"})
            err = await recv(d2)
            assert err["data"]["code"] == "rate_limited" and err["data"]["retry_after"] > 0
            # erin is not limited by dave's publishes
            await send(legit, {**pub, "topic": "legit", "event": "tick", "data": {"i": 0}, "id": 1})
            assert (await recv_until(legit, "ack"))["data"]["topic"] == "legit"
            errors = await flood_until_closed(d2, pub)
            assert d2.close_code == 4530
            assert len(errors) >= 1
            # HTTP publishes draw from the same per-user bucket: 429 with Retry-After
            async with httpx.AsyncClient(base_url=running.url) as http:
                r = await http.post(
                    "/api/topics/d/events", params={"user": "dave"}, json={"type": "e"}
                )
                assert r.status_code == 429
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["detail"]["code"] == "rate_limited"
                assert r.json()["detail"]["retry_after"] > 0
                r = await http.post(
                    "/api/topics/d/events", params={"user": "erin"}, json={"type": "e"}
                )
                assert r.status_code == 200
            await live_check(legit, running.gateway.publish, "legit")


async def test_flood_of_chat_messages() -> None:
    """Seed 002's default: 60 chat messages a minute; here 3, to keep the test short."""
    async with serve(rate_limit_chat_per_minute=3, offline_tokens_per_second=0) as running:  # noqa: SIM117 - the server, then clients
        async with websockets.connect(running.ws_url) as ws:
            for i in range(3):
                await send(ws, {"type": "chat:send", "id": i, "data": {"message": "hi"}})
                accepted = await recv_until(ws, "chat:accepted", 5 * UNIT)
                assert accepted["id"] == i
            await send(ws, {"type": "chat:send", "id": "over", "data": {"message": "hi"}})
            err = await recv_until(ws, "error", 5 * UNIT)
            assert err["id"] == "over" and err["data"]["code"] == "rate_limited"
            assert 0 < err["data"]["retry_after"] <= 20.0
            await send(ws, "ping")  # other commands are not limited by chat's bucket
            assert (await recv_until(ws, "pong"))["type"] == "pong"


# -- closing handshake ---------------------------------------------------------------


async def flood_and_read_close(raw: RawClient, frame: bytes) -> int:
    """Keep writing ``frame`` while reading to the server's close frame; its code."""
    stop = asyncio.Event()

    async def flood() -> None:
        with contextlib.suppress(ConnectionError):
            while not stop.is_set():
                raw.writer.write(frame * 8)
                await raw.writer.drain()

    sender = asyncio.create_task(flood())
    try:
        code, _, _ = await raw.read_until_close(20 * UNIT)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(sender, return_exceptions=True), 10 * UNIT)
        raw.close()
    return code


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_oversized_frame_then_flood_still_sees_1009(transport: str) -> None:
    """On both transports: under the ASGI adapter uvicorn's protocol fails the connection
    (it would close the socket at once, and a client still sending lost its 1009 to the
    reset); agentcast's subclass completes the closing handshake there too."""
    async with serve(transport, max_message_bytes=1024, close_timeout=1.0) as running:  # noqa: SIM117 - the server, then clients
        async with websockets.connect(running.ws_url) as legit:
            await subscribe(legit, "legit")
            for _ in range(3):
                raw = await RawClient.connect(running.port)
                raw.send_frame(0x1, b"x" * 4096)  # oversized, then it keeps sending
                code = await flood_and_read_close(raw, RawClient.frame(0x1, b"y" * 512))
                assert code == 1009
            for first, expected in [(b"x" * 4096, 1009)] * 3 + [(b"\xff\xfe", 1007)]:
                # it sends on after the close and reads only later
                raw = await RawClient.connect(running.port)
                junk = RawClient.frame(0x1, b"y" * 512) * 64
                raw.writer.write(RawClient.frame(0x1, first) + junk)
                for _ in range(5):
                    await asyncio.sleep(0)  # a yield, so that the loop writes: not a wait
                    raw.writer.write(junk)
                    await raw.writer.drain()  # the server reads on: no reset, no EPIPE
                code, _, _ = await raw.read_until_close(10 * UNIT)
                assert code == expected
                raw.close()
            await live_check(legit, running.gateway.publish, "legit")


async def test_slow_consumer_flooding_still_sees_4001() -> None:
    async with serve(
        outbox_max_frames=16, write_high_water=1024, close_timeout=10 * UNIT
    ) as running:
        gw = running.gateway
        raw = await RawClient.connect(running.port)  # it reads only when told to
        raw.send_text(json.dumps({"type": "subscribe", "topic": "slow"}))
        await eventually(lambda: gw.hub.presence("slow") == 1)
        for i in range(20_000):  # the client does not read: its outbox overflows
            await gw.publish("slow", "e", {"i": i, "pad": "p" * 2000})
            if gw.stats.slow_consumers:
                break
        assert gw.stats.slow_consumers == 1
        code = await flood_and_read_close(raw, RawClient.frame(0x1, b'{"type":"ping"}'))
        assert code == 4001


# -- slow request headers (slowloris) ------------------------------------------------


async def trickle_until_closed(port: int, first: bytes = b"") -> bytes:
    """Send ``first`` (complete requests), then a request line and a header line every
    0.05 s, never the end of the headers; what the server answered once it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(first + b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        async with asyncio.timeout(10 * UNIT):
            while not reader.at_eof():
                try:
                    answer += await asyncio.wait_for(reader.read(65536), 0.05)
                except TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_slow_request_headers_get_408(transport: str) -> None:
    """A connection that trickles its request headers is answered 408 and closed after
    ``header_timeout`` (not reset by the bytes it sends), the first request of a connection
    and a keep-alive connection's next one alike; established WebSockets are not affected."""
    async with serve(transport, header_timeout=0.5) as running:  # noqa: SIM117 - the server, then clients
        async with websockets.connect(running.ws_url) as legit, httpx.AsyncClient() as http:
            await subscribe(legit, "legit")
            started = time.monotonic()
            answer = await trickle_until_closed(running.port)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - started >= 0.5
            healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            answer = await trickle_until_closed(running.port, first=healthz)
            assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer, answer
            # the WebSocket opened before outlived header_timeout: it still receives
            await live_check(legit, running.gateway.publish, "legit")
            assert (await http.get(f"{running.url}/healthz")).status_code == 200


# -- HTTP body size ------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def test_oversized_body_with_a_length_is_refused_before_it_is_read() -> None:
    async with serve(max_http_body_bytes=64 * 1024) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            writer.write(
                b"POST /api/topics/t/events HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 157286400\r\n\r\n[{"
            )
            # 150 MB announced, 2 bytes sent: the answer comes without the body
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
            assert head.startswith(b"HTTP/1.1 413"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = json.loads(await reader.readexactly(length))
            assert body["detail"]["code"] == "payload_too_large"
        finally:
            writer.close()


@pytest.mark.parametrize("path", ["/api/topics/t/events", "/api/conversations"])
async def test_oversized_streamed_body_is_refused_and_not_held(path: str) -> None:
    """A 32 MiB chunked body (no length) over a 64 KiB bound: 413, and the server's memory
    does not grow by the body's size (the server runs in this process)."""
    async with serve(max_http_body_bytes=64 * 1024) as running:
        chunk = b"[" + b'{"type":"e","data":{"pad":"' + b"x" * 65000 + b'"}},'

        async def body() -> AsyncIterator[bytes]:
            for _ in range(512):
                yield chunk

        before = rss_bytes()
        async with httpx.AsyncClient(base_url=running.url, timeout=30 * UNIT) as http:
            r = await http.post(path, content=body(), headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert r.json()["detail"]["code"] == "payload_too_large"
            # the connection still serves: a normal batch publish goes through
            ok = await http.post("/api/topics/t/events", json=[{"type": "e"}, {"type": "e"}])
            assert ok.status_code == 200 and len(ok.json()["seqs"]) == 2
        assert rss_bytes() - before < 16 * 1024 * 1024


# -- replay size ---------------------------------------------------------------------


async def test_replay_of_a_large_stored_run_respects_the_outbox(tmp_path: Path) -> None:
    n = 3000
    async with serve(
        store_url=f"sqlite:///{tmp_path / 'r.db'}",
        history_max_events=50,
        outbox_max_frames=64,
        replay_page_events=100,
    ) as running:
        gw = running.gateway
        w = {"workflow_id": "big", "execution_id": "e", "level": "info"}
        for i in range(n):
            await gw.publish("workflow:big", "log", {**w, "message": f"line {i}"})

        async def stored() -> int:
            page = await gw.history("workflow:big", 0, n)
            return len(page.publications)

        async with asyncio.timeout(20 * UNIT):
            while await stored() < n:  # noqa: ASYNC110 - the recorder writes in batches
                await asyncio.sleep(0.05)
        async with (
            websockets.connect(running.ws_url) as legit,
            websockets.connect(running.ws_url) as ws,
        ):
            await subscribe(legit, "legit")
            await send(ws, {"type": "replay", "topic": "workflow:big", "speed": 0, "id": 1})
            started = await recv(ws, 5 * UNIT)
            assert started["type"] == "replay_started" and started["data"]["events"] == n
            seqs = []
            async with asyncio.timeout(30 * UNIT):
                while True:
                    msg = await recv(ws, 10 * UNIT)
                    if msg["type"] == "replay_complete":
                        break
                    assert msg.get("replay") is True
                    seqs.append(msg["seq"])
            assert seqs == list(range(1, n + 1))
            assert msg["data"]["events"] == n
            assert gw.stats.slow_consumers == 0
            await live_check(legit, gw.publish, "legit")


# -- history budget ------------------------------------------------------------------


async def test_history_budget_evicts_the_least_recently_published_topic() -> None:
    mib = 1024 * 1024
    async with serve(history_max_total_bytes=mib, history_max_bytes=mib) as running:
        gw = running.gateway
        pad = "x" * 10_000
        async with httpx.AsyncClient(base_url=running.url) as http:
            health = (await http.get("/healthz")).json()
            assert health["history"]["budget"] == mib
            for topic in ("old", "mid", "new"):  # ~400 KB each: 1.2 MB in all
                for i in range(40):
                    await gw.publish(topic, "e", {"i": i, "pad": pad})
            await gw.broker.trim(time.time())
            health = (await http.get("/healthz")).json()["history"]
        assert health["bytes"] <= mib and health["evicted_topics"] == 1
        assert (await gw.history("old", 0)).publications == []
        assert len((await gw.history("new", 0)).publications) == 40
        async with websockets.connect(running.ws_url) as ws:
            sub = await subscribe(ws, "old", since=5)
            assert sub["data"]["recovered"] is False  # its history went first
            sub = await subscribe(ws, "new", since=5)
            assert sub["data"]["recovered"] is True
            got = [await recv_until(ws, "e") for _ in range(35)]
            assert [m["seq"] for m in got] == list(range(6, 41))


async def test_seed003_chat_messages_are_rate_limited_per_user() -> None:
    async with serve(rate_limit_chat_per_minute=2, offline_tokens_per_second=0) as running:
        url = f"ws://127.0.0.1:{running.port}/api/v1/ws/helper"
        async with websockets.connect(url) as ws:
            assert (await recv(ws, 5 * UNIT))["type"] == "welcome"
            for _ in range(2):
                await ws.send("hello")
                assert (await recv(ws, 10 * UNIT))["type"] == "message"
            await ws.send("hello")
            err = await recv(ws, 5 * UNIT)
            assert err["type"] == "error" and 0 < err["retry_after"] <= 30.0


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_seed003_connections_count_for_their_user(transport: str) -> None:
    async with serve(transport, max_connections_per_user=1) as running:
        running.gateway.authenticator = QueryUser()
        seed003 = f"ws://127.0.0.1:{running.port}/api/v1/ws/helper?user=alice"
        async with websockets.connect(running.ws_url + "?user=alice"):
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(seed003)
            assert refused.value.response.status_code == 429
            assert refused.value.response.headers["Retry-After"] == "1"
        await eventually(lambda: not running.gateway.user_connections)
        async with websockets.connect(seed003) as chat:
            assert (await recv(chat, 5 * UNIT))["type"] == "welcome"
            assert running.gateway.user_connections == {"alice": 1}
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(running.ws_url + "?user=alice")
            assert refused.value.response.status_code == 429
        await eventually(lambda: not running.gateway.user_connections)
