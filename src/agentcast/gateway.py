"""The gateway: the asynchronous shell around the sans-I/O hub.

:class:`Gateway` owns the hub, the broker and the policies. Transports hand it
connections (:meth:`Gateway.open_session`) and the text frames they receive
(:meth:`Gateway.receive_text`); producers call :meth:`Gateway.publish` (from any
coroutine) or :meth:`Gateway.publish_threadsafe` (from any thread). It runs the commands
of each connection in order, resumes subscriptions from history without gap or
duplicate, writes every dirty outbox with one write per loop iteration (early in groups
while the iteration is young, else at its end), closes slow consumers, and pings and reaps
connections from one periodic sweep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from agentcast.brokers import Broker, create_broker
from agentcast.brokers.memory import MemoryBroker
from agentcast.chat.service import ChatService
from agentcast.codes import CLOSE_CODES, CloseCode, ErrorCode
from agentcast.core.commands import command_id, encode_reply, error_frame, parse
from agentcast.core.envelope import Publication, encode_json, format_timestamp
from agentcast.core.frames import (
    ClientCommand,
    PingCommand,
    PublishCommand,
    SubscribeCommand,
    UnsubscribeCommand,
    valid_topic,
)
from agentcast.core.history import HistoryLimits
from agentcast.core.hub import Hub
from agentcast.core.outbox import Outbox
from agentcast.core.session import Session, Writer
from agentcast.errors import BrokerError, CommandError, ConfigError, ProtocolError
from agentcast.monitoring import Monitoring
from agentcast.policy import Authenticator, Authorizer, OpenPolicy, Principal, resolve
from agentcast.runs.engine import WorkflowRegistry
from agentcast.runs.registry import RunRegistry
from agentcast.runs.replay import Replays
from agentcast.runs.vocabulary import validate_event
from agentcast.settings import Settings
from agentcast.storage import create_store
from agentcast.storage.base import StoreError

__all__ = ["CommandHandler", "Gateway"]

logger = logging.getLogger("agentcast")

T = TypeVar("T")
CommandHandler = Callable[[Session, Any], Awaitable[None] | None]

_MAX_PENDING_COMMANDS = 256
_YIELD_EVERY_PUSHES = 16384
_WRITE_GROUP = 8
_WRITE_BUDGET = 128
"""Within one event-loop iteration, as soon as ``_WRITE_GROUP`` outboxes are dirty they are
written at once (a group of writes back to back), until ``_WRITE_BUDGET`` outboxes were
written so; the rest coalesce into one write per connection at the iteration's end. A
producer publishing a run of events to many connections (a paced producer catching up
with its schedule) no longer holds every frame of the run until it yields, and a burst
(many events, or one event to many subscribers) still coalesces: W5 at 30,000 events/s
p99 0.85 -> 0.32 ms; W3 pays at most 128 single-frame writes per iteration."""


class Stats:
    """Counters exposed by ``/healthz`` and the metrics endpoint."""

    __slots__ = ("commands", "connections_total", "flushes", "frames_written", "slow_consumers")

    def __init__(self) -> None:
        self.connections_total = 0
        self.commands = 0
        self.flushes = 0
        self.frames_written = 0
        self.slow_consumers = 0


class Gateway:
    """Hub + broker + policies, driven by one event loop."""

    _write_now_left: int = _WRITE_BUDGET
    """Outboxes this loop iteration may still write early (see ``_WRITE_BUDGET``)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: Broker | None = None,
        authenticator: Authenticator | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.settings = settings or Settings()
        s = self.settings
        self.history_limits = HistoryLimits(
            max_events=s.history_max_events,
            max_bytes=s.history_max_bytes,
            max_age=s.history_max_age,
        )
        self.broker = broker or create_broker(s.broker_url, self.history_limits)
        open_policy = OpenPolicy()
        self.authenticator: Authenticator = authenticator or open_policy
        self.authorizer: Authorizer = authorizer or open_policy
        self.hub = Hub()
        self.sessions: dict[int, Session] = {}
        self.stats = Stats()
        self.snapshots: Callable[[str], Awaitable[tuple[int, dict[str, Any]] | None]] | None = None
        """Snapshot provider: ``(seq, state)`` of a topic, or None (see :meth:`subscribe`)."""
        self.observers: list[Callable[[Publication], None]] = []
        """Called with every publication this node receives, before local fan-out."""
        self.validators: list[Callable[[str, str, dict[str, Any]], None]] = [validate_event]
        """Checks run on every published event's ``data`` (raise ProtocolError to refuse).
        The default validates the seeds' run vocabularies on ``execution:``/``workflow:``."""
        self.server_prefixes: set[str] = set()
        """Topic prefixes only the server publishes to (clients get ``forbidden``)."""
        self.subscribe_guards: dict[str, Callable[[Principal, str], Awaitable[bool] | bool]] = {}
        """Per topic prefix, a check after the authorizer (e.g. conversation ownership)."""
        self.handlers: dict[str, CommandHandler] = {
            "subscribe": self._cmd_subscribe,
            "unsubscribe": self._cmd_unsubscribe,
            "ping": self._cmd_ping,
            "publish": self._cmd_publish,
        }
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pushes_at_yield = 0
        self._events_since_yield = 0
        # a tight producer yields before any outbox can fill up between two flushes
        self._yield_every_events = max(1, min(s.publish_batch, s.outbox_max_frames // 4))
        # the in-memory broker publishes synchronously: skip creating a coroutine per event
        self._publish_now = (
            self.broker.publish_now if isinstance(self.broker, MemoryBroker) else None
        )
        self._background: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._background_tasks: set[asyncio.Task[Any]] = set()
        self._startup: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._shutdown: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self.store = create_store(s.store_url)
        """The run store (``store_url``; None when storage is disabled)."""
        self.started = False
        # features
        self.workflows = WorkflowRegistry()
        """Workflows the built-in engine runs on ``POST /api/workflows/{id}/execute``."""
        self.monitoring = Monitoring(self)
        """Seed 001: the ``monitoring`` topic, task updates and their commands."""
        self.runs = RunRegistry()
        """Folded state of run topics: snapshots for late joiners."""
        self.runs.install(self)
        self.replays = Replays(self)
        """Timed replay of recorded events (``replay`` command)."""
        self.chat = ChatService(self)
        """Conversations with agents: ``chat:*`` commands, generations, the LLM queue."""

    @property
    def open_mode(self) -> bool:
        """True when no authenticator was configured (open dev mode)."""
        return isinstance(self.authenticator, OpenPolicy)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("gateway not started")
        return self._loop

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker, run the start-up hooks, start the keepalive sweep. Idempotent."""
        if self.started:
            return
        self._loop = asyncio.get_running_loop()
        if self.store is not None:
            try:
                await self.store.start()
            except StoreError as exc:
                raise ConfigError(str(exc)) from exc
        await self.broker.start(self._on_publication)
        for hook in self._startup:
            await hook()
        if self.settings.gc_freeze:
            gc.collect()
            gc.freeze()  # the code and start-up state: never garbage, no longer scanned
        self._sweeper = self._loop.create_task(self._sweep(), name="agentcast-sweep")
        self.started = True
        for factory in self._background:
            self._background_tasks.add(self._spawn(factory()))

    def add_startup(self, hook: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Await ``hook()`` in :meth:`start`, after the broker started (before any client)."""
        self._startup.append(hook)

    def add_shutdown(self, hook: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Await ``hook()`` in :meth:`stop`: connections closed, broker not yet stopped."""
        self._shutdown.append(hook)

    def add_background(
        self, factory: Callable[[], Coroutine[Any, Any, Any]], *, once: bool = False
    ) -> None:
        """Run ``factory()`` as a task while the gateway runs (cancelled by :meth:`stop`).

        Unless ``once``, the factory runs again at every :meth:`start`.
        """
        if not once:
            self._background.append(factory)
        if self.started:
            task = self._spawn(factory())
            self._background_tasks.add(task)
            task.add_done_callback(self._background_tasks.discard)

    async def stop(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Stop: background tasks are cancelled, commands in flight get until
        ``shutdown_timeout`` to finish (then are cancelled), every connection is closed
        with ``code``, then the sweep and the broker stop."""
        if not self.started:
            return
        self.started = False
        for task in list(self._background_tasks):
            task.cancel()
        pending = [t for t in self._tasks if t not in self._background_tasks]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
            for task in late:
                task.cancel()
        for session in list(self.sessions.values()):
            self.close(session, code)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self._shutdown:
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")
        await self.broker.stop()
        if self.store is not None:
            await self.store.stop()

    # -- producers -----------------------------------------------------------------

    def check_event(self, topic: str, type: str, data: Any) -> bytes:
        """Validate one event and return its encoded ``data``; raises :class:`ProtocolError`."""
        if not valid_topic(topic):
            raise ProtocolError(ErrorCode.INVALID_TOPIC, f"invalid topic {topic!r}", field="topic")
        if not isinstance(type, str) or not 0 < len(type) <= 100:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD, "type must be a string of 1-100 characters", field="type"
            )
        if isinstance(data, bytes):
            payload = data
        else:
            if not isinstance(data, Mapping):
                raise ProtocolError(
                    ErrorCode.INVALID_FIELD, "data must be a JSON object", field="data"
                )
            for validate in self.validators:
                validate(topic, type, data)  # type: ignore[arg-type]
            try:
                payload = encode_json(data)
            except TypeError as exc:
                raise ProtocolError(ErrorCode.INVALID_FIELD, f"data: {exc}", field="data") from None
        if len(payload) > self.settings.max_event_bytes:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"data is {len(payload)} bytes, more than max_event_bytes "
                f"({self.settings.max_event_bytes})",
                field="data",
            )
        return payload

    async def publish(self, topic: str, type: str, data: Mapping[str, Any] | bytes) -> Publication:
        """Publish one event; returns it with its assigned ``seq``.

        ``data`` is a JSON object (or its JSON encoding). Raises :class:`ProtocolError`
        for invalid input and :class:`BrokerError` when the broker failed (nothing was
        assigned). Yields to the event loop now and then while a producer publishes in a
        tight loop, so that outboxes are flushed instead of overflowing.
        """
        payload = self.check_event(topic, type, data)
        publish_now = self._publish_now
        if publish_now is not None:
            pub = publish_now(topic, type, payload, time.time())
        else:
            pub = await self.broker.publish(topic, type, payload, time.time())
        self._events_since_yield += 1
        pushes = self.hub.pushes
        if (
            pushes - self._pushes_at_yield >= _YIELD_EVERY_PUSHES
            or self._events_since_yield >= self._yield_every_events
        ):
            self._pushes_at_yield = pushes
            self._events_since_yield = 0
            await asyncio.sleep(0)
        return pub

    @property
    def publishes_now(self) -> bool:
        """Whether :meth:`publish_now` works: the broker publishes synchronously (the
        in-memory broker does; Redis does not)."""
        return self._publish_now is not None

    def publish_now(self, topic: str, type: str, data: Mapping[str, Any] | bytes) -> Publication:
        """:meth:`publish` from code that cannot await (a protocol's callback): same
        validation, same errors, delivered on the next flush. Only when
        :attr:`publishes_now`; else raises :class:`BrokerError`. Does not yield: a tight
        loop of these must give the event loop its turn itself.
        """
        publish_now = self._publish_now
        if publish_now is None:
            raise BrokerError("this broker publishes asynchronously: use publish()")
        return publish_now(topic, type, self.check_event(topic, type, data), time.time())

    def renew_lease(self, topic: str, ttl: float | None = None) -> float:
        """The producer of run ``topic`` is alive for ``ttl`` more seconds (trackers call it)."""
        return self.runs.renew(topic, ttl)

    def publish_threadsafe(
        self, topic: str, type: str, data: Mapping[str, Any] | bytes
    ) -> concurrent.futures.Future[Publication]:
        """Publish from any thread; returns a future of the publication.

        Do not block on the future from the event loop's own thread (it would deadlock);
        use :meth:`publish` there.
        """
        return asyncio.run_coroutine_threadsafe(self.publish(topic, type, data), self.loop)

    def _on_publication(self, pub: Publication) -> None:
        """Broker listener: observers, then local fan-out of one publication."""
        for observe in self.observers:
            try:
                observe(pub)
            except Exception:  # pragma: no cover - an observer must not stop delivery
                logger.exception("observer failed on %r", pub)
        gap = self.hub.dispatch(pub)
        if gap:
            logger.warning(
                "topic %s: %d publications missed before seq %d", pub.topic, gap, pub.seq
            )
        self._after_dispatch()

    def _after_dispatch(self) -> None:
        hub = self.hub
        if hub.overflowed:
            for session in hub.take_overflowed():
                self.stats.slow_consumers += 1
                logger.info("closing slow consumer %s", session)
                self.close(session, CloseCode.SLOW_CONSUMER)
        dirty = hub.dirty
        if dirty:
            left = self._write_now_left
            if _WRITE_GROUP <= len(dirty) <= left:  # a group, early in the iteration
                self._write_now_left = left - len(dirty)
                self._write(hub.take_dirty())
            if self._flush_handle is None:  # the rest, and the budget's reset
                self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write every dirty outbox with one write each (once per loop iteration)."""
        self._flush_handle = None
        self._write_now_left = _WRITE_BUDGET
        self.stats.flushes += 1
        self._write(self.hub.take_dirty())

    def _write(self, sessions: list[Session]) -> None:
        """Drain each outbox into its writer. A writer that raises is closed; the others
        are written and the error does not reach the publisher."""
        stats = self.stats
        for session in sessions:
            if session.paused or session.closed:
                continue
            frames = session.outbox.drain()
            if frames:
                stats.frames_written += len(frames)
                try:
                    session.writer.write_frames(frames)
                except Exception:
                    logger.exception("writing to %s failed", session)
                    self.close(session, CloseCode.INTERNAL_ERROR)

    # -- connections ---------------------------------------------------------------

    def open_session(self, principal: Principal, writer: Writer) -> Session:
        """Register a new connection (after its handshake was accepted)."""
        s = self.settings
        session = Session(
            next(self._ids),
            principal,
            writer,
            Outbox(s.outbox_max_bytes, s.outbox_max_frames),
            self.loop.time(),
        )
        self.sessions[session.id] = session
        self.stats.connections_total += 1
        return session

    def close_session(self, session: Session) -> None:
        """Forget a connection whose transport is gone. Idempotent."""
        session.closed = True
        if self.sessions.pop(session.id, None) is None:
            return
        for topic in self.hub.remove_all(session):
            self._spawn(self._unlisten(topic))
        session.outbox.drain()
        if session.pending:
            session.pending.clear()

    def close(self, session: Session, code: CloseCode, reason: str | None = None) -> None:
        """Close a connection with ``code`` (and the code's standard reason by default)."""
        if session.closed:
            return
        session.closed = True
        for topic in self.hub.remove_all(session):
            self._spawn(self._unlisten(topic))
        session.outbox.drain()
        session.writer.close(code, reason if reason is not None else CLOSE_CODES[code].reason)

    def set_paused(self, session: Session, paused: bool) -> None:
        """The transport's write buffer crossed its high (True) or low (False) water mark."""
        session.paused = paused
        if not paused and session.outbox.frames and not session.closed:
            self.hub.dirty.append(session)
            self._after_dispatch()

    def send(self, session: Session, frame: bytes) -> None:
        """Queue one control frame for ``session`` (flushed with its other frames)."""
        if session.closed:
            return
        self.hub.push(session, frame)
        self._after_dispatch()

    def reply(
        self, session: Session, kind: str, data: Any, *, id: Any = None, **extra: Any
    ) -> None:
        """Send a reply frame ``{"type": kind, …, "data": data}`` to ``session``."""
        self.send(session, encode_reply(kind, self.now_iso(), data, id=id, **extra))

    def now_iso(self) -> str:
        return format_timestamp(time.time())

    # -- commands ------------------------------------------------------------------

    def receive_text(self, session: Session, text: str) -> None:
        """Handle one client text frame: parse it and run it in order with earlier ones."""
        if session.closed:
            return
        session.last_command = self.loop.time()
        self.stats.commands += 1
        command: ClientCommand | bytes
        try:
            command = parse(text)
        except ProtocolError as exc:
            command = error_frame(exc, self.now_iso(), id=command_id(text))
            if not session.running:
                self.send(session, command)
                return
        if session.running:
            pending = session.pending
            if pending is None:
                pending = session.pending = deque()
            if len(pending) >= _MAX_PENDING_COMMANDS:
                limited = CommandError(ErrorCode.RATE_LIMITED, "too many commands in flight")
                cid = command.id if isinstance(command, ClientCommand) else None
                self.send(session, error_frame(limited, self.now_iso(), id=cid))
                return
            pending.append(command)
            return
        if isinstance(command, ClientCommand):
            self._execute(session, command)

    def receive_binary(self, session: Session) -> None:
        """Binary frames are not part of protocol v1: answer with an error frame."""
        exc = ProtocolError(ErrorCode.BINARY_UNSUPPORTED, "binary frames are not supported")
        self.send(session, error_frame(exc, self.now_iso()))

    def _execute(self, session: Session, command: ClientCommand) -> None:
        result = self._call(session, command)
        if result is not None:
            session.running = True
            self._spawn(self._run_commands(session, result))

    def _call(self, session: Session, command: ClientCommand | bytes) -> Awaitable[None] | None:
        if isinstance(command, bytes):  # an error frame queued behind a running command
            self.send(session, command)
            return None
        handler = self.handlers[command.type]
        try:
            result = handler(session, command)
        except ProtocolError as exc:
            self.send(session, error_frame(exc, self.now_iso(), id=command.id))
            return None
        if result is None:
            return None
        return self._guard(session, command.type, command.id, result)

    async def _guard(self, session: Session, name: str, cid: Any, work: Awaitable[None]) -> None:
        """Await ``work``; report its failure to the client as an error frame."""
        try:
            await work
        except ProtocolError as exc:
            self.send(session, error_frame(exc, self.now_iso(), id=cid))
        except Exception:
            logger.exception("command %s failed", name)
            internal = ProtocolError(ErrorCode.INTERNAL, "internal error")
            self.send(session, error_frame(internal, self.now_iso(), id=cid))

    async def _run_commands(self, session: Session, first: Awaitable[None]) -> None:
        try:
            await first
            pending = session.pending
            while pending and not session.closed:
                result = self._call(session, pending.popleft())
                if result is not None:
                    await result
        finally:
            session.running = False

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _cmd_ping(self, session: Session, command: PingCommand) -> None:
        extra = session.meta.get("pong", {}) if session.meta else {}
        self.reply(session, "pong", {}, id=command.id, **extra)

    def run_command(self, session: Session, work: Coroutine[Any, Any, None]) -> None:
        """Run server-initiated work for ``session`` in order with its commands.

        Errors are reported to the client as error frames, as for its own commands.
        """
        if session.running:
            work.close()
            raise RuntimeError("run_command is for connection set-up, before any command")
        guarded = self._guard(session, "set-up", None, work)
        session.running = True
        self._spawn(self._run_commands(session, guarded))

    def server_owned(self, topic: str) -> bool:
        """True for topics only the server publishes to (see :attr:`server_prefixes`)."""
        return any(topic.startswith(p) for p in self.server_prefixes)

    async def may_subscribe(self, principal: Principal, topic: str) -> bool:
        """The authorizer's answer, then the guard of the topic's prefix, if any."""
        if not await resolve(self.authorizer.can_subscribe(principal, topic)):
            return False
        for prefix, guard in self.subscribe_guards.items():
            if topic.startswith(prefix) and not await resolve(guard(principal, topic)):
                return False
        return True

    async def _cmd_publish(self, session: Session, command: PublishCommand) -> None:
        allowed = not self.server_owned(command.topic) and await resolve(
            self.authorizer.can_publish(session.principal, command.topic)
        )
        if not allowed:
            raise CommandError(ErrorCode.FORBIDDEN, f"may not publish to {command.topic!r}")
        try:
            pub = await self.publish(command.topic, command.event, command.data)
        except BrokerError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"publish failed: {exc}") from exc
        self.reply(session, "ack", {"topic": pub.topic, "seq": pub.seq}, id=command.id)

    def _cmd_unsubscribe(self, session: Session, command: UnsubscribeCommand) -> None:
        self.unsubscribe(session, command.topic)
        self.reply(session, "unsubscribed", {}, id=command.id, topic=command.topic)

    def unsubscribe(self, session: Session, topic: str) -> None:
        """End one subscription; raises :class:`CommandError` when there is none."""
        if topic not in session.topics:
            raise CommandError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {topic!r}")
        self.hub.remove(session, topic)
        if not self.hub.presence(topic):
            self._spawn(self._unlisten(topic))

    async def _cmd_subscribe(self, session: Session, command: SubscribeCommand) -> None:
        if command.replay is not None:
            await self.replays.start(
                session,
                command.topic,
                speed=command.replay,
                since=command.since or 0,
                id=command.id,
            )
            return
        await self.subscribe(
            session, command.topic, command.since, id=command.id, epoch=command.epoch
        )

    async def subscribe(
        self,
        session: Session,
        topic: str,
        since: int | None,
        *,
        id: Any = None,
        reply: bool = True,
        epoch: str | None = None,
    ) -> None:
        """Subscribe ``session`` to ``topic``: reply, replay history after ``since``, go live.

        The session receives every seq after its starting point exactly once, in order:
        live publications are buffered while history is read, then merged by seq. When
        history no longer reaches back to ``since + 1`` the reply says
        ``recovered: false`` and the retained history follows.

        Where :attr:`snapshots` knows the topic (run topics), a subscription without
        ``since``, or one whose history was lost, first receives a ``snapshot`` frame: the
        topic's folded state at seq S, then the events after S, then live ones.

        ``reply=False`` omits the ``subscribed`` reply (implicit subscriptions of the
        seeds' per-run endpoints, whose clients expect only events). ``epoch`` is the topic
        epoch ``since`` belongs to: another epoch means the topic was reset since.
        """
        if topic in session.topics:
            if not reply:
                return
            page = await self.broker.history(topic, 0, limit=0)
            self.reply(
                session,
                "subscribed",
                {
                    "seq": page.last_seq,
                    "recovered": True,
                    "since": since,
                    "first_seq": page.first_seq,
                    "epoch": page.epoch,
                },
                id=id,
                topic=topic,
            )
            return
        if len(session.topics) >= self.settings.max_subscriptions:
            raise CommandError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.settings.max_subscriptions} subscriptions per connection",
            )
        if not await self.may_subscribe(session.principal, topic):
            raise CommandError(ErrorCode.FORBIDDEN, f"may not subscribe to {topic!r}")
        if session.closed:
            return
        first_here = not self.hub.presence(topic)
        self.hub.begin(session, topic)
        snapshot: tuple[int, dict[str, Any]] | None = None
        try:
            if first_here:
                await self.broker.listen(topic)
            provider = self.snapshots
            if since is None:
                snapshot = await provider(topic) if provider is not None else None
                start = snapshot[0] if snapshot is not None else 0
                # after a snapshot at seq S: the events after S that it does not reflect
                page = await self.broker.history(topic, start, limit=None if snapshot else 0)
                recovered = True
            else:
                page = await self.broker.history(topic, since)
                reset = epoch is not None and epoch != page.epoch
                if reset:  # `since` counts in another life of the topic: replay all of it
                    page = await self.broker.history(topic, 0)
                recovered = page.complete and not reset
                if not recovered and provider is not None:
                    snapshot = await provider(topic)  # the reset a client needs: the state
                    if snapshot is not None:
                        page = await self.broker.history(topic, snapshot[0])
        except BrokerError as exc:
            self.hub.remove(session, topic)
            raise CommandError(ErrorCode.UNAVAILABLE, f"history unavailable: {exc}") from exc
        if session.closed or topic not in session.topics:
            return
        if reply:
            self.reply(
                session,
                "subscribed",
                {
                    "seq": page.last_seq,
                    "recovered": recovered,
                    "since": since,
                    "first_seq": page.first_seq,
                    "epoch": page.epoch,
                },
                id=id,
                topic=topic,
            )
        hub = self.hub
        if snapshot is not None:
            upto = snapshot[0]
            hub.push(
                session,
                encode_reply("snapshot", self.now_iso(), snapshot[1], topic=topic, seq=upto),
            )
        elif since is None:
            upto = page.last_seq
        else:
            upto = since if recovered else page.first_seq - 1
        for pub in page.publications:
            if pub.seq > upto:
                hub.push(session, pub.frame)
                upto = pub.seq
        hub.complete(session, topic, upto)
        self._after_dispatch()

    async def _unlisten(self, topic: str) -> None:
        if not self.hub.presence(topic):
            await self.broker.unlisten(topic)

    # -- keepalive -----------------------------------------------------------------

    @property
    def _tick(self) -> float:
        s = self.settings
        return max(0.01, min(s.ping_interval, s.ping_timeout, s.idle_timeout) / 4)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                self.sweep(self.loop.time())
            except Exception:  # pragma: no cover - defensive: the sweep must survive
                logger.exception("sweep failed")

    def sweep(self, now: float) -> None:
        """Ping, reap dead and idle connections, trim history (called periodically)."""
        s = self.settings
        for session in list(self.sessions.values()):
            if session.closed:
                continue
            if session.ping_sent:
                if now - session.ping_sent >= s.ping_timeout:
                    self.close(session, CloseCode.KEEPALIVE_TIMEOUT)
                continue
            if (
                not session.topics
                and not session.running
                and now - session.last_command >= s.idle_timeout
            ):
                self.close(session, CloseCode.IDLE_TIMEOUT)
                continue
            if now - session.last_seen >= s.ping_interval:
                session.ping_sent = now
                session.writer.send_ping()
        if isinstance(self.broker, MemoryBroker):
            self.broker.trim(time.time())

    def activity(self, session: Session) -> None:
        """Bytes from the client (pongs included) prove the connection is alive."""
        session.last_seen = self.loop.time()
        session.ping_sent = 0.0
