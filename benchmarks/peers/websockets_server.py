"""Peer (c): ``websockets`` (asyncio ``serve()``) with ``broadcast()``, on uvloop.

The trigger is answered from ``process_request`` (websockets only parses GET requests).
Usage: websockets_server.py --port 8000
"""

from __future__ import annotations

import argparse
import http

import uvloop
from common import parse_publish, parse_subscribe, publish_loop, spawn, subscribed
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

topics: dict[str, set[ServerConnection]] = {}


def send(topic: str, text: str) -> None:
    broadcast(topics.get(topic, ()), text)


def fanout(topic: str) -> int:
    return len(topics.get(topic, ()))


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path.startswith("/publish"):
        spawn(publish_loop(*parse_publish(request.path), send, fanout))
        return connection.respond(http.HTTPStatus.ACCEPTED, "")
    return None


async def handler(ws: ServerConnection) -> None:
    mine: set[str] = set()
    try:
        async for message in ws:
            topic = parse_subscribe(message)
            if topic is not None:
                topics.setdefault(topic, set()).add(ws)
                mine.add(topic)
                await ws.send(subscribed(topic))
    finally:
        for topic in mine:
            topics[topic].discard(ws)


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, process_request=process_request, compression=None, backlog=4096
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    uvloop.run(main(ap.parse_args().port))
