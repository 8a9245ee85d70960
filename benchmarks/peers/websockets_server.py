"""Peer (b) websockets (asyncio implementation, websockets>=14 API) with websockets.broadcast().

The HTTP trigger is served from process_request (websockets only parses GET requests).
Usage: websockets_server.py --port 8000
"""

from __future__ import annotations

import argparse
import http
import os
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_publish, parse_subscribe, publish_loop, spawn, subscribed_text

topics: dict[str, set[ServerConnection]] = {}


def send(topic: str, text: str) -> None:
    broadcast(topics.get(topic, ()), text)


def fanout(topic: str) -> int:
    return len(topics.get(topic, ()))


def process_request(connection: ServerConnection, request: Request):  # type: ignore[no-untyped-def]
    if request.path.startswith("/publish"):
        names, count, rate = parse_publish(request.path)
        spawn(publish_loop(names, count, rate, send, fanout))
        return connection.respond(http.HTTPStatus.ACCEPTED, "ok\n")
    return None


async def handler(ws: ServerConnection) -> None:
    mine: set[str] = set()
    try:
        async for message in ws:
            topic = parse_subscribe(message)
            if topic is not None:
                topics.setdefault(topic, set()).add(ws)
                mine.add(topic)
                await ws.send(subscribed_text(topic))
    finally:
        for name in mine:
            topics.get(name, set()).discard(ws)


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, process_request=process_request, compression=None, backlog=4096
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    uvloop.run(main(ap.parse_args().port))
