"""Peer (d), the floor: a minimal hand-written asyncio + uvloop WebSocket server.

Hand-written handshake and framing; each event is serialized and framed once and the same
bytes go to every subscriber with one ``transport.write`` per frame (what every existing
server does). The publisher honours back-pressure (``pause_writing``) at each yield.
Usage: raw_server.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from common import (
    HandWrittenWS,
    frame,
    parse_publish,
    parse_subscribe,
    publish_loop,
    spawn,
    subscribed,
)

topics: dict[str, set[Conn]] = {}
paused: set[Conn] = set()
drain: asyncio.Event | None = None


class Conn(HandWrittenWS):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.mine: set[str] = set()

    def request(self, target: str, headers: dict[str, str]) -> bool:
        if not target.startswith("/publish"):
            return True
        self.t.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.t.close()
        spawn(publish_loop(*parse_publish(target), send, fanout, drained=drained))
        return False

    def text(self, payload: bytes) -> None:
        if (topic := parse_subscribe(payload)) is not None:
            topics.setdefault(topic, set()).add(self)
            self.mine.add(topic)
            self.t.write(frame(1, subscribed(topic).encode()))

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
