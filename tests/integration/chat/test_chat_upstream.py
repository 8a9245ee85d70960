"""Chat through the gateway with an OpenAI-compatible upstream: a real HTTP server speaking
the streaming wire format (``agentcast.testing.openai_server``), started by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets

from agentcast.chat.service import Chat
from agentcast.testing.openai_server import FakeOpenAIServer, answer_for
from tests.conftest import UNIT, RunningServer, free_port, start_server, stop_server
from tests.integration.chat.support import chat_send, read_answer, read_until
from tests.integration.chat.test_chat_ws import UserAuth, streamed
from tests.integration.wsutil import recv_until, send


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tokens=12, tokens_per_second=100) as server:
        yield server


async def gateway_for(
    url: str, model: str, **settings: Any
) -> tuple[RunningServer, asyncio.Task[None]]:
    settings = {"llm_read_timeout": 0.5, "llm_max_retries": 1, **settings}
    return await start_server("native", llm_url=url, llm_model=model, **settings)


@pytest.fixture
async def served(fake: FakeOpenAIServer) -> AsyncIterator[RunningServer]:
    running, task = await gateway_for(fake.base_url, "fake")
    try:
        yield running
    finally:
        await stop_server(running, task)


async def history(running: RunningServer, cid: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=running.url) as http:
        return list((await http.get(f"/api/conversations/{cid}/messages")).json()["messages"])


async def test_answer_streams_from_the_upstream_and_is_stored(
    served: RunningServer, fake: FakeOpenAIServer
) -> None:
    async with websockets.connect(served.ws_url) as ws:
        await chat_send(ws, "What is a topic?")
        frames = await read_answer(ws)
    expected = answer_for("What is a topic?", 12)
    chunks = [f["data"]["chunk"] for f in frames if f["type"] == "chat:streaming"]
    assert chunks[:-1] == expected and chunks[-1] == ""
    answer = frames[-1]["data"]
    assert answer["content"] == "".join(expected) and answer["model"] == "fake"
    assert answer["ttft_ms"] > 0 and answer["tokens"]["completion"] > 0
    sent = fake.requests[-1]
    assert sent.stream and sent.messages[0] == {
        "role": "system",
        "content": "You are a helpful assistant.",
    }
    assert sent.messages[-1] == {"role": "user", "content": "What is a topic?"}
    async with httpx.AsyncClient(base_url=served.url) as http:
        stats = (await http.get("/api/llm/stats")).json()
        health = (await http.get("/api/llm/health")).json()
        agents = (await http.get("/api/agents")).json()
    row = next(s for s in stats["agents"] if s["model"] == "fake")
    assert row["completed"] >= 1 and row["ttft_ms"]["p50"] is not None
    assert row["tokens_per_s"]["median"] > 0 and row["cancel_rate"] == 0.0
    assert health["upstreams"][0]["ok"] is True
    assert agents[0]["model"] == "fake" and agents[0]["concurrency"] == 4


@pytest.mark.parametrize(
    ("model", "code", "partial", "text"),
    [
        ("fake-error-mid", "upstream_error", 3, "model crashed mid-answer"),
        ("fake-stall", "upstream_timeout", 2, "stalled"),
        ("fake-500", "upstream_unavailable", 0, "HTTP 500"),
    ],
)
async def test_upstream_failures_are_reported_and_stored(
    fake: FakeOpenAIServer, model: str, code: str, partial: int, text: str
) -> None:
    running, task = await gateway_for(fake.base_url, model)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "please answer", id="q")
            frames = await read_answer(ws, timeout=10 * UNIT)
            err = await recv_until(ws, "error")
        assert err["id"] == "q" and err["data"]["code"] == code and text in err["data"]["message"]
        answer = frames[-1]["data"]
        assert answer["status"] == "error" and text in answer["error"]
        assert answer["content"] == "".join(answer_for("please answer", 12)[:partial])
        stored = await history(running, answer["conversation_id"])
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "complete"),
            ("assistant", "error"),
        ]
    finally:
        await stop_server(running, task)


async def test_upstream_down_keeps_the_users_message() -> None:
    running, task = await gateway_for(f"http://127.0.0.1:{free_port()}/v1", "any")
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "is anybody there?", id=1)
            frames = await read_answer(ws, timeout=10 * UNIT)
            err = await recv_until(ws, "error")
            assert err["data"]["code"] == "upstream_unavailable"
            assert "unreachable" in err["data"]["message"]
            cid = frames[-1]["data"]["conversation_id"]
            # the connection and the server are fine, and the message is there
            await send(ws, {"type": "chat:history", "data": {"conversation_id": cid}})
            stored = (await recv_until(ws, "chat:history"))["data"]["messages"]
        assert stored[0]["content"] == "is anybody there?" and stored[0]["status"] == "complete"
        assert stored[1]["status"] == "error"
        async with httpx.AsyncClient(base_url=running.url) as http:
            health = (await http.get("/api/llm/health")).json()["upstreams"][0]
        assert health["ok"] is False
    finally:
        await stop_server(running, task)


async def test_cancel_mid_stream_closes_the_upstream_request_within_100_ms(
    fake: FakeOpenAIServer,
) -> None:
    running, task = await gateway_for(fake.base_url, "fake-slow")
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "a slow answer please")
            before = await read_until(ws, lambda f: f["type"] == "chat:streaming")
            seen = len(fake.disconnects)
            sent_at = time.monotonic()
            await send(ws, {"type": "chat:cancel", "id": "stop"})
            assert await asyncio.to_thread(
                fake.wait_for, lambda f: len(f.disconnects) > seen, 5 * UNIT
            )
            assert fake.disconnects[-1] - sent_at < 0.1
            frames = before + await read_answer(ws)
        answer = frames[-1]["data"]
        assert answer["status"] == "cancelled" and answer["content"] == streamed(frames)
        assert answer["content"].startswith(answer_for("a slow answer please", 12)[0])
        async with httpx.AsyncClient(base_url=running.url) as http:
            stats = (await http.get("/api/llm/stats")).json()["agents"][0]
        assert stats["cancelled"] == 1 and stats["cancel_rate"] == 1.0
    finally:
        await stop_server(running, task)


async def test_cancel_while_queued_never_reaches_the_upstream(fake: FakeOpenAIServer) -> None:
    running, task = await gateway_for(fake.base_url, "fake-slow", llm_concurrency=1)
    try:
        async with websockets.connect(running.ws_url) as a, websockets.connect(running.ws_url) as b:
            await chat_send(a, "first in line")
            await read_until(a, lambda f: f["type"] == "chat:streaming")
            requests = len(fake.requests)
            await chat_send(b, "second in line")
            queued = await recv_until(b, "chat:queued")
            assert queued["data"]["position"] == 1
            await send(b, {"type": "chat:cancel"})
            frames = await read_answer(b)
            assert frames[-1]["data"]["status"] == "cancelled"
            await send(a, {"type": "chat:cancel"})
            await read_answer(a)
        assert len(fake.requests) == requests, "the queued request never reached the upstream"
    finally:
        await stop_server(running, task)


async def test_queue_in_front_of_the_upstream_is_fair() -> None:
    # answers of 0.8 s: alice 0 is still streaming when bob asks, even on a loaded machine
    with FakeOpenAIServer(tokens=4, tokens_per_second=5) as upstream:
        running, task = await gateway_for(upstream.base_url, "fake", llm_concurrency=1)
        auth = UserAuth()
        running.gateway.authenticator = running.gateway.authorizer = auth
        try:
            base = running.ws_url
            async with (
                websockets.connect(base + "?user=alice") as alice,
                websockets.connect(base + "?user=bob") as bob,
            ):
                for i in range(3):
                    await chat_send(alice, f"alice {i}", id=i)
                    await recv_until(alice, "chat:accepted")
                await chat_send(bob, "bob 0", id=9)
                queued = await recv_until(bob, "chat:queued")
                assert queued["data"]["position"] == 2  # after alice 1, before alice 2
                await read_answer(bob, timeout=15 * UNIT)
                assert await asyncio.to_thread(
                    upstream.wait_for, lambda f: len(f.requests) == 4, 10 * UNIT
                )
            asked = [r.messages[-1]["content"] for r in upstream.requests]
            assert asked == ["alice 0", "alice 1", "bob 0", "alice 2"]
            assert upstream.max_active == 1, "the upstream never served two at once"
        finally:
            await stop_server(running, task)


async def test_two_tabs_reconnect_mid_answer_and_restart_with_a_real_upstream(
    fake: FakeOpenAIServer, tmp_path: Any
) -> None:
    store = f"sqlite:///{tmp_path / 'chat.db'}"
    running, task = await gateway_for(fake.base_url, "fake-slow", store_url=store)
    try:
        async with websockets.connect(running.ws_url) as tab1:
            await chat_send(tab1, "stream it to both tabs")
            first = await read_until(
                tab1, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 1
            )
            cid = first[0]["data"]["conversation_id"]
            async with websockets.connect(running.ws_url) as tab2:
                await send(tab2, {"type": "subscribe", "topic": f"chat:{cid}", "since": 0})
                await recv_until(tab2, "subscribed")
                last_seq = first[-1]["seq"]
                await tab1.close()  # tab 1 drops mid-answer
                two = await read_answer(tab2, timeout=10 * UNIT)
        async with websockets.connect(running.ws_url) as again:  # tab 1 comes back
            await send(again, {"type": "subscribe", "topic": f"chat:{cid}", "since": last_seq})
            assert (await recv_until(again, "subscribed"))["data"]["recovered"] is True
            rest = await read_answer(again)
        one = first + rest
        assert [f["seq"] for f in one] == list(range(one[0]["seq"], one[-1]["seq"] + 1))
        expected = "".join(answer_for("stream it to both tabs", 12))
        assert streamed(one) == streamed(two) == expected
        assert one[-1]["data"] == two[-1]["data"]
    finally:
        await stop_server(running, task)
    running, task = await gateway_for(fake.base_url, "fake", store_url=store)
    try:
        stored = await history(running, cid)
        assert [(m["role"], m["content"]) for m in stored] == [
            ("user", "stream it to both tabs"),
            ("assistant", expected),
        ]
    finally:
        await stop_server(running, task)


async def test_chat_streams_on_a_broker_without_synchronous_publish(
    fake: FakeOpenAIServer,
) -> None:
    """A broker like Redis (publishes take round trips, no synchronous capability): the
    pushed deltas of the upstream arrive in order, through batch publishes, and the answer
    is stored."""
    from agentcast.core.history import HistoryLimits
    from tests.broker_support import RemoteLikeBroker

    broker = RemoteLikeBroker(lambda: 2, limits=HistoryLimits())
    settings = {"llm_read_timeout": 0.5, "llm_max_retries": 1}
    running, task = await start_server(
        "native", broker=broker, llm_url=fake.base_url, llm_model="fake", **settings
    )
    try:
        assert not running.gateway.publishes_now
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "What is a topic?")
            frames = await read_answer(ws)
        expected = answer_for("What is a topic?", 12)
        chunks = [f["data"]["chunk"] for f in frames if f["type"] == "chat:streaming"]
        assert chunks[:-1] == expected and chunks[-1] == ""
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert frames[-1]["data"]["content"] == "".join(expected)
        # every event went through the broker's batch publish (paced tokens: one a batch)
        assert sum(broker.batches) >= len(frames)

        async def echo(message: str) -> AsyncIterator[str]:  # pulled, no stream_to
            for word in message.split():
                yield word + " "

        running.gateway.feature(Chat).register_agent("echo", echo)
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "one two three four", agent_id="echo")
            frames = await read_answer(ws)
        chunks = [f["data"]["chunk"] for f in frames if f["type"] == "chat:streaming"]
        assert chunks == ["one ", "two ", "three ", "four ", ""]
        assert frames[-1]["data"]["content"] == "one two three four "
    finally:
        await stop_server(running, task)
