"""End to end against a real LLM: llama-cpp-python's OpenAI-compatible server running
SmolLM2-135M-Instruct (see ``tests/llm_support.py``; CI requires it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import websockets

from agentcast.chat.llm import OpenAIUpstream, UpstreamConfig
from agentcast.chat.text import Turn
from tests.conftest import UNIT, start_server, stop_server
from tests.integration.chat.support import chat_send, read_answer, read_until
from tests.integration.chat.test_chat_ws import streamed
from tests.integration.wsutil import send
from tests.llm_support import MODEL_ALIAS, start_llama_server


@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    yield from start_llama_server()


async def test_real_model_streams_through_the_upstream(llama: str) -> None:
    async with OpenAIUpstream(UpstreamConfig(llama, MODEL_ALIAS, max_tokens=48)) as up:
        assert MODEL_ALIAS in await up.list_models()
        deltas = [d async for d in up.stream([Turn("user", "Name three colors.")])]
        assert len(deltas) > 3 and "".join(deltas).strip()
        done = await up.complete([Turn("user", "Say hello.")])
        assert done.text.strip() and done.completion_tokens > 0


async def test_real_answer_streams_is_stored_and_can_be_cancelled(llama: str) -> None:
    running, task = await start_server(
        "native", llm_url=llama, llm_model=MODEL_ALIAS, llm_read_timeout=30.0
    )
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "What is the capital of France? Answer in one sentence.")
            frames = await read_answer(ws, timeout=60 * UNIT)
            chunks = [f for f in frames if f["type"] == "chat:streaming" and not f["data"]["done"]]
            answer = frames[-1]["data"]
            assert len(chunks) > 3, "a real answer streams in several chunks"
            assert answer["status"] == "complete" and answer["content"] == streamed(frames)
            assert answer["content"].strip() and answer["model"] == MODEL_ALIAS
            cid = answer["conversation_id"]
            await send(ws, {"type": "chat:history", "data": {"conversation_id": cid}})
            stored = await read_until(ws, lambda f: f["type"] == "chat:history")
            assert stored[-1]["data"]["messages"][-1]["content"] == answer["content"]

            await chat_send(
                ws, "Write a very long story about a lighthouse keeper.", conversation_id=cid
            )
            started = await read_until(
                ws,
                lambda f: f["type"] == "chat:streaming" and f["data"]["index"] >= 2,
                timeout=60 * UNIT,
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await send(ws, {"type": "chat:cancel"})
            rest = await read_answer(ws, timeout=10 * UNIT)
            assert loop.time() - t0 < 2 * UNIT
            cancelled = rest[-1]["data"]
            assert cancelled["status"] == "cancelled"
            assert cancelled["content"] == streamed(started + rest) and cancelled["content"]
    finally:
        await stop_server(running, task)
