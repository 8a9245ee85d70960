"""The chat view's queue position in a real browser (headless Chromium).

One ``agentcast serve`` whose chat agent is the fake OpenAI-compatible server
(:mod:`agentcast.testing.openai_server`) streaming slowly, with ``llm_concurrency`` 1:
user 1 (a Python WebSocket client) holds the upstream's only slot; user 2 (the page) sends
a message and sees "Waiting in queue · position 1"; when user 1's generation is stopped
the page switches to the streaming answer, which arrives whole.

Screenshots: ``tmp/artifacts/dashboard/chat-queued-*.png`` (see conftest).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from agentcast.testing.openai_server import FakeOpenAIServer, answer_for
from tests.conftest import UNIT
from tests.e2e.conftest import WAIT_MS, Server, shoot
from tests.integration.chat.support import chat_send, read_answer, read_until
from tests.integration.wsutil import send

TOKENS = 40
PACE = 10.0 / UNIT
"""Every answer takes about 4 s (longer on a slow machine): user 1's is stopped sooner,
the page's is watched to its end."""

QUEUED = '[data-testid="streaming"] [data-testid="queue-position"]'
BUBBLE = '[data-testid="streaming"] .bubble'
STREAMING_TEXT = """() => {
    const bubble = document.querySelector('[data-testid=streaming] .bubble');
    return !!bubble && !bubble.querySelector('[data-testid=queue-position]')
        && bubble.innerText.trim().split(/\\s+/).length >= 2;
}"""
"""The answer's words are on screen and the queue position is gone."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(tokens=TOKENS, tokens_per_second=PACE) as server:
        yield server


def is_chunk(frame: dict[str, Any]) -> bool:
    return frame["type"] == "chat:streaming" and not frame["data"]["done"]


async def test_a_queued_message_shows_its_position_then_streams(
    page: Any, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    question = "Why does my message wait?"
    async with Server(
        tmp_path,
        AGENTCAST_LLM_URL=fake.base_url,
        AGENTCAST_LLM_MODEL="fake",
        AGENTCAST_LLM_CONCURRENCY="1",
        AGENTCAST_LLM_READ_TIMEOUT="30",
    ) as server:
        await page.goto(f"{server.url}/#/chat")
        await page.fill('[data-testid="composer"]', question)
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as first:
            await chat_send(first, "Hold the only slot")
            await read_until(first, is_chunk, 5 * UNIT)  # user 1 is being answered
            await page.click('[data-testid="send"]')
            await page.wait_for_selector(
                f'[data-role="user"]:has-text("{question}")', timeout=WAIT_MS
            )
            queued = page.locator(QUEUED)
            await queued.wait_for(timeout=WAIT_MS)
            assert (await queued.inner_text()).strip() == "Waiting in queue · position 1"
            assert fake.active == 1 and len(fake.requests) == 1, "user 2 waits in the gateway"
            assert await page.locator('[data-testid="stop"]').count() == 1
            await shoot(page, "chat-queued", lambda: queued.wait_for(timeout=WAIT_MS))

            # user 1 stops (or, on a very slow machine, has ended): the page streams
            await send(first, {"type": "chat:cancel", "id": 9, "data": {}})
            frames = await read_answer(first, 5 * UNIT)  # the reply may come before or after
            ended = frames[-1]
            assert ended["data"]["status"] in ("cancelled", "complete"), json.dumps(ended)
            await page.wait_for_function(STREAMING_TEXT, timeout=WAIT_MS)
            streamed = (await page.inner_text(BUBBLE)).strip()
            assert "queue" not in streamed.lower()

        answer = page.locator('[data-role="assistant"][data-status="complete"]')
        await answer.wait_for(timeout=WAIT_MS)
        expected = "".join(answer_for(question, TOKENS))
        assert (await answer.inner_text()).strip() == expected
        assert expected.startswith(streamed)
        assert await page.locator('[data-testid="streaming"]').count() == 0
        assert await page.locator(QUEUED).count() == 0
        await shoot(page, "chat-queued-answered")
    assert fake.max_active == 1, "the limit held: user 2's request began after user 1's ended"
    asked = [r.messages[-1]["content"] for r in fake.requests]
    assert asked == ["Hold the only slot", question]
