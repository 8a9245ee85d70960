"""Peer (d), the floor: a minimal hand-written asyncio + uvloop WebSocket server.

Hand-written handshake and framing; each event is serialized and framed once and the same
bytes go to every subscriber with one ``transport.write`` per frame (what every existing
server does). The publisher honours back-pressure (``pause_writing``) at each yield.
Usage: raw_server.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import struct

import uvloop
from common import parse_publish, parse_subscribe, publish_loop, spawn, subscribed

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
topics: dict[str, set[Conn]] = {}
paused: set[Conn] = set()
drain: asyncio.Event | None = None


def frame(op: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | op, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | op, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | op, 127, n) + payload


class Conn(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()
        self.open = False
        self.mine: set[str] = set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            target = head[0].split(" ")[1]
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
            }
            if target.startswith("/publish"):
                self.t.write(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.t.close()
                spawn(publish_loop(*parse_publish(target), send, fanout, drained=drained))
                return
            key = headers.get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.t.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
        buf = self.buf
        while len(buf) >= 6:  # client frames are masked; small ones only (subscribe, close)
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            pos = 2 if n < 126 else 4 if n == 126 else 10
            n = n if n < 126 else int.from_bytes(buf[2:pos], "big")
            if len(buf) < pos + 4 + n:
                return
            mask = buf[pos : pos + 4]
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(buf[pos + 4 : pos + 4 + n]))
            del buf[: pos + 4 + n]
            if op == 1 and (topic := parse_subscribe(payload)) is not None:
                topics.setdefault(topic, set()).add(self)
                self.mine.add(topic)
                self.t.write(frame(1, subscribed(topic).encode()))
            elif op == 8:
                self.t.write(frame(8, payload[:2]))
                self.t.close()
                return
            elif op == 9:
                self.t.write(frame(10, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        for topic in self.mine:
            topics[topic].discard(self)
        self.resume_writing()

    def pause_writing(self) -> None:
        paused.add(self)

    def resume_writing(self) -> None:
        paused.discard(self)
        if not paused and drain is not None:
            drain.set()


async def drained() -> None:
    global drain
    while paused:
        drain = asyncio.Event()
        await drain.wait()


def send(topic: str, text: str) -> None:
    data = frame(1, text.encode())
    for conn in topics.get(topic, ()):
        conn.t.write(data)


def fanout(topic: str) -> int:
    return len(topics.get(topic, ()))


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    uvloop.run(main(ap.parse_args().port))
