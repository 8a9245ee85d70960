"""The fair LLM queue across two ``agentcast serve`` processes on one real Redis, in front
of the fake OpenAI-compatible server (:mod:`agentcast.testing.openai_server`) as a slow
upstream with ``llm_concurrency`` 1: a client on node B waits behind a generation on
node A, sees its position (and its update when the queue moves), and starts when A's
generation ends; a client that cancels while queued never reaches the upstream.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio
import websockets

from agentcast.testing.openai_server import FakeOpenAIServer
from tests.conftest import UNIT
from tests.integration.chat.support import chat_send, read_answer, read_until
from tests.integration.test_scale_out import Nodes, broker_url, ws_url
from tests.integration.wsutil import recv_until, send

__all__ = ["broker_url"]  # the fixture, re-used

TOKENS, PACE = 10, 10.0
"""Each answer takes about one second: long enough to queue behind it."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tokens=TOKENS, tokens_per_second=PACE) as server:
        yield server


@pytest.fixture
async def pair(broker_url: str, fake: FakeOpenAIServer) -> AsyncIterator[Nodes]:
    """Nodes A and B on one Redis, one upstream that serves one generation at a time."""
    fake.reset()
    nodes = Nodes(broker_url)
    env = {
        "AGENTCAST_LLM_URL": fake.base_url,
        "AGENTCAST_LLM_MODEL": "fake",
        "AGENTCAST_LLM_CONCURRENCY": "1",
        "AGENTCAST_LLM_READ_TIMEOUT": "30",
        "AGENTCAST_NODE_HEARTBEAT": "0.2",
        "AGENTCAST_NODE_TTL": "1.0",
    }
    try:
        await nodes.start(env=env)
        await nodes.start(env=env)
        yield nodes
    finally:
        await asyncio.to_thread(nodes.close)


async def queue_turns(broker_url: str) -> list[str]:
    """The users waiting in the (one) upstream queue, in serving order, read from Redis."""
    url, _, query = broker_url.partition("?")
    prefix = query.removeprefix("prefix=")
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match="{" + prefix + "}:queue:*:turns")]
        assert len(keys) == 1, keys
        return [t.decode() for t in await client.lrange(keys[0], 0, -1)]
    finally:
        await client.aclose()


def is_chunk(frame: dict[str, Any]) -> bool:
    return frame["type"] == "chat:streaming" and not frame["data"]["done"]


def queued_at(position: int) -> Any:
    return lambda f: f["type"] == "chat:queued" and f["data"]["position"] == position


async def test_a_client_on_node_b_waits_behind_node_a_and_starts_when_it_ends(
    pair: Nodes, fake: FakeOpenAIServer
) -> None:
    a, b = pair.procs
    async with (
        websockets.connect(ws_url(a)) as first,
        websockets.connect(ws_url(b)) as second,
        websockets.connect(ws_url(a)) as third,
    ):
        await chat_send(first, "Generated on node A")
        await read_until(first, is_chunk)  # A holds the upstream's one slot
        await chat_send(second, "Queued on node B")
        waiting = await read_until(second, queued_at(1))
        assert not any(is_chunk(f) for f in waiting)
        await chat_send(third, "Queued on node A behind B")
        await read_until(third, queued_at(2))  # the cluster's queue, not node A's own
        assert fake.active == 1
        # two anonymous users (each node numbers its own): told apart by their node
        turns = await queue_turns(pair.broker_url)
        assert len(turns) == 2 and len(set(turns)) == 2 and all("@" in t for t in turns)
        answer = await read_answer(first, 10 * UNIT)
        ended = time.monotonic()
        assert answer[-1]["data"]["status"] == "complete"
        # B starts when A's generation ends; the request behind it moves up to 1
        started = await read_until(second, is_chunk, 10 * UNIT)
        assert not any(f["type"] == "chat:queued" for f in started)
        handoff = time.monotonic() - ended
        await read_until(third, queued_at(1), 10 * UNIT)
        assert (await read_answer(second, 10 * UNIT))[-1]["data"]["status"] == "complete"
        assert (await read_answer(third, 10 * UNIT))[-1]["data"]["status"] == "complete"
    assert fake.max_active == 1, "the limit held across both nodes"
    asked = [r.messages[-1]["content"] for r in fake.requests]
    assert asked == ["Generated on node A", "Queued on node B", "Queued on node A behind B"]
    assert handoff < 2 * UNIT


async def test_a_client_that_cancels_while_queued_never_reaches_the_upstream(
    pair: Nodes, fake: FakeOpenAIServer
) -> None:
    a, b = pair.procs
    async with (
        websockets.connect(ws_url(a)) as first,
        websockets.connect(ws_url(b)) as leaving,
        websockets.connect(ws_url(a)) as behind,
    ):
        await chat_send(first, "Generated on node A")
        await read_until(first, is_chunk)
        await chat_send(leaving, "Cancelled while queued on B")
        await read_until(leaving, queued_at(1))
        await chat_send(behind, "Queued on A behind the one that leaves")
        await read_until(behind, queued_at(2))
        await send(leaving, {"type": "chat:cancel", "id": 9, "data": {}})
        reply = await recv_until(leaving, "chat:cancelled", 5 * UNIT)
        assert reply["data"]["cancelled"] is True
        frames = await read_answer(leaving, 5 * UNIT)
        assert frames[-1]["data"]["status"] == "cancelled"
        await read_until(behind, queued_at(1), 5 * UNIT)  # it left the cluster's queue at once
        await read_answer(first, 10 * UNIT)
        assert (await read_answer(behind, 10 * UNIT))[-1]["data"]["status"] == "complete"
    asked = [r.messages[-1]["content"] for r in fake.requests]
    assert asked == ["Generated on node A", "Queued on A behind the one that leaves"]
    assert fake.max_active == 1


async def test_a_slot_held_by_a_killed_node_is_freed_after_its_ttl(
    pair: Nodes, fake: FakeOpenAIServer
) -> None:
    a, b = pair.procs
    async with websockets.connect(ws_url(a)) as first, websockets.connect(ws_url(b)) as second:
        await chat_send(first, "Generated on node A, which dies")
        await read_until(first, is_chunk)
        await chat_send(second, "Queued on node B")
        await read_until(second, queued_at(1))
        a.stop(signal.SIGKILL)  # gives nothing back: its slot expires with its heartbeat
        killed = time.monotonic()
        await read_until(second, is_chunk, 10 * UNIT)
        waited = time.monotonic() - killed
        assert (await read_answer(second, 10 * UNIT))[-1]["data"]["status"] == "complete"
    # node_ttl is 1 s: freed after it (not at once), well before a generation's end
    assert 0.3 <= waited <= 1.0 + 0.25 + 2 * UNIT, waited
