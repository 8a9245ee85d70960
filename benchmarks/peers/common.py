"""What every peer server shares: the event, the subscribe frame, the trigger, the
publisher, and the hand-written WebSocket server side of the floors (``raw_server.py``,
``chat_relay.py``: handshake, framing, client frames).

The contract (the same for agentcast, through its ``--bench-endpoint``):

* a client text frame ``{"action":"subscribe","topic":"t0"}`` subscribes the connection
  and is answered with a frame containing ``subscribed``;
* ``GET /publish?topics=T&count=K&rate=R`` answers 202 at once, then publishes K events
  round-robin over topics ``t0 … t{T-1}``, as fast as possible (``rate=0``) or R per second;
* each event is serialized once and the same text goes to every subscriber; it carries
  ``"ts"``, CLOCK_REALTIME in ns taken when the event is made (the client's latency origin).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

YIELD_EVERY_WRITES = 1000
"""A publishing burst yields to the event loop after about this many frame writes."""


def event(topic: str, k: int) -> dict[str, Any]:
    """The same envelope agentcast sends (~200 bytes as JSON)."""
    ns = time.time_ns()
    return {
        "type": "node_status",
        "topic": topic,
        "seq": k + 1,
        "timestamp": datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds"),
        "data": {
            "workflow_id": f"wf-{topic}",
            "execution_id": f"exec-{k:08d}",
            "node_id": "node7",
            "status": "running",
            "progress": 42.0,
            "ts": ns,
        },
    }


def event_text(topic: str, k: int) -> str:
    return json.dumps(event(topic, k))


def subscribed(topic: str) -> str:
    return json.dumps({"type": "subscribed", "topic": topic})


def parse_subscribe(text: str | bytes) -> str | None:
    """The topic of a subscribe frame, or None."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if isinstance(msg, dict) and msg.get("action") == "subscribe":
        topic = msg.get("topic")
        return topic if isinstance(topic, str) else None
    return None


def parse_publish(target: str) -> tuple[list[str], int, float]:
    """``/publish?topics=T&count=K&rate=R`` -> (topic names, count, rate)."""
    q = parse_qs(urlsplit(target).query)
    topics = int(q.get("topics", ["1"])[0])
    return (
        [f"t{i}" for i in range(topics)],
        int(q.get("count", ["1000"])[0]),
        float(q.get("rate", ["0"])[0]),
    )


async def publish_loop(
    names: list[str],
    count: int,
    rate: float,
    send: Callable[[str, Any], Awaitable[Any] | None],
    fanout: Callable[[str], int],
    make: Callable[[str, int], Any] = event_text,
    drained: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Publish ``count`` events round-robin over ``names`` (``rate`` <= 0: a burst).

    ``send(topic, event)`` delivers one event to every subscriber (it may return an
    awaitable); ``fanout(topic)`` counts them, to yield every ~1,000 writes; ``drained``,
    if given, is awaited at each yield (the raw peer's back-pressure).
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writes = 0
    for k in range(count):
        topic = names[k % len(names)]
        if rate > 0:
            delay = t0 + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                writes = 0
        pending = send(topic, make(topic, k))
        if pending is not None:
            await pending
        writes += fanout(topic) or 1
        if writes >= YIELD_EVERY_WRITES:
            writes = 0
            await asyncio.sleep(0)
            if drained is not None:
                await drained()


_tasks: set[asyncio.Task[None]] = set()


def spawn(coro: Awaitable[None]) -> None:
    """Run a publisher in the background (keeping a reference to its task)."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(op: int, payload: bytes) -> bytes:
    """One final, unmasked server frame (``op`` 1 text, 8 close, 10 pong)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | op, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | op, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | op, 127, n) + payload


class HandWrittenWS(asyncio.Protocol):
    """The floors' server connection: the HTTP request head by hand, the WebSocket upgrade,
    the client's (masked, small) frames; close and ping answered here.

    Subclasses get :meth:`request` (return False to refuse the upgrade: the subclass
    answered the request itself) and :meth:`text` (one client text frame).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()
        self.open = False

    def request(self, target: str, headers: dict[str, str]) -> bool:
        """The request head before the upgrade; False: not upgraded (answered already)."""
        return True

    def text(self, payload: bytes) -> None:
        """One text frame from the client."""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
            }
            if not self.request(head[0].split(" ")[1], headers):
                return
            key = headers.get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.t.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
        buf = self.buf
        while len(buf) >= 6:  # client frames are masked; small ones only
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            pos = 2 if n < 126 else 4 if n == 126 else 10
            n = n if n < 126 else int.from_bytes(buf[2:pos], "big")
            if len(buf) < pos + 4 + n:
                return
            mask = buf[pos : pos + 4]
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(buf[pos + 4 : pos + 4 + n]))
            del buf[: pos + 4 + n]
            if op == 1:
                self.text(payload)
            elif op == 8:
                self.t.write(frame(8, payload[:2]))
                self.t.close()
                return
            elif op == 9:
                self.t.write(frame(10, payload))
