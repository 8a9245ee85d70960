"""Peer (d) python-socketio AsyncServer (ASGI, on uvicorn) with rooms.

Client: path /socket.io/?EIO=4&transport=websocket, sends '40' after the open packet,
then 42["join","t0"]; the server enters the room and emits 'subscribed'. Events are
emitted to the room with sio.emit(..., room=topic) (the packet is encoded once per emit).
"""

from __future__ import annotations

import os
import sys

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import event_dict, parse_publish, publish_loop, spawn

sio = socketio.AsyncServer(
    async_mode="asgi", cors_allowed_origins="*", logger=False, engineio_logger=False
)


@sio.event
async def join(sid: str, topic: str) -> None:
    await sio.enter_room(sid, topic)
    await sio.emit("subscribed", topic, to=sid)


def fanout(topic: str) -> int:
    return sum(1 for _ in sio.manager.get_participants("/", topic))


_fanout_cache: dict[str, int] = {}


def cached_fanout(topic: str) -> int:
    n = _fanout_cache.get(topic)
    if n is None:
        n = _fanout_cache[topic] = fanout(topic)
    return n


def send(topic: str, event: dict):  # type: ignore[no-untyped-def,type-arg]
    return sio.emit("node_status", event, room=topic)


async def publish(request: Request) -> PlainTextResponse:
    names, count, rate = parse_publish(str(request.url))
    _fanout_cache.clear()
    spawn(publish_loop(names, count, rate, send, cached_fanout, make=event_dict))
    return PlainTextResponse("ok\n", status_code=202)


trigger_app = Starlette(routes=[Route("/publish", publish, methods=["GET", "POST"])])
app = socketio.ASGIApp(sio, other_asgi_app=trigger_app)
