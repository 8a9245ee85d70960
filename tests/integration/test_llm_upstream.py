"""The OpenAI-compatible upstream against a real HTTP server speaking the streaming wire
format (``agentcast.testing.openai_server``), on both HTTP transports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentcast.chat.agents import ChatRequest
from agentcast.chat.llm import LLMAgent, OpenAIUpstream, UpstreamConfig
from agentcast.chat.text import Turn
from agentcast.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from agentcast.testing.openai_server import FakeOpenAIServer, answer_for
from tests.conftest import UNIT, free_port

Q = [Turn("user", "what is a topic?")]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tokens=12, tokens_per_second=400) as server:
        yield server


@pytest.fixture(params=["aiohttp", "httpx"])
async def upstream(
    request: pytest.FixtureRequest, fake: FakeOpenAIServer
) -> AsyncIterator[OpenAIUpstream]:
    config = UpstreamConfig(
        fake.base_url,
        "fake",
        transport=request.param,
        read_timeout=0.5,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    async with OpenAIUpstream(config) as up:
        yield up


def other(upstream: OpenAIUpstream, **changes: Any) -> OpenAIUpstream:
    fields = {**upstream.config.__dict__, **changes}
    return OpenAIUpstream(UpstreamConfig(**fields))


async def test_streams_the_answer_in_several_chunks(upstream: OpenAIUpstream) -> None:
    deltas = [d async for d in upstream.stream(Q)]
    assert deltas == answer_for("what is a topic?", 12)
    different = "".join([d async for d in upstream.stream([Turn("user", "another question")])])
    assert different != "".join(deltas)


async def test_complete_reports_usage(upstream: OpenAIUpstream) -> None:
    done = await upstream.complete(Q)
    assert done.text == "".join(answer_for("what is a topic?", 12))
    assert done.model == "fake" and done.completion_tokens == 12 and done.prompt_tokens >= 1


async def test_model_list_is_cached_for_five_minutes(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    models = await upstream.list_models()
    assert "fake" in models
    upstream._models = ["stale"]  # what a cached answer looks like to the next call
    assert await upstream.list_models() == ["stale"]
    assert "fake" in await upstream.list_models(force=True)
    upstream._models_at -= 301  # five minutes later
    upstream._models = ["stale"]
    assert "fake" in await upstream.list_models()
    await upstream.switch_model("fake-slow")
    assert upstream.model == "fake-slow"
    with pytest.raises(UpstreamError, match="no model"):
        await upstream.switch_model("gpt-99")


async def test_health_up_and_down(upstream: OpenAIUpstream) -> None:
    up = await upstream.health()
    assert up["ok"] is True and "fake" in up["models"] and up["latency_ms"] >= 0
    async with other(upstream, base_url=f"http://127.0.0.1:{free_port()}/v1") as down:
        health = await down.health()
        assert health["ok"] is False and health["error"]
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            [d async for d in down.stream(Q)]


async def test_error_mid_stream(upstream: OpenAIUpstream) -> None:
    got: list[str] = []
    with pytest.raises(UpstreamError, match="model crashed mid-answer"):
        async for d in upstream.stream(Q, "fake-error-mid"):
            got.append(d)
    assert len(got) == 3


async def test_stall_is_a_timeout(upstream: OpenAIUpstream) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    got: list[str] = []
    with pytest.raises(UpstreamTimeout, match="stalled"):
        async for d in upstream.stream(Q, "fake-stall"):
            got.append(d)
    assert len(got) == 2
    assert 0.4 <= loop.time() - started < 0.5 + UNIT


async def test_5xx_is_retried_then_falls_back(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    before = len(fake.requests)
    with pytest.raises(UpstreamUnavailable, match="fake-500"):
        [d async for d in upstream.stream(Q, "fake-500")]
    assert [r.model for r in fake.requests[before:]] == ["fake-500"] * 3  # 1 + 2 retries
    async with other(upstream, model="fake-500", fallback_models=("fake",)) as up:
        before = len(fake.requests)
        text = "".join([d async for d in up.stream(Q)])
        assert text == "".join(answer_for("what is a topic?", 12))
        assert [r.model for r in fake.requests[before:]] == ["fake-500"] * 3 + ["fake"]
        assert (await up.complete(Q)).model == "fake"


async def test_flaky_server_recovers_with_retries(fake: FakeOpenAIServer) -> None:
    fake.state.flaky_seen = 0
    config = UpstreamConfig(fake.base_url, "fake-flaky", backoff_initial=0.01, backoff_max=0.05)
    async with OpenAIUpstream(config) as up:
        assert len([d async for d in up.stream(Q)]) == 12
    assert fake.state.flaky_seen == 3


async def test_client_errors_are_not_retried(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    before = len(fake.requests)
    with pytest.raises(UpstreamError, match="not found") as raised:
        [d async for d in upstream.stream(Q, "gpt-99")]
    assert not isinstance(raised.value, UpstreamUnavailable)
    assert len(fake.requests) - before == 1


async def test_no_retry_after_the_first_token(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    before = len(fake.requests)
    with pytest.raises(UpstreamError):
        [d async for d in upstream.stream(Q, "fake-error-mid")]
    assert len(fake.requests) - before == 1, "text already streamed is never repeated"


async def test_cancel_closes_the_upstream_request_at_once(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    seen = len(fake.disconnects)
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
    assert await asyncio.to_thread(fake.wait_for, lambda f: len(f.disconnects) > seen, UNIT)
    assert fake.disconnects[-1] - cancelled_at < 0.1


async def test_long_text_helpers(upstream: OpenAIUpstream, fake: FakeOpenAIServer) -> None:
    small = other(upstream, context_tokens=600)
    long_text = "word " * 2000
    cut = small.truncate_to_context(long_text, reserve=100)
    assert small.estimate_tokens(cut) <= 500 and "truncated by agentcast" in cut
    assert small.truncate_to_context("short", reserve=100) == "short"
    chunks = small.chunk_text(long_text, chunk_tokens=300, overlap=30)
    assert len(chunks) > 3
    before = len(fake.requests)
    answer = await small.process_long_text(long_text, "Summarize.", chunk_tokens=800, overlap=50)
    calls = fake.requests[before:]
    assert len(calls) >= 4 and "Combine these partial answers" in calls[-1].messages[0]["content"]
    assert answer
    assert await small.process_long_text("tiny", "Summarize.") != ""
    await small.aclose()


async def test_benchmark_measures_ttft_and_rate(upstream: OpenAIUpstream) -> None:
    result = await upstream.benchmark(runs=2)
    assert result.runs == 2 and result.tokens == [12, 12]
    assert 0 < result.ttft_ms_median < 1000 * UNIT
    assert result.tokens_per_second_median > 10 and result.seconds_total > 0


async def test_llm_agent_streams_the_budgeted_prompt(
    upstream: OpenAIUpstream, fake: FakeOpenAIServer
) -> None:
    agent = LLMAgent(upstream, system_prompt="Be brief.")
    assert agent.model == "fake" and agent.queue_key == upstream.base_url
    request = ChatRequest(
        "c", "a", "u", "hello", [Turn("system", "Be brief."), Turn("user", "hello")]
    )
    text = "".join([d async for d in agent.stream(request)])
    assert text == "".join(answer_for("hello", 12))
    assert fake.requests[-1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
