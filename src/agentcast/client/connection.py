"""Connection, subscriptions and resume (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.client import backoff
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.codes import CloseCode
from agentcast.errors import ClientError, ConnectionClosedError, HistoryLostError

__all__ = ["Client", "Event", "HistoryLost", "Subscription", "connect"]

_TERMINAL = {1002, 1007, 1008, 1009}
_REPLIES = {"subscribed", "unsubscribed", "pong", "ack", "error"}


def _terminal(code: int) -> bool:
    return code in _TERMINAL or 4500 <= code <= 4999


def ws_url_of(url: str) -> str:
    """``http://host:port`` → ``ws://host:port/ws`` (``https`` → ``wss``); ws URLs unchanged."""
    if url.startswith(("ws://", "wss://")):
        return url
    base = url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws"
    return "ws://" + base.removeprefix("http://") + "/ws"


@dataclass(frozen=True, slots=True)
class Event:
    """One topic event (or, with ``type == "snapshot"``, a run's state at ``seq``)."""

    type: str
    topic: str
    seq: int
    timestamp: str
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """The event as the server sent it."""
        return {
            "type": self.type,
            "topic": self.topic,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class HistoryLost:
    """``reset`` mode: events after ``since`` up to ``first_seq - 1`` could not be
    recovered (history evicted, or the topic was reset); the events that follow start
    again from the server's retained history. Drop your state of the topic."""

    topic: str
    since: int
    first_seq: int


@dataclass(eq=False)
class Subscription:
    """An async iterator of one topic's events; resumed across reconnections."""

    client: Client
    topic: str
    since: int | None
    on_history_lost: Literal["raise", "reset"]
    queue: asyncio.Queue[Event | HistoryLost | BaseException] = field(init=False)
    last: int | None = None
    epoch: str | None = None
    closed: bool = False

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.client.max_queue)
        self.last = self.since

    def command(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"type": "subscribe", "topic": self.topic}
        if self.last is not None:
            cmd["since"] = self.last
            if self.epoch is not None:
                cmd["epoch"] = self.epoch
        return cmd

    async def _on_subscribed(self, data: dict[str, Any]) -> None:
        asked = self.last
        self.epoch = data.get("epoch")
        if asked is None:
            self.last = int(data["seq"])
        elif not data.get("recovered", True):
            first = int(data["first_seq"])
            self.last = first - 1
            if self.on_history_lost == "raise":
                await self.queue.put(HistoryLostError(self.topic, asked, first))
            else:
                await self.queue.put(HistoryLost(self.topic, asked, first))

    async def _on_event(self, msg: dict[str, Any]) -> None:
        seq = int(msg["seq"])
        if msg["type"] == "snapshot":
            self.last = seq
        elif self.last is not None and seq <= self.last:
            return  # a duplicate after a resume
        else:
            self.last = seq
        await self.queue.put(
            Event(msg["type"], msg["topic"], seq, msg.get("timestamp", ""), msg.get("data", {}))
        )

    def __aiter__(self) -> AsyncIterator[Event | HistoryLost]:
        return self

    async def __anext__(self) -> Event | HistoryLost:
        if self.closed and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, BaseException):
            self.closed = True
            raise item
        return item

    async def unsubscribe(self) -> None:
        """Stop receiving this topic."""
        self.closed = True
        await self.client._unsubscribe(self)


class Client:
    """One WebSocket to an agentcast server, reconnecting and resuming as needed."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        max_queue: int = 10_000,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        reply_timeout: float = 30.0,
    ) -> None:
        self.url = ws_url_of(url)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.max_queue = max_queue
        self.reply_timeout = reply_timeout
        self.delays = functools.partial(
            backoff,
            initial_delay=initial_delay,
            min_delay=initial_delay,
            max_delay=max_delay,
            factor=2.0,
        )
        self.subscriptions: dict[str, Subscription] = {}
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self.connections = 0
        """How many times a connection was established (1 + reconnections)."""

    async def __aenter__(self) -> Client:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None
        if self._ws is not None:
            await self._ws.close()

    # -- API -----------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        *,
        on_history_lost: Literal["raise", "reset"] = "raise",
    ) -> Subscription:
        """Receive ``topic``'s events after ``since`` (None: live only; 0: all retained)."""
        if topic in self.subscriptions:
            raise ClientError(f"already subscribed to {topic!r}")
        sub = Subscription(self, topic, since, on_history_lost)
        self.subscriptions[topic] = sub
        if self._fatal is not None:
            sub.queue.put_nowait(self._fatal)
        elif self._ws is not None:
            asyncio.get_running_loop().create_task(self._send(self._ws, sub.command()))
        return sub

    async def publish(self, topic: str, type: str, data: dict[str, Any] | None = None) -> int:
        """Publish an event over the WebSocket; returns its seq (waits for the ack)."""
        reply = await self.request(
            {"type": "publish", "topic": topic, "event": type, "data": data or {}}
        )
        return int(reply["data"]["seq"])

    async def ping(self) -> None:
        """Round-trip an application-level ping."""
        await self.request({"type": "ping"})

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send a command with a fresh ``id`` and wait for its reply; an ``error`` reply
        raises :class:`ClientError` with the server's code."""
        ws = await self._connection()
        cid = f"c{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[cid] = future
        try:
            await self._send(ws, {**command, "id": cid})
            reply = await asyncio.wait_for(future, self.reply_timeout)
        finally:
            self._replies.pop(cid, None)
        if reply["type"] == "error":
            data = reply["data"]
            raise CommandFailed(
                data.get("code", "error"), data.get("message", ""), data.get("field")
            )
        return reply

    # -- connection ----------------------------------------------------------------

    async def _connection(self) -> ClientConnection:
        while True:
            if self._fatal is not None:
                raise self._fatal
            if self._ws is not None:
                return self._ws
            self._connected.clear()
            await self._connected.wait()

    async def _send(self, ws: ClientConnection, obj: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(obj))

    def _process_exception(self, exc: Exception) -> Exception | None:
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            if status in (500, 502, 503, 504):
                return None
            code = CloseCode.UNAUTHORIZED if status in (401, 403) else CloseCode.POLICY_VIOLATION
            return ConnectionClosedError(int(code), f"handshake refused: HTTP {status}")
        if isinstance(exc, OSError | asyncio.TimeoutError | EOFError) or "EOF" in repr(exc):
            return None
        return None if isinstance(exc, ConnectionError) else exc

    async def _run(self) -> None:
        try:
            async for ws in websockets.connect(
                self.url,
                additional_headers=self.headers,
                reconnect_delays=self.delays,
                process_exception=self._process_exception,
                max_size=None,
                max_queue=None,
            ):
                self._ws = ws
                self.connections += 1
                self._connected.set()
                for sub in list(self.subscriptions.values()):
                    await self._send(ws, sub.command())
                try:
                    async for raw in ws:
                        await self._dispatch(json.loads(raw))
                except ConnectionClosed:
                    pass
                finally:
                    self._ws = None
                code = ws.close_code or 1006
                lost: ClientError = (
                    ConnectionClosedError(code, ws.close_reason or "")
                    if _terminal(code)
                    else ClientError("connection lost before the reply")
                )
                for future in self._replies.values():
                    if not future.done():
                        future.set_exception(lost)
                if isinstance(lost, ConnectionClosedError):
                    raise lost
                self._connected.set()  # wake waiters: they wait for the next connection
        except ConnectionClosedError as exc:
            self._fail(exc)
        except Exception as exc:  # a fatal error of websockets' connect
            self._fail(ClientError(f"cannot connect to {self.url}: {exc}"))

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self._connected.set()
        for sub in self.subscriptions.values():
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(exc)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        cid = msg.get("id")
        if isinstance(cid, str) and cid in self._replies and kind in _REPLIES:
            future = self._replies[cid]
            if not future.done():
                future.set_result(msg)
            return
        topic = msg.get("topic")
        sub = self.subscriptions.get(topic) if isinstance(topic, str) else None
        if sub is None:
            return
        if kind == "subscribed":
            await sub._on_subscribed(msg["data"])
        elif kind == "error":
            await sub.queue.put(CommandFailed(msg["data"]["code"], msg["data"]["message"], None))
        elif "seq" in msg and not msg.get("replay"):
            await sub._on_event(msg)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.topic) is sub:
            del self.subscriptions[sub.topic]
            if self._ws is not None:
                await self._send(self._ws, {"type": "unsubscribe", "topic": sub.topic})


class CommandFailed(ClientError):
    """The server answered a command with an ``error`` frame."""

    def __init__(self, code: str, message: str, field: str | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


def connect(
    url: str = "http://127.0.0.1:8000", *, token: str | None = None, **options: Any
) -> Client:
    """A :class:`Client` for ``url`` (the server's base URL, or a ``ws://…/ws`` URL).

    Use it as ``async with connect(url) as client: …``.
    """
    return Client(url, token=token, **options)
