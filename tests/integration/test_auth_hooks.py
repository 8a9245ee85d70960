"""Authentication and authorization hooks on both transports and the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from tests.conftest import RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, send, subscribe


class TokenAuthenticator:
    """``?token=<user>`` or ``Authorization: Bearer <user>``; async to exercise that path."""

    async def authenticate(self, request: ConnectionRequest) -> Principal:
        await asyncio.sleep(0)
        token = request.query.get("token") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        if not token:
            raise AuthenticationError("no token")
        return Principal(subject=token)


class SyncAuthenticator:
    def authenticate(self, request: ConnectionRequest) -> Principal:
        if request.query.get("token") != "ok":
            raise AuthenticationError("bad token")
        return Principal(subject="ok")


class OwnTopics:
    """May read and write only ``user:<subject>:*``; may publish nowhere else."""

    def can_subscribe(self, principal: Principal, topic: str) -> bool:
        return topic.startswith(f"user:{principal.subject}:")

    async def can_publish(self, principal: Principal, topic: str) -> bool:
        return topic.startswith(f"user:{principal.subject}:")


@pytest.fixture(params=["native", "asgi"])
async def guarded(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    running, task = await start_server(request.param)
    running.gateway.authenticator = TokenAuthenticator()
    running.gateway.authorizer = OwnTopics()
    try:
        yield running
    finally:
        await stop_server(running, task)


async def test_unauthenticated_handshake_gets_401(guarded: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(guarded.ws_url):
            pass
    assert info.value.response.status_code == 401
    assert not guarded.gateway.open_mode


async def test_sync_authenticator_rejects_and_accepts() -> None:
    running, task = await start_server("native")
    running.gateway.authenticator = SyncAuthenticator()
    try:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(running.ws_url + "?token=no"):
                pass
        assert info.value.response.status_code == 401
        async with websockets.connect(running.ws_url + "?token=ok") as ws:
            await send(ws, "ping")
            assert (await recv(ws))["type"] == "pong"
    finally:
        await stop_server(running, task)


async def test_authorizer_decides_per_topic(guarded: RunningServer) -> None:
    async with websockets.connect(guarded.ws_url + "?token=alice") as ws:
        ok = await subscribe(ws, "user:alice:inbox")
        assert ok["type"] == "subscribed"
        await send(ws, {"type": "subscribe", "topic": "user:bob:inbox", "id": "x"})
        err = await recv(ws)
        assert (err["type"], err["data"]["code"], err["id"]) == ("error", "forbidden", "x")
        await send(ws, {"type": "publish", "topic": "user:bob:inbox", "event": "e", "id": "p"})
        assert (await recv(ws))["data"]["code"] == "forbidden"
        await send(ws, {"type": "publish", "topic": "user:alice:inbox", "event": "e", "id": "q"})
        kinds = {(await recv(ws))["type"] for _ in range(2)}
        assert kinds == {"e", "ack"}


async def test_http_api_uses_the_same_hooks(guarded: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=guarded.url) as http:
        r = await http.post("/api/topics/user:alice:x/events", json={"type": "e"})
        assert r.status_code == 401
        assert r.json()["detail"]["code"] == "unauthorized"
        auth = {"Authorization": "Bearer alice"}
        r = await http.post("/api/topics/user:bob:x/events", json={"type": "e"}, headers=auth)
        assert r.status_code == 403
        r = await http.post("/api/topics/user:alice:x/events", json={"type": "e"}, headers=auth)
        assert r.status_code == 200
        r = await http.get("/api/topics/user:bob:x/events", headers=auth)
        assert r.status_code == 403
        r = await http.get("/api/topics/user:alice:x/events", headers=auth)
        assert r.json()["last_seq"] == 1
        assert (await http.get("/healthz")).json()["mode"] == "auth"


async def test_bench_endpoint_publishes_round_robin() -> None:
    running, task = await start_server("native", bench_endpoint=True)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await subscribe(ws, "b1")
            async with httpx.AsyncClient(base_url=running.url) as http:
                r = await http.get(
                    "/_bench/publish", params={"topics": 2, "count": 6, "prefix": "b"}
                )
                assert r.status_code == 202
                events = [await recv(ws) for _ in range(3)]
                assert [e["seq"] for e in events] == [1, 2, 3]
                assert all(isinstance(e["data"]["ts"], int) for e in events)
                params = {"count": 3, "rate": 1000, "prefix": "b", "topics": 2}
                r = await http.get("/_bench/publish", params=params)
                assert r.status_code == 202
                assert (await recv(ws))["seq"] == 4
    finally:
        await stop_server(running, task)


async def test_topic_list_shows_only_readable_topics(guarded: RunningServer) -> None:
    await guarded.gateway.publish("user:alice:a", "e", {})
    await guarded.gateway.publish("user:bob:b", "e", {})
    async with httpx.AsyncClient(base_url=guarded.url) as http:
        assert (await http.get("/api/topics")).status_code == 401
        listed = (await http.get("/api/topics", headers={"Authorization": "Bearer alice"})).json()
        assert [t["topic"] for t in listed] == ["user:alice:a"]
