"""Peer (a) raw: asyncio + uvloop, hand-written RFC 6455 handshake and framing.

Each event is serialized and framed once; the same bytes are written with
transport.write() to every subscriber. Publishing honours transport back-pressure
(pause_writing/resume_writing) at each yield point. This is the practical ceiling for
one Python process on one core.  Usage: raw_server.py --port 8000 [--coalesce 16]
With --coalesce N (peer 'raw-coalesce') frames queue in a per-connection outbox that is
flushed with one write per loop iteration (what a gateway's outbox does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import struct
import sys

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    parse_publish,
    parse_publish_command,
    parse_subscribe,
    publish_loop,
    spawn,
    subscribed_text,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
topics: dict[str, set[WSProto]] = {}
n_paused = 0
drain_waiter: asyncio.Future[None] | None = None


def frame(op: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | op, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | op, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | op, 127, n) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class WSProto(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()
        self.ws = False
        self.paused = False
        self.mine: set[str] = set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.ws:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > 16384:
                    self.t.close()
                return
            head = bytes(self.buf[:i]).decode("latin-1")
            del self.buf[: i + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            target = parts[1] if len(parts) > 1 else "/"
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if target.startswith("/publish"):
                self.t.write(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                )
                self.t.close()
                names, count, rate = parse_publish(target)
                spawn(publish(names, count, rate))
                return
            key = headers.get("sec-websocket-key")
            if headers.get("upgrade", "").lower() != "websocket" or not key:
                self.t.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.t.close()
                return
            acc = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
            self.t.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n"
            )
            self.ws = True
        self.parse_frames()

    def parse_frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            op, n, pos = b0 & 0x0F, b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            mask = None
            if b1 & 0x80:
                if len(buf) < pos + 4:
                    return
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if mask:
                payload = unmask(payload, mask)
            if op in (1, 2):
                topic = parse_subscribe(payload)
                if topic is None and b'"publish"' in payload:  # optional WS trigger
                    cmd = parse_publish_command(payload)
                    if cmd is not None:
                        spawn(publish(*cmd))
                if topic is not None:
                    topics.setdefault(topic, set()).add(self)
                    self.mine.add(topic)
                    self.t.write(frame(1, subscribed_text(topic).encode()))
            elif op == 8:
                self.t.write(frame(8, payload[:2]))
                self.t.close()
                return
            elif op == 9:
                self.t.write(frame(0xA, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        for name in self.mine:
            subs = topics.get(name)
            if subs is not None:
                subs.discard(self)
        if self.paused:
            self.resume_writing()

    def pause_writing(self) -> None:
        global n_paused
        self.paused = True
        n_paused += 1

    def resume_writing(self) -> None:
        global n_paused
        if self.paused:
            self.paused = False
            n_paused -= 1
            if n_paused == 0 and drain_waiter is not None and not drain_waiter.done():
                drain_waiter.set_result(None)


async def wait_writable() -> None:
    global drain_waiter
    while n_paused > 0:
        drain_waiter = asyncio.get_running_loop().create_future()
        await drain_waiter


def send(topic: str, text: str) -> None:
    data = frame(1, text.encode())
    for p in topics.get(topic, ()):
        p.t.write(data)


def fanout(topic: str) -> int:
    return len(topics.get(topic, ()))


# --coalesce N: per-connection outbox flushed once per loop iteration with one write, and the
# publisher yields every ~N*1000 frames instead of ~1000, so up to ~N frames share one write.
COALESCE = 0
dirty: list[WSProto] = []
flush_scheduled = False


def flush_all() -> None:
    global flush_scheduled
    flush_scheduled = False
    for p in dirty:
        out = p.__dict__.pop("out", None)
        if out:
            p.t.write(b"".join(out))
    dirty.clear()


def send_coalesced(topic: str, text: str) -> None:
    global flush_scheduled
    data = frame(1, text.encode())
    for p in topics.get(topic, ()):
        out = p.__dict__.get("out")
        if out is None:
            p.__dict__["out"] = [data]
            dirty.append(p)
        else:
            out.append(data)
    if not flush_scheduled:
        flush_scheduled = True
        asyncio.get_running_loop().call_soon(flush_all)


def fanout_coalesced(topic: str) -> int:
    return max(1, len(topics.get(topic, ())) // COALESCE)


async def publish(names: list[str], count: int, rate: float) -> None:
    if COALESCE > 1:
        await publish_loop(
            names, count, rate, send_coalesced, fanout_coalesced, wait_writable=wait_writable
        )
    else:
        await publish_loop(names, count, rate, send, fanout, wait_writable=wait_writable)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(WSProto, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument(
        "--coalesce", type=int, default=0, help="frames per write (outbox); 0 = write each frame"
    )
    a = ap.parse_args()
    COALESCE = a.coalesce
    uvloop.run(main(a.port))
