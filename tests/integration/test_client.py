"""agentcast.client against real servers: typed events, resume, losses, terminal closes."""

from __future__ import annotations

import asyncio

import pytest

from agentcast.client import Event, HistoryLost, connect
from agentcast.client.connection import CommandFailed, ws_url_of
from agentcast.codes import CloseCode
from agentcast.errors import ConnectionClosedError, HistoryLostError
from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from tests.conftest import UNIT, RunningServer, start_server, stop_server


async def next_item(it: object) -> Event | HistoryLost:
    return await asyncio.wait_for(it.__anext__(), 5 * UNIT)  # type: ignore[attr-defined]


def test_ws_url_of() -> None:
    assert ws_url_of("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_url_of("https://example.org/") == "wss://example.org/ws"
    assert ws_url_of("ws://h/api/ws/workflow/1") == "ws://h/api/ws/workflow/1"


async def test_subscribe_publish_and_typed_events(server: RunningServer) -> None:
    async with connect(server.url) as client:
        a = client.subscribe("board:a")
        b = client.subscribe("board:b", since=0)
        await client.ping()
        assert await client.publish("board:a", "note", {"n": 1}) == 1
        assert await client.publish("board:b", "note", {"n": 2}) == 1
        got_a = await next_item(a)
        got_b = await next_item(b)
        assert isinstance(got_a, Event)
        assert (got_a.topic, got_a.seq, got_a.type, got_a.data) == ("board:a", 1, "note", {"n": 1})
        assert got_b.to_wire()["data"] == {"n": 2}  # type: ignore[union-attr]
        with pytest.raises(CommandFailed) as info:
            await client.publish("bad topic", "x", {})
        assert info.value.code == "invalid_topic"
        with pytest.raises(Exception, match="already subscribed"):
            client.subscribe("board:a")
        await a.unsubscribe()
        await client.publish("board:a", "note", {"n": 3})
        await client.publish("board:b", "note", {"n": 4})
        assert (await next_item(b)).data == {"n": 4}  # type: ignore[union-attr]


async def test_resume_after_server_side_disconnects_while_publishing(server: RunningServer) -> None:
    gw = server.gateway
    total = 300

    async def producer() -> None:
        for n in range(1, total + 1):
            await gw.publish("live:1", "tick", {"n": n})
            if n in (60, 180):  # the server drops every connection mid-stream
                for session in list(gw.sessions.values()):
                    gw.close(session, CloseCode.SLOW_CONSUMER)
            await asyncio.sleep(0)

    async with connect(server.url, initial_delay=0.05) as client:
        sub = client.subscribe("live:1", since=0)
        await client.ping()  # subscribed before publishing starts
        task = asyncio.create_task(producer())
        seqs = []
        async with asyncio.timeout(20 * UNIT):
            while len(seqs) < total:
                item = await sub.__anext__()
                assert isinstance(item, Event)
                seqs.append(item.seq)
        await task
        assert seqs == list(range(1, total + 1))
        assert client.connections >= 2


async def test_history_lost_raises_or_resets() -> None:
    running, task = await start_server("native", history_max_events=5)
    try:
        for n in range(12):
            await running.gateway.publish("t", "e", {"n": n})
        async with connect(running.url) as client:
            with pytest.raises(HistoryLostError) as info:
                await next_item(client.subscribe("t", since=2))
            assert (info.value.since, info.value.first_available) == (2, 8)
        async with connect(running.url) as client:
            sub = client.subscribe("t", since=2, on_history_lost="reset")
            lost = await next_item(sub)
            assert lost == HistoryLost("t", 2, 8)
            assert [(await next_item(sub)).seq for _ in range(5)] == [8, 9, 10, 11, 12]  # type: ignore[union-attr]
    finally:
        await stop_server(running, task)


async def test_run_topics_start_with_a_snapshot(native_server: RunningServer) -> None:
    w = {"workflow_id": "c", "execution_id": "e"}
    await native_server.gateway.publish(
        "workflow:c", "workflow_start", {**w, "execution_order": ["a"], "total_nodes": 1}
    )
    async with connect(native_server.url) as client:
        sub = client.subscribe("workflow:c")
        snap = await next_item(sub)
        assert isinstance(snap, Event)
        assert (snap.type, snap.seq, snap.data["status"]) == ("snapshot", 1, "running")
        await native_server.gateway.publish(
            "workflow:c", "log", {**w, "level": "info", "message": "m"}
        )
        assert (await next_item(sub)).seq == 2  # type: ignore[union-attr]


class Refuse:
    def authenticate(self, request: ConnectionRequest) -> Principal:
        if request.headers.get("authorization") != "Bearer good":
            raise AuthenticationError("bad token")
        return Principal("u")


async def test_terminal_errors_raise(native_server: RunningServer) -> None:
    native_server.gateway.authenticator = Refuse()
    async with connect(native_server.url, token="bad") as client:
        with pytest.raises(ConnectionClosedError) as info:
            await next_item(client.subscribe("t"))
        assert info.value.code == CloseCode.UNAUTHORIZED
    async with connect(native_server.url, token="good") as client:
        sub = client.subscribe("t")
        await client.ping()
        with pytest.raises(ConnectionClosedError) as closed:  # a frame over max_message_bytes
            await client.request({"type": "ping", "pad": "x" * 70_000})
        assert closed.value.code == 1009
        with pytest.raises(ConnectionClosedError):
            await next_item(sub)
