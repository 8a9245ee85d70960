"""Agents the chat tests inject (the gateway's public agent interface), and helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection

from agentcast.chat.agents import ChatRequest
from agentcast.errors import AgentError
from tests.conftest import UNIT
from tests.integration.wsutil import recv, send


class GatedAgent:
    """Streams ``before`` chunks, waits for :attr:`gate`, then streams ``after`` chunks.

    Records every request it was called with and whether its stream was closed early.
    """

    name = "gated"

    def __init__(
        self,
        before: int = 3,
        after: int = 3,
        *,
        concurrency: int | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.before = before
        self.after = after
        self.concurrency = concurrency
        self.queue_key = f"gated-{id(self)}"
        self.fail = fail
        self.gate = asyncio.Event()
        self.calls: list[ChatRequest] = []
        self._called = asyncio.Condition()
        self.started = asyncio.Event()
        self.closed_early = asyncio.Event()

    async def wait_calls(self, n: int, timeout: float = 5 * UNIT) -> None:
        """Wait (bounded) until the agent was called ``n`` times."""
        async with asyncio.timeout(timeout), self._called:
            await self._called.wait_for(lambda: len(self.calls) >= n)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        self.calls.append(request)
        self.started.set()
        async with self._called:
            self._called.notify_all()
        finished = False
        try:
            for i in range(self.before):
                yield f"a{i} "
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            for i in range(self.after):
                yield f"b{i} "
            finished = True
        finally:
            if not finished:
                self.closed_early.set()


class FailingAgent:
    name = "failing"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        yield "partial "
        raise self.exc


async def chat_send(ws: ClientConnection, message: str, **data: Any) -> None:
    await send(
        ws, {"type": "chat:send", "id": data.pop("id", None), "data": {"message": message, **data}}
    )


async def read_answer(ws: ClientConnection, timeout: float = 5 * UNIT) -> list[dict[str, Any]]:
    """Frames up to and including the stored answer (``chat:message`` of the assistant)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws, timeout)
            frames.append(frame)
            if frame["type"] == "chat:message" and frame["data"]["role"] == "assistant":
                return frames


async def read_until(
    ws: ClientConnection, predicate: Any, timeout: float = 5 * UNIT
) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws, timeout)
            frames.append(frame)
            if predicate(frame):
                return frames


__all__ = ["AgentError", "FailingAgent", "GatedAgent", "chat_send", "read_answer", "read_until"]
