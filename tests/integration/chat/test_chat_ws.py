"""Seed 001's chat flow on /ws over real sockets: stored messages, streamed answers,
history, cancel, the fair queue, two tabs, reconnect mid-answer, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from agentcast.chat.service import Chat
from agentcast.errors import AgentError
from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from agentcast.schemas import SCHEMAS
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.chat.support import (
    FailingAgent,
    GatedAgent,
    chat_send,
    read_answer,
    read_until,
)
from tests.integration.wsutil import recv, recv_until, send


class UserAuth:
    """Test authenticator: ``?user=NAME`` is the subject; no user is refused."""

    def authenticate(self, request: ConnectionRequest) -> Principal:
        user = request.query.get("user")
        if not user:
            raise AuthenticationError("no user")
        return Principal(subject=user)

    def can_subscribe(self, principal: Principal, topic: str) -> bool:
        return True

    def can_publish(self, principal: Principal, topic: str) -> bool:
        return True


@pytest.fixture
async def chat_server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    running, task = await start_server("native", offline_tokens_per_second=0)
    try:
        yield running
    finally:
        await stop_server(running, task)


@pytest.fixture
async def auth_server() -> AsyncIterator[RunningServer]:
    running, task = await start_server("native", offline_tokens_per_second=0)
    auth = UserAuth()
    running.gateway.authenticator = auth
    running.gateway.authorizer = auth
    try:
        yield running
    finally:
        await stop_server(running, task)


def streamed(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["chunk"] for f in frames if f["type"] == "chat:streaming")


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_seed001_flow_in_order_and_history(transport: str) -> None:
    running, task = await start_server(transport, offline_tokens_per_second=0)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "What does agentcast do?", id="s1")
            frames = await read_answer(ws)
            accepted = [f for f in frames if f["type"] == "chat:accepted"]
            assert len(accepted) == 1 and accepted[0]["id"] == "s1"
            assert accepted[0]["data"]["message_id"] == frames[0]["data"]["id"]
            SCHEMAS["data.chat.accepted"].validate(json.dumps(accepted[0]["data"]))
            frames = [f for f in frames if f["type"] != "chat:accepted"]
            kinds = [f["type"] for f in frames]
            assert kinds[0] == "chat:message" and frames[0]["data"]["role"] == "user"
            assert frames[0]["data"]["content"] == "What does agentcast do?"
            chunks = [f for f in frames if f["type"] == "chat:streaming"]
            assert len(chunks) > 3, "the answer streams in several chunks"
            assert all(not c["data"]["done"] for c in chunks[:-1])
            assert chunks[-1]["data"] == {**chunks[-1]["data"], "chunk": "", "done": True}
            assert chunks[-1]["data"]["status"] == "complete"
            answer = frames[-1]["data"]
            assert answer["role"] == "assistant" and answer["status"] == "complete"
            assert (
                answer["content"] == streamed(frames)
                and answer["reply_to"] == frames[0]["data"]["id"]
            )
            seqs = [f["seq"] for f in frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one topic, no gap"
            for f in frames:  # every frame matches its documented schema
                SCHEMAS["server.event"].validate(json.dumps(f))
                SCHEMAS[f"data.chat.{f['type'].split(':')[1]}"].validate(json.dumps(f["data"]))
            cid = answer["conversation_id"]
            assert all(f["topic"] == f"chat:{cid}" for f in frames)

            await send(ws, {"type": "chat:history", "id": "h", "data": {"conversationId": cid}})
            history = await recv_until(ws, "chat:history")
            assert history["id"] == "h"
            assert [m["role"] for m in history["data"]["messages"]] == ["user", "assistant"]
            assert history["data"]["messages"][1]["content"] == answer["content"]
            assert history["data"]["has_more"] is False
            SCHEMAS["data.chat.history"].validate(json.dumps(history["data"]))
    finally:
        await stop_server(running, task)


async def test_follow_up_keeps_context_and_different_questions_differ(
    chat_server: RunningServer,
) -> None:
    agent = GatedAgent(before=1, after=0)
    agent.gate.set()
    chat_server.gateway.feature(Chat).register_agent("ctx", agent)
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "first question", agent="ctx")
        first = await read_answer(ws)
        cid = first[-1]["data"]["conversation_id"]
        await chat_send(ws, "second question", conversation_id=cid)
        await read_answer(ws)
    prompt = agent.calls[1].messages
    assert [(t.role, t.content) for t in prompt] == [
        ("user", "first question"),
        ("assistant", "a0 "),
        ("user", "second question"),
    ]
    # the offline default agent: deterministic, and different questions get different answers
    async with websockets.connect(chat_server.ws_url) as ws:
        answers = []
        for question in ("How do I resume a stream?", "How do I resume a stream?", "Why SQLite?"):
            await chat_send(ws, question)
            answers.append((await read_answer(ws))[-1]["data"]["content"])
    assert answers[0] == answers[1] and answers[0] != answers[2]


async def test_history_pages_back(chat_server: RunningServer) -> None:
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "q0")
        cid = (await read_answer(ws))[-1]["data"]["conversation_id"]
        for i in range(1, 7):
            await chat_send(ws, f"q{i}", conversation_id=cid)
            await read_answer(ws)
        await send(ws, {"type": "chat:history", "data": {}})  # default: latest conversation, 10
        page = (await recv_until(ws, "chat:history"))["data"]
        assert page["conversation_id"] == cid and len(page["messages"]) == 10
        assert page["has_more"] is True and page["messages"][-1]["role"] == "assistant"
        seen = page["messages"]
        while page["has_more"]:
            await send(
                ws,
                {
                    "type": "chat:history",
                    "data": {"conversation_id": cid, "before": page["before"], "limit": 3},
                },
            )
            page = (await recv_until(ws, "chat:history"))["data"]
            seen = page["messages"] + seen
        assert [m["content"] for m in seen if m["role"] == "user"] == [f"q{i}" for i in range(7)]
        ids = [m["id"] for m in seen]
        assert ids == sorted(set(ids)) and len(ids) == 14


async def test_cancel_mid_stream_stores_partial(chat_server: RunningServer) -> None:
    agent = GatedAgent(before=2, after=5)
    chat_server.gateway.feature(Chat).register_agent("gated", agent)
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "long answer please", agent="gated")
        await read_until(ws, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await send(ws, {"type": "chat:cancel", "id": "c"})
        frames = await read_answer(ws)
        elapsed = loop.time() - t0
        assert agent.closed_early.is_set(), "the agent's stream was closed"
        done = next(f for f in frames if f["type"] == "chat:streaming" and f["data"]["done"])
        assert done["data"]["status"] == "cancelled"
        answer = frames[-1]["data"]
        assert answer["status"] == "cancelled" and answer["content"] == "a0 a1 "
        reply = next(f for f in frames if f["type"] == "chat:cancelled")
        assert reply["id"] == "c" and reply["data"]["cancelled"] is True
        assert (
            elapsed < 0.1 * UNIT * 5
        )  # generous bound on a loaded machine; upstream test is strict
        # nothing to cancel any more
        await send(ws, {"type": "chat:cancel", "id": "c2"})
        again = await recv_until(ws, "chat:cancelled")
        assert again["data"]["cancelled"] is False


async def test_cancel_while_queued_never_reaches_the_agent(chat_server: RunningServer) -> None:
    agent = GatedAgent(before=1, after=1, concurrency=1)
    chat_server.gateway.feature(Chat).register_agent("busy", agent)
    async with (
        websockets.connect(chat_server.ws_url) as a,
        websockets.connect(chat_server.ws_url) as b,
    ):
        await chat_send(a, "occupy the slot", agent="busy")
        await read_until(a, lambda f: f["type"] == "chat:streaming")
        await chat_send(b, "wait in line", agent="busy")
        queued = await recv_until(b, "chat:queued")
        assert queued["data"]["position"] == 1
        await send(b, {"type": "chat:cancel"})
        frames = await read_answer(b)
        assert frames[-1]["data"]["status"] == "cancelled" and frames[-1]["data"]["content"] == ""
        assert len(agent.calls) == 1, "the queued request never reached the agent"
        agent.gate.set()
        assert (await read_answer(a))[-1]["data"]["status"] == "complete"


async def test_queue_is_fair_between_users(auth_server: RunningServer) -> None:
    agent = GatedAgent(before=0, after=1, concurrency=1)
    auth_server.gateway.feature(Chat).register_agent("llm", agent)
    base = auth_server.ws_url
    async with (
        websockets.connect(base + "?user=alice") as alice,
        websockets.connect(base + "?user=bob") as bob,
    ):
        for i in range(4):  # alice: four conversations at once
            await chat_send(alice, f"alice {i}", agent="llm")
            await recv_until(alice, "chat:message")
        await agent.wait_calls(1)
        await chat_send(bob, "bob 0", agent="llm")
        queued = await recv_until(bob, "chat:queued")
        # waiting: alice 1, alice 2, alice 3; bob's one request goes after alice's next,
        # not after all of them
        assert queued["data"]["position"] == 2
        agent.gate.set()
        await agent.wait_calls(5)
        order = [c.message for c in agent.calls]
        assert order == ["alice 0", "alice 1", "bob 0", "alice 2", "alice 3"]
        # bob saw his position move up as requests ahead of him were served
        moved = await read_until(bob, lambda f: f["type"] == "chat:streaming")
        assert [f["data"]["position"] for f in moved if f["type"] == "chat:queued"] == [1]


async def test_two_tabs_see_the_same_answer(auth_server: RunningServer) -> None:
    agent = GatedAgent(before=2, after=2)
    auth_server.gateway.feature(Chat).register_agent("gated", agent)
    url = auth_server.ws_url + "?user=carol"
    async with websockets.connect(url) as tab1, websockets.connect(url) as tab2:
        await chat_send(tab1, "hello from tab 1", agent="gated")
        first = await recv_until(tab1, "chat:message")
        cid = first["data"]["conversation_id"]
        await send(tab2, {"type": "subscribe", "topic": f"chat:{cid}", "since": 0})
        await recv_until(tab2, "subscribed")
        agent.gate.set()
        one = await read_answer(tab1)
        two = await read_answer(tab2)
        assert streamed(one) == streamed(two) == "a0 a1 b0 b1 "
        assert one[-1]["seq"] == two[-1]["seq"]
    # another user can neither watch nor write to it
    async with websockets.connect(auth_server.ws_url + "?user=mallory") as other:
        await send(other, {"type": "subscribe", "topic": f"chat:{cid}", "id": 1})
        err = await recv_until(other, "error")
        assert err["data"]["code"] == "forbidden"
        await chat_send(other, "hi", conversation_id=cid, id=2)
        err = await recv_until(other, "error")
        assert err["data"]["code"] == "not_found" and err["id"] == 2


async def test_reconnect_mid_answer_resumes_without_gap_or_repeat(
    chat_server: RunningServer,
) -> None:
    agent = GatedAgent(before=3, after=4)
    chat_server.gateway.feature(Chat).register_agent("gated", agent)
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "stream to me", agent="gated")
        seen = await read_until(
            ws, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 1
        )
    cid = seen[0]["data"]["conversation_id"]
    last = seen[-1]["seq"]
    agent.gate.set()  # the answer goes on while nobody listens
    async with websockets.connect(chat_server.ws_url) as ws:
        await send(ws, {"type": "subscribe", "topic": f"chat:{cid}", "since": last})
        sub = await recv_until(ws, "subscribed")
        assert sub["data"]["recovered"] is True
        rest = await read_answer(ws)
    seqs = [f["seq"] for f in seen + rest]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert streamed(seen) + streamed(rest) == "a0 a1 a2 b0 b1 b2 b3 "
    assert rest[-1]["data"]["content"] == "a0 a1 a2 b0 b1 b2 b3 "


async def test_socket_drop_mid_answer_still_stores_it(chat_server: RunningServer) -> None:
    agent = GatedAgent(before=1, after=2)
    chat_server.gateway.feature(Chat).register_agent("gated", agent)
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "keep going without me", agent="gated")
        first = await recv_until(ws, "chat:message")
        await recv_until(ws, "chat:streaming")
    cid = first["data"]["conversation_id"]
    agent.gate.set()
    gen = chat_server.gateway.feature(Chat).generations.get(cid)
    if gen is not None:
        await asyncio.wait_for(asyncio.shield(gen.done), 5 * UNIT)  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=chat_server.url) as http:
        body = (await http.get(f"/api/conversations/{cid}/messages")).json()
    assert [(m["role"], m["status"]) for m in body["messages"]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert body["messages"][1]["content"] == "a0 b0 b1 "


async def test_agent_errors_are_reported_and_stored(chat_server: RunningServer) -> None:
    chat = chat_server.gateway.feature(Chat)
    chat.register_agent("clean", FailingAgent(AgentError("the knowledge base is offline")))
    chat.register_agent("buggy", FailingAgent(ZeroDivisionError("division by zero")))
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "question", agent="clean", id="q1")
        frames = await read_answer(ws)
        err = await recv_until(ws, "error")
        assert err["id"] == "q1" and err["data"]["code"] == "agent_error"
        assert err["data"]["message"] == "the knowledge base is offline"
        answer = frames[-1]["data"]
        assert answer["status"] == "error" and answer["content"] == "partial "
        assert answer["error"] == "the knowledge base is offline"
        await chat_send(ws, "question", agent="buggy", id="q2")
        frames = await read_answer(ws)
        err = await recv_until(ws, "error")
        assert (
            err["data"]["code"] == "agent_error" and "ZeroDivisionError" in err["data"]["message"]
        )
        # the server and the connection are fine
        await chat_send(ws, "still there?")
        assert (await read_answer(ws))[-1]["data"]["status"] == "complete"


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"message": ""}, "invalid_field", "data"),
        ({"message": "   "}, "invalid_field", "data.message"),
        ({}, "invalid_field", "data"),
        ({"message": 42}, "invalid_field", "data"),
        ({"message": "x", "conversation_id": "nope"}, "not_found", "data.conversation_id"),
        ({"message": "x", "conversation_id": "bad id!"}, "invalid_field", "data"),
        ({"message": "x", "surprise": 1}, "invalid_field", "data"),
        ({"message": "x" * 40_000}, "payload_too_large", "data.message"),
    ],
)
async def test_bad_chat_send_gets_a_clear_error(
    chat_server: RunningServer, data: dict[str, Any], code: str, field: str
) -> None:
    chat_server.gateway.settings.max_message_bytes = 128 * 1024
    async with websockets.connect(chat_server.ws_url, max_size=None) as ws:
        await send(ws, {"type": "chat:send", "id": 7, "data": data})
        err = await recv(ws)
        assert err["type"] == "error" and err["id"] == 7
        assert err["data"]["code"] == code and err["data"].get("field") == field
        await chat_send(ws, "after the error")
        assert (await read_answer(ws))[-1]["data"]["status"] == "complete"


async def test_conflict_while_answering_and_chat_topics_are_server_owned(
    chat_server: RunningServer,
) -> None:
    agent = GatedAgent(before=1, after=1)
    chat_server.gateway.feature(Chat).register_agent("gated", agent)
    async with websockets.connect(chat_server.ws_url) as ws:
        await chat_send(ws, "first", agent="gated")
        cid = (await recv_until(ws, "chat:message"))["data"]["conversation_id"]
        await chat_send(ws, "second", conversation_id=cid, id="x")
        err = await recv_until(ws, "error")
        assert err["id"] == "x" and err["data"]["code"] == "conflict"
        await send(
            ws,
            {
                "type": "publish",
                "topic": f"chat:{cid}",
                "event": "chat:message",
                "data": {},
                "id": "p",
            },
        )
        err = await recv_until(ws, "error")
        assert err["id"] == "p" and err["data"]["code"] == "forbidden"
        agent.gate.set()
        frames = await read_answer(ws)
        assert frames[-1]["data"]["status"] == "complete"
    async with httpx.AsyncClient(base_url=chat_server.url) as http:
        r = await http.post(f"/api/topics/chat:{cid}/events", json={"type": "x", "data": {}})
        assert r.status_code == 403


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    running, task = await start_server("native", store_url=url, offline_tokens_per_second=0)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "remember me")
            answer = (await read_answer(ws))[-1]["data"]
    finally:
        await stop_server(running, task)
    running, task = await start_server("native", store_url=url, offline_tokens_per_second=0)
    try:
        async with websockets.connect(running.ws_url) as ws:
            cid = answer["conversation_id"]
            await send(ws, {"type": "chat:history", "data": {"conversation_id": cid}})
            history = (await recv_until(ws, "chat:history"))["data"]["messages"]
            assert [m["content"] for m in history] == ["remember me", answer["content"]]
            await chat_send(ws, "and now?", conversation_id=cid)
            frames = await read_answer(ws)
            assert frames[-1]["data"]["id"] > answer["id"]
    finally:
        await stop_server(running, task)


async def test_context_window_keeps_recent_messages_and_cuts_long_input() -> None:
    running, task = await start_server("native", chat_context_tokens=120)
    try:
        agent = GatedAgent(before=1, after=0)
        agent.gate.set()
        running.gateway.feature(Chat).register_agent("small", agent)
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "message number zero " * 5, agent="small")
            cid = (await read_answer(ws))[-1]["data"]["conversation_id"]
            for i in range(1, 6):
                await chat_send(ws, f"message number {i} " * 5, conversation_id=cid)
                await read_answer(ws)
            prompt = agent.calls[-1].messages
            assert prompt[-1].content == "message number 5 " * 5
            kept_users = [t.content for t in prompt if t.role == "user"]
            assert 1 < len(kept_users) < 6, "older turns were dropped, recent ones kept"
            assert kept_users == [f"message number {i} " * 5 for i in range(6 - len(kept_users), 6)]
            await chat_send(ws, "x " * 2000, conversation_id=cid)
            await read_answer(ws)
        last = agent.calls[-1]
        assert "truncated by agentcast" in last.messages[-1].content
        assert len(last.messages[-1].content) < 1000 and last.context["truncated"] is True
        assert last.message == "x " * 2000, "the stored message is whole"
    finally:
        await stop_server(running, task)
