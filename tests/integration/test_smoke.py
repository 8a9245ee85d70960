from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from tests.conftest import UNIT, RunningServer


async def test_subscribe_then_receive_http_publish(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "smoke:1", "id": 1}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert reply["type"] == "subscribed"
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/topics/smoke:1/events", json={"type": "t", "data": {"k": 1}})
            assert r.status_code == 200, r.text
            assert r.json()["seqs"] == [1]
        event = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert event["seq"] == 1 and event["data"] == {"k": 1} and event["topic"] == "smoke:1"
