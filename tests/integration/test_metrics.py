"""``GET /metrics`` over a real server and real sockets: the counters move by exactly what
the traffic did (connections, subscriptions, events, frames and bytes written, rate-limit
hits, slow-consumer closes, auth refusals), and who may read them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.chat.service import Chat
from tests.conftest import UNIT, RunningServer, eventually, start_server, stop_server
from tests.integration.chat.support import GatedAgent, chat_send, read_answer
from tests.integration.wsutil import RawClient, recv, send

SECRET = "metrics-secret-" + "x" * 40

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def scrape(running: RunningServer, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{running.url}/metrics", headers=headers, timeout=UNIT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def ws_frame_size(payload: str | bytes) -> int:
    """Bytes of one unmasked server text frame carrying ``payload``."""
    n = len(payload.encode() if isinstance(payload, str) else payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


@asynccontextmanager
async def serve(transport: str = "native", **settings: Any) -> AsyncIterator[RunningServer]:
    running, task = await start_server(transport, **settings)
    try:
        yield running
    finally:
        await stop_server(running, task)


class Counted:
    """A client that keeps every frame it received (to compare with frames_written)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[str] = []

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), UNIT)
        self.frames.append(raw)
        result: dict[str, Any] = json.loads(raw)
        return result


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_counters_follow_real_traffic(transport: str) -> None:
    async with serve(
        transport,
        rate_limit_publish_per_minute=3,  # a bucket of 3: the 4th and 5th publish are refused
        outbox_max_frames=16,
        write_high_water=1024,
        close_timeout=10 * UNIT,
    ) as running:
        gw = running.gateway
        before = await scrape(running)
        assert value(before, "agentcast_connections", transport=transport) == 0
        assert value(before, "agentcast_node_info", **_node_labels(before)) == 1.0

        async with (
            websockets.connect(running.ws_url) as ws1,
            websockets.connect(running.ws_url) as ws2,
        ):
            c1, c2 = Counted(ws1), Counted(ws2)
            for client, topics in ((c1, ("a", "b")), (c2, ("a",))):
                for topic in topics:
                    await send(client.ws, {"type": "subscribe", "topic": topic, "id": topic})
                    assert (await client.recv())["type"] == "subscribed"
            during = await scrape(running)
            assert value(during, "agentcast_connections", transport=transport) == 2
            assert value(during, "agentcast_subscriptions") == 3
            assert value(during, "agentcast_topics") == 2
            assert value(during, "agentcast_connections_opened_total") == 2

            for i in range(5):
                await send(ws1, {"type": "publish", "topic": "a", "event": "e", "data": {"i": i}})
            acks = errors = events1 = 0
            while acks + errors < 5 or events1 < acks:  # ws1 gets its own events too
                msg = await c1.recv()
                if msg["type"] == "ack":
                    acks += 1
                elif msg["type"] == "error":
                    assert msg["data"]["code"] == "rate_limited", msg
                    errors += 1
                elif msg["type"] == "e":
                    events1 += 1
            assert (acks, errors) == (3, 2)
            got2 = [await c2.recv() for _ in range(3)]
            assert [m["data"]["i"] for m in got2] == [0, 1, 2]

            after = await scrape(running)
            delta = _delta(before, after)
            assert delta("agentcast_events_published_total") == 3
            assert delta("agentcast_events_dispatched_total") == 3
            assert delta("agentcast_events_delivered_total") == 6  # 3 events x 2 subscribers
            assert delta("agentcast_rate_limited_total", kind="publish") == 2
            received = c1.frames + c2.frames
            # every frame the server wrote was received, and its bytes are exactly those
            assert delta("agentcast_frames_written_total") == len(received)
            assert delta("agentcast_bytes_written_total") == sum(map(ws_frame_size, received))
            batches = delta("agentcast_publish_delivery_seconds_count")
            assert 1 <= batches <= 3
            assert 0 <= delta("agentcast_publish_delivery_seconds_sum") < 5 * UNIT
            assert delta("agentcast_commands_total") == 3 + 5

        # a slow consumer: a raw client that subscribes and never reads
        raw = await RawClient.connect(running.port)
        raw.send_text(json.dumps({"type": "subscribe", "topic": "slow"}))
        await eventually(lambda: gw.hub.presence("slow") == 1)
        for i in range(20_000):
            await gw.publish("slow", "e", {"i": i, "pad": "p" * 2000})
            if gw.stats.slow_consumers:
                break
        code, _, _ = await raw.read_until_close(20 * UNIT)
        raw.close()
        assert code == 4001
        await eventually(lambda: not gw.sessions)
        last = await scrape(running)
        delta = _delta(before, last)
        assert delta("agentcast_slow_consumer_closes_total") == 1
        assert delta("agentcast_closes_total", code="4001", name="slow_consumer") == 1
        assert value(last, "agentcast_connections", transport=transport) == 0
        hist = [
            value(last, "agentcast_publish_delivery_seconds_bucket", le=le)
            for le in ("0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf")
        ]
        assert hist == sorted(hist)  # cumulative
        assert hist[-1] == value(last, "agentcast_publish_delivery_seconds_count")


def _node_labels(samples: Samples) -> dict[str, str]:
    for (name, labels), _ in samples.items():
        if name == "agentcast_node_info":
            found = dict(labels)
            assert found["node"] == f"{found['hostname']}:{found['pid']}"
            assert found["broker"] == "memory"
            return found
    raise AssertionError("no agentcast_node_info")


def _delta(before: Samples, after: Samples) -> Any:
    def delta(metric: str, /, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    return delta


def token(sub: str, *scopes: str, ttl: float = 3600) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl)}
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def handshake_status(url: str, **options: Any) -> int:
    try:
        async with websockets.connect(url, **options):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_metrics_need_admin_and_count_auth_refusals(transport: str) -> None:
    async with serve(transport, jwt_secret=SECRET, auth_timeout=0.3) as running:
        admin = token("ops", "admin")
        before = await scrape(running, admin)
        async with httpx.AsyncClient() as client:
            url = f"{running.url}/metrics"
            nobody = await client.get(url, timeout=UNIT)
            assert nobody.status_code == 401
            assert nobody.json()["detail"]["code"] == "unauthorized"
            forged = await client.get(url, headers={"Authorization": "Bearer x.y.z"})
            assert forged.status_code == 401
            user = await client.get(url, headers={"Authorization": f"Bearer {token('alice')}"})
            assert user.status_code == 403
            assert user.json()["detail"]["code"] == "forbidden"
        bad = f"{running.ws_url}?token=not-a-token"
        assert await handshake_status(bad) == 401
        evil = {"origin": "http://evil.example"}
        assert await handshake_status(running.ws_url, additional_headers=evil) == 403
        # no credentials at the handshake and no `auth` message in time: 4508
        async with websockets.connect(running.ws_url) as ws:
            with pytest.raises(ConnectionClosed):
                await recv(ws, 10 * UNIT)
            assert ws.close_code == 4508
        # a good connection is not counted
        async with websockets.connect(
            running.ws_url, additional_headers={"Authorization": f"Bearer {token('alice')}"}
        ) as ws:
            await send(ws, {"type": "ping", "id": 1})
            assert (await recv(ws))["type"] == "pong"
        after = await scrape(running, admin)
        delta = _delta(before, after)
        assert delta("agentcast_auth_refusals_total", reason="unauthorized") == 3
        assert delta("agentcast_auth_refusals_total", reason="origin") == 1
        assert delta("agentcast_auth_refusals_total", reason="auth_timeout") == 1
        assert delta("agentcast_auth_refusals_total", reason="forbidden") == 0
        assert delta("agentcast_closes_total", code="4508", name="auth_timeout") == 1
        info = _node_labels(after)
        assert info["mode"] == "auth"


async def test_metrics_public_serves_anyone_with_auth_on() -> None:
    async with serve(jwt_secret=SECRET, metrics_public=True) as running:
        samples = await scrape(running)  # no credentials
        assert value(samples, "agentcast_connections", transport="native") == 0


async def test_open_dev_mode_serves_metrics_to_anyone(native_server: RunningServer) -> None:
    samples = await scrape(native_server)
    assert ("agentcast_events_published_total", ()) in samples
    assert any(name.startswith("process_") for name, _ in samples)


async def test_llm_queue_depth_generations_tokens_and_time_to_first_token() -> None:
    async with serve() as running:
        agent = GatedAgent(before=2, after=1, concurrency=1)  # one generation at a time
        running.gateway.feature(Chat).register_agent("gated", agent)
        upstream = agent.queue_key
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "first", agent="gated")
            await agent.wait_calls(1)
            await chat_send(ws, "second", agent="gated")  # another conversation: it queues
            chat = running.gateway.feature(Chat)
            await eventually(lambda: chat.queues[upstream].waiting == 1)
            during = await scrape(running)
            assert value(during, "agentcast_llm_queue_waiting", upstream=upstream) == 1
            assert value(during, "agentcast_llm_queue_active", upstream=upstream) == 1
            agent.gate.set()
            answers = 0
            while answers < 2:
                frames = await read_answer(ws)
                assert frames[-1]["data"]["status"] == "complete"
                answers += 1
        after = await scrape(running)
        labels = {"upstream": upstream, "model": "gated"}
        assert value(after, "agentcast_llm_generations_total", **labels, status="complete") == 2
        assert value(after, "agentcast_llm_generations_total", **labels, status="error") == 0
        assert value(after, "agentcast_llm_tokens_total", **labels) == 6  # 3 chunks each
        assert value(after, "agentcast_llm_time_to_first_token_seconds_count", **labels) == 2
        assert value(after, "agentcast_llm_queue_waiting", upstream=upstream) == 0
        # seed 003's chat endpoint is a socket of its own kind
        seed003 = f"ws://127.0.0.1:{running.port}/api/v1/ws/gated"
        async with websockets.connect(seed003):
            await eventually(lambda: sum(running.gateway.user_connections.values()) == 1)
            samples = await scrape(running)
            assert value(samples, "agentcast_connections", transport="seed003") == 1
            assert value(samples, "agentcast_connections", transport="native") == 0
