"""Limits and presence across nodes: two real ``agentcast serve`` processes sharing one
real Redis (127.0.0.1:6379) as their cluster state (``AGENTCAST_CLUSTER_URL``, a fresh
key prefix per test, its keys deleted afterwards), JWT authentication on.

* ``max_connections_per_user=2``: one connection on each node, a third on either is
  refused with HTTP 429; after a node is SIGKILLed, its count vanishes within the TTL and
  the user connects again.
* Rate limits are the user's across nodes: what a user sent on one node is charged on the
  other.
* Presence shows a subscriber of the other node, and drops it when that node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.codes import CloseCode
from tests.conftest import UNIT, RunningServer, ServerProcess, free_port, start_server, stop_server
from tests.contract.test_cluster_state import REDIS, delete_prefix, redis_reachable
from tests.integration.wsutil import recv_until, send, subscribe
from tests.services import require_service

SECRET = "cluster-" + "k" * 40
TTL = 1.5


def token(sub: str, **extra: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 3600, **extra}, SECRET, "HS256")


ALICE = token("alice", topics=["room:*"])
BOB = token("bob")
ADMIN = token("ops", scope="admin")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    why = await redis_reachable()
    if why is not None:
        require_service(f"Redis not reachable at {REDIS} ({why})")
    name = f"test-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await delete_prefix(name)


@pytest.fixture
def nodes(prefix: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes on one Redis cluster state."""
    started: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            env = {
                "AGENTCAST_JWT_SECRET": SECRET,
                "AGENTCAST_CLUSTER_URL": f"{REDIS}?prefix={prefix}",
                "AGENTCAST_MAX_CONNECTIONS_PER_USER": "2",
                "AGENTCAST_NODE_HEARTBEAT": "0.2",
                "AGENTCAST_NODE_TTL": str(TTL),
                "AGENTCAST_CLUSTER_SYNC_INTERVAL": "0.05",
                "AGENTCAST_RATE_LIMIT_COMMANDS_PER_MINUTE": "30",
                "AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / name}.db",
            }
            proc = ServerProcess(free_port(), env=env)
            started.append(proc)
            proc.start()
        yield started[0], started[1]
    finally:
        for proc in started:
            proc.stop(signal.SIGKILL)
            proc.log.close()


def ws_url(node: ServerProcess) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


async def connect(node: ServerProcess, credential: str = ALICE) -> ClientConnection:
    return await websockets.connect(
        ws_url(node), additional_headers={"Authorization": f"Bearer {credential}"}
    )


async def refused_status(node: ServerProcess, credential: str = ALICE) -> int | None:
    """The HTTP status of a refused handshake, or None (and the connection closed) when
    it was accepted."""
    try:
        ws = await connect(node, credential)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


async def presence(ws: ClientConnection, topic: str) -> dict[str, Any]:
    await send(ws, {"type": "presence", "topic": topic, "id": "p"})
    reply = await recv_until(ws, "presence")
    assert reply["topic"] == topic and reply["id"] == "p"
    data: dict[str, Any] = reply["data"]
    return data


async def http_presence(node: ServerProcess, topic: str) -> dict[str, Any]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}) as http:
        got = await http.get(f"http://127.0.0.1:{node.port}/api/topics/{topic}/presence")
    assert got.status_code == 200, got.text
    data: dict[str, Any] = got.json()
    return data


async def until(check: Any, timeout: float = 10 * UNIT) -> Any:
    """Poll the coroutine function ``check`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):  # noqa: ASYNC110 - polling another process, bounded
            await asyncio.sleep(0.02)
        return result


async def test_connections_per_user_hold_across_nodes_and_expire_with_a_dead_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    on_a = await connect(a)
    on_b = await connect(b)
    try:
        assert await refused_status(a) == 429
        assert await refused_status(b) == 429
        assert await refused_status(a, BOB) is None  # per user
        b.stop(signal.SIGKILL)
        killed = time.monotonic()
        assert await refused_status(a) == 429  # b's count holds until its TTL
        assert await until(lambda: _accepted(a), 10 * UNIT + TTL)
        assert time.monotonic() - killed >= TTL * 0.5
        # and the limit holds again: alice now holds 2 on a
        assert await refused_status(a) is None  # the probe above closed its connection
        extra = await connect(a)
        try:
            assert await refused_status(a) == 429
        finally:
            await extra.close()
    finally:
        await on_a.close()
        with contextlib.suppress(Exception):
            await on_b.close()


async def _accepted(node: ServerProcess) -> bool:
    return await refused_status(node) is None


async def test_closing_a_connection_frees_its_slot_on_the_other_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    first = await connect(a)
    second = await connect(a)
    assert await refused_status(b) == 429
    await first.close()
    assert await until(lambda: _accepted(b))
    await second.close()


async def test_rate_limit_is_the_users_across_nodes(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    on_a = await connect(a)
    on_b = await connect(b)
    try:
        for i in range(30):  # the whole burst (30 a minute, a minute's worth) on node a
            await send(on_a, {"type": "ping", "id": i})
            await recv_until(on_a, "pong")

        async def charged() -> bool:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{b.port}", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as http:
                health = (await http.get("/healthz")).json()
            return bool(health["cluster"]["tokens_charged"] >= 30)

        await until(charged)
        # node b has seen none of alice's commands itself, yet her next one is refused
        await send(on_b, {"type": "ping", "id": "b"})
        reply = await recv_until(on_b, "error")
        assert reply["data"]["code"] == "rate_limited" and reply["id"] == "b"
        assert reply["data"]["retry_after"] > 0
    finally:
        await on_a.close()
        await on_b.close()


async def test_presence_across_nodes(nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    watcher = await connect(a)
    subscriber = await connect(b)
    outsider = await connect(a, BOB)
    try:
        await subscribe(subscriber, "room:1")

        # polled over HTTP (not rate limited; these commands would be: 30 a minute)
        async def seen() -> dict[str, Any] | None:
            data = await http_presence(a, "room:1")
            return data if data["users"] else None

        await until(seen)
        data = await presence(watcher, "room:1")
        assert data == {
            "users": [{"user": "alice", "connections": 1}],
            "anonymous": 0,
            "connections": 1,
            "nodes": 1,
        }
        # the same over HTTP, from either node
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}) as http:
            for node in (a, b):
                got = await http.get(f"http://127.0.0.1:{node.port}/api/topics/room:1/presence")
                assert got.status_code == 200
                assert got.json() == {"topic": "room:1", **data}
            # a user who may not subscribe learns nothing, whether or not anyone is there
            for topic in ("room:1", "room:nobody"):
                denied = await http.get(
                    f"http://127.0.0.1:{a.port}/api/topics/{topic}/presence",
                    headers={"Authorization": f"Bearer {BOB}"},
                )
                assert denied.status_code == 403
        for topic in ("room:1", "room:nobody"):
            await send(outsider, {"type": "presence", "topic": topic, "id": "x"})
            refused = await recv_until(outsider, "error")
            assert refused["data"]["code"] == "forbidden"
            assert refused["data"]["message"] == f"may not subscribe to {topic!r}"
        # the subscriber's node dies: its presence goes with its heartbeat
        b.stop(signal.SIGKILL)

        async def gone() -> bool:
            return bool((await http_presence(a, "room:1"))["connections"] == 0)

        await until(gone, 10 * UNIT + TTL)
        assert (await presence(watcher, "room:1"))["users"] == []
    finally:
        await watcher.close()
        await outsider.close()
        with contextlib.suppress(Exception):
            await subscriber.close()


# -- two gateways in this process (both transports; first-message authentication) ---------


@contextlib.asynccontextmanager
async def in_process_nodes(
    transport: str, prefix: str
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    settings: dict[str, Any] = {
        "jwt_secret": SECRET,
        "cluster_url": f"{REDIS}?prefix={prefix}",
        "max_connections_per_user": 2,
        "node_heartbeat": 0.2,
        "node_ttl": TTL,
        "cluster_sync_interval": 0.05,
        "store_url": "",
        "auth_timeout": 5 * UNIT,
    }
    first, first_task = await start_server(transport, **settings)
    try:
        second, second_task = await start_server(transport, **settings)
        try:
            yield first, second
        finally:
            await stop_server(second, second_task)
    finally:
        await stop_server(first, first_task)


async def close_code(ws: ClientConnection) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(5 * UNIT):
            while True:
                await ws.recv()
    return ws.close_code


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_in_process_nodes_share_the_limit(transport: str, prefix: str) -> None:
    async with in_process_nodes(transport, prefix) as (one, two):
        assert one.gateway.cluster.node != two.gateway.cluster.node
        headers = {"Authorization": f"Bearer {ALICE}"}
        on_one = await websockets.connect(one.ws_url, additional_headers=headers)
        on_two = await websockets.connect(two.ws_url, additional_headers=headers)
        for node in (one, two):
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(node.ws_url, additional_headers=headers)
            assert refused.value.response.status_code == 429
            assert b"across the cluster" in refused.value.response.body
        # the first-message `auth` counts too: alice's third connection is closed with 4529
        async with websockets.connect(two.ws_url) as late:
            await send(late, {"type": "auth", "token": ALICE, "id": "a"})
            assert await close_code(late) == CloseCode.TOO_MANY_CONNECTIONS
        async with websockets.connect(two.ws_url) as bob:
            await send(bob, {"type": "auth", "token": BOB, "id": "b"})
            assert (await recv_until(bob, "authenticated"))["id"] == "b"
        # seed 003's endpoint counts too, across the cluster
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(
                f"ws://127.0.0.1:{two.port}/api/v1/ws/helper", additional_headers=headers
            )
        assert refused.value.response.status_code == 429
        # a closed connection frees its slot on the other node (within a sync)
        await on_one.close()

        async def in_again() -> bool:
            try:
                ws = await websockets.connect(two.ws_url, additional_headers=headers)
            except InvalidStatus:
                return False
            await ws.close()
            return True

        assert await until(in_again)
        await on_two.close()
        # /healthz shows each node's id (and, to admin, the cluster's counters)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            health = (await http.get(f"{one.url}/healthz")).json()
        assert health["node"] == one.gateway.cluster.node
        assert health["cluster"]["nodes"] == 2 and health["cluster"]["errors"] == 0


async def test_presence_on_one_process(server: RunningServer) -> None:
    """The in-process cluster state (the default): presence is this node's hub."""
    async with (
        websockets.connect(server.ws_url) as first,
        websockets.connect(server.ws_url) as second,
    ):
        await subscribe(first, "room:9")
        await subscribe(second, "room:9")
        data = await presence(first, "room:9")
        assert data == {"users": [], "anonymous": 2, "connections": 2, "nodes": 1}
        await send(second, {"type": "unsubscribe", "topic": "room:9"})
        await recv_until(second, "unsubscribed")
        assert (await presence(first, "room:9"))["connections"] == 1
        assert (await presence(first, "room:none"))["nodes"] == 0
        await send(first, {"type": "presence", "id": "bad"})  # no topic: an error frame
        reply = await recv_until(first, "error")
        assert reply["id"] == "bad" and reply["data"]["code"] == "invalid_field"
        async with httpx.AsyncClient() as http:
            got = await http.get(f"{server.url}/api/topics/room:9/presence")
            assert got.json()["connections"] == 1
            assert (await http.get(f"{server.url}/healthz")).json()["cluster"] == {
                "nodes": 1,
                "errors": 0,
            }


async def test_the_python_client_asks_presence(native_server: RunningServer) -> None:
    from agentcast.client import connect as client_connect

    async with client_connect(native_server.url) as client:
        sub = client.subscribe("room:c")
        await client.ping()  # the subscribe was answered before the pong
        assert sub.live
        found = await client.presence("room:c")
        assert found.connections == 1 and found.anonymous == 1 and found.users == []
