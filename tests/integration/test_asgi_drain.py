"""The ASGI path drains on shutdown, as the native one does.

A real uvicorn serves the app through the ASGI adapter (uvicorn's own WebSocket protocol,
``DrainingServer``, the "asgi" variant of the test servers). When it stops while an answer
is streaming, the generation is cancelled and its last events (``done`` with status
``cancelled``, the stored partial answer) reach the client before the close, which is
1001 (not uvicorn's own 1012).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from agentcast.chat.service import Chat
from tests.conftest import UNIT, start_server
from tests.integration.chat.support import GatedAgent, chat_send, read_until


@pytest.mark.parametrize("transport", ["asgi", "native"])
async def test_stopping_delivers_the_cancelled_answer_then_closes_with_1001(
    transport: str,
) -> None:
    running, task = await start_server(transport, offline_tokens_per_second=0)
    agent = GatedAgent(before=2, after=2)
    running.gateway.feature(Chat).register_agent("gated", agent, default=True)
    frames: list[dict[str, Any]] = []
    try:
        async with websockets.connect(running.ws_url) as ws:
            await chat_send(ws, "Hello?", id=1)
            frames += await read_until(
                ws, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 1
            )
            running.server.should_exit = True  # what SIGTERM does
            async with asyncio.timeout(10 * UNIT):
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        frames.append(json.loads(await ws.recv()))
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1001,
                "server shutting down",
            )
        await asyncio.wait_for(task, 10 * UNIT)
    finally:
        if not task.done():
            running.server.should_exit = True
            await asyncio.wait_for(task, 10 * UNIT)
    events = [f for f in frames if "seq" in f]
    assert [f["seq"] for f in events] == list(range(1, len(events) + 1))
    assert [(f["type"], f["data"].get("chunk")) for f in events[1:3]] == [
        ("chat:streaming", "a0 "),
        ("chat:streaming", "a1 "),
    ]
    done, answer = events[-2], events[-1]
    assert (done["data"]["done"], done["data"]["status"]) == (True, "cancelled")
    assert (answer["type"], answer["data"]["status"]) == ("chat:message", "cancelled")
    assert (answer["data"]["content"], answer["data"]["error"]) == (
        "a0 a1 ",
        "server shutting down",
    )
