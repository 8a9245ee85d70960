"""Wire protocol v1 over real loopback connections, against both transports."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
import websockets
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from agentcast.codes import CloseCode
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.wsutil import RawClient, recv, recv_until, send, subscribe


async def test_ping_text_and_json(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await send(ws, "ping")
        pong = await recv(ws)
        assert pong["type"] == "pong" and pong["timestamp"].endswith("Z") and pong["data"] == {}
        await send(ws, {"type": "ping", "id": 42})
        assert (await recv(ws))["id"] == 42


async def test_bad_input_gets_error_frames_and_connection_survives(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws, websockets.connect(server.ws_url) as other:
        await subscribe(other, "t")
        cases = [
            ("{not json", "bad_json"),
            ("[1]", "bad_frame"),
            (json.dumps({"type": "launch", "id": "x1"}), "unknown_command"),
            (json.dumps({"type": "subscribe", "topic": "a b", "id": 7}), "invalid_topic"),
            (json.dumps({"type": "subscribe", "topic": "t", "since": -3}), "invalid_field"),
            (json.dumps({"type": "unsubscribe", "topic": "never"}), "not_subscribed"),
        ]
        for text, code in cases:
            await send(ws, text)
            err = await recv(ws)
            assert err["type"] == "error" and err["data"]["code"] == code, (text, err)
            assert "topic" not in err and "seq" not in err
        assert err["data"]["message"]
        await ws.send(b"\x00\x01")
        assert (await recv(ws))["data"]["code"] == "binary_unsupported"
        # the id of an unparseable-but-JSON frame is echoed
        await send(ws, {"type": "launch", "id": "x2"})
        assert (await recv(ws))["id"] == "x2"
        # still serving both connections
        await send(ws, {"type": "publish", "topic": "t", "event": "e", "data": {"n": 1}, "id": "p"})
        ack = await recv_until(ws, "ack")
        assert ack["data"] == {"topic": "t", "seq": 1} and ack["id"] == "p"
        event = await recv(other)
        assert (event["type"], event["seq"], event["data"]) == ("e", 1, {"n": 1})


async def test_oversized_frame_closes_1009_and_others_keep_going(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as other:
        await subscribe(other, "t")
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            await ws.send("x" * (server.gateway.settings.max_message_bytes + 1))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), UNIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        await server.gateway.publish("t", "e", {})
        assert (await recv(other))["seq"] == 1


async def test_fragmented_text_message_is_reassembled(native_server: RunningServer) -> None:
    async with websockets.connect(native_server.ws_url) as ws:
        await ws.send(iter(['{"type":"pi', 'ng","id":', '"frag"}']))
        assert (await recv(ws))["id"] == "frag"
        await ws.send(iter([b"\x00", b"\x01"]))
        assert (await recv(ws))["data"]["code"] == "binary_unsupported"


async def test_invalid_utf8_closes_1007(native_server: RunningServer) -> None:
    raw = await RawClient.connect(native_server.port)
    # a masked text frame with an invalid UTF-8 payload, written by hand
    raw.writer.write(bytes((0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28)))
    code, _, _ = await raw.read_until_close()
    assert code == 1007
    raw.close()


async def test_subscribe_replay_live_and_unsubscribe(server: RunningServer) -> None:
    gw = server.gateway
    for n in range(1, 4):
        await gw.publish("run:1", "step", {"n": n})
    async with websockets.connect(server.ws_url) as ws:
        live = await subscribe(ws, "run:1")
        epoch = live["data"].pop("epoch")
        assert live["data"] == {"seq": 3, "recovered": True, "since": None, "first_seq": 1}
        assert isinstance(epoch, str)
        assert epoch
        await gw.publish("run:1", "step", {"n": 4})
        assert (await recv(ws))["seq"] == 4
    async with websockets.connect(server.ws_url) as ws:
        reply = await subscribe(ws, "run:1", since=1)
        assert reply["data"]["recovered"] is True
        assert [(await recv(ws))["seq"] for _ in range(3)] == [2, 3, 4]
        again = await subscribe(ws, "run:1", since=0)  # already subscribed: no replay
        assert again["data"]["seq"] == 4
        await send(ws, {"type": "unsubscribe", "topic": "run:1", "id": "u"})
        assert (await recv(ws))["type"] == "unsubscribed"
        await gw.publish("run:1", "step", {"n": 5})
        await send(ws, "ping")
        assert (await recv(ws))["type"] == "pong"  # and not event 5


async def test_history_lost_is_explicit() -> None:
    running, task = await start_server("native", history_max_events=3)
    try:
        for n in range(10):
            await running.gateway.publish("t", "e", {"n": n})
        async with websockets.connect(running.ws_url) as ws:
            reply = await subscribe(ws, "t", since=2)
            epoch = reply["data"].pop("epoch")
            assert reply["data"] == {"seq": 10, "recovered": False, "since": 2, "first_seq": 8}
            assert [(await recv(ws))["seq"] for _ in range(3)] == [8, 9, 10]
            reset = await subscribe(ws, "u", since=99)  # a topic this server never saw
            assert reset["data"]["recovered"] is False
        async with websockets.connect(running.ws_url) as ws:
            # the right epoch resumes; another epoch (a reset topic) is told, and replayed whole
            await ws.send(
                json.dumps({"type": "subscribe", "topic": "t", "since": 9, "epoch": epoch})
            )
            ok = await recv(ws)
            assert ok["data"]["recovered"] is True
            assert (await recv(ws))["seq"] == 10
            await ws.send(json.dumps({"type": "subscribe", "topic": "u2", "since": 0}))
            await recv(ws)
        async with websockets.connect(running.ws_url) as ws:
            await ws.send(
                json.dumps({"type": "subscribe", "topic": "t", "since": 9, "epoch": "older"})
            )
            reset = await recv(ws)
            assert reset["data"]["recovered"] is False
            assert reset["data"]["epoch"] == epoch
            assert [(await recv(ws))["seq"] for _ in range(3)] == [8, 9, 10]
    finally:
        await stop_server(running, task)


async def test_resume_after_server_side_disconnect_while_publishing(server: RunningServer) -> None:
    gw = server.gateway
    total = 400
    stop = asyncio.Event()

    async def producer() -> None:
        for n in range(1, total + 1):
            await gw.publish("live:1", "tick", {"n": n})
            await asyncio.sleep(0)
        stop.set()

    seen: list[int] = []
    closes: list[int] = []
    since: int | None = None
    prod = asyncio.create_task(producer())
    async with asyncio.timeout(20 * UNIT):
        while not seen or seen[-1] < total:
            async with websockets.connect(server.ws_url) as ws:
                await subscribe(ws, "live:1", since=since if since is not None else 0)
                try:
                    while not seen or seen[-1] < total:
                        msg = await recv(ws, 5 * UNIT)
                        seen.append(msg["seq"])
                        if len(seen) in (50, 200):  # the server drops us mid-stream
                            for session in list(gw.sessions.values()):
                                gw.close(session, CloseCode.SLOW_CONSUMER)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    closes.append(exc.rcvd.code)
                since = seen[-1]
    await prod
    assert stop.is_set()
    assert seen == list(range(1, total + 1))
    # the second drop can land after the last event was already on the wire
    assert closes and set(closes) == {4001}


async def test_slow_consumer_closed_fast_one_unaffected() -> None:
    """A client that stops reading is closed with 4001; one that keeps up is untouched."""
    running, task = await start_server(
        "native", outbox_max_bytes=256 * 1024, write_high_water=16 * 1024, history_max_events=100
    )
    gw = running.gateway
    loop = asyncio.get_running_loop()
    total = 5000  # 10 MB: more than the slow client's buffers, high water and outbox
    progress = 0
    moved = asyncio.Event()

    def advanced(seq: int) -> None:
        nonlocal progress
        progress = seq
        moved.set()

    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # no autotuning
        sock.connect(("127.0.0.1", running.port))
        sock.setblocking(False)
        # max_queue=1: the websockets client stops reading the socket when one message waits
        async with websockets.connect(running.ws_url, sock=sock, max_queue=1) as slow:
            await subscribe(slow, "firehose")
            ready = threading.Event()

            def read_fast() -> list[int]:
                # its own thread and loop; it reports progress so the producer never
                # outruns it by more than 50 events (it is, by construction, a fast reader)
                with websockets.sync.client.connect(running.ws_url) as fast:
                    fast.send(json.dumps({"type": "subscribe", "topic": "firehose"}))
                    assert json.loads(fast.recv(UNIT))["type"] == "subscribed"
                    ready.set()
                    seqs = []
                    for _ in range(total):
                        seqs.append(json.loads(fast.recv(10 * UNIT))["seq"])
                        loop.call_soon_threadsafe(advanced, seqs[-1])
                    return seqs

            reader = asyncio.ensure_future(asyncio.to_thread(read_fast))
            await asyncio.wait_for(asyncio.to_thread(ready.wait, 5 * UNIT), 6 * UNIT)
            blob = "x" * 2000
            for n in range(1, total + 1):
                while n - progress > 50:
                    moved.clear()
                    await asyncio.wait_for(moved.wait(), 10 * UNIT)
                await gw.publish("firehose", "blob", {"n": n, "blob": blob})
            seqs = await asyncio.wait_for(reader, 20 * UNIT)
            assert seqs == list(range(1, total + 1))
            assert gw.stats.slow_consumers == 1
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(slow.recv(), 5 * UNIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.SLOW_CONSUMER
            assert info.value.rcvd.reason == "slow consumer"
    finally:
        await stop_server(running, task)


async def test_keepalive_timeout_closes_4002() -> None:
    running, task = await start_server("native", ping_interval=0.2, ping_timeout=0.3)
    try:
        raw = await RawClient.connect(running.port)
        raw.send_text(json.dumps({"type": "subscribe", "topic": "t"}))
        code, reason, seen = await raw.read_until_close(10 * UNIT)
        assert code == CloseCode.KEEPALIVE_TIMEOUT and reason == "keepalive timeout"
        assert 9 in seen  # it was pinged first
        raw.close()
        # a client that answers pings stays connected across several ping periods
        raw = await RawClient.connect(running.port)
        raw.send_text(json.dumps({"type": "subscribe", "topic": "t", "id": 1}))
        assert json.loads((await raw.read_frame(5 * UNIT))[1])["type"] == "subscribed"
        pings = 0
        while pings < 4:  # each ping comes once the previous answer is ping_interval old
            opcode, payload = await raw.read_frame(10 * UNIT)
            assert opcode == 9, (opcode, payload)  # a ping, not a close
            raw.send_pong(payload)
            pings += 1
        raw.send_text("ping")
        assert json.loads((await raw.read_frame(5 * UNIT))[1])["type"] == "pong"
        raw.close()
    finally:
        await stop_server(running, task)


async def test_idle_connection_without_subscription_closes_4000() -> None:
    for transport in ("native", "asgi"):
        running, task = await start_server(transport, idle_timeout=0.3)
        try:
            async with websockets.connect(running.ws_url) as ws:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10 * UNIT)
                assert (
                    info.value.rcvd is not None and info.value.rcvd.code == CloseCode.IDLE_TIMEOUT
                )
        finally:
            await stop_server(running, task)


async def test_graceful_shutdown_closes_1001() -> None:
    running, task = await start_server("native")
    async with websockets.connect(running.ws_url) as ws:
        await subscribe(ws, "t")
        running.server.should_exit = True
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5 * UNIT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert info.value.rcvd.reason == "server shutting down"
    await asyncio.wait_for(task, 10 * UNIT)


async def test_too_many_subscriptions() -> None:
    running, task = await start_server("native", max_subscriptions=2)
    try:
        async with websockets.connect(running.ws_url) as ws:
            await subscribe(ws, "a")
            await subscribe(ws, "b")
            await send(ws, {"type": "subscribe", "topic": "c", "id": 3})
            err = await recv(ws)
            assert err["data"]["code"] == "too_many_subscriptions" and err["id"] == 3
    finally:
        await stop_server(running, task)


async def test_publish_from_worker_threads(server: RunningServer) -> None:
    gw = server.gateway
    async with websockets.connect(server.ws_url) as ws:
        await subscribe(ws, "threads")

        def work(worker: int) -> list[int]:
            return [
                gw.publish_threadsafe("threads", "e", {"w": worker, "i": i}).result(UNIT * 5).seq
                for i in range(50)
            ]

        results = await asyncio.gather(*(asyncio.to_thread(work, w) for w in range(4)))
        seqs = sorted(s for r in results for s in r)
        assert seqs == list(range(1, 201))
        got = [(await recv(ws))["seq"] for _ in range(200)]
        assert got == list(range(1, 201))


async def test_stop_lets_commands_in_flight_finish() -> None:
    """A subscribe whose authorizer is still thinking completes during shutdown."""
    running, task = await start_server("native")
    gw = running.gateway
    release = asyncio.Event()
    entered = asyncio.Event()

    class SlowAuthorizer:
        async def can_subscribe(self, principal: object, topic: str) -> bool:
            entered.set()
            await release.wait()
            return True

        def can_publish(self, principal: object, topic: str) -> bool:
            return True

    gw.authorizer = SlowAuthorizer()
    async with websockets.connect(running.ws_url) as ws:
        await send(ws, {"type": "subscribe", "topic": "t", "id": "s"})
        await asyncio.wait_for(entered.wait(), UNIT)
        stopping = asyncio.create_task(gw.stop())
        await asyncio.sleep(0)
        release.set()
        reply = await recv(ws)
        assert reply["type"] == "subscribed"
        assert reply["id"] == "s"
        await asyncio.wait_for(stopping, 5 * UNIT)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5 * UNIT)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
    await stop_server(running, task)


async def test_publish_accepts_any_mapping(server: RunningServer) -> None:
    """``Gateway.publish`` takes ``data: Mapping``: a read-only view or another Mapping
    type is published like a dict (also on run topics, whose ids get filled in)."""
    from collections.abc import Iterator, Mapping
    from types import MappingProxyType
    from typing import Any

    class Event(Mapping[str, Any]):
        def __init__(self, **items: Any) -> None:
            self._items = items

        def __getitem__(self, key: str) -> Any:
            return self._items[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._items)

        def __len__(self) -> int:
            return len(self._items)

    gw = server.gateway
    async with websockets.connect(server.ws_url) as ws:
        await subscribe(ws, "m")
        await subscribe(ws, "execution:m")
        await gw.publish("m", "e", MappingProxyType({"a": 1}))
        await gw.publish("m", "e", Event(b=2))
        await gw.publish("execution:m", "status_update", Event(status="running"))
        got = [await recv(ws) for _ in range(3)]
    assert [m["data"] for m in got] == [
        {"a": 1},
        {"b": 2},
        {"execution_id": "m", "status": "running"},
    ]
