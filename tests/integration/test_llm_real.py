"""The OpenAI-compatible upstream and :class:`LLMAgent` end to end against a real LLM:
llama-cpp-python's OpenAI-compatible server running SmolLM2-135M-Instruct
(``tests/llm_support.py``). Skipped with the reason when either is missing, failed
instead when ``AGENTCAST_REQUIRE_LLM=1`` (CI)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agentcast.chat.agents import ChatRequest
from agentcast.chat.llm import LLMAgent, OpenAIUpstream, UpstreamConfig
from agentcast.chat.text import Turn
from agentcast.errors import UpstreamError
from tests import llm_support
from tests.conftest import UNIT
from tests.llm_support import MODEL_ALIAS, LlamaServer, llama_server

# ChatML's end tokens made impossible: the model writes until max_tokens
NO_END = {"logit_bias": {"<|im_end|>": -100, "<|endoftext|>": -100}, "logit_bias_type": "tokens"}


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    yield from llama_server()


@pytest.fixture
async def upstream(llama: LlamaServer) -> AsyncIterator[OpenAIUpstream]:
    config = UpstreamConfig(
        llama.base_url, MODEL_ALIAS, max_tokens=48, read_timeout=30 * UNIT, context_tokens=2048
    )
    async with OpenAIUpstream(config) as up:
        yield up


async def timed(stream: AsyncIterator[str]) -> list[tuple[float, str]]:
    return [(time.monotonic(), delta) async for delta in stream]


async def test_the_server_lists_the_model(upstream: OpenAIUpstream) -> None:
    assert MODEL_ALIAS in await upstream.list_models()
    health = await upstream.health()
    assert health["ok"] is True and MODEL_ALIAS in health["models"]
    await upstream.switch_model(MODEL_ALIAS)
    with pytest.raises(UpstreamError, match="no model"):
        await upstream.switch_model("gpt-99")


async def test_a_real_answer_streams_in_several_chunks(upstream: OpenAIUpstream) -> None:
    got = await timed(upstream.stream([Turn("user", "Name three colors.")], **NO_END))
    text = "".join(d for _, d in got)
    assert len(got) == 48, "one delta per token, up to max_tokens"
    assert text.strip() and all(len(d) < len(text) for _, d in got)
    assert got[-1][0] - got[0][0] > 0, "the deltas arrive over time, not at once"


async def test_llm_agent_streams_a_real_answer(upstream: OpenAIUpstream) -> None:
    agent = LLMAgent(upstream, system_prompt="You are a helpful assistant. Answer briefly.")
    assert (agent.name, agent.model, agent.context_tokens) == (MODEL_ALIAS, MODEL_ALIAS, 2048)
    request = ChatRequest(
        "c1", "assistant", "u1", "What is the capital of France?",
        [Turn("user", "What is the capital of France?")],
    )  # fmt: skip
    deltas = [d async for d in agent.stream(request)]
    assert len(deltas) > 3 and "".join(deltas).strip()


async def test_complete_returns_text_and_usage(upstream: OpenAIUpstream) -> None:
    done = await upstream.complete([Turn("user", "Say hello.")], max_tokens=16)
    assert done.text.strip() and done.model
    assert 0 < done.completion_tokens <= 16 and done.prompt_tokens > 0


async def test_cancel_mid_stream_stops_the_generation_promptly(
    upstream: OpenAIUpstream, llama: LlamaServer
) -> None:
    """The server generates one answer at a time (requests queue, none interrupts
    another): a request made right after a cancel is answered promptly only if the
    cancelled generation stopped, long before its 1,500 tokens."""
    arrivals: list[float] = []
    ten = asyncio.Event()

    async def consume() -> None:
        story = [Turn("user", "Write a very long story about a lighthouse keeper.")]
        async for _ in upstream.stream(story, max_tokens=1500, **NO_END):
            arrivals.append(time.monotonic())
            if len(arrivals) == 10:
                ten.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(ten.wait(), 30 * UNIT)
    rate = 9 / (arrivals[9] - arrivals[0])  # tokens per second of this machine
    left = (1500 - 10) / rate  # seconds the story would still take
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 0.1, "the cancel itself is immediate"
    done = await upstream.complete([Turn("user", "Say hi.")], max_tokens=4)
    took = time.monotonic() - cancelled_at
    assert done.text
    assert took < min(left / 3, 5 * UNIT), f"{took:.2f} s after the cancel ({left:.0f} s left)"
    assert "Disconnected from client" in llama.output(), "the server saw the client leave"


def test_missing_llm_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_support, "missing", lambda: "no model here")
    monkeypatch.delenv("AGENTCAST_REQUIRE_LLM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no model here"):
        llm_support.require_llm()
    monkeypatch.setenv("AGENTCAST_REQUIRE_LLM", "1")
    with pytest.raises(pytest.fail.Exception, match="AGENTCAST_REQUIRE_LLM=1 but no model here"):
        llm_support.require_llm()
    monkeypatch.setenv("AGENTCAST_TEST_GGUF", "/nonexistent/model.gguf")
    assert llm_support.model_path() is None, "a GGUF named by the environment must exist"
