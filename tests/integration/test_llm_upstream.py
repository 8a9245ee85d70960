"""The OpenAI-compatible upstream (``agentcast.chat.llm``) against a real HTTP server speaking
the streaming wire format (``agentcast.testing.openai_server``), on both HTTP transports
(native and httpx); servers written to close connections at the worst moments; and the
fake server itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agentcast.chat.agents import Agent, ChatRequest
from agentcast.chat.llm import MODEL_CACHE_SECONDS, LLMAgent, OpenAIUpstream, UpstreamConfig
from agentcast.chat.text import Turn
from agentcast.errors import UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError
from agentcast.testing.openai_server import MODELS, FakeOpenAIServer, answer_for
from tests.conftest import UNIT, free_port
from tests.integration.rawhttp import END, SSE_HEAD, events, read_request, serve

QUESTION = "what is a topic?"
Q = [Turn("user", QUESTION)]
ANSWER = answer_for(QUESTION, 12)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tokens=12, tokens_per_second=400) as running:
        yield running


@pytest.fixture
def fake(server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The module's server, idle, with its records and flaky counts reset for this test."""
    assert server.wait_for(lambda f: f.active == 0, 5 * UNIT), "an earlier answer still runs"
    server.reset()
    return server


READ_TIMEOUT = UNIT / 2
"""The fixture's read timeout (1 s; scaled on slow machines: a loaded machine's fake server
can take longer than 0.5 s to answer /models)."""


@pytest.fixture(params=["native", "httpx"])
async def upstream(
    request: pytest.FixtureRequest, fake: FakeOpenAIServer
) -> AsyncIterator[OpenAIUpstream]:
    config = UpstreamConfig(
        fake.base_url,
        "fake",
        transport=request.param,
        read_timeout=READ_TIMEOUT,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    async with OpenAIUpstream(config) as up:
        yield up


def test_two_transports() -> None:
    with pytest.raises(ValueError, match="transport must be one of auto, native, httpx"):
        UpstreamConfig("http://127.0.0.1:1/v1", "m", transport="aiohttp")  # type: ignore[arg-type]


def other(upstream: OpenAIUpstream, **changes: Any) -> OpenAIUpstream:
    """An upstream like ``upstream`` with some settings changed (use with ``async with``)."""
    return OpenAIUpstream(UpstreamConfig(**{**upstream.config.__dict__, **changes}))


async def collect(stream: AsyncIterator[str], into: list[str] | None = None) -> list[str]:
    got = [] if into is None else into
    async for delta in stream:
        got.append(delta)
    return got


# -- streaming and completions -----------------------------------------------------------


async def test_streams_the_answer_in_several_chunks(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    assert await collect(upstream.stream(Q)) == ANSWER, "role-only deltas are skipped"
    other_answer = "".join(await collect(upstream.stream([Turn("user", "another question")])))
    assert other_answer and other_answer != "".join(ANSWER)
    sent = fake.requests[0]
    assert (sent.model, sent.stream, sent.messages) == ("fake", True, [Q[0].to_openai()])
    assert sent.params == {}, "nothing but model, messages and stream unless configured"


async def test_one_connection_serves_one_answer_after_another(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    for _ in range(3):
        assert await collect(upstream.stream(Q)) == ANSWER
        await upstream.complete(Q)
    clients = {r.client for r in fake.requests}
    assert len(clients) == 1 and None not in clients, "the HTTP connection was reused"


async def test_configured_and_per_call_parameters_are_sent(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    async with other(upstream, max_tokens=5, temperature=0.2) as up:
        assert len(await collect(up.stream(Q))) == 5, "max_tokens caps the answer"
        assert fake.requests[-1].params == {"max_tokens": 5, "temperature": 0.2}
        assert len(await collect(up.stream(Q, max_tokens=3, top_p=0.9))) == 3
        assert fake.requests[-1].params == {"max_tokens": 3, "temperature": 0.2, "top_p": 0.9}
        # a usage chunk (no choices) after the last delta is skipped
        usage = await collect(up.stream(Q, stream_options={"include_usage": True}))
        assert usage == ANSWER[:5]


async def test_complete_reports_usage(upstream: OpenAIUpstream, fake: FakeOpenAIServer) -> None:
    done = await upstream.complete(Q)
    assert done.text == "".join(ANSWER)
    assert done.model == "fake" and done.completion_tokens == 12 and done.prompt_tokens >= 1
    assert fake.requests[-1].stream is False


async def test_an_api_key_is_sent_and_a_wrong_one_is_not_retried() -> None:
    async with FakeOpenAIServer(api_key="s3cret") as keyed:
        good = UpstreamConfig(keyed.base_url, "fake", api_key="s3cret")
        async with OpenAIUpstream(good) as up:
            assert await collect(up.stream(Q)) == ANSWER
            assert "fake" in await up.list_models()
        async with OpenAIUpstream(UpstreamConfig(keyed.base_url, "fake")) as up:
            with pytest.raises(UpstreamError, match="HTTP 401") as raised:
                await collect(up.stream(Q))
            assert not isinstance(raised.value, UpstreamUnavailableError)
            assert len(keyed.requests) == 2, "a 401 is not retried"
            health = await up.health()
            assert health["ok"] is False and "HTTP 401" in health["error"]


# -- models and health ---------------------------------------------------------------


async def test_model_list_is_cached_for_five_minutes(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    assert MODEL_CACHE_SECONDS == 300
    assert await upstream.list_models() == list(MODELS)
    assert await upstream.list_models() == list(MODELS)
    assert fake.models_requests == 1, "the second call is answered from the cache"
    await upstream.list_models(force=True)
    assert fake.models_requests == 2, "force refreshes"
    upstream._models_at -= MODEL_CACHE_SECONDS + 1  # five minutes later
    await upstream.list_models()
    assert fake.models_requests == 3, "an expired cache is refreshed"
    await upstream.switch_model("fake-slow")
    assert upstream.model == "fake-slow" and fake.models_requests == 3
    assert "fake-slow" in await upstream.list_models(), "callers get a copy of the cache"
    with pytest.raises(UpstreamError, match="no model 'gpt-99'"):
        await upstream.switch_model("gpt-99")
    assert upstream.model == "fake-slow"


async def test_health_up_and_down(upstream: OpenAIUpstream) -> None:
    up = await upstream.health()
    assert up["ok"] is True and "fake" in up["models"] and up["latency_ms"] >= 0
    assert up["error"] is None and up["url"] == upstream.base_url
    down_url = f"http://127.0.0.1:{free_port()}/v1"
    async with other(upstream, base_url=down_url) as down:
        health = await down.health()
        assert health["ok"] is False and health["models"] == []
        assert down_url in health["error"] and "unreachable" in health["error"]
        with pytest.raises(UpstreamUnavailableError) as raised:
            await collect(down.stream(Q))
        assert down_url in raised.value.message and "unreachable" in raised.value.message
        with pytest.raises(UpstreamUnavailableError, match="unreachable"):
            await down.list_models()
    async with other(upstream, base_url="nonsense://x") as bad:
        assert (await bad.health())["ok"] is False, "health never raises"


# -- failures --------------------------------------------------------------------------


async def test_error_mid_stream_is_an_upstream_error_with_its_message(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    got: list[str] = []
    with pytest.raises(UpstreamError, match="model crashed mid-answer") as raised:
        await collect(upstream.stream(Q, "fake-error-mid"), got)
    assert type(raised.value) is UpstreamError
    assert got == ANSWER[:3]
    assert len(fake.requests) == 1, "text already streamed is never repeated"


async def test_stall_is_a_timeout(upstream: OpenAIUpstream, fake: FakeOpenAIServer) -> None:
    started = time.monotonic()
    got: list[str] = []
    with pytest.raises(UpstreamTimeoutError, match="stalled"):
        await collect(upstream.stream(Q, "fake-stall"), got)
    assert got == ANSWER[:2]
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + UNIT
    assert await fake.wait(lambda f: len(f.disconnects) == 1, UNIT), "the stream was closed"
    assert len(fake.requests) == 1


async def test_a_non_streamed_stall_is_a_timeout(upstream: OpenAIUpstream) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError, match="sent nothing"):
        await upstream.complete(Q, "fake-stall")
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + UNIT


async def test_a_cut_after_the_first_token_is_not_retried(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    got: list[str] = []
    with pytest.raises(UpstreamError, match="stream broken") as raised:
        await collect(upstream.stream(Q, "fake-drop"), got)
    assert not isinstance(raised.value, UpstreamUnavailableError)
    assert got == ANSWER[:2] and len(fake.requests) == 1


async def test_a_cut_before_the_first_token_is_not_sent_again(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    async with other(upstream, fallback_models=("fake",)) as up:
        with pytest.raises(UpstreamUnavailableError, match="not sent again"):
            await collect(up.stream(Q, "fake-flaky-drop"))
        assert len(fake.requests) == 1, "no retry, no fallback: it may be generating"
        got: list[str] = []
        with pytest.raises(UpstreamUnavailableError, match="not sent again"):
            await up.stream_to(Q, got.append, "fake-flaky-drop")
        assert got == [] and len(fake.requests) == 2
        assert await collect(up.stream(Q, "fake-flaky-drop")) == ANSWER, "asked again: whole"
        fake.reset()
        with pytest.raises(UpstreamUnavailableError, match="not sent again"):
            await up.complete(Q, "fake-flaky-drop")
        assert len(fake.requests) == 1


async def test_5xx_is_retried_then_falls_back(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentcast.chat")
    with pytest.raises(UpstreamUnavailableError, match="HTTP 500") as raised:
        await collect(upstream.stream(Q, "fake-500"))
    assert upstream.base_url in raised.value.message and "fake-500" in raised.value.message
    assert [r.model for r in fake.requests] == ["fake-500"] * 3  # 1 + 2 retries
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2, "every resend of a request the server received is logged"
    assert all("HTTP 500" in m and "retrying in" in m for m in retries)
    assert "attempt 2 of 3" in retries[0] and "attempt 3 of 3" in retries[1]
    async with other(upstream, model="fake-500", fallback_models=("fake-429", "fake")) as up:
        fake.reset()
        caplog.clear()
        assert await collect(up.stream(Q)) == ANSWER
        assert [r.model for r in fake.requests] == ["fake-500"] * 3 + ["fake-429"] * 3 + ["fake"]
        fallbacks = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
        assert len(caplog.records) == 4 + 2 and len(fallbacks) == 2
        assert "HTTP 429" in fallbacks[1] and fallbacks[1].endswith("model 'fake'")
        done = await up.complete(Q)
        assert done.model == "fake" and done.text == "".join(ANSWER)
        fake.reset()
        with pytest.raises(UpstreamUnavailableError):
            await collect(up.stream(Q, fallback=False))
        assert {r.model for r in fake.requests} == {"fake-500"}


async def test_all_models_down_is_unavailable_naming_them(upstream: OpenAIUpstream) -> None:
    async with other(upstream, model="fake-500", fallback_models=("fake-429",)) as up:
        for call in (collect(up.stream(Q)), up.complete(Q)):
            with pytest.raises(UpstreamUnavailableError) as raised:
                await call
            message = raised.value.message
            assert up.base_url in message and "fake-500, fake-429" in message
            assert "HTTP 429" in message, "the last cause"
        with pytest.raises(UpstreamUnavailableError, match="HTTP 500"):
            await up.complete(Q, "fake-error-mid", fallback=False)


async def test_flaky_server_recovers_with_retries(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    assert await collect(upstream.stream(Q, "fake-flaky")) == ANSWER
    assert len(fake.requests) == 3
    async with other(upstream, max_retries=1) as up:
        fake.reset()
        with pytest.raises(UpstreamUnavailableError, match="HTTP 503"):
            await collect(up.stream(Q, "fake-flaky"))
        assert len(fake.requests) == 2


async def test_client_errors_are_not_retried(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    async with other(upstream, fallback_models=("fake",)) as up:
        with pytest.raises(UpstreamError, match="not found") as raised:
            await collect(up.stream(Q, "gpt-99"))
        assert not isinstance(raised.value, UpstreamUnavailableError)
        with pytest.raises(UpstreamError, match="not found"):
            await up.complete(Q, "gpt-99")
    assert len(fake.requests) == 2, "no retry and no fallback after a 4xx"


async def test_a_finish_reason_ends_the_stream_without_done(upstream: OpenAIUpstream) -> None:
    async with other(upstream, read_timeout=10 * UNIT) as up:
        started = time.monotonic()
        assert await collect(up.stream(Q, "fake-no-done")) == ANSWER
        assert time.monotonic() - started < 2 * UNIT, "no wait for the read timeout"


# -- cancellation ----------------------------------------------------------------------


async def test_cancel_closes_the_upstream_request_at_once(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in upstream.stream(Q, "fake-slow"):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5 * UNIT)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait(lambda f: len(f.disconnects) == 1, UNIT)
    assert fake.disconnects[0] - cancelled_at < 0.1
    assert fake.completed == 0


async def test_closing_the_iterator_closes_the_upstream_request_at_once(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    stream = upstream.stream(Q, "fake-slow")
    assert await anext(stream) == ANSWER[0]
    closed_at = time.monotonic()
    await stream.aclose()
    assert await fake.wait(lambda f: len(f.disconnects) == 1, UNIT)
    assert fake.disconnects[0] - closed_at < 0.1


async def test_cancel_before_the_first_token_closes_the_request(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    async def consume() -> None:
        await collect(upstream.stream(Q, "fake:1"))  # the first token takes 1 s

    task = asyncio.create_task(consume())
    assert await fake.wait(lambda f: f.active == 1, 5 * UNIT)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait(lambda f: len(f.disconnects) == 1, UNIT)
    assert fake.disconnects[0] - cancelled_at < 0.1


# -- long texts and benchmark ------------------------------------------------------------


async def test_truncate_to_context(upstream: OpenAIUpstream) -> None:
    async with other(upstream, context_tokens=600) as small:
        long_text = "word " * 2000
        cut = small.truncate_to_context(long_text, reserve=100)
        assert small.estimate_tokens(cut) <= 500 and "truncated by agentcast" in cut
        assert long_text.startswith(cut.split("\n\n[…")[0])
        assert small.answer_reserve() == 150, "a quarter of the context"
        assert small.estimate_tokens(small.truncate_to_context(long_text)) <= 450
        assert small.truncate_to_context("short", reserve=100) == "short"
    async with other(upstream, context_tokens=600, max_tokens=200) as capped:
        assert capped.answer_reserve() == 200
        assert capped.estimate_tokens(capped.truncate_to_context(long_text)) <= 400


async def test_process_long_text_answers_each_chunk_then_combines(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    async with other(upstream, context_tokens=600) as small:
        long_text = " ".join(f"w{i}" for i in range(1500))
        chunks = small.chunk_text(long_text, chunk_tokens=300, overlap=30)
        assert len(chunks) > 3
        answer = await small.process_long_text(long_text, "Summarize.", overlap=20)
        calls = fake.requests
        assert len(calls) >= 4 and all(not c.stream for c in calls)
        parts = [c.messages[0]["content"] for c in calls[:-1]]
        assert all(p.startswith("Summarize.\n\n[part ") for p in parts)
        assert all(small.estimate_tokens(p) <= 600 - small.answer_reserve() for p in parts)
        assert "w0 " in parts[0] and "w1499" in parts[-1], "every part of the text is sent"
        combine = calls[-1].messages[0]["content"]
        assert "Combine these partial answers" in combine
        assert answer == "".join(answer_for(combine, 12)), "the combined answer is returned"
        fake.reset()
        assert await small.process_long_text("tiny", "Summarize.") != ""
        assert len(fake.requests) == 1, "one chunk: no combining"
        assert await small.process_long_text("", "Summarize.") == ""
        assert await small.process_long_text(long_text, "Summarize.", chunk_tokens=1000)
        assert len(fake.requests) == 1 + len(small.chunk_text(long_text, 1000, 100)) + 1


async def test_benchmark_measures_ttft_and_rate(upstream: OpenAIUpstream) -> None:
    result = await upstream.benchmark(runs=2)
    assert result.model == "fake" and result.runs == 2 and result.tokens == [12, 12]
    assert result.tokens_total == 24 and len(result.ttft_ms) == 2
    assert 0 < result.ttft_ms_median < 1000 * UNIT
    # paced at 400 tokens/s by the server (wide bounds: a late first token shortens the span)
    assert 100 < result.tokens_per_second_median < 4000
    assert result.seconds_total >= 2 * 11 / 400 and result.seconds_median > 0
    slow = await upstream.benchmark(runs=1, model="fake:50")
    assert 25 < slow.tokens_per_second_median < 100
    async with other(upstream, fallback_models=("fake",)) as up:
        with pytest.raises(UpstreamUnavailableError):
            await up.benchmark(runs=1, model="fake-500")  # no fallback: figures of that model


async def test_llm_agent_streams_the_budgeted_prompt(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    async with other(upstream, name="Local fake", concurrency=2, context_tokens=2048) as up:
        agent = LLMAgent(up, system_prompt="Be brief.")
        assert isinstance(agent, Agent)
        assert (agent.name, agent.model, agent.queue_key) == ("Local fake", "fake", up.base_url)
        assert agent.concurrency == 2 and agent.context_tokens == 2048
        prompt = [Turn("system", "You are terse."), Turn("user", "hello")]
        request = ChatRequest("c", "a", "u", "hello", prompt)
        assert "".join(await collect(agent.stream(request))) == "".join(answer_for("hello", 12))
        assert fake.requests[-1].messages == [t.to_openai() for t in prompt]
        # a prompt without a system turn gets the agent's system prompt
        bare = ChatRequest("c", "a", "u", "hi", [Turn("user", "hi")])
        await collect(agent.stream(bare))
        assert fake.requests[-1].messages[0] == {"role": "system", "content": "Be brief."}
        await up.switch_model("fake-slow")
        assert agent.model == "fake-slow"
    assert LLMAgent(upstream).name == "fake"


# -- the fake server ---------------------------------------------------------------------


async def test_fake_server_speaks_openais_wire_format(fake: FakeOpenAIServer) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post("/chat/completions", json=body)
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [e for e in response.text.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ANSWER
        assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
        whole = (await http.post("/chat/completions", json={**body, "stream": False})).json()
        assert whole["object"] == "chat.completion"
        assert whole["choices"][0]["message"] == {"role": "assistant", "content": "".join(ANSWER)}
        assert whole["usage"]["completion_tokens"] == 12
        assert (await http.post("/chat/completions", content=b"{")).status_code == 400
        assert (await http.post("/chat/completions", json={"model": "x"})).status_code == 400
        assert (
            await http.post("/chat/completions", json={**body, "model": "fake:x"})
        ).status_code == 404
        assert (await http.get("/nothing")).status_code == 404
        headers = {"x-fake-tokens": "3", "x-fake-tokens-per-second": "0"}
        short = await http.post("/chat/completions", json=body, headers=headers)
        assert short.text.count('"content"') == 1 + 3
        bench = await http.post("/chat/completions", json={**body, "model": "bench"})
        stamps = [int(t) for t in re.findall(r'"content": "ts=(\d+) "', bench.text)]
        assert len(stamps) == 12 and stamps == sorted(stamps) and stamps[0] <= time.time_ns()
        limited = await http.post("/chat/completions", json={**body, "model": "fake-429"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert await fake.wait(lambda f: f.completed == 4 and f.active == 0, UNIT)


async def test_fake_server_counts_concurrent_streams(fake: FakeOpenAIServer) -> None:
    config = UpstreamConfig(fake.base_url, "fake:40")  # 300 ms each: they overlap
    async with OpenAIUpstream(config) as up:
        answers = await asyncio.gather(*(collect(up.stream(Q)) for _ in range(3)))
    assert answers == [ANSWER] * 3
    assert await fake.wait(lambda f: f.completed == 3 and f.active == 0, UNIT)
    assert fake.max_active == 3
    assert fake.disconnects == []


async def test_fake_server_stop_ends_answers_in_progress() -> None:
    server = FakeOpenAIServer(tokens=12)
    with server:
        async with OpenAIUpstream(UpstreamConfig(server.base_url, "fake-stall")) as up:
            got: list[str] = []
            stalled = asyncio.Event()

            async def consume() -> None:
                async for delta in up.stream(Q):
                    got.append(delta)
                    if len(got) == 2:  # the last token before the stall
                        stalled.set()

            consumer = asyncio.create_task(consume())
            await asyncio.wait_for(stalled.wait(), 5 * UNIT)
            await asyncio.to_thread(server.stop)
            await asyncio.wait_for(consumer, 5 * UNIT)  # the stream ends instead of stalling
            assert got == ANSWER[:2] and server.disconnects == []
    server.stop()  # stopping twice is harmless


def test_fake_server_runs_standalone() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentcast.testing.openai_server",
            "--port",
            "0",
            "--tokens",
            "5",
            "--tokens-per-second",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert line.startswith("fake OpenAI server on http://127.0.0.1:")
        base = line.split()[4]
        assert httpx.get(f"{base}/models", timeout=5 * UNIT).json()["data"][0]["id"] == "fake"
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{base}/chat/completions", json=body, timeout=5 * UNIT).json()
        assert answer["choices"][0]["message"]["content"] == "".join(answer_for("hi", 5))
    finally:
        proc.terminate()
        assert proc.wait(10 * UNIT) is not None
        if proc.stdout is not None:
            proc.stdout.close()


# -- servers that break the protocol ---------------------------------------------------


def _sse(*events: Any) -> Response:
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return Response(body, media_type="text/event-stream")


def _delta(content: str | None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"index": index, "delta": delta, "finish_reason": finish}


async def _odd_completions(request: Request) -> Response:
    """Answers by model name, each breaking the protocol in one way."""
    model = (await request.json())["model"]
    answers: dict[str, Response] = {
        "empty": _sse({"choices": [_delta(None)]}, {"choices": [_delta(None, "stop")]}, "[DONE]"),
        "not-json": _sse({"choices": [_delta("a")]}, "{oops"),
        "odd-events": _sse(
            [1, 2],
            {"choices": None},
            {"choices": [_delta("B", index=1), _delta("A")]},
            "",
            {"choices": [_delta("!")]},
        ),  # and no [DONE] nor finish_reason: the end of the body ends the answer
        "error-string": _sse({"choices": [_delta("a")]}, {"error": "boom"}),
        "not-sse": PlainTextResponse("hello"),
        "bad-json": PlainTextResponse("nope", media_type="application/json"),
        "no-usage": JSONResponse({"choices": [{"message": {"content": "four word long answer"}}]}),
        "text-error": PlainTextResponse("plain failure", status_code=400),
        "detail-error": JSONResponse({"detail": "bad field"}, status_code=422),
        "string-error": JSONResponse({"error": "string error"}, status_code=400),
    }
    return answers[model]


async def _odd_models(request: Request) -> Response:
    return JSONResponse({"unexpected": True})


@contextlib.asynccontextmanager
async def odd_server() -> AsyncIterator[str]:
    """A server breaking the protocol (:func:`_odd_completions`), in this loop; its base URL."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _odd_completions, methods=["POST"]),
            Route("/v1/models", _odd_models),
        ]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn accepts them
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5 * UNIT)
        sock.close()


@pytest.mark.parametrize("transport", ["native", "httpx"])
async def test_protocol_breaches_are_upstream_errors(transport: str) -> None:
    async with odd_server() as base:
        config = UpstreamConfig(base, "empty", transport=transport)  # type: ignore[arg-type]
        async with OpenAIUpstream(config) as up:
            assert await collect(up.stream(Q)) == [], "an empty answer is no error"
            assert await collect(up.stream(Q, "odd-events")) == ["A", "!"], "choice 0 only"
            with pytest.raises(UpstreamError, match="not JSON"):
                await collect(up.stream(Q, "not-json"))
            with pytest.raises(UpstreamError, match="mid-answer: boom"):
                await collect(up.stream(Q, "error-string"))
            with pytest.raises(UpstreamError, match="not an event stream"):
                await collect(up.stream(Q, "not-sse"))
            with pytest.raises(UpstreamError, match="unexpected completion answer"):
                await up.complete(Q, "bad-json")
            done = await up.complete(Q, "no-usage")
            assert done.text == "four word long answer" and done.model == "no-usage"
            assert done.completion_tokens == 6 and done.prompt_tokens == 5, "estimates"
            for model, message in [
                ("text-error", "HTTP 400 for model 'text-error': plain failure"),
                ("detail-error", "HTTP 422 for model 'detail-error': bad field"),
                ("string-error", "HTTP 400 for model 'string-error': string error"),
            ]:
                with pytest.raises(UpstreamError, match=message):
                    await collect(up.stream(Q, model))
            with pytest.raises(UpstreamError, match="unexpected answer"):
                await up.list_models()


# -- servers that close connections at the worst moments ------------------------------------


def _openai_answer(*tokens: str) -> bytes:
    """A streamed completion of ``tokens`` (chunked, kept alive: no ``connection: close``)."""
    chunks = [json.dumps({"choices": [_delta(t)]}).encode() for t in tokens]
    return SSE_HEAD + events(*chunks, b"[DONE]") + END


@pytest.mark.parametrize("transport", ["native", "httpx"])
async def test_idle_connections_the_server_closed_are_replaced_before_sending(
    transport: str,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        server.requests.append(await read_request(r))
        w.write(_openai_answer("hi", " there"))  # then the idle connection is closed
        await w.drain()

    async with serve(handler) as (server, url):
        config = UpstreamConfig(url, "m", transport=transport)  # type: ignore[arg-type]
        async with OpenAIUpstream(config) as up:
            for _ in range(3):
                server.closed.clear()
                assert await collect(up.stream(Q)) == ["hi", " there"]
                await asyncio.wait_for(server.closed.wait(), UNIT)  # closed while idle
        assert server.connections == 3, "each request on a new connection"
        assert len(server.requests) == 3, "each request reached the server exactly once"


@pytest.mark.parametrize("transport", ["native", "httpx"])
async def test_a_request_the_server_read_then_dropped_is_not_sent_again(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agentcast.chat")

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        server.requests.append(await read_request(r))
        if n == 1:  # the first request is answered; the next one on it is read and dropped
            w.write(_openai_answer("ok"))
            await w.drain()
            server.requests.append(await read_request(r))
        # on later connections every request is read and dropped

    async with serve(handler) as (server, url):
        config = UpstreamConfig(
            url,
            "m",
            fallback_models=("m2",),
            max_retries=2,
            transport=transport,  # type: ignore[arg-type]
            backoff_initial=0.01,
        )
        async with OpenAIUpstream(config) as up:
            assert await collect(up.stream(Q)) == ["ok"]
            with pytest.raises(UpstreamUnavailableError, match="not sent again") as raised:
                await collect(up.stream(Q))  # on the kept-alive connection
            assert "model 'm'" in raised.value.message
            assert (server.connections, len(server.requests)) == (1, 2), "no retry, no fallback"
            got: list[str] = []
            for call in (collect(up.stream(Q)), up.complete(Q), up.stream_to(Q, got.append)):
                with pytest.raises(UpstreamUnavailableError, match="not sent again"):
                    await call  # on a new connection
            assert got == []
            assert (server.connections, len(server.requests)) == (4, 5), "each sent once"
    assert caplog.records == [], "nothing was retried"
