"""Following a conversation through a SIGTERM restart: nothing lost, nothing repeated.

The server is ``agentcast serve`` in a subprocess with a SQLite store and the offline
agent streaming slowly. While an answer streams, the server gets SIGTERM: the generation
is cancelled, its last events (``done`` with status ``cancelled``, the stored partial
answer) reach the connected client before the close with 1001. A second client that left
earlier resumes after the restart from the store: every seq it missed, in order, once,
``recovered: true``; and the conversation's numbering goes on after the restart.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import websockets

from agentcast.brokers.base import DURABLE_EPOCH
from tests.conftest import UNIT, ServerProcess, free_port
from tests.integration.chat.support import chat_send, read_answer, read_until
from tests.integration.wsutil import recv, recv_until, send

QUESTION = (
    "Please walk me through every batch job that ran tonight, which ones failed, why they "
    "failed, what the operators did about it and what we should change before tomorrow"
)


def events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "seq" in f and f["type"] != "snapshot"]


async def test_follow_a_conversation_across_a_sigterm_restart(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'chat.db'}",
        "AGENTCAST_OFFLINE_TOKENS_PER_SECOND": "20",
    }
    first = ServerProcess(port, env=env)
    await asyncio.to_thread(first.start)
    second: ServerProcess | None = None
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        async with websockets.connect(url) as ws, websockets.connect(url) as tab:
            await chat_send(ws, QUESTION, id=1)
            frames = await read_until(ws, lambda f: f["type"] == "chat:accepted")
            accepted = frames[-1]
            topic = accepted["data"]["topic"]
            cid = accepted["data"]["conversation_id"]
            # a second tab follows from the start, then leaves mid-answer
            await send(tab, {"type": "subscribe", "topic": topic, "since": 0, "id": "t"})
            reply = await recv_until(tab, "subscribed")
            assert reply["data"]["epoch"] == DURABLE_EPOCH
            seen = events(
                await read_until(
                    tab, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 1
                )
            )
            await tab.close()
            frames += await read_until(
                ws, lambda f: f["type"] == "chat:streaming" and f["data"]["index"] == 4
            )
            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)
            # the rest, until the server closes: the stopped generation's last events first
            async with asyncio.timeout(20 * UNIT):
                try:
                    while True:
                        frames.append(json.loads(await ws.recv()))
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code == 1001
            code = await asyncio.to_thread(first.proc.wait, 20 * UNIT)
            assert code in (0, -signal.SIGTERM), first.output()
        before = events(frames)
        assert [f["seq"] for f in before] == list(range(1, len(before) + 1))
        done, answer = before[-2], before[-1]
        assert (done["type"], done["data"]["done"], done["data"]["status"]) == (
            "chat:streaming",
            True,
            "cancelled",
        )
        assert answer["type"] == "chat:message" and answer["data"]["status"] == "cancelled"
        assert answer["data"]["error"] == "server shutting down"
        partial = "".join(f["data"]["chunk"] for f in before if f["type"] == "chat:streaming")
        assert answer["data"]["content"] == partial and partial
        last = answer["seq"]

        second = ServerProcess(port, env=env)
        await asyncio.to_thread(second.start)
        # the tab comes back: everything after what it saw, from the store
        async with websockets.connect(url) as tab:
            since = seen[-1]["seq"]
            await send(
                tab,
                {"type": "subscribe", "topic": topic, "since": since, "epoch": DURABLE_EPOCH},
            )
            reply = await recv_until(tab, "subscribed")
            assert reply["data"]["recovered"] is True
            assert (reply["data"]["seq"], reply["data"]["epoch"]) == (last, DURABLE_EPOCH)
            missed = [await recv(tab) for _ in range(last - since)]
            assert missed == before[since:]  # exact seqs since+1 … last, the same frames
        # the first client resumes where it was and goes on with the conversation
        async with websockets.connect(url) as ws:
            await send(
                ws, {"type": "subscribe", "topic": topic, "since": last, "epoch": DURABLE_EPOCH}
            )
            reply = await recv_until(ws, "subscribed")
            assert (reply["data"]["recovered"], reply["data"]["seq"]) == (True, last)
            await chat_send(ws, "Thanks. And yesterday?", conversation_id=cid, id=2)
            more = events(await read_answer(ws, 20 * UNIT))
        assert [f["seq"] for f in more] == list(range(last + 1, last + 1 + len(more)))
        assert more[-1]["data"]["status"] == "complete"
    finally:
        first.stop()
        first.log.close()
        if second is not None:
            second.stop()
            second.log.close()
