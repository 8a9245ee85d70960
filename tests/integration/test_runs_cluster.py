"""Runs and tickets across nodes: two or three real ``agentcast serve`` processes on one
real Redis (broker and cluster state, a key prefix of their own, deleted afterwards).

* A run whose producer stops is sealed with exactly one ``publisher_lost``, seen by the
  clients of every node (three nodes racing to seal it).
* A lease renewed through node A keeps the run alive on node B past ``run_lease_ttl``.
* A ticket issued by node A opens a WebSocket on node B, once: reused on either, refused.
* The run store (one SQLite file shared by both nodes) is written once per event: each
  node records the events it published (``agentcast_run_events_stored_total``).
* A node started in the middle of a run gives a late joiner the same snapshot as the
  nodes that saw the run from its start.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import UNIT, ServerProcess, free_port
from tests.contract.test_cluster_state import delete_prefix as delete_cluster_prefix
from tests.integration.wsutil import recv, recv_until, send, subscribe
from tests.services import delete_prefix, redis_prefix, require_redis

SECRET = "runs-cluster-" + "r" * 40
LEASE_TTL = 1.0


@pytest.fixture
def redis_target() -> Iterator[tuple[str, str]]:
    """``(url, prefix)``: Redis and a prefix of this test (broker keys ``P:…``, cluster
    keys ``{P}:…``, all deleted afterwards)."""
    url = require_redis()
    prefix = redis_prefix()
    yield url, prefix
    asyncio.run(delete_prefix(url, prefix))
    asyncio.run(delete_cluster_prefix(prefix))


class Nodes:
    def __init__(self, target: tuple[str, str], env: dict[str, str]) -> None:
        url, prefix = target
        self.broker_url = f"{url}?prefix={prefix}"
        self.env = {"AGENTCAST_RUN_LEASE_TTL": str(LEASE_TTL), "AGENTCAST_STORE_URL": "", **env}
        self.procs: list[ServerProcess] = []

    async def start(self) -> ServerProcess:
        proc = ServerProcess(free_port(), "--broker", self.broker_url, env=self.env)
        self.procs.append(proc)
        await asyncio.to_thread(proc.start)  # one after the other: one migrates the store
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.proc is not None:
                proc.stop()
            proc.log.close()


@pytest.fixture
async def cluster(redis_target: tuple[str, str]) -> AsyncIterator[Any]:
    made: list[Nodes] = []

    def make(**env: str) -> Nodes:
        made.append(Nodes(redis_target, env))
        return made[-1]

    try:
        yield make
    finally:
        for nodes in made:
            nodes.close()


def ws(node: ServerProcess) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


async def publish(node: ServerProcess, topic: str, type: str, data: dict[str, Any]) -> int:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{node.url}/api/topics/{topic}/events", json={"type": type, "data": data}
        )
    assert r.status_code == 200, r.text
    seq: int = r.json()["seqs"][0]
    return seq


async def start_run(node: ServerProcess, run: str) -> None:
    await publish(
        node,
        f"workflow:{run}",
        "workflow_start",
        {"execution_id": f"e-{run}", "execution_order": ["a", "b"], "total_nodes": 2},
    )


async def history_types(node: ServerProcess, topic: str) -> list[str]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{node.url}/api/topics/{topic}/events", params={"since": 0})
    assert r.status_code == 200, r.text
    return [e["type"] for e in r.json()["events"]]


async def metric(node: ServerProcess, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{node.url}/metrics")).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{want}\}} (\S+)$", text, flags=re.M)
    assert found is not None, f"{name}{{{want}}} not in /metrics"
    return float(found.group(1))


async def test_a_lost_producer_is_sealed_once_across_three_nodes(cluster: Any) -> None:
    """The three nodes are paused (SIGSTOP: a long GC pause, a starved host) while the
    leases of 10 runs (renewed through node A) lapse and resumed together, so their lease watchers fire at the
    same instant and race: without the conditional seal a node would often append its
    own ``publisher_lost`` after another's."""
    nodes = cluster()
    procs = [await nodes.start() for _ in range(3)]
    topics = [f"workflow:lost-{i}" for i in range(10)]
    clients = [await websockets.connect(ws(p)) for p in procs]
    try:
        for client in clients:
            for topic in topics:
                await subscribe(client, topic)
        hold = 4 * LEASE_TTL  # the set-up below must not outlast it (a loaded machine)
        async with httpx.AsyncClient() as http:
            for topic in topics:
                await start_run(procs[0], topic.split(":", 1)[1])
                r = await http.put(f"{procs[0].url}/api/runs/{topic}/lease", json={"ttl": hold})
                assert r.status_code == 200, r.text
        held_until = time.monotonic() + hold
        for client in clients:  # folded on every node: every node holds 10 leases
            for _ in topics:
                await recv_until(client, "workflow_start")
        for p in procs:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGSTOP)
        try:
            # the pause itself: the renewed leases and a watcher period pass meanwhile
            await asyncio.sleep(held_until + LEASE_TTL - time.monotonic())
        finally:
            for p in procs:
                assert p.proc is not None
                p.proc.send_signal(signal.SIGCONT)
        for client in clients:  # every client sees every run sealed, with the same seq
            got = [await recv_until(client, "publisher_lost", 10 * UNIT) for _ in topics]
            assert sorted(m["topic"] for m in got) == sorted(topics)
            assert {m["seq"] for m in got} == {2}
        # for three lease periods after, no second seal appears anywhere
        deadline = time.monotonic() + 3 * LEASE_TTL
        while time.monotonic() < deadline:
            for topic in topics:
                assert (await history_types(procs[0], topic)).count("publisher_lost") == 1
            await asyncio.sleep(0.1)
        sealed = [await metric(p, "agentcast_run_seals_total", outcome="sealed") for p in procs]
        assert sum(sealed) == len(topics), sealed
        for client in clients:  # and no client got another one
            await send(client, {"type": "ping", "id": "end"})
            while (frame := await recv(client, UNIT))["type"] != "pong":
                assert frame["type"] != "publisher_lost", frame
    finally:
        for client in clients:
            await client.close()


async def test_a_lease_renewed_through_one_node_holds_on_the_other(cluster: Any) -> None:
    nodes = cluster()
    a, b = await nodes.start(), await nodes.start()
    topic = "workflow:leased"
    async with websockets.connect(ws(b)) as on_b:
        await subscribe(on_b, topic)
        await start_run(a, "leased")
        async with httpx.AsyncClient() as http:
            r = await http.put(f"{a.url}/api/runs/{topic}/lease", json={"ttl": 4 * LEASE_TTL})
            assert r.status_code == 200, r.text
        renewed = time.monotonic()
        sealed = await recv_until(on_b, "publisher_lost", 20 * UNIT)
        waited = time.monotonic() - renewed
        # not at run_lease_ttl (1 s) after the last event, as B alone would have: at the
        # end of the renewal made through A (4 s)
        assert waited >= 4 * LEASE_TTL - 0.3, waited
        assert sealed["data"]["lease_ttl"] == 4 * LEASE_TTL
    assert (await history_types(a, topic)).count("publisher_lost") == 1


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 3600}, SECRET, "HS256")


async def test_a_ticket_from_one_node_opens_once_on_any(cluster: Any) -> None:
    nodes = cluster(AGENTCAST_JWT_SECRET=SECRET)
    a, b = await nodes.start(), await nodes.start()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token('alice')}"}) as http:
        r = await http.post(f"{a.url}/api/tickets")
    assert r.status_code == 200, r.text
    ticket = r.json()["ticket"]
    async with websockets.connect(f"{ws(b)}?ticket={ticket}") as on_b:
        await send(on_b, {"type": "ping", "id": 1})
        assert (await recv_until(on_b, "pong"))["id"] == 1
    for node in (a, b):  # used: refused on either node
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{ws(node)}?ticket={ticket}")
        assert refused.value.response.status_code == 401


async def test_the_run_store_is_written_once_per_event(cluster: Any, tmp_path: Path) -> None:
    nodes = cluster(AGENTCAST_STORE_URL=f"sqlite:///{tmp_path / 'runs.db'}")
    a, b = await nodes.start(), await nodes.start()
    topic = "workflow:stored-once"
    await start_run(a, "stored-once")
    for i in range(10):
        node_id = "a" if i % 2 else "b"
        await publish(
            a if i < 6 else b, topic, "node_status", {"node_id": node_id, "status": "running"}
        )
    last = await publish(b, topic, "workflow_complete", {"success": True, "execution_time": 1.0})
    assert last == 12

    async def stored() -> list[int]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{a.url}/api/runs/{topic}/events")
        return [e["seq"] for e in r.json()["events"]] if r.status_code == 200 else []

    async with asyncio.timeout(10 * UNIT):
        while await stored() != list(range(1, 13)):  # noqa: ASYNC110 - another process, bounded
            await asyncio.sleep(0.05)
    on_a = await metric(a, "agentcast_run_events_stored_total", source="recorded")
    on_b = await metric(b, "agentcast_run_events_stored_total", source="recorded")
    assert (on_a, on_b) == (7, 5)  # each event by the node that published it, once
    for node in (a, b):
        assert await metric(node, "agentcast_run_events_stored_total", source="filled") == 0


async def test_a_node_started_mid_run_gives_late_joiners_the_same_snapshot(cluster: Any) -> None:
    nodes = cluster(AGENTCAST_RUN_LEASE_TTL="60")
    a, b = await nodes.start(), await nodes.start()
    topic = "workflow:late"
    await start_run(a, "late")
    await publish(a, topic, "node_status", {"node_id": "a", "status": "completed", "result": 1})
    c = await nodes.start()  # sees the run from the middle
    await publish(b, topic, "node_status", {"node_id": "b", "status": "running"})
    await publish(b, topic, "log", {"level": "info", "message": "half way"})

    async def snapshot(node: ServerProcess) -> dict[str, Any]:
        async with websockets.connect(ws(node)) as client:
            await send(client, {"type": "subscribe", "topic": topic, "id": "s"})
            frame = await recv_until(client, "snapshot")
            return {"seq": frame["seq"], "data": frame["data"]}

    async with asyncio.timeout(10 * UNIT):  # every node has folded seq 4 (the last event)
        while True:
            snaps = [await snapshot(n) for n in (a, b, c)]
            if all(s["seq"] == 4 for s in snaps):
                break
            await asyncio.sleep(0.05)
    assert snaps[0] == snaps[1] == snaps[2]
    assert snaps[2]["data"]["execution_id"] == "e-late"
    assert snaps[2]["data"]["nodes"]["a"]["status"] == "completed"


async def test_events_a_node_never_recorded_are_filled_from_history(
    cluster: Any, tmp_path: Path
) -> None:
    """Node A records nothing (no run store: as a node that died before its recorder
    flushed); node B publishes the run's end, then finds A's events missing in the store
    and writes them from the broker's history."""
    nodes = cluster()
    a = await nodes.start()
    nodes.env = {**nodes.env, "AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'runs.db'}"}
    b = await nodes.start()
    topic = "workflow:filled"
    await start_run(a, "filled")
    for status in ("running", "completed"):
        await publish(a, topic, "node_status", {"node_id": "a", "status": status})
    await publish(b, topic, "workflow_complete", {"success": True, "execution_time": 1.0})

    async def stored() -> list[int]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{b.url}/api/runs/{topic}/events")
        return [e["seq"] for e in r.json()["events"]] if r.status_code == 200 else []

    async with asyncio.timeout(20 * UNIT):  # after fill_delay (2 s)
        while await stored() != [1, 2, 3, 4]:  # noqa: ASYNC110 - another process, bounded
            await asyncio.sleep(0.1)
    assert await metric(b, "agentcast_run_events_stored_total", source="recorded") == 1
    assert await metric(b, "agentcast_run_events_stored_total", source="filled") == 3
