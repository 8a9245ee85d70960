"""Generations across nodes: two real ``agentcast serve`` processes on one real Redis
(broker and cluster state, a fresh key prefix per test, deleted afterwards) and one
SQLite store file, answering through the fake OpenAI-compatible upstream
(:mod:`agentcast.testing.openai_server`) paced so that an answer lasts seconds.

* ``chat:cancel`` on node B cancels the generation running on node A; ``DELETE
  /api/conversations/{id}`` on B cancels it too, and waits for its end.
* A second ``chat:send`` on B while A generates gets ``conflict``; B's conversation
  flags and snapshots show A's generation, with the answer so far.
* A SIGKILLed mid-generation: B seals it once (the partial answer stored with status
  ``error``, ``node lost: …``), and B's client gets the terminal events.
* Stopping a node is fast (redis-py must not absorb the cancellation of its reads).

The figures (``print``, shown with ``-s``) are the ones docs/scaling.md quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from agentcast.testing.openai_server import FakeOpenAIServer
from tests.conftest import UNIT, ServerProcess, free_port
from tests.integration.chat.support import chat_send, read_until
from tests.integration.wsutil import recv_until, send
from tests.services import redis_prefix, require_redis

HEARTBEAT, TTL = 0.2, 1.5
TOKENS, PACE = 400, 40.0
"""An answer of 400 tokens at 40 tokens/s: 10 s, longer than any test needs."""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(tokens=TOKENS, tokens_per_second=PACE) as fake:
        yield fake


async def _delete_keys(url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        for pattern in (f"{prefix}:*", "{" + prefix + "}*"):
            keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


class Pair:
    def __init__(self, a: ServerProcess, b: ServerProcess) -> None:
        self.a, self.b = a, b


@pytest.fixture
async def pair(upstream: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Pair]:
    """Nodes A and B: one Redis prefix, one store file, the fake upstream."""
    url = require_redis()
    prefix = redis_prefix()
    env = {
        "AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'chat.db'}",
        "AGENTCAST_LLM_URL": upstream.base_url,
        "AGENTCAST_LLM_MODEL": "fake",
        "AGENTCAST_NODE_HEARTBEAT": str(HEARTBEAT),
        "AGENTCAST_NODE_TTL": str(TTL),
        "AGENTCAST_CLUSTER_SYNC_INTERVAL": "0.05",
    }
    started: list[ServerProcess] = []
    try:
        for _ in range(2):  # one after the other: the first migrates the store
            proc = ServerProcess(free_port(), "--broker", f"{url}?prefix={prefix}", env=env)
            started.append(proc)
            await asyncio.to_thread(proc.start)
        yield Pair(*started)
    finally:
        for proc in started:
            if proc.proc is not None:
                await asyncio.to_thread(proc.stop, signal.SIGKILL)
            proc.log.close()
        await _delete_keys(url, prefix)


def ws_url(node: ServerProcess) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


def is_done(frame: dict[str, Any]) -> bool:
    return frame["type"] == "chat:streaming" and frame["data"]["done"] is True


def is_answer(frame: dict[str, Any]) -> bool:
    return bool(frame["type"] == "chat:message" and frame["data"]["role"] == "assistant")


def chunks(frames: list[dict[str, Any]]) -> list[str]:
    return [
        f["data"]["chunk"]
        for f in frames
        if f["type"] == "chat:streaming" and not f["data"]["done"]
    ]


async def start_on_a(pair: Pair, ws_a: ClientConnection, ws_b: ClientConnection) -> str:
    """A generation on A for a new conversation, followed on B until 3 chunks arrived."""
    await chat_send(ws_a, "tell me a long story", id="s1")
    accepted = await recv_until(ws_a, "chat:accepted", timeout=5 * UNIT)
    cid: str = accepted["data"]["conversation_id"]
    await send(ws_b, {"type": "subscribe", "topic": f"chat:{cid}", "since": 0, "id": "sub"})
    seen: list[dict[str, Any]] = []

    def three_chunks(frame: dict[str, Any]) -> bool:
        seen.append(frame)
        return len(chunks(seen)) >= 3

    await read_until(ws_b, three_chunks, timeout=10 * UNIT)
    return cid


async def test_chat_cancel_on_b_cancels_the_generation_running_on_a(pair: Pair) -> None:
    async with (
        websockets.connect(ws_url(pair.a)) as ws_a,
        websockets.connect(ws_url(pair.b)) as ws_b,
    ):
        cid = await start_on_a(pair, ws_a, ws_b)
        t0 = time.perf_counter()
        await send(ws_b, {"type": "chat:cancel", "id": "c1", "data": {"conversation_id": cid}})
        reply = await recv_until(ws_b, "chat:cancelled", timeout=5 * UNIT)
        replied = time.perf_counter() - t0
        assert reply["id"] == "c1" and reply["data"] == {"conversation_id": cid, "cancelled": True}
        on_a = await read_until(ws_a, is_done, timeout=5 * UNIT)
        ended = time.perf_counter() - t0
        assert on_a[-1]["data"]["status"] == "cancelled"
        on_b = await read_until(ws_b, is_answer, timeout=5 * UNIT)
        answer = on_b[-1]["data"]
        assert answer["status"] == "cancelled" and answer["content"]
        print(
            f"\ncancel from B: reply {replied * 1000:.1f} ms, A's stream ended {ended * 1000:.1f} ms"
        )
        # nothing left running: a second cancel on either node cancels nothing
        for ws in (ws_b, ws_a):
            await send(ws, {"type": "chat:cancel", "id": "c2", "data": {"conversation_id": cid}})
            again = await recv_until(ws, "chat:cancelled", timeout=5 * UNIT)
            assert again["data"]["cancelled"] is False


async def test_delete_on_b_cancels_the_generation_on_a(
    pair: Pair, upstream: FakeOpenAIServer
) -> None:
    async with (
        websockets.connect(ws_url(pair.a)) as ws_a,
        websockets.connect(ws_url(pair.b)) as ws_b,
        httpx.AsyncClient(timeout=10 * UNIT) as http,
    ):
        cid = await start_on_a(pair, ws_a, ws_b)
        gone_before = len(upstream.disconnects)
        deleted = await http.delete(f"{pair.b.url}/api/conversations/{cid}")
        assert deleted.status_code == 204, deleted.text
        on_a = await read_until(ws_a, is_answer, timeout=5 * UNIT)
        assert [f["data"]["status"] for f in on_a if is_done(f)] == ["cancelled"]
        closed = await asyncio.to_thread(
            upstream.wait_for, lambda fake: len(fake.disconnects) > gone_before, 5 * UNIT
        )
        assert closed, "the upstream request was closed"
        for node in (pair.a, pair.b):
            got = await http.get(f"{node.url}/api/conversations/{cid}")
            assert got.status_code == 404


async def test_a_second_send_on_b_conflicts_and_b_shows_the_generation(pair: Pair) -> None:
    async with (
        websockets.connect(ws_url(pair.a)) as ws_a,
        websockets.connect(ws_url(pair.b)) as ws_b,
        websockets.connect(ws_url(pair.b)) as late,
        httpx.AsyncClient(timeout=10 * UNIT) as http,
    ):
        cid = await start_on_a(pair, ws_a, ws_b)
        await chat_send(ws_b, "and another thing", conversation_id=cid, id="s2")
        error = await recv_until(ws_b, "error", timeout=5 * UNIT)
        assert error["id"] == "s2" and error["data"]["code"] == "conflict", error
        one = (await http.get(f"{pair.b.url}/api/conversations/{cid}")).json()
        assert one["generating"] is True
        listed = (await http.get(f"{pair.b.url}/api/conversations")).json()["conversations"]
        assert [c["generating"] for c in listed if c["id"] == cid] == [True]
        await send(late, {"type": "subscribe", "topic": f"chat:{cid}", "id": "late"})
        snapshot = await recv_until(late, "snapshot", timeout=5 * UNIT)
        state = snapshot["data"]
        assert state["generating"] is True and state["streaming"]["index"] >= 3
        assert state["streaming"]["text"] and state["streaming"]["reply_to"]
        await send(late, {"type": "chat:history", "id": "h", "data": {"conversation_id": cid}})
        assert (await recv_until(late, "chat:history", timeout=5 * UNIT))["data"]["generating"]
        # once A's generation ended, B accepts the next message
        await send(ws_b, {"type": "chat:cancel", "id": "c", "data": {"conversation_id": cid}})
        await read_until(ws_b, is_answer, timeout=5 * UNIT)
        await chat_send(ws_b, "now on B", conversation_id=cid, id="s3")
        accepted = await recv_until(ws_b, "chat:accepted", timeout=5 * UNIT)
        assert accepted["data"]["conversation_id"] == cid
        await chat_send(ws_a, "and on A", conversation_id=cid, id="s4")
        error = await recv_until(ws_a, "error", timeout=5 * UNIT)
        assert error["id"] == "s4" and error["data"]["code"] == "conflict", error


async def test_a_killed_nodes_generation_is_sealed_once_by_b(pair: Pair) -> None:
    async with (
        websockets.connect(ws_url(pair.a)) as ws_a,
        websockets.connect(ws_url(pair.b)) as ws_b,
        httpx.AsyncClient(timeout=10 * UNIT) as http,
    ):
        await chat_send(ws_a, "tell me a long story", id="s1")
        accepted = await recv_until(ws_a, "chat:accepted", timeout=5 * UNIT)
        cid = accepted["data"]["conversation_id"]
        await send(ws_b, {"type": "subscribe", "topic": f"chat:{cid}", "since": 0, "id": "s"})
        seen: list[dict[str, Any]] = []

        def some_chunks(frame: dict[str, Any]) -> bool:
            seen.append(frame)
            return len(chunks(seen)) >= 5

        await read_until(ws_b, some_chunks, timeout=10 * UNIT)
        assert pair.a.proc is not None
        pair.a.proc.send_signal(signal.SIGKILL)
        t0 = time.perf_counter()
        await asyncio.to_thread(pair.a.proc.wait, 10 * UNIT)
        rest = await read_until(ws_b, is_answer, timeout=TTL + 10 * UNIT)
        sealed = time.perf_counter() - t0
        frames = seen + rest
        done = [f for f in frames if is_done(f)]
        assert len(done) == 1 and done[0]["data"]["status"] == "error"
        text = "".join(chunks(frames))
        assert done[0]["data"]["index"] == len(chunks(frames))
        answer = frames[-1]["data"]
        assert answer["status"] == "error" and answer["content"] == text
        assert answer["error"].startswith("node lost: ")
        print(f"\nseal after SIGKILL: {sealed:.2f} s (node_ttl {TTL} s, heartbeat {HEARTBEAT} s)")
        assert sealed < TTL + 5 * UNIT
        # stored once, and the topic holds one terminal pair
        messages = (await http.get(f"{pair.b.url}/api/conversations/{cid}/messages")).json()
        answers = [m for m in messages["messages"] if m["role"] == "assistant"]
        assert len(answers) == 1 and answers[0]["content"] == text
        assert answers[0]["status"] == "error" and answers[0]["error"] == answer["error"]
        events = (await http.get(f"{pair.b.url}/api/topics/chat:{cid}/events?since=0")).json()
        kinds = [
            (e["type"], e["data"].get("done"), e["data"].get("role")) for e in events["events"]
        ]
        assert kinds.count(("chat:streaming", True, None)) == 1
        assert kinds.count(("chat:message", None, "assistant")) == 1
        health = (await http.get(f"{pair.b.url}/healthz")).json()["cluster"]
        assert health["work_sealed"] == 1 and health["work_owned"] == 0, health
        # and the conversation answers again, on B
        await chat_send(ws_b, "are you there?", conversation_id=cid, id="s2")
        accepted = await recv_until(ws_b, "chat:accepted", timeout=5 * UNIT)
        assert accepted["data"]["conversation_id"] == cid


async def test_a_node_taken_for_dead_drops_its_end(pair: Pair) -> None:
    """A paused longer than node_ttl (SIGSTOP: a stalled process, a partition): B seals
    its generation; A, back, drops its own end: one answer stored, one terminal pair."""
    async with (
        websockets.connect(ws_url(pair.a)) as ws_a,
        websockets.connect(ws_url(pair.b)) as ws_b,
        httpx.AsyncClient(timeout=10 * UNIT) as http,
    ):
        cid = await start_on_a(pair, ws_a, ws_b)
        assert pair.a.proc is not None
        pair.a.proc.send_signal(signal.SIGSTOP)
        try:
            rest = await read_until(ws_b, is_answer, timeout=TTL + 10 * UNIT)
        finally:
            pair.a.proc.send_signal(signal.SIGCONT)
        assert rest[-1]["data"]["error"].startswith("node lost: ")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5 * UNIT
        while True:  # A drops it at its next heartbeat (or ends it, publishing nothing)
            await chat_send(ws_a, "still there?", conversation_id=cid, id="s2")
            reply = await read_until(ws_a, lambda f: f["type"] in ("chat:accepted", "error"))
            if reply[-1]["type"] == "chat:accepted":
                break
            assert reply[-1]["data"]["code"] == "conflict" and loop.time() < deadline
        await send(ws_a, {"type": "chat:cancel", "id": "c3", "data": {"conversation_id": cid}})
        await read_until(ws_a, lambda f: is_answer(f) and f["data"]["status"] == "cancelled")
        messages = (await http.get(f"{pair.b.url}/api/conversations/{cid}/messages")).json()
        statuses = [m["status"] for m in messages["messages"] if m["role"] == "assistant"]
        assert statuses == ["error", "cancelled"], statuses
        events = (await http.get(f"{pair.b.url}/api/topics/chat:{cid}/events?since=0")).json()
        ends = [e["data"]["status"] for e in events["events"] if e["data"].get("done") is True]
        assert ends == ["error", "cancelled"], ends
        sealed = rest[-1]["data"]["reply_to"]
        first_end = next(i for i, e in enumerate(events["events"]) if e["data"].get("done"))
        stray = [
            e
            for e in events["events"][first_end + 1 :]
            if e["type"] == "chat:streaming" and e["data"]["reply_to"] == sealed
        ]
        assert not stray, f"{len(stray)} deltas of the sealed answer after its end"


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


async def test_stopping_a_node_is_fast(pair: Pair) -> None:
    async with (
        websockets.connect(ws_url(pair.a)) as ws_a,
        websockets.connect(ws_url(pair.b)) as ws_b,
    ):
        await start_on_a(pair, ws_a, ws_b)  # a generation, a control channel, subscriptions
        # the clients keep reading: one that does not stops reading its socket once its
        # queue is full, never reads the server's close frame, and uvicorn waits for it
        readers = [asyncio.ensure_future(_drain(ws)) for ws in (ws_a, ws_b)]
        timings = []
        for node in (pair.b, pair.a):  # idle B, then A with its generation
            t0 = time.perf_counter()
            code = await asyncio.to_thread(node.stop)
            timings.append(time.perf_counter() - t0)
            assert code in (0, -signal.SIGTERM), node.output()
        await asyncio.wait(readers, timeout=5 * UNIT)
    print(f"\nSIGTERM to exit: idle {timings[0]:.2f} s, generating {timings[1]:.2f} s")
    assert max(timings) < 3 * UNIT, timings


# -- the seal, step by step, in one process ----------------------------------------------


@pytest.fixture
async def one_node(tmp_path: Path) -> AsyncIterator[Any]:
    from tests.conftest import start_server, stop_server

    running, task = await start_server(store_url=f"sqlite:///{tmp_path / 'seal.db'}")
    try:
        yield running
    finally:
        await stop_server(running, task)


async def test_the_seal_is_idempotent_step_by_step(one_node: Any) -> None:
    """What a survivor does for a dead node's generation, called twice (a second sealer
    after the first died mid-way): stored once, the terminal events published once."""
    from agentcast.chat.service import Chat
    from agentcast.storage.chat import NewMessage

    gateway = one_node.gateway
    chat = gateway.feature(Chat)
    async with httpx.AsyncClient(base_url=one_node.url) as http:
        cids = [(await http.post("/api/conversations", json={})).json()["id"] for _ in range(3)]
    now = time.time()

    async def question(cid: str, text: str) -> int:
        stored = await chat.store.add_message(
            NewMessage(cid, "user", text, created_at=now, completed_at=now)
        )
        return stored.id

    # 1: the dead node published the question and two deltas
    q1 = await question(cids[0], "first")
    topic = f"chat:{cids[0]}"
    await gateway.publish(topic, "chat:message", {"id": q1, "role": "user", "content": "first"})
    for index, chunk in enumerate(["Hel", "lo"]):
        data = {"conversation_id": cids[0], "reply_to": q1, "index": index, "chunk": chunk}
        await gateway.publish(topic, "chat:streaming", {**data, "done": False})
    for _ in range(2):
        await chat._seal_lost(cids[0], {"since": 0, "model": "m1"}, "dead:1:abcdef")
    page = await gateway.history(topic, 0)
    ends = [p for p in page.publications if p.type == "chat:streaming" and b'"done":true' in p.data]
    answers = [p for p in page.publications if p.type == "chat:message" and b"assistant" in p.data]
    assert len(ends) == 1 and b'"index":2' in ends[0].data and b'"status":"error"' in ends[0].data
    assert len(answers) == 1
    stored = [m for m in await chat.store.messages(cids[0], None, 10) if m.role == "assistant"]
    assert [(m.content, m.status, m.reply_to, m.model) for m in stored] == [
        ("Hello", "error", q1, "m1")
    ]
    assert stored[0].error == "node lost: dead:1:abcdef stopped before the answer was complete"
    # 2: it died after storing the question, before publishing it: an empty error answer
    q2 = await question(cids[1], "second")
    await chat._seal_lost(cids[1], {"since": 0}, "dead:1:abcdef")
    stored = [m for m in await chat.store.messages(cids[1], None, 10) if m.role == "assistant"]
    assert [(m.content, m.status, m.reply_to) for m in stored] == [("", "error", q2)]
    # 3: it died before storing the question: the last one is answered, nothing to seal
    q3 = await question(cids[2], "third")
    await chat.store.add_message(NewMessage(cids[2], "assistant", "done", reply_to=q3))
    await chat._seal_lost(cids[2], {"since": 0}, "dead:1:abcdef")
    assert len(await chat.store.messages(cids[2], None, 10)) == 2
    assert not (await gateway.history(f"chat:{cids[2]}", 0)).publications
    # a deleted conversation: nothing
    await chat.store.delete_conversation(cids[1])
    await chat._seal_lost(cids[1], {"since": 0}, "dead:1:abcdef")


async def test_a_node_starting_seals_an_orphan_once_its_store_is_open(tmp_path: Path) -> None:
    """A dead node's generation already orphaned when a node starts (its first heartbeat
    claims it at once, before the start-up hooks): the seal waits for the store to be
    open instead of failing with 'store not started' (retried, one traceback each)."""
    from agentcast.cluster import create_cluster_state
    from tests.contract.test_cluster_state import View, eventually
    from tests.contract.test_cluster_work import abandon

    url = require_redis()
    prefix = redis_prefix()
    broker = f"{url}?prefix={prefix}"
    node = ServerProcess(
        free_port(),
        "--broker",
        broker,
        env={
            "AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'orphan.db'}",
            "AGENTCAST_NODE_HEARTBEAT": str(HEARTBEAT),
            "AGENTCAST_NODE_TTL": str(TTL),
        },
    )
    try:
        dead = create_cluster_state(broker, heartbeat=HEARTBEAT, ttl=TTL, sync_interval=0.05)
        await dead.start(View())
        for i in range(20):
            assert await dead.work.acquire("chat", f"c0ffee{i}", {"since": 0}) is None
        await abandon(dead)  # SIGKILLed: its entries stay, no longer refreshed
        # the entries age past node_ttl (the condition itself is time): orphans then
        await asyncio.sleep(TTL + HEARTBEAT)
        await asyncio.to_thread(node.start)

        async def sealed() -> bool:
            async with httpx.AsyncClient(base_url=node.url) as http:
                health = (await http.get("/healthz")).json()
            return bool(health["cluster"]["work_sealed"] == 20)

        await eventually(sealed, 10 * UNIT)  # unknown conversations: nothing to store
        assert "store not started" not in node.output()
        assert "will retry" not in node.output()
    finally:
        if node.proc is not None:
            await asyncio.to_thread(node.stop, signal.SIGKILL)
        node.log.close()
        await _delete_keys(url, prefix)
