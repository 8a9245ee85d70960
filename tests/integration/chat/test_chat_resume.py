"""Conversations resume from the store: past the broker's history, across a restart, and
up to the retention bound (then ``recovered: false`` and a snapshot).

Real servers on loopback with a real SQLite store; a server "restart" here is a second
server on the same database (the SIGTERM restart of a server process is in
``test_chat_restart.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from agentcast.brokers.base import DURABLE_EPOCH
from agentcast.chat.service import Chat
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.chat.support import GatedAgent, chat_send, read_answer, read_until
from tests.integration.wsutil import recv, recv_until, send


@pytest.fixture
async def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chat.db'}"


async def serve(store_url: str, **settings: Any) -> tuple[RunningServer, Any]:
    return await start_server(
        "native", store_url=store_url, offline_tokens_per_second=0, **settings
    )


@pytest.fixture
async def server(store_url: str) -> AsyncIterator[RunningServer]:
    # the broker keeps 5 events per topic: older ones come from the store
    running, task = await serve(store_url, history_max_events=5)
    try:
        yield running
    finally:
        await stop_server(running, task)


def events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "seq" in f and f["type"] != "snapshot"]


async def resume(
    ws: Any, topic: str, since: int | None, epoch: str | None = DURABLE_EPOCH
) -> dict[str, Any]:
    cmd: dict[str, Any] = {"type": "subscribe", "topic": topic, "id": "r", "since": since}
    if epoch is not None:
        cmd["epoch"] = epoch
    await send(ws, cmd)
    return await recv_until(ws, "subscribed")


async def test_resume_past_the_broker_history_comes_from_the_store(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await chat_send(ws, "Tell me a long story about the batch jobs, please.", id=1)
        frames = await read_answer(ws)
    sent = events(frames)
    topic = sent[0]["topic"]
    assert [f["seq"] for f in sent] == list(range(1, len(sent) + 1))
    assert len(sent) > 10  # more than the broker keeps
    page = await server.gateway.broker.history(topic, 0)
    assert page.first_seq > 3 and page.epoch == DURABLE_EPOCH
    async with websockets.connect(server.ws_url) as ws:
        reply = await resume(ws, topic, 2)
        assert reply["data"]["recovered"] is True
        assert reply["data"]["seq"] == len(sent)
        again = [await recv(ws) for _ in range(len(sent) - 2)]
    assert again == sent[2:]  # every seq after 2, in order, the same frames


async def test_a_restart_continues_numbering_and_resumes_from_the_store(store_url: str) -> None:
    first, task = await serve(store_url)
    try:
        async with websockets.connect(first.ws_url) as ws:
            await chat_send(ws, "What failed tonight?", id=1)
            sent = events(await read_answer(ws))
    finally:
        await stop_server(first, task)
    topic, last = sent[0]["topic"], sent[-1]["seq"]
    second, task = await serve(store_url)
    try:
        async with websockets.connect(second.ws_url) as ws:
            reply = await resume(ws, topic, 3)
            assert (reply["data"]["recovered"], reply["data"]["seq"]) == (True, last)
            assert reply["data"]["epoch"] == DURABLE_EPOCH
            assert [await recv(ws) for _ in range(last - 3)] == sent[3:]
            # the conversation goes on where its numbering left off
            cid = sent[0]["data"]["conversation_id"]
            await chat_send(ws, "And yesterday?", conversation_id=cid, id=2)
            more = events(await read_answer(ws))
        assert [f["seq"] for f in more] == list(range(last + 1, last + 1 + len(more)))
    finally:
        await stop_server(second, task)


async def test_resuming_past_the_retention_gets_recovered_false_and_a_snapshot(
    store_url: str,
) -> None:
    first, task = await serve(store_url, chat_events_max_age=60)
    try:
        async with websockets.connect(first.ws_url) as ws:
            await chat_send(ws, "What failed tonight?", id=1)
            sent = events(await read_answer(ws))
        chat = first.gateway.feature(Chat)
        assert chat.recorder is not None
        await chat.recorder.flush()
        assert await chat.prune(time.time()) == 0  # younger than the retention
        pruned = await chat.prune(time.time() + 61)  # an hour later, as it were
        assert pruned == len(sent) - 1  # all but the last event: it keeps the numbering
    finally:
        await stop_server(first, task)
    topic, last = sent[0]["topic"], sent[-1]["seq"]
    answer = sent[-1]["data"]
    second, task = await serve(store_url)
    try:
        async with websockets.connect(second.ws_url) as ws:
            reply = await resume(ws, topic, 2)
            assert reply["data"]["recovered"] is False
            snapshot = await recv(ws)
            assert (snapshot["type"], snapshot["topic"], snapshot["seq"]) == (
                "snapshot",
                topic,
                last,
            )
            state = snapshot["data"]
            assert [m["role"] for m in state["messages"]] == ["user", "assistant"]
            assert state["messages"][-1] == answer
            assert state["streaming"] is None and state["generating"] is False
            # resuming from the last event, which is kept, is still complete
            await send(ws, {"type": "unsubscribe", "topic": topic, "id": "u"})
            await recv_until(ws, "unsubscribed")
            reply = await resume(ws, topic, last - 1)
            assert reply["data"]["recovered"] is True
            assert await recv(ws) == sent[-1]
    finally:
        await stop_server(second, task)


async def test_a_late_joiner_gets_the_answer_so_far_then_the_rest(server: RunningServer) -> None:
    agent = GatedAgent(before=3, after=2)
    server.gateway.feature(Chat).register_agent("gated", agent)
    async with websockets.connect(server.ws_url) as ws:
        await chat_send(ws, "Hello?", agent="gated", id=1)
        frames = await read_until(
            ws, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 2
        )
        topic = events(frames)[0]["topic"]
        async with websockets.connect(server.ws_url) as tab:
            reply = await resume(tab, topic, None, epoch=None)
            assert reply["data"]["recovered"] is True
            snapshot = await recv(tab)
            assert snapshot["type"] == "snapshot" and snapshot["seq"] == reply["data"]["seq"]
            streaming = snapshot["data"]["streaming"]
            assert (streaming["index"], streaming["text"]) == (3, "a0 a1 a2 ")
            assert snapshot["data"]["generating"] is True
            assert [m["role"] for m in snapshot["data"]["messages"]] == ["user"]
            agent.gate.set()
            rest = events(await read_answer(tab))
        assert rest[0]["seq"] == snapshot["seq"] + 1
        assert [f["data"].get("chunk") for f in rest[:2]] == ["b0 ", "b1 "]
        assert rest[-1]["data"]["content"] == "a0 a1 a2 b0 b1 "
        mine = events(frames + await read_answer(ws))
    assert mine[-len(rest) :] == rest  # the sender saw the same events, without a snapshot
    assert all(f["type"] != "snapshot" for f in frames)


async def test_deleting_a_conversation_deletes_its_events(server: RunningServer) -> None:
    import httpx

    async with websockets.connect(server.ws_url) as ws:
        await chat_send(ws, "What failed tonight?", id=1)
        sent = events(await read_answer(ws))
    cid, topic = sent[0]["data"]["conversation_id"], sent[0]["topic"]
    store = server.gateway.feature(Chat).events_store
    assert store is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=UNIT) as http:
        assert (await http.delete(f"/api/conversations/{cid}")).status_code == 204
    assert await store.events(topic, 0) == []
