"""Seed 003's endpoint as its test script uses it, and the chat HTTP API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from agentcast.chat.service import Chat
from agentcast.errors import AgentError
from agentcast.schemas import SCHEMAS
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.chat.support import FailingAgent, chat_send, read_answer
from tests.integration.chat.test_chat_ws import UserAuth
from tests.integration.wsutil import recv_until, send


@pytest.fixture(params=["native", "asgi"])
async def srv(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    running, task = await start_server(request.param, offline_tokens_per_second=0)
    try:
        yield running
    finally:
        await stop_server(running, task)


async def test_seed003_script_passes_as_written(srv: RunningServer) -> None:
    # seed 003's test script, host and port changed; every recv is exactly one answer
    ws = await asyncio.wait_for(
        websockets.connect(f"ws://localhost:{srv.port}/api/v1/ws/tws-general"), timeout=10.0
    )
    welcome = json.loads(await asyncio.wait_for(ws.recv(), timeout=10.0))
    assert welcome["type"] == "welcome" and welcome["agent_id"] == "tws-general"
    answers = []
    for question in (
        "qual job esta em abend?",
        "quais são as workstations disponíveis?",
        "obrigado pela ajuda",
    ):
        await ws.send(question)
        answers.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=10.0)))
    await ws.close()
    assert all(a["type"] == "message" and a["sender"] == "agent" for a in answers)
    for frame in (welcome, *answers):
        SCHEMAS["seed003.agent-frame"].validate(json.dumps(frame))
    assert "ABEND" in answers[0]["message"]
    assert "TWS_AGENT2" in answers[1]["message"] and "1 earlier" in answers[1]["message"]
    assert "2 earlier" in answers[2]["message"], "the conversation keeps its context"
    # and the conversation is stored
    async with httpx.AsyncClient(base_url=srv.url) as http:
        cid = welcome["conversation_id"]
        body = (await http.get(f"/api/conversations/{cid}/messages")).json()
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == [
        "qual job esta em abend?",
        "quais são as workstations disponíveis?",
        "obrigado pela ajuda",
    ]


async def test_seed003_errors_json_and_binary(srv: RunningServer) -> None:
    srv.gateway.feature(Chat).register_agent("broken", FailingAgent(AgentError("backend is down")))
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/api/v1/ws/broken") as ws:
        await ws.recv()
        await ws.send("anything")
        error = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert error == {"type": "error", "sender": "agent", "message": "backend is down"}
        await ws.send(b"\x00\x01")
        error = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert error["type"] == "error" and "text" in error["message"]
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/api/v1/ws/helper") as ws:
        welcome = json.loads(await ws.recv())
        await ws.send(json.dumps({"message": "status please"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert answer["type"] == "message" and "TWS_MASTER" in answer["message"]
        await ws.send("   ")
        error = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert error["type"] == "error" and "empty" in error["message"]
    # continue the stored conversation on a new socket
    cid = welcome["conversation_id"]
    url = f"ws://127.0.0.1:{srv.port}/api/v1/ws/helper?conversation_id={cid}"
    async with websockets.connect(url) as ws:
        again = json.loads(await ws.recv())
        assert again["conversation_id"] == cid
        await ws.send("and the status now?")
        answer = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert "1 earlier" in answer["message"]
    async with websockets.connect(
        f"ws://127.0.0.1:{srv.port}/api/v1/ws/helper?conversation_id=nope"
    ) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and "nope" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), UNIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_seed003_idle_session_closes_with_reason(transport: str) -> None:
    running, task = await start_server(
        transport, offline_tokens_per_second=0, chat_idle_timeout=0.3
    )
    try:
        async with websockets.connect(f"ws://127.0.0.1:{running.port}/api/v1/ws/a") as ws:
            await ws.recv()
            await ws.send("hello")
            await asyncio.wait_for(ws.recv(), UNIT)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4000 and "idle timeout" in closed.value.rcvd.reason
    finally:
        await stop_server(running, task)


async def test_http_conversations_api(srv: RunningServer) -> None:
    async with websockets.connect(srv.ws_url) as ws:
        await chat_send(ws, "first conversation", title="Mine")
        first = (await read_answer(ws))[-1]["data"]
        await chat_send(ws, "second conversation")
        second = (await read_answer(ws))[-1]["data"]
    async with httpx.AsyncClient(base_url=srv.url) as http:
        page = (await http.get("/api/conversations")).json()
        assert page["total"] == 2
        assert [c["id"] for c in page["conversations"]] == [
            second["conversation_id"],
            first["conversation_id"],
        ]
        cid = first["conversation_id"]
        got = (await http.get(f"/api/conversations/{cid}")).json()
        assert got["title"] == "Mine" and got["message_count"] == 2 and got["generating"] is False
        renamed = await http.patch(f"/api/conversations/{cid}", json={"title": "Renamed"})
        assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
        bad = await http.patch(f"/api/conversations/{cid}", json={"title": ""})
        assert bad.status_code == 400 and bad.json()["detail"]["field"] == "title"
        msgs = (await http.get(f"/api/conversations/{cid}/messages?limit=1")).json()
        assert msgs["has_more"] is True and msgs["messages"][0]["role"] == "assistant"
        older = (
            await http.get(f"/api/conversations/{cid}/messages?limit=1&before={msgs['before']}")
        ).json()
        assert (
            older["has_more"] is False and older["messages"][0]["content"] == "first conversation"
        )
        assert (await http.delete(f"/api/conversations/{cid}")).status_code == 204
        missing = await http.get(f"/api/conversations/{cid}")
        assert missing.status_code == 404 and missing.json()["detail"]["code"] == "not_found"
        assert (await http.get("/api/conversations")).json()["total"] == 1
        assert (await http.get("/api/conversations/bad%20id")).status_code == 400
        agents = (await http.get("/api/agents")).json()
        assert any(a["default"] for a in agents)
        stats = (await http.get("/api/llm/stats")).json()
        assert sum(s["completed"] for s in stats["agents"]) == 2
        assert (await http.get("/api/llm/health")).json() == {"upstreams": []}


async def test_http_api_is_per_user_with_authentication() -> None:
    running, task = await start_server("native", offline_tokens_per_second=0)
    auth = UserAuth()
    running.gateway.authenticator = running.gateway.authorizer = auth
    try:
        async with websockets.connect(running.ws_url + "?user=dana") as ws:
            await chat_send(ws, "private")
            cid = (await read_answer(ws))[-1]["data"]["conversation_id"]
            await send(ws, {"type": "chat:history", "data": {}})
            assert (await recv_until(ws, "chat:history"))["data"]["conversation_id"] == cid
        async with httpx.AsyncClient(base_url=running.url) as http:
            mine = (await http.get("/api/conversations?user=dana")).json()
            assert [c["id"] for c in mine["conversations"]] == [cid]
            theirs = (await http.get("/api/conversations?user=eve")).json()
            assert theirs["total"] == 0
            assert (await http.get(f"/api/conversations/{cid}?user=eve")).status_code == 404
            assert (await http.delete(f"/api/conversations/{cid}?user=eve")).status_code == 404
            assert (await http.get("/api/conversations")).status_code == 401
    finally:
        await stop_server(running, task)
