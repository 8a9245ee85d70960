"""The client: one WebSocket, its reconnections, commands and subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Literal, cast, overload

import orjson
import pydantic
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.uri import parse_uri

from agentcast.client.errors import CommandFailedError, ConnectionLostError
from agentcast.client.events import Event, HistoryLost
from agentcast.client.retry import (
    Retry,
    classify_failure,
    describe_failure,
    jittered_backoff,
    reconnectable,
)
from agentcast.client.subscription import OnHistoryLost, Subscription
from agentcast.codes import ErrorCode
from agentcast.core.frames import AckFrame, ErrorFrame, PresenceData, PresenceFrame
from agentcast.errors import ClientError, ConnectionClosedError

__all__ = ["MAX_IN_FLIGHT", "Client", "connect", "ws_url_of"]

logger = logging.getLogger("agentcast.client")

MAX_IN_FLIGHT = 128
"""Commands sent and not yet answered, per connection. The server queues at most 256
behind a running one and refuses more (``rate_limited``): resubscribing hundreds of topics
after a reconnection must not trip that."""

_TRANSIENT = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL})
"""Error codes after which a ``subscribe`` is retried (with backoff) rather than failed."""

Reply = dict[str, Any]


def ws_url_of(url: str) -> str:
    """The WebSocket URL of a server: ``http://host:port`` → ``ws://host:port/ws``.

    ``https`` becomes ``wss``; a path is kept (``http://h/prefix`` → ``ws://h/prefix/ws``);
    ``ws://`` and ``wss://`` URLs are returned unchanged.
    """
    if url.startswith(("ws://", "wss://")):
        return url
    base = url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + "/ws"
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + "/ws"
    raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")


@dataclass(eq=False, slots=True)
class _Command:
    """A command on its way: sent once, answered once (by ``id``)."""

    id: int
    frame: str
    on_reply: Callable[[Reply], None]
    on_lost: Callable[[ClientError], None]
    """Called instead when no reply will come (the connection or the client is gone)."""
    portable: bool
    """Survives a reconnection while unsent (user requests); else bound to its link."""


class _Link:
    """One open WebSocket: commands to send (in order, at most MAX_IN_FLIGHT unanswered)
    and the commands awaiting their reply."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.outbox: deque[_Command] = deque()
        self.in_flight: dict[int, _Command] = {}
        self.wake = asyncio.Event()

    def enqueue(self, command: _Command) -> None:
        self.outbox.append(command)
        self.wake.set()

    async def write(self) -> None:
        """Send queued commands until the connection closes (run as a task)."""
        try:
            while True:
                if self.outbox and len(self.in_flight) < MAX_IN_FLIGHT:
                    command = self.outbox.popleft()
                    self.in_flight[command.id] = command
                    await self.ws.send(command.frame)
                    continue
                self.wake.clear()
                await self.wake.wait()
        except ConnectionClosed:
            pass
        except Exception:  # pragma: no cover - defensive: never leave the link mute
            logger.exception("sending failed; reconnecting")
            await self.ws.close(1011, "client error")


class Client:
    """One WebSocket to an agentcast server carrying any number of subscriptions.

    Use it as ``async with connect(url) as client:`` (see :func:`connect`). The client
    connects in the background and keeps reconnecting, with jittered exponential backoff
    (websockets' reconnecting ``connect``, and the same backoff after a connection that
    closed soon after opening), until it is closed or a terminal error happens: a
    terminal close code (4500–4999, 1002, 1003, 1007–1010), a refused handshake (HTTP 401,
    403, 404 …), or an unusable URL. Then every subscription and every pending command
    raises that :class:`~agentcast.errors.ConnectionClosedError` (or
    :class:`~agentcast.errors.ClientError`), and so does any later call.

    ``on_retry(retry)`` is called before each wait for a (re)connection with a
    :class:`~agentcast.client.retry.Retry` (why, and the delay): a failed attempt or an
    open connection that closed. ``on_connect()`` is called each time a connection opens.
    Both run in the event loop and must not block; an exception they raise is logged and
    otherwise ignored.

    Commands (:meth:`publish`, :meth:`ping`, :meth:`request`) are sent in call order, wait
    for a connection when there is none, and give up after ``reply_timeout`` seconds
    (``TimeoutError``). Subscriptions are resumed after every reconnection (see
    :class:`Subscription`).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        queue_size: int = 1000,
        reply_timeout: float = 30.0,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 5.0,
        on_retry: Callable[[Retry], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        producer_id: str | None = None,
        publish_attempts: int = 5,
    ) -> None:
        self.url = ws_url_of(url)
        if publish_attempts < 1:
            raise ValueError("publish_attempts must be at least 1")
        if producer_id is not None and not 1 <= len(producer_id) <= 128:
            raise ValueError("producer_id: 1 to 128 characters")
        self.producer_id = producer_id or f"py-{secrets.token_hex(12)}"
        """This client's idempotent producer id (see :meth:`publish`)."""
        self.producer_seq = 0
        """The producer seq of the latest :meth:`publish` (the next one takes one more)."""
        self.publish_attempts = publish_attempts
        self.publish_retries = 0
        """Idempotent publishes sent again (after an unknown outcome or ``unavailable``)."""
        self.publish_duplicates = 0
        """Publishes the server answered as retries of events it had already published
        (their first attempt was published, only its ack was lost)."""
        self._publishing = asyncio.Lock()
        try:
            parse_uri(self.url)  # a bad URL fails here rather than in the background
        except InvalidURI as exc:
            raise ValueError(str(exc)) from None
        if queue_size < 2:
            raise ValueError("queue_size must be at least 2")
        if not 0 < initial_delay <= max_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        self.headers = dict(headers or {})
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.queue_size = queue_size
        self.reply_timeout = reply_timeout
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self._ws_options: dict[str, Any] = {
            "open_timeout": open_timeout,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
        }
        self.on_retry = on_retry
        self.on_connect = on_connect
        self.connections = 0
        """How many connections were established so far (1 + reconnections)."""
        self._failure: Exception | None = None  # why the last connection attempt failed
        self._subscriptions: dict[str, Subscription[Any]] = {}
        self._link: _Link | None = None
        self._backlog: deque[_Command] = deque()
        self._ids = itertools.count(1)
        self._runner: asyncio.Task[None] | None = None
        self._fatal: ClientError | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed
            else "failed"
            if self._fatal
            else "connected"
            if self._link
            else "connecting"
        )
        return f"<Client {self.url} {state} subscriptions={len(self._subscriptions)}>"

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start connecting in the background (``async with`` does it). Idempotent."""
        if self._closed:
            raise ClientError("the client is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name=f"agentcast-client {self.url}"
            )

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Idempotent.

        Every subscription's iteration ends; pending commands raise
        :class:`~agentcast.errors.ClientError`.
        """
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            # asyncio.wait, not `await` + suppress(CancelledError): the latter lets the
            # CancelledError escape under some tracers (coverage on CPython 3.11)
            await asyncio.wait([self._runner])
        pending = list(self._backlog)
        self._backlog.clear()
        for cmd in pending:
            cmd.on_lost(ClientError("the client is closed"))
        for sub in self._subscriptions.values():
            self._cancel_retry(sub)
            sub.end()
        self._subscriptions.clear()

    @property
    def connected(self) -> bool:
        """True while a WebSocket is open."""
        return self._link is not None

    @property
    def subscriptions(self) -> Mapping[str, Subscription[Any]]:
        """The active subscriptions by topic (read-only view)."""
        return MappingProxyType(self._subscriptions)

    # -- subscriptions ---------------------------------------------------------------

    @overload
    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        *,
        on_history_lost: Literal["raise"] = "raise",
    ) -> Subscription[Event]: ...

    @overload
    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        *,
        on_history_lost: Literal["reset"],
    ) -> Subscription[Event | HistoryLost]: ...

    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        *,
        on_history_lost: OnHistoryLost = "raise",
    ) -> Subscription[Event] | Subscription[Event | HistoryLost]:
        """Subscribe to ``topic``; iterate the result for its events.

        ``since``: None (default) for live events only, 0 for all retained history, N to
        resume after seq N. The ``subscribe`` command is sent at once (or when the
        connection opens), in order with other commands: an event published after
        ``await sub.wait_subscribed()``, or after a later command's reply, is delivered.

        ``on_history_lost``: what happens when history no longer reaches back to the
        position (``since`` at first, the last received seq after a reconnection):
        ``"raise"`` :class:`~agentcast.errors.HistoryLostError` from the iterator, or
        ``"reset"`` yield a :class:`HistoryLost` marker and continue from the retained
        history. One subscription per topic and client (:class:`ClientError` otherwise).
        """
        if topic in self._subscriptions:
            raise ClientError(f"already subscribed to {topic!r}")
        sub: Subscription[Any] = Subscription(self, topic, since, on_history_lost, self.queue_size)
        if self._closed:
            sub.end()
            return sub
        if self._fatal is not None:
            sub.fail(self._fatal)
            return sub
        self._subscriptions[topic] = sub
        if self._link is not None:
            self._send_subscribe(sub, self._link)
        return sub

    def _send_subscribe(self, sub: Subscription[Any], link: _Link) -> None:
        self._cancel_retry(sub)
        command = self._command(
            sub.subscribe_command(),
            on_reply=lambda reply: self._on_subscribe_reply(sub, cid, reply),
            on_lost=lambda _: None,
            portable=False,
        )
        cid = command.id
        sub.request = cid
        sub.link = link
        link.enqueue(command)

    def _on_subscribe_reply(self, sub: Subscription[Any], cid: int, reply: Reply) -> None:
        if sub.request != cid or sub.finished:
            return  # superseded by a later subscribe of the same subscription
        if reply.get("type") == "error":
            error = self._command_failed(reply)
            if error.code in _TRANSIENT:
                self._retry_later(sub, error)
                return
            self._forget(sub)
            sub.fail(error)
            return
        try:
            ok = sub.on_subscribed(reply)
        except pydantic.ValidationError as exc:
            self._forget(sub)
            sub.fail(ClientError(f"malformed subscribed reply for {sub.topic!r}: {exc}"))
            return
        if not ok:  # history lost in "raise" mode: stop the server's replay too
            self._forget(sub)
            self._send_unsubscribe(sub)

    def _resync(self, sub: Subscription[Any], why: str) -> None:
        """Resubscribe ``sub`` from its last buffered seq (called by the subscription)."""
        if sub.finished or self._subscriptions.get(sub.topic) is not sub:
            return
        sub.offline()
        link = self._link
        if link is None:
            return  # the next connection subscribes it
        logger.info("%s: resubscribing (%s)", sub.topic, why)
        if sub.link is link:
            self._send_unsubscribe(sub)
        self._send_subscribe(sub, link)

    def _retry_later(self, sub: Subscription[Any], error: CommandFailedError) -> None:
        if sub.retry_delays is None:
            sub.retry_delays = jittered_backoff(self.initial_delay, self.max_delay)
        delay = next(sub.retry_delays)
        logger.warning("subscribe %s failed (%s); retrying in %.1fs", sub.topic, error, delay)
        sub.retry = asyncio.get_running_loop().call_later(
            delay, self._resync, sub, f"retry after {error.code}"
        )

    def _cancel_retry(self, sub: Subscription[Any]) -> None:
        if sub.retry is not None:
            sub.retry.cancel()
            sub.retry = None

    def _forget(self, sub: Subscription[Any]) -> None:
        self._cancel_retry(sub)
        if self._subscriptions.get(sub.topic) is sub:
            del self._subscriptions[sub.topic]

    def _send_unsubscribe(
        self, sub: Subscription[Any], done: asyncio.Future[None] | None = None
    ) -> None:
        """Unsubscribe on the connection ``sub`` was subscribed on, if it is still open."""

        def finish(*_: Any) -> None:
            if done is not None and not done.done():
                done.set_result(None)

        link = self._link
        if link is None or sub.link is not link:
            finish()
            return
        sub.link = None
        command = self._command(
            {"type": "unsubscribe", "topic": sub.topic},
            on_reply=finish,
            on_lost=finish,
            portable=False,
        )
        link.enqueue(command)

    async def _unsubscribe(self, sub: Subscription[Any]) -> None:
        self._forget(sub)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._send_unsubscribe(sub, done)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, self.reply_timeout)

    # -- commands --------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        idempotent: bool = True,
    ) -> int:
        """Publish an event on the WebSocket and return its seq (from the ``ack``).

        Idempotent by default: each publish carries this client's :attr:`producer_id` and
        the next :attr:`producer_seq`, and when its outcome is unknown (the connection
        dropped before the ack, no ack within ``reply_timeout``, ``outcome_unknown``) or
        nothing was published (``unavailable``) it is sent again with the same number,
        after the client reconnected (to any node of the cluster), up to
        ``publish_attempts`` times in all with jittered backoff. The server recognises a
        retry of an event already published and answers its original seq (0 when the
        broker no longer remembers it, see docs/protocol.md) instead of publishing it
        twice. To keep that sound, idempotent publishes of one client are sent one at a
        time, each after the previous one's ack, in call order; use the HTTP API to
        publish in batches, or ``idempotent=False`` for the former behaviour (sent at
        once, pipelined, never retried).

        Raises :class:`CommandFailedError` when the server refuses it (``forbidden``,
        ``invalid_field``, ``payload_too_large``, …; after the last attempt also
        ``outcome_unknown``, ``unavailable``), :class:`ConnectionLostError` when the
        connection dropped before the (last) ack (it may have been published),
        ``TimeoutError`` after ``reply_timeout`` (per attempt).
        """
        frame: dict[str, Any] = {
            "type": "publish",
            "topic": topic,
            "event": type,
            "data": dict(data or {}),
        }
        if not idempotent:
            return AckFrame.model_validate(await self.request(frame)).data.seq
        async with self._publishing:
            self.producer_seq += 1
            frame["producer_id"] = self.producer_id
            frame["producer_seq"] = self.producer_seq
            delays = jittered_backoff(self.initial_delay, self.max_delay)
            attempt = 1
            while True:
                try:
                    ack = AckFrame.model_validate(await self.request(frame)).data
                    if ack.duplicate:
                        self.publish_duplicates += 1
                    return ack.seq
                except (ConnectionLostError, TimeoutError, CommandFailedError) as exc:
                    retriable = not isinstance(exc, CommandFailedError) or exc.code in (
                        ErrorCode.OUTCOME_UNKNOWN,
                        ErrorCode.UNAVAILABLE,
                    )
                    if not retriable or attempt >= self.publish_attempts:
                        raise
                    delay = next(delays)
                    logger.info(
                        "publish %s #%d: %s; retrying in %.2fs",
                        topic,
                        self.producer_seq,
                        exc,
                        delay,
                    )
                    attempt += 1
                    self.publish_retries += 1
                    await asyncio.sleep(delay)

    async def ping(self) -> float:
        """Round-trip an application ``ping``; returns the time to the ``pong`` in seconds.

        Every command sent before it has been answered when it returns.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.request({"type": "ping"})
        return loop.time() - started

    async def presence(self, topic: str) -> PresenceData:
        """Who is subscribed to ``topic`` on every node (``presence``): users with their
        connection counts, anonymous connections, totals. Raises
        :class:`CommandFailedError` (``forbidden``) where this client may not subscribe."""
        reply = await self.request({"type": "presence", "topic": topic})
        return PresenceFrame.model_validate(reply).data

    async def refresh_token(self, token: str) -> Reply:
        """Present a fresh ``token`` (same subject) with ``auth:refresh`` before the current
        one expires, and use it for every later reconnection; returns the ``authenticated``
        reply. A connection whose token expires unrefreshed is closed with 4501
        (terminal: the client stops)."""
        self.headers["Authorization"] = f"Bearer {token}"
        return await self.request({"type": "auth:refresh", "token": token})

    async def request(self, command: Mapping[str, Any]) -> Reply:
        """Send ``command`` with a fresh ``id`` and return the server's reply frame.

        The generic form of :meth:`publish` and :meth:`ping`, for commands this class has
        no method for. An ``error`` reply raises :class:`CommandFailedError`. Waits for a
        connection when there is none; the whole is bounded by ``reply_timeout``.
        """
        self._check_usable()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def on_reply(reply: Reply) -> None:
            if not future.done():
                future.set_result(reply)

        def on_lost(error: ClientError) -> None:
            if not future.done():
                future.set_exception(error)

        cmd = self._command(command, on_reply=on_reply, on_lost=on_lost, portable=True)
        if self._link is not None:
            self._link.enqueue(cmd)
        else:
            self._backlog.append(cmd)
        try:
            async with asyncio.timeout(self.reply_timeout):
                reply = await future
        except TimeoutError:
            self._withdraw(cmd)
            raise
        if reply.get("type") == "error":
            raise self._command_failed(reply)
        return reply

    def _command(
        self,
        payload: Mapping[str, Any],
        *,
        on_reply: Callable[[Reply], None],
        on_lost: Callable[[ClientError], None],
        portable: bool,
    ) -> _Command:
        cid = next(self._ids)
        frame = orjson.dumps({**payload, "id": cid}).decode()
        return _Command(cid, frame, on_reply, on_lost, portable)

    def _withdraw(self, cmd: _Command) -> None:
        """Do not send ``cmd`` after all (its caller gave up)."""
        with contextlib.suppress(ValueError):
            self._backlog.remove(cmd)
        if self._link is not None:
            with contextlib.suppress(ValueError):
                self._link.outbox.remove(cmd)

    @staticmethod
    def _command_failed(reply: Reply) -> CommandFailedError:
        try:
            data = ErrorFrame.model_validate(reply).data
        except pydantic.ValidationError:
            return CommandFailedError("internal", f"malformed error reply: {reply!r}")
        return CommandFailedError(data.code, data.message, data.field)

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ClientError("the client is closed")
        if self._runner is None:
            raise ClientError("the client is not started: use `async with connect(...)`")

    # -- the connection --------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delays = functools.partial(jittered_backoff, self.initial_delay, self.max_delay)
        after_close = delays()

        def process_exception(exc: Exception) -> Exception | None:
            outcome = classify_failure(exc)
            if outcome is None:  # retried: websockets takes the next delay right after
                self._failure = exc
            return outcome

        def reported_delays() -> Generator[float]:
            for delay in delays():
                failure = self._failure
                self._notify(
                    "on_retry", self.on_retry, Retry(describe_failure(failure), delay, failure)
                )
                yield delay

        connector = websockets.connect(
            self.url,
            additional_headers=self.headers,
            process_exception=process_exception,
            reconnect_delays=reported_delays,
            compression=None,  # the server negotiates no extension
            max_size=None,  # the server bounds its frames (max_event_bytes)
            **self._ws_options,
        )
        try:
            attempts = cast(AsyncGenerator[ClientConnection, None], aiter(connector))
            async with contextlib.aclosing(attempts):
                async for ws in attempts:
                    opened = loop.time()
                    terminal = await self._serve(ws)
                    if terminal is not None:
                        raise terminal
                    code, reason = ws.close_code or 1006, ws.close_reason or ""
                    # websockets backs off failed attempts only: back off connections
                    # that close soon after opening too (a server closing each at once)
                    if loop.time() - opened >= self.max_delay:
                        after_close = delays()
                    delay = next(after_close)
                    logger.info(
                        "connection closed (%d %s); reconnecting in %.2fs", code, reason, delay
                    )
                    words = f"closed with {code}" + (f" ({reason})" if reason else "")
                    self._notify("on_retry", self.on_retry, Retry(words, delay, close_code=code))
                    await asyncio.sleep(delay)
        except ClientError as exc:
            self._fail(exc)
        except Exception as exc:  # websockets' connect gave up (a fatal handshake error)
            error = ClientError(f"client of {self.url} stopped: {exc!r}")
            error.__cause__ = exc
            self._fail(error)

    def _notify(self, name: str, callback: Callable[..., None] | None, *args: Retry) -> None:
        """Call ``on_retry`` or ``on_connect``; never let it break the client."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("the client's %s callback failed", name)

    async def _serve(self, ws: ClientConnection) -> ConnectionClosedError | None:
        """Run one connection: resubscribe, send, read and dispatch until it closes.

        Returns the error to stop with when it closed with a terminal close code.
        """
        link = _Link(ws)
        self._link = link
        self.connections += 1
        self._failure = None
        self._notify("on_connect", self.on_connect)
        for sub in list(self._subscriptions.values()):
            if not sub.stalled:  # a stalled one resubscribes once its buffer drained
                self._send_subscribe(sub, link)
        link.outbox.extend(self._backlog)
        self._backlog.clear()
        link.wake.set()
        writer = asyncio.get_running_loop().create_task(link.write())
        try:
            async for raw in ws:
                self._dispatch(link, raw)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            code = ws.close_code if ws.close_code is not None else 1006
            terminal = (
                None if reconnectable(code) else ConnectionClosedError(code, ws.close_reason or "")
            )
            self._detach(link, terminal)
            await asyncio.wait([writer])
        return terminal

    def _detach(self, link: _Link, terminal: ClientError | None) -> None:
        if self._link is link:
            self._link = None
        for sub in self._subscriptions.values():
            sub.offline()
        lost = list(link.in_flight.values())
        link.in_flight.clear()
        unsent = list(link.outbox)
        link.outbox.clear()
        self._backlog.extendleft(reversed([cmd for cmd in unsent if cmd.portable]))
        if terminal is not None:
            error = terminal
        elif self._closed:
            error = ClientError("the client is closed")
        else:
            error = ConnectionLostError("the connection was lost before the reply")
        for cmd in lost + [cmd for cmd in unsent if not cmd.portable]:
            cmd.on_lost(error)

    def _fail(self, error: ClientError) -> None:
        """A terminal error: every subscription and pending command raises it."""
        logger.warning("agentcast client stopped: %s", error)
        self._fatal = error
        for sub in self._subscriptions.values():
            self._cancel_retry(sub)
            sub.fail(error)
        self._subscriptions.clear()
        pending = list(self._backlog)
        self._backlog.clear()
        for cmd in pending:
            cmd.on_lost(error)

    def _dispatch(self, link: _Link, raw: str | bytes) -> None:
        """Route one server frame: events by topic (checking ``seq`` first, as event types
        may coincide with reply types), replies by ``id``."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("ignoring a frame that is not JSON: %.200r", raw)
            return
        if not isinstance(msg, dict):
            return
        if "seq" in msg:
            if msg.get("replay"):
                return  # a `replay` command's re-sent event: never part of a subscription
            seq, topic, kind = msg.get("seq"), msg.get("topic"), msg.get("type")
            if not (
                isinstance(seq, int)
                and isinstance(topic, str)
                and isinstance(kind, str)
                and not isinstance(seq, bool)
            ):
                logger.warning("ignoring a malformed event: %.200r", msg)
                return
            sub = self._subscriptions.get(topic)
            if sub is not None:
                data = msg.get("data")
                timestamp = msg.get("timestamp")
                sub.on_event(
                    kind,
                    seq,
                    timestamp if isinstance(timestamp, str) else "",
                    data if isinstance(data, dict) else {},
                )
            return
        cid = msg.get("id")
        if isinstance(cid, int):
            command = link.in_flight.pop(cid, None)
            if command is not None:
                link.wake.set()
                command.on_reply(msg)


def connect(
    url: str = "http://127.0.0.1:8000", *, token: str | None = None, **options: Any
) -> Client:
    """A :class:`Client` of the server at ``url``; use ``async with connect(url) as client``.

    ``url`` is the server's base URL (``http://host:port``, ``https://…``: the WebSocket
    is ``/ws`` there) or a full ``ws://``/``wss://`` URL. ``token`` is sent as
    ``Authorization: Bearer <token>`` on every (re)connection. ``options`` are those of
    :class:`Client`: ``headers``, ``queue_size`` (events buffered per subscription),
    ``reply_timeout``, ``initial_delay``/``max_delay`` (reconnection backoff),
    ``open_timeout``, ``ping_interval``, ``ping_timeout``, ``close_timeout``, ``on_retry``
    and ``on_connect`` (callbacks: see :class:`Client`), ``producer_id`` and
    ``publish_attempts`` (idempotent publishing: see :meth:`Client.publish`).
    """
    return Client(url, token=token, **options)
