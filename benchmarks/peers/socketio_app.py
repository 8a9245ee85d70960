"""Peer (b): python-socketio ``AsyncServer`` rooms (ASGI) on uvicorn.

Clients connect to ``/socket.io/?EIO=4&transport=websocket``, send ``40``, then
``42["join","t0"]``; the server enters the room and emits ``subscribed``. Events go out
with ``sio.emit("node_status", event, room=topic)`` (one packet encoding per emit).
"""

from __future__ import annotations

from typing import Any

import socketio
from common import event, parse_publish, publish_loop, spawn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
rooms: dict[str, int] = {}


@sio.event
async def join(sid: str, topic: str) -> None:
    await sio.enter_room(sid, topic)
    rooms[topic] = rooms.get(topic, 0) + 1
    await sio.emit("subscribed", topic, to=sid)


def send(topic: str, message: dict[str, Any]) -> Any:
    return sio.emit("node_status", message, room=topic)


async def publish(request: Request) -> Response:
    names, count, rate = parse_publish(str(request.url))
    spawn(publish_loop(names, count, rate, send, lambda topic: rooms.get(topic, 0), make=event))
    return Response(status_code=202)


app = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/publish", publish)]))
