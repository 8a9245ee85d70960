"""The Redis broker against a real server, beyond the contract suite: what a publisher
learns when the connection fails (before sending: ``BrokerError``; after: outcome
unknown), an unreachable server at start, pub/sub connections killed under a subscriber
(no gap, no duplicate, counted), and the round trips a batch costs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio
import websockets

from agentcast.brokers.base import Draft
from agentcast.brokers.redis import RedisBroker, parse_redis_url
from agentcast.core.envelope import Publication
from agentcast.errors import BrokerError, ConfigError, PublishOutcomeUnknownError
from tests.conftest import UNIT, eventually, free_port, start_server, stop_server
from tests.services import delete_prefix, redis_prefix, require_redis


@dataclass
class Space:
    """A key prefix of its own on the test Redis, deleted afterwards."""

    url: str
    prefix: str
    brokers: list[RedisBroker] = field(default_factory=list)

    def broker(self, name: str, url: str | None = None, **options: object) -> RedisBroker:
        b = RedisBroker(f"{url or self.url}?prefix={self.prefix}", name=f"{self.prefix}-{name}")
        for key, value in options.items():
            setattr(b, key, value)
        self.brokers.append(b)
        return b


@pytest.fixture
async def space() -> AsyncIterator[Space]:
    url = require_redis()
    s = Space(url, redis_prefix())
    try:
        yield s
    finally:
        for b in s.brokers:
            await b.stop()
        await delete_prefix(url, s.prefix)


class Recorder:
    def __init__(self) -> None:
        self.got: list[Publication] = []
        self.changed = asyncio.Event()

    def __call__(self, pub: Publication) -> None:
        self.got.append(pub)
        self.changed.set()

    async def wait_for(self, check: object, timeout: float = 5 * UNIT) -> None:
        assert callable(check)
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


class Proxy:
    """A TCP proxy in front of Redis that can swallow the server's answers and then cut
    the connection: a request that reached the server whose answer never came back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.swallow = False
        self.blackhole = False
        """Drop what the server sends, silently (notifications lost on the way)."""
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again on the same port after :meth:`close`)."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.append(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
            try:
                while data := await src.read(65536):
                    if down and self.swallow:
                        writer.close()  # the answer is lost, the connection with it
                        up_writer.close()
                        return
                    if down and self.blackhole:
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, False)),
            asyncio.create_task(pump(up_reader, writer, True)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks)

    def cut(self) -> None:
        """Close every client connection (as a network failure would)."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def close(self) -> None:
        """Stop listening and cut every connection: Redis is gone, for this side."""
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in self._tasks:
            task.cancel()


async def kill_connections(url: str, name: str) -> int:
    """``CLIENT KILL`` every connection of the broker named ``name``; how many."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        killed = 0
        for info in await client.client_list():
            if info.get("name") == name:
                killed += await client.execute_command("CLIENT", "KILL", "ID", info["id"])
        return killed
    finally:
        await client.aclose()


def test_url_prefix_and_redaction() -> None:
    assert parse_redis_url("redis://h:1/2?prefix=app1&socket_timeout=3") == (
        "redis://h:1/2?socket_timeout=3",
        "app1",
    )
    assert parse_redis_url("redis://127.0.0.1")[1] == "agentcast"
    with pytest.raises(ConfigError, match=r"\*\*\*") as bad:
        parse_redis_url("redis://:hunter2@h/0?prefix=a*b")
    assert "hunter2" not in str(bad.value)
    assert "hunter2" not in repr(RedisBroker("redis://:hunter2@h:1/0"))


async def test_unreachable_at_start_is_a_broker_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    b = RedisBroker(f"redis://:hunter2@127.0.0.1:{port}/0")
    with pytest.raises(BrokerError) as raised:
        await b.start(Recorder())
    assert not isinstance(raised.value, PublishOutcomeUnknownError)
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "hunter2" not in str(raised.value) and "***" in str(raised.value)
    with pytest.raises(BrokerError):  # not started: nothing sent
        await b.publish("t", "e", b"{}", 1.0)


async def test_a_lost_answer_is_outcome_unknown_and_a_refused_connection_is_not(
    space: Space,
) -> None:
    port = int(space.url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    await proxy.start()
    try:
        via = space.broker("via-proxy", url=f"redis://127.0.0.1:{proxy.port}/0")
        await via.start(Recorder())
        direct = space.broker("direct")
        await direct.start(Recorder())
        assert (await via.publish("u", "e", b'{"n":1}', 1.0)).seq == 1

        proxy.swallow = True  # the next request reaches Redis, its answer is lost
        with pytest.raises(PublishOutcomeUnknownError):
            await via.publish_many([Draft("u", "e", b'{"n":2}', 1.0)] * 2)
        # it was applied: the publisher must read history before publishing again
        page = await direct.history("u", 0)
        assert [p.seq for p in page.publications] == [1, 2, 3]
        assert via.metrics()["errors"] >= 1

        proxy.swallow = False
        assert (await via.publish("u", "e", b"{}", 1.0)).seq == 4  # reconnects by itself

        await proxy.close()  # now nothing listens on the proxy's port
        for conn in list(via._pool._available_connections):  # type: ignore[union-attr]
            await conn.disconnect()
        with pytest.raises(BrokerError) as refused:
            await via.publish("u", "e", b"{}", 1.0)
        assert not isinstance(refused.value, PublishOutcomeUnknownError)
        assert (await direct.history("u", 0)).last_seq == 4  # nothing was assigned
    finally:
        await proxy.close()


async def test_a_batch_is_one_round_trip(space: Space) -> None:
    b = space.broker("rt")
    await b.start(Recorder())
    before = b.metrics()["round_trips"]
    pubs = await b.publish_many([Draft(f"t{i % 3}", "e", b"{}", 1.0) for i in range(30)])
    assert [p.seq for p in pubs if p.topic == "t0"] == list(range(1, 11))
    assert b.metrics()["round_trips"] - before == 1
    assert set(b.metrics()) == {"round_trips", "errors", "reconnects"}


async def test_a_loop_iterations_publishes_through_a_gateway_are_one_round_trip(
    space: Space,
) -> None:
    """200 token-like publishes on 20 topics from one loop iteration (``publish_nowait``):
    the gateway sends them as one batch, Redis sees one request."""
    from agentcast.gateway import Gateway
    from agentcast.settings import Settings

    broker = space.broker("gw")
    gateway = Gateway(Settings(), broker=broker)
    await gateway.start()
    try:
        assert not gateway.publishes_now  # no synchronous capability on Redis
        before = broker.metrics()["round_trips"]
        futures = [gateway.publish_nowait(f"chat:{i % 20}", "tok", {"i": i}) for i in range(200)]
        pubs = await asyncio.gather(*futures)
        assert broker.metrics()["round_trips"] - before == 1
        assert [p.seq for p in pubs if p.topic == "chat:3"] == list(range(1, 11))

        # 100 producers awaiting each of their 10 publishes: the batches carry one event
        # of each producer, so ~10 round trips for 1,000 events, not 1,000
        async def producer(k: int) -> list[int]:
            return [(await gateway.publish(f"run:{k}", "e", {"i": i})).seq for i in range(10)]

        before = broker.metrics()["round_trips"]
        seqs = await asyncio.gather(*(producer(k) for k in range(100)))
        assert all(s == list(range(1, 11)) for s in seqs)
        assert broker.metrics()["round_trips"] - before <= 20
    finally:
        await gateway.stop()


async def test_killed_pubsub_connection_resumes_and_redelivers_the_latest(space: Space) -> None:
    pub, sub = space.broker("pub"), space.broker("sub")
    rec = Recorder()
    await pub.start(Recorder())
    await sub.start(rec)
    await sub.listen("k")
    for _ in range(3):
        await pub.publish("k", "e", b"{}", 1.0)
    await rec.wait_for(lambda: len(rec.got) == 3)

    assert await kill_connections(space.url, sub.name) >= 1
    # published while the subscriber's connection is down or coming back: may be missed
    for _ in range(3):
        await pub.publish("k", "e", b"{}", 1.0)
    await rec.wait_for(lambda: sub.metrics()["reconnects"] == 1 and rec.got[-1].seq == 6)
    seqs = [p.seq for p in rec.got]
    assert seqs == sorted(set(seqs)), "in order, each once"
    # live again: the next ones arrive as they are published
    await pub.publish("k", "e", b"{}", 1.0)
    await rec.wait_for(lambda: rec.got[-1].seq == 7)


async def test_after_a_reconnect_the_latest_publication_is_delivered_again(
    space: Space,
) -> None:
    """Notifications 4 and 5 and 6 are lost on the way (the connection still looks fine),
    then the connection drops: once reconnected the broker delivers 6 again, the latest,
    so that a hub notices the gap (4, 5) and reads it from history."""
    port = int(space.url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    await proxy.start()
    try:
        pub = space.broker("pub")
        sub = space.broker("sub", url=f"redis://127.0.0.1:{proxy.port}/0")
        rec = Recorder()
        await pub.start(Recorder())
        await sub.start(rec)
        await sub.listen("r")
        await sub.listen("quiet")  # listened, never published: nothing to re-deliver
        for _ in range(3):
            await pub.publish("r", "e", b"{}", 1.0)
        await rec.wait_for(lambda: len(rec.got) == 3)
        proxy.blackhole = True
        for _ in range(3):
            await pub.publish("r", "e", b"{}", 1.0)
        proxy.cut()
        proxy.blackhole = False
        await rec.wait_for(lambda: sub.metrics()["reconnects"] == 1 and rec.got[-1].seq == 6)
        assert [p.seq for p in rec.got] == [1, 2, 3, 6]
        assert {p.epoch for p in rec.got} == {(await pub.history("r", 0)).epoch}
    finally:
        await proxy.close()


async def test_subscriber_on_a_node_whose_redis_connections_die_loses_nothing(
    space: Space,
) -> None:
    """Two gateways on one Redis; a WebSocket client on B while A publishes a steady
    stream; B's Redis connections are killed twice mid-stream: the client gets every seq
    once, in order (the hub fills what pub/sub lost from history)."""
    a_broker, b_broker = space.broker("node-a"), space.broker("node-b")
    a, a_task = await start_server(broker=a_broker)
    b, b_task = await start_server(broker=b_broker)
    total = 300
    try:
        async with websockets.connect(b.ws_url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "steady", "since": 0}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
            assert reply["type"] == "subscribed"
            got: list[int] = []

            async def produce() -> None:
                for n in range(total):
                    await a.gateway.publish("steady", "tick", {"n": n})
                    if n in (100, 200):
                        # the second kill once the first reconnect happened
                        done = n // 100 - 1
                        await eventually(lambda done=done: b_broker.metrics()["reconnects"] == done)
                        assert await kill_connections(space.url, b_broker.name) >= 1
                    await asyncio.sleep(0.001)

            producer = asyncio.create_task(produce())
            async with asyncio.timeout(20 * UNIT):
                while len(got) < total:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "tick":
                        got.append(frame["seq"])
            await producer
            assert got == list(range(1, total + 1))
            assert b_broker.metrics()["reconnects"] == 2
    finally:
        with contextlib.suppress(Exception):
            await stop_server(a, a_task)
        await stop_server(b, b_task)


async def test_redis_gone_and_back_under_a_node(space: Space) -> None:
    """Node B loses Redis (its proxy goes away) while a WebSocket client follows a topic
    that node A keeps publishing: B's publishers get HTTP 503, never a silent drop; when
    Redis is back, B reconnects by itself and its client gets every seq once, in order
    (those published meanwhile read from history)."""
    port = int(space.url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    await proxy.start()
    a_broker = space.broker("node-a")
    b_broker = space.broker("node-b", url=f"redis://127.0.0.1:{proxy.port}/0")
    a, a_task = await start_server(broker=a_broker)
    b, b_task = await start_server(broker=b_broker)
    try:
        async with websockets.connect(b.ws_url) as ws, httpx.AsyncClient() as http:
            await ws.send(json.dumps({"type": "subscribe", "topic": "o", "since": 0}))
            assert json.loads(await asyncio.wait_for(ws.recv(), UNIT))["type"] == "subscribed"
            got: list[int] = []

            async def read_until(seq: int) -> None:
                async with asyncio.timeout(10 * UNIT):
                    while not got or got[-1] < seq:
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "o-event":
                            got.append(frame["seq"])

            for n in range(10):
                await a.gateway.publish("o", "o-event", {"n": n})
            await read_until(10)

            await proxy.close()  # Redis unreachable from node B
            r = await http.post(
                f"{b.url}/api/topics/o/events", json={"type": "o-event", "data": {}}
            )
            assert r.status_code == 503, r.text
            assert r.json()["detail"]["code"] in ("unavailable", "outcome_unknown")
            for n in range(10, 20):
                await a.gateway.publish("o", "o-event", {"n": n})

            await proxy.start()  # back
            await read_until(20)
            r = await http.post(
                f"{b.url}/api/topics/o/events", json={"type": "o-event", "data": {}}
            )
            assert r.status_code == 200, r.text
            assert r.json()["seqs"] == [21]
            await read_until(21)
            assert got == list(range(1, 22))
            assert b_broker.metrics()["reconnects"] >= 1
            assert b_broker.metrics()["errors"] >= 1
    finally:
        await stop_server(a, a_task)
        await stop_server(b, b_task)
        await proxy.close()
