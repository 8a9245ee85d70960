"""Peer (a): seed 000's connection manager as its users run it, a FastAPI app on uvicorn.

The manager keeps a list of WebSockets per execution id and broadcasts with
``for ws in connections: await ws.send_json(message)``: one ``json.dumps`` and one ASGI
send per subscriber, as in the seed. Topics stand in for execution ids.
"""

from __future__ import annotations

from typing import Any

from common import event, parse_publish, parse_subscribe, publish_loop, spawn
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect


class WebSocketManager:
    """Seed 000: active connections per execution id."""

    def __init__(self) -> None:
        self.active_connections: dict[str, list[WebSocket]] = {}

    def connect(self, websocket: WebSocket, execution_id: str) -> None:
        self.active_connections.setdefault(execution_id, []).append(websocket)

    def disconnect(self, websocket: WebSocket, execution_id: str) -> None:
        connections = self.active_connections.get(execution_id, [])
        if websocket in connections:
            connections.remove(websocket)

    async def broadcast(self, execution_id: str, message: dict[str, Any]) -> None:
        for websocket in list(self.active_connections.get(execution_id, [])):
            try:
                await websocket.send_json(message)
            except Exception:
                self.disconnect(websocket, execution_id)


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
async def publish(request: Request) -> Response:
    names, count, rate = parse_publish(str(request.url))
    fanout = websocket_manager.active_connections
    spawn(
        publish_loop(
            names,
            count,
            rate,
            websocket_manager.broadcast,
            lambda topic: len(fanout.get(topic, ())),
            make=event,
        )
    )
    return Response(status_code=202)
