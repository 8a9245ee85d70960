"""Peer (a): seed 000's connection manager as its users run it, a FastAPI app on uvicorn.

    for ws in self.active_connections[execution_id]: await ws.send_json(message)

(one ``json.dumps`` and one ASGI send per subscriber, as in the seed). The trigger is
GET /publish?topics=T&count=K&rate=R (same contract as the other peers).
"""

from __future__ import annotations

import os
import sys

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import event_dict, parse_publish, parse_subscribe, publish_loop, spawn


class WebSocketManager:
    """Seed 000: a dict of active connections per execution id."""

    def __init__(self) -> None:
        self.active_connections: dict[str, list[WebSocket]] = {}

    def connect(self, websocket: WebSocket, execution_id: str) -> None:
        self.active_connections.setdefault(execution_id, []).append(websocket)

    def disconnect(self, websocket: WebSocket, execution_id: str) -> None:
        connections = self.active_connections.get(execution_id, [])
        if websocket in connections:
            connections.remove(websocket)

    async def broadcast(self, execution_id: str, message: dict) -> None:  # type: ignore[type-arg]
        for websocket in list(self.active_connections.get(execution_id, [])):
            try:
                await websocket.send_json(message)
            except Exception:
                self.disconnect(websocket, execution_id)

    def fanout(self, execution_id: str) -> int:
        return len(self.active_connections.get(execution_id, ()))


websocket_manager = WebSocketManager()
app = FastAPI()


@app.websocket("/ws")
async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    mine: list[str] = []
    try:
        while True:
            topic = parse_subscribe(await websocket.receive_text())
            if topic is not None:
                websocket_manager.connect(websocket, topic)
                mine.append(topic)
                await websocket.send_json({"type": "subscribed", "topic": topic})
    except WebSocketDisconnect:
        for topic in mine:
            websocket_manager.disconnect(websocket, topic)


@app.get("/publish")
async def publish(request: Request) -> PlainTextResponse:
    names, count, rate = parse_publish(str(request.url))
    spawn(
        publish_loop(
            names,
            count,
            rate,
            websocket_manager.broadcast,
            websocket_manager.fanout,
            make=event_dict,
        )
    )
    return PlainTextResponse("ok\n", status_code=202)
