"""Chat peer: the FastAPI WebSocket chat a team writes today (seed 001's flow, no storage).

For each ``chat:send`` it answers ``chat:accepted``, streams the completion from the
OpenAI-compatible upstream with one shared ``httpx.AsyncClient`` (the usual
``client.stream`` + ``aiter_lines`` loop), and sends every delta as
``await websocket.send_json({"type": "chat:streaming", ...})``, then a done frame. The
upstream URL comes from ``CHAT_UPSTREAM`` (default ``http://127.0.0.1:9100/v1``).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

UPSTREAM = os.environ.get("CHAT_UPSTREAM", "http://127.0.0.1:9100/v1")
app = FastAPI()
client = httpx.AsyncClient(
    timeout=httpx.Timeout(60.0),
    limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
)
tasks: set[asyncio.Task[Any]] = set()


async def answer(websocket: WebSocket, message: str, cid: str) -> None:
    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": message}]}
    async with client.stream("POST", f"{UPSTREAM}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                await websocket.send_json(
                    {
                        "type": "chat:streaming",
                        "data": {"conversation_id": cid, "chunk": delta, "done": False},
                    }
                )
    await websocket.send_json(
        {"type": "chat:streaming", "data": {"conversation_id": cid, "chunk": "", "done": True}}
    )


@app.websocket("/ws")
async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            command = json.loads(await websocket.receive_text())
            if command.get("type") == "chat:send":
                cid = str(command.get("id"))
                await websocket.send_json({"type": "chat:accepted", "id": command.get("id")})
                task = asyncio.create_task(answer(websocket, command["data"]["message"], cid))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        return
