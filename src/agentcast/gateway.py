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
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from agentcast.brokers import Broker, create_broker
from agentcast.brokers.base import Conflict, Draft, Duplicate
from agentcast.cluster import ClusterState, TopicPresence, create_cluster_state
from agentcast.codes import CLOSE_CODES, CloseCode, ErrorCode
from agentcast.core.checks import Validator as CoreValidator
from agentcast.core.checks import check_event
from agentcast.core.commands import CommandTable, command_id, encode_reply, error_frame
from agentcast.core.envelope import Publication, format_timestamp
from agentcast.core.frames import (
    ClientCommand,
    PingCommand,
    PresenceCommand,
    PublishCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from agentcast.core.histogram import LATENCY_BUCKETS, Histogram
from agentcast.core.history import HistoryLimits, HistoryPage
from agentcast.core.hub import RESET, Hub
from agentcast.core.outbox import Outbox
from agentcast.core.ratelimit import Rate, RateLimiter
from agentcast.core.session import Admission, Credentials, Keepalive, Session, Writer
from agentcast.errors import (
    BrokerError,
    CommandError,
    ProtocolError,
    PublishOutcomeUnknownError,
    RateLimitedError,
)
from agentcast.plugin import Feature, SocketEndpoint
from agentcast.policy import (
    UNAUTHENTICATED,
    AuthenticationError,
    Authenticator,
    Authorizer,
    ConnectionRequest,
    OpenPolicy,
    Principal,
    resolve,
)
from agentcast.security.origin import OriginPolicy
from agentcast.security.ownership import OwnerLookup, OwnershipPolicy
from agentcast.settings import Settings

__all__ = [
    "CommandHandler",
    "Gateway",
    "HistorySource",
    "SnapshotProvider",
    "Validator",
]

logger = logging.getLogger("agentcast")

T = TypeVar("T")
F = TypeVar("F")
CommandHandler = Callable[[Session, Any], Awaitable[None] | None]
"""Carries out one command: ``handler(session, command)``, sync or async; raise
:class:`~agentcast.errors.CommandError` for an ``error`` reply."""
SnapshotProvider = Callable[[str], Awaitable[tuple[int, dict[str, Any]] | None]]
"""``(seq, state)`` of a topic for a late joiner: the state reflects every seq ≤ seq."""
HistorySource = Callable[[str, int, HistoryPage, int | None], Awaitable[HistoryPage | None]]
"""``source(topic, since, broker_page, limit)``: the publications after ``since`` reaching
back further than the broker's page (from a store), at most ``limit``, or None. The page
carries the broker page's epoch and ``last_seq``, and joins its publications without a
hole."""
Validator = CoreValidator
"""``check(topic, type, data)``: raise :class:`~agentcast.errors.ProtocolError` to refuse;
return the data to publish instead (defaults filled in, a new dict), or None to keep it."""

_MAX_PENDING_COMMANDS = 256
_MAX_PRODUCER_SEQ = 1 << 53
"""The largest producer seq (exact in a double: Redis Lua numbers, JavaScript)."""

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


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A background task that died of an exception says so in the log (once)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=exc)


class Stats:
    """Cumulative counters of one gateway, read by ``/healthz`` and ``/metrics`` (the
    metrics feature reads them at scrape time: plain ints, no metric object per
    connection or per event).

    ``closes`` counts the closes the server initiated, by close code; ``auth_refusals``
    the refused authentications by reason (``unauthorized``, ``forbidden``, ``origin``,
    ``auth_timeout``, ``expired``); ``rate_limited`` the refusals of a rate or connection
    limit by kind (``commands``, ``publish``, ``chat``, … ``in_flight``,
    ``connections``, ``connections_per_user``, ``handshakes``); ``latency`` the
    publish-to-write time of each flushed batch (see :meth:`Gateway._observe_latency`)."""

    __slots__ = (
        "auth_refusals",
        "bytes_written",
        "closes",
        "commands",
        "connections_total",
        "flushes",
        "frames_written",
        "latency",
        "published",
        "rate_limited",
        "slow_consumers",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.commands = 0
        self.flushes = 0
        self.frames_written = 0
        self.bytes_written = 0
        self.published = 0
        self.slow_consumers = 0
        self.closes: dict[int, int] = {}
        self.auth_refusals: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)

    def count(self, table: dict[Any, int], key: Any) -> None:
        """One more ``key`` in ``table`` (``closes``, ``auth_refusals``, ``rate_limited``)."""
        table[key] = table.get(key, 0) + 1


class Gateway:
    """Hub + broker + policies, driven by one event loop."""

    _write_now_left: int = _WRITE_BUDGET
    """Outboxes this loop iteration may still write early (see ``_WRITE_BUDGET``)."""
    _oldest_at: float = 0.0
    """Publish time of the oldest publication waiting for the next flush (0: none)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: Broker | None = None,
        cluster: ClusterState | None = None,
        authenticator: Authenticator | None = None,
        authorizer: Authorizer | None = None,
        features: Iterable[Feature] = (),
    ) -> None:
        self.settings = settings or Settings()
        s = self.settings
        self.history_limits = HistoryLimits(
            max_events=s.history_max_events,
            max_bytes=s.history_max_bytes,
            max_age=s.history_max_age,
            max_total_bytes=s.history_max_total_bytes,
        )
        self.broker = broker or create_broker(
            s.broker_url, self.history_limits, producer_ttl=s.producer_ttl
        )
        self.cluster = cluster or create_cluster_state(
            s.cluster_state_url,
            heartbeat=s.node_heartbeat,
            ttl=s.node_ttl,
            sync_interval=s.cluster_sync_interval,
        )
        """Connection counts per user, rate consumption and presence shared with the
        other nodes (``cluster_url``; in-process by default: see :mod:`agentcast.cluster`)."""
        self._distributed = self.cluster.distributed
        self._open_policy = open_policy = OpenPolicy()
        self.authenticator: Authenticator = authenticator or open_policy
        self._authorizer: Authorizer | None = authorizer
        self._ownership: Authorizer | None = None
        self.hub = Hub()
        self.sessions: dict[int, Session] = {}
        self.user_connections: dict[str, int] = {}
        """Open connections per principal subject (``max_connections_per_user``)."""
        self.handshakes_pending = 0
        """WebSocket handshakes whose authentication is under way (``max_pending_handshakes``)."""
        self.rate_limiter = RateLimiter(s.rate_limit_close_after, s.rate_limit_close_window)
        """Token buckets per connection and per user (see :meth:`add_rate_limit`)."""
        self.rate_kinds: dict[str, str] = {}
        """Command type -> the rate-limited kind it draws from (besides ``commands``)."""
        self._writable: dict[int, asyncio.Future[None]] = {}
        """Waiters of :meth:`wait_writable`, by session id."""
        self.stats = Stats()
        self.observers: list[Callable[[Publication], None]] = []
        """Called with every publication this node receives, before local fan-out."""
        self.publish_observers: list[Callable[[Publication], None]] = []
        """Called with every publication this node itself published (the broker assigned
        its seq: not a duplicate nor a conflict), once the broker answered; after the
        :attr:`observers` when the broker delivers synchronously, in either order
        otherwise (the notification of a remote broker may come before or after its
        answer). What tells a node's own publications from the other nodes' (the runs
        feature records only its own in the run store)."""
        self.validators: list[Validator] = []
        """Checks run on every published event's ``data`` (see :meth:`add_validator`)."""
        self.server_prefixes: set[str] = set()
        """Topic prefixes only the server publishes to (clients get ``forbidden``)."""
        self.handshake_checks: list[Callable[[ConnectionRequest], None]] = [
            OriginPolicy(s.origins).check  # the Origin allow-list, in open dev mode too
        ]
        """Run before the authenticator on every handshake and HTTP request (see
        :meth:`authenticate`); raise :class:`~agentcast.policy.AuthenticationError`."""
        self.subscribe_guards: dict[str, Callable[[Principal, str], Awaitable[bool] | bool]] = {}
        """Per topic prefix, a check after the authorizer (e.g. conversation ownership)."""
        self.unauthenticated_commands: set[str] = set()
        """Commands a connection opened without credentials (:data:`UNAUTHENTICATED`) may
        send before it authenticated (the security feature's ``auth``); others are refused."""
        self.publish_guards: dict[str, Callable[[Principal, str], Awaitable[bool] | bool]] = {}
        """Per topic prefix, a check after the authorizer of a client's publish, called once
        per publish the authorizer allowed (the runs feature records who publishes first)."""
        self.owner_lookups: dict[str, OwnerLookup] = {}
        """Per topic prefix, who owns a topic (the features that create topics register
        theirs); the default authorizer, :class:`~agentcast.security.ownership.OwnershipPolicy`,
        reads them."""
        self.commands = CommandTable()
        """This gateway's command types and models (core commands plus the features')."""
        self.handlers: dict[str, CommandHandler] = {
            "subscribe": self._cmd_subscribe,
            "unsubscribe": self._cmd_unsubscribe,
            "ping": self._cmd_ping,
            "publish": self._cmd_publish,
            "presence": self._cmd_presence,
        }
        self.snapshot_providers: dict[str, SnapshotProvider] = {}
        self.history_sources: dict[str, HistorySource] = {}
        self.routers: list[Any] = []
        """HTTP routers the features bring (FastAPI ``APIRouter``); ``create_app`` mounts them."""
        self.socket_endpoints: list[SocketEndpoint] = []
        """WebSocket paths besides ``/ws`` served with this gateway's protocol."""
        self.features: dict[str, Feature] = {}
        self.readiness_checks: dict[str, Callable[[], Awaitable[None]]] = {
            "broker": self.broker.ping
        }
        """What ``/readyz`` asks, by name (see :meth:`add_readiness_check`)."""
        self._listening: dict[str, asyncio.Future[None]] = {}
        """Topics whose ``broker.listen`` is under way (see :meth:`subscribe`)."""
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pushes_at_yield = 0
        self._events_since_yield = 0
        # a tight producer yields before any outbox can fill up between two flushes
        self._yield_every_events = max(1, min(s.publish_batch, s.outbox_max_frames // 4))
        # the broker's synchronous capability (the in-memory broker has it): no coroutine
        # per event; without it, publishes are batched per loop iteration (publish_many)
        self._publish_now = self.broker.publish_sync
        self._batch: list[tuple[Draft, asyncio.Future[Publication]]] = []
        self._batching: asyncio.Task[None] | None = None
        self._trimming: asyncio.Task[None] | None = None
        self.hub.on_gap = self._fill_gap
        self.hub.on_resync = self._resync
        self._background: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._background_tasks: set[asyncio.Task[Any]] = set()
        self._startup: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._shutdown: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self.started = False
        self._stopping: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.add_rate_limit("commands", s.rate_limit_commands_per_minute)
        self.add_rate_limit("publish", s.rate_limit_publish_per_minute, "publish")
        for feature in features:
            self.install(feature)

    # -- extension points ----------------------------------------------------------

    def install(self, feature: Feature) -> None:
        """Install ``feature`` (see :mod:`agentcast.plugin`); its name must be new here."""
        if feature.name in self.features:
            raise ValueError(f"a feature named {feature.name!r} is installed already")
        self.features[feature.name] = feature
        feature.install(self)

    def feature(self, kind: type[F]) -> F:
        """The installed feature of type ``kind``; raises ``LookupError`` when there is none."""
        for feature in self.features.values():
            if isinstance(feature, kind):
                return feature
        raise LookupError(f"no {kind.__name__} feature is installed on this gateway")

    def add_command(self, model: type[ClientCommand], *names: str, handler: CommandHandler) -> None:
        """Accept commands ``names`` (parsed as ``model``) and carry them out with ``handler``."""
        self.commands.add(model, *names)
        for name in names:
            self.handlers[name] = handler

    def add_rate_limit(self, kind: str, per_minute: float, *command_types: str) -> None:
        """Limit the commands ``command_types`` to ``per_minute`` per connection and per
        user (``rate_limit_burst`` minutes' worth at once; 0: no limit). ``commands`` (no
        type: every client frame) and ``publish`` are installed by the gateway; the chat
        feature adds ``chat`` (``chat:send``). Over the limit a command is answered
        ``rate_limited`` with ``retry_after``; see :meth:`receive_text`."""
        rate = Rate.per_minute(per_minute, self.settings.rate_limit_burst) if per_minute else None
        self.rate_limiter.set_rate(kind, rate)
        for name in command_types:
            self.rate_kinds[name] = kind

    def rate_limit_user(self, principal: Principal, kind: str) -> float:
        """Draw one ``kind`` token from ``principal``'s user bucket only (an HTTP request,
        a message on seed 003's endpoint): 0.0 when admitted, else the seconds to wait
        (HTTP: answer 429 with ``Retry-After``)."""
        wait = self.rate_limiter.take(principal.subject, kind, self.loop.time())
        if wait:
            self.stats.count(self.stats.rate_limited, kind)
        return wait

    def connection_refusal(self, principal: Principal) -> tuple[int, str] | None:
        """Why one more WebSocket connection of ``principal`` is refused, as an HTTP status
        and message (429: the user holds ``max_connections_per_user``; 503: the server
        holds ``max_connections``), or None. Transports ask right before accepting."""
        s = self.settings
        if len(self.sessions) >= s.max_connections:
            self.stats.count(self.stats.rate_limited, "connections")
            return 503, f"server full: {s.max_connections} connections"
        if self.user_connections.get(principal.subject, 0) >= s.max_connections_per_user:
            self.stats.count(self.stats.rate_limited, "connections_per_user")
            return 429, f"too many connections: at most {s.max_connections_per_user} per user"
        return None

    def server_full(self) -> bool:
        """True when the server holds ``max_connections`` (a handshake is refused with 503
        before any work; counted as a ``connections`` limit hit)."""
        if len(self.sessions) >= self.settings.max_connections:
            self.stats.count(self.stats.rate_limited, "connections")
            return True
        return False

    def auth_refused(self, exc: AuthenticationError) -> None:
        """Count one refused authentication (a handshake, an HTTP request, an ``auth``
        message) by reason: ``origin`` (the Origin check), else ``unauthorized`` (401) or
        ``forbidden`` (403). Every place that answers an ``AuthenticationError`` calls it."""
        reason = exc.reason or ("unauthorized" if exc.status == 401 else "forbidden")
        self.stats.count(self.stats.auth_refusals, reason)

    def admit(
        self, principal: Principal
    ) -> tuple[int, str] | Awaitable[tuple[int, str] | None] | None:
        """:meth:`connection_refusal`, then the user's connections on every node of the
        cluster (:attr:`cluster`): the refusal (HTTP status and message) or None. The
        answer is awaitable when the cluster state must be asked (one round trip, for an
        authenticated principal on a distributed cluster state); otherwise it is plain.

        A None (admitted) reserves a slot in the cluster: the transport then opens the
        session (:meth:`open_session`, or :meth:`user_connected` for other sockets),
        whose end gives it back, or calls :meth:`release_admission` if it cannot."""
        refusal = self.connection_refusal(principal)
        if refusal is not None or principal.anonymous:
            return refusal
        pending = self.cluster.reserve(principal.subject, self.settings.max_connections_per_user)
        if pending is None:
            return None
        return self._cluster_refusal(pending)

    async def _cluster_refusal(self, pending: Awaitable[int | None]) -> tuple[int, str] | None:
        try:
            held = await pending
        except Exception:  # the cluster state's contract says it does not raise: fail open
            logger.exception("cluster state reservation failed")
            return None
        if held is None:
            return None
        limit = self.settings.max_connections_per_user
        return 429, f"too many connections: at most {limit} per user (across the cluster)"

    def release_admission(self, principal: Principal) -> None:
        """Give back the slot of an admitted connection that was never opened."""
        if not principal.anonymous:
            self.cluster.release(principal.subject)

    def begin_handshake(self) -> bool:
        """Count one handshake whose authentication is under way; False (refuse it with
        503) when ``max_pending_handshakes`` are already. Pair with :meth:`end_handshake`."""
        if self.handshakes_pending >= self.settings.max_pending_handshakes:
            self.stats.count(self.stats.rate_limited, "handshakes")
            return False
        self.handshakes_pending += 1
        return True

    def end_handshake(self) -> None:
        self.handshakes_pending -= 1

    async def wait_writable(self, session: Session) -> None:
        """Return once ``session`` can take more frames: its transport is not paused and
        its outbox is under half its bounds (or it closed). For producers of bulk frames
        to one connection (a replay), which must not overflow its outbox."""
        outbox = session.outbox
        while not session.closed and (
            session.paused
            or outbox.nbytes * 2 > outbox.max_bytes
            or len(outbox.frames) * 2 > outbox.max_frames
        ):
            waiter = self._writable.get(session.id)
            if waiter is None:
                waiter = self._writable[session.id] = self.loop.create_future()
            await asyncio.shield(waiter)  # woken by the next flush, resume_writing, close

    def _wake_writable(self, session: Session) -> None:
        waiter = self._writable.pop(session.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def add_validator(self, check: Validator) -> None:
        """Run ``check(topic, type, data)`` on every event published through this gateway
        (in installation order; each sees what the previous one returned)."""
        self.validators.append(check)

    def add_snapshot_provider(self, prefixes: Iterable[str], provider: SnapshotProvider) -> None:
        """Late joiners of topics starting with one of ``prefixes`` get ``provider``'s
        state first (see :meth:`subscribe`)."""
        for prefix in prefixes:
            self.snapshot_providers[prefix] = provider

    def add_history_source(self, prefixes: Iterable[str], source: HistorySource) -> None:
        """Where the broker's history of such topics no longer reaches back, ask ``source``
        (see :meth:`history`)."""
        for prefix in prefixes:
            self.history_sources[prefix] = source

    def add_readiness_check(self, name: str, check: Callable[[], Awaitable[None]]) -> None:
        """``/readyz`` awaits ``check()`` (the storage feature: a trivial query); raising or
        taking longer than ``readyz_timeout`` makes the server not ready, named ``name``.
        The gateway registers ``broker`` (:meth:`Broker.ping
        <agentcast.brokers.base.Broker.ping>`)."""
        self.readiness_checks[name] = check

    @property
    def draining(self) -> bool:
        """True from the moment :meth:`drain` began (shutdown) until the next start."""
        return self._stopping is not None

    async def readiness(self) -> dict[str, str]:
        """Whether this node should get traffic: ``{"gateway": …, name: …}`` for every
        readiness check, each ``"ok"`` when ready. The gateway is ``starting`` before
        :meth:`start` finished and ``draining`` from :meth:`drain` on; a check that raised
        is ``"error: <exception type>"`` (its message goes to the log only: it may name
        hosts), one still running after ``readyz_timeout`` is ``"timeout"``. The checks run
        concurrently."""
        state = "draining" if self.draining else "ok" if self.started else "starting"
        result = {"gateway": state}
        if state != "ok":
            return result
        timeout = self.settings.readyz_timeout

        async def run(name: str, check: Callable[[], Awaitable[None]]) -> None:
            try:
                await asyncio.wait_for(check(), timeout)
            except TimeoutError:
                result[name] = "timeout"
                logger.warning("readiness: %s did not answer within %ss", name, timeout)
            except Exception as exc:
                result[name] = f"error: {type(exc).__name__}"
                logger.warning("readiness: %s failed: %s", name, exc)
            else:
                result[name] = "ok"

        await asyncio.gather(*(run(n, c) for n, c in self.readiness_checks.items()))
        return result

    def add_router(self, router: Any) -> None:
        """An HTTP router (FastAPI ``APIRouter``) for ``create_app`` to include."""
        self.routers.append(router)

    def add_socket_endpoint(self, endpoint: SocketEndpoint) -> None:
        """Serve ``endpoint`` with this gateway's protocol on every transport."""
        self.socket_endpoints.append(endpoint)

    def socket_endpoint(self, path: str) -> tuple[SocketEndpoint, str] | None:
        """The endpoint serving ``path`` and its parameter's value, or None."""
        for endpoint in self.socket_endpoints:
            value = endpoint.match(path)
            if value is not None:
                return endpoint, value
        return None

    @staticmethod
    def _by_prefix(table: Mapping[str, T], topic: str) -> T | None:
        best: T | None = None
        best_len = -1
        for prefix, value in table.items():
            if len(prefix) > best_len and topic.startswith(prefix):
                best, best_len = value, len(prefix)
        return best

    def authenticate(self, request: ConnectionRequest) -> Principal | Awaitable[Principal]:
        """Who ``request`` (a WebSocket handshake or an HTTP request) comes from: the one
        security entry every transport and router calls. Runs the handshake checks (the
        Origin allow-list), then the authenticator; raises
        :class:`~agentcast.policy.AuthenticationError` (its ``status``: 401, 403) to refuse.
        The answer may be awaitable (an asynchronous authenticator)."""
        for check in self.handshake_checks:
            check(request)
        return self.authenticator.authenticate(request)

    @property
    def open_mode(self) -> bool:
        """True when no authenticator was configured (open dev mode)."""
        return isinstance(self.authenticator, OpenPolicy)

    @property
    def authorizer(self) -> Authorizer:
        """The authorizer given (constructor or assignment); without one, open dev mode's
        :class:`~agentcast.policy.OpenPolicy`, or, once an authenticator is configured,
        :class:`~agentcast.security.ownership.OwnershipPolicy` (owners, scopes, the
        ``topics`` claim; docs/security.md)."""
        if self._authorizer is not None:
            return self._authorizer
        if self.open_mode:
            return self._open_policy
        if self._ownership is None:
            self._ownership = OwnershipPolicy(self)
        return self._ownership

    @authorizer.setter
    def authorizer(self, value: Authorizer | None) -> None:
        self._authorizer = value

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
        self._stopping = None
        self._closing = None
        await self.broker.start(self._on_publication)
        try:
            await self.cluster.start(_ClusterView(self))
        except BaseException:
            await self.broker.stop()
            raise
        for hook in self._startup:
            await hook()
        if self.settings.gc_freeze:
            gc.collect()
            gc.freeze()  # the code and start-up state: never garbage, no longer scanned
            if self.settings.gc_full_every:  # full collections: rarer (see the setting)
                young, middle, _ = gc.get_threshold()
                gc.set_threshold(young, middle, self.settings.gc_full_every)
        self._sweeper = self._loop.create_task(self._sweep(), name="agentcast-sweep")
        self.started = True
        for factory in self._background:
            task = self._spawn(factory())
            self._background_tasks.add(task)
            task.add_done_callback(self._background_tasks.discard)
            task.add_done_callback(_log_failure)

    async def __aenter__(self) -> Gateway:
        """``async with Gateway(…) as gateway:`` starts it, and stops it on the way out."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def add_startup(self, hook: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Await ``hook()`` in :meth:`start`, after the broker started (before any client)."""
        self._startup.append(hook)

    def add_shutdown(self, hook: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Await ``hook()`` in :meth:`stop`: connections closed, broker not yet stopped.

        Shutdown hooks run in the reverse order of their registration (the last feature
        installed stops first), each even when an earlier one failed."""
        self._shutdown.append(hook)

    def add_background(
        self, factory: Callable[[], Coroutine[Any, Any, Any]], *, once: bool = False
    ) -> asyncio.Task[Any] | None:
        """Run ``factory()`` as a task while the gateway runs (cancelled by :meth:`stop`,
        also when added while the gateway drains).

        Unless ``once``, the factory runs again at every :meth:`start`. Returns the task,
        or None when the gateway is not running (nothing was started: a cancelled task
        may never have begun either, so clean-up belongs in a done callback).
        """
        if not once:
            self._background.append(factory)
        if not self.started:
            return None
        task = self._spawn(factory())
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def stop(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Stop: :meth:`drain` (producers stop, their last events are delivered, every
        connection is closed with ``code``), then the sweep, the shutdown hooks and the
        broker stop. Concurrent calls stop it once (each returns when it stopped)."""
        if not self.started:
            return
        if self._closing is None:
            self._closing = self.loop.create_task(self._stop(code), name="agentcast-stop")
        await asyncio.shield(self._closing)

    async def _stop(self, code: CloseCode) -> None:
        await self.drain(code)
        self.started = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # what the closing connections left (unlistens), bounded like the drain
        await self._finish()
        for hook in reversed(self._shutdown):
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")
        try:
            await self.cluster.stop()
        except Exception:
            logger.exception("cluster state stop failed")
        await self.broker.stop()

    async def drain(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Stop producing and close every connection after its last frames. Idempotent.

        Background tasks (producers such as runs and the demo) are cancelled and, with the
        commands in flight, get until ``shutdown_timeout`` to finish; what they publish
        while stopping (a cancelled run's last events) is written to the subscribers
        before their connections are closed with ``code``. Transports call this when
        their server shuts down (uvicorn closes connections before the app's lifespan).
        """
        if self._stopping is None:
            self._stopping = self.loop.create_task(self._drain(code), name="agentcast-drain")
        await asyncio.shield(self._stopping)

    def request_drain(self) -> None:
        """:meth:`drain` from synchronous code (a transport's shutdown callback)."""
        if self._stopping is None and self._loop is not None:
            self._stopping = self._loop.create_task(
                self._drain(CloseCode.GOING_AWAY), name="agentcast-drain"
            )

    async def _drain(self, code: CloseCode) -> None:
        await self._finish()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()  # the stopping producers' last events, before the close frames
        for session in list(self.sessions.values()):
            self.close(session, code)

    async def _finish(self) -> None:
        """Cancel the background tasks (once each: a cancelled run publishes its last
        events), give every task until ``shutdown_timeout`` to end, then cancel the late
        ones. Tasks spawned meanwhile (a run started over HTTP while draining) are waited
        for and cancelled the same way, within the same deadline."""
        loop = self.loop
        deadline = loop.time() + self.settings.shutdown_timeout
        cancelled: set[asyncio.Task[Any]] = set()
        pending: list[asyncio.Task[Any]] = []
        while True:
            for task in list(self._background_tasks):
                if task not in cancelled:
                    cancelled.add(task)
                    task.cancel()
            pending = [t for t in self._tasks if not t.done()]
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)

    # -- producers -----------------------------------------------------------------

    def check_event(self, topic: str, type: str, data: Any) -> bytes:
        """Validate one event and return its encoded ``data``; raises :class:`ProtocolError`
        (:func:`agentcast.core.checks.check_event` with this gateway's validators)."""
        return check_event(topic, type, data, self.validators, self.settings.max_event_bytes)

    def check_producer(self, producer: str | None, producer_seq: int | None) -> None:
        """Validate an idempotent producer's id and seq (both or neither; the id 1 to 128
        printable characters, the seq 1 to 2**53); raises :class:`ProtocolError`."""
        if producer is None and producer_seq is None:
            return
        if producer is None or producer_seq is None:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                "producer_id and producer_seq go together",
                field="producer_id" if producer is None else "producer_seq",
            )
        if not 1 <= len(producer) <= 128 or not producer.isprintable():
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                "producer_id: 1 to 128 printable characters",
                field="producer_id",
            )
        if not 1 <= producer_seq <= _MAX_PRODUCER_SEQ:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"producer_seq: an integer from 1 to {_MAX_PRODUCER_SEQ}",
                field="producer_seq",
            )

    async def publish(
        self,
        topic: str,
        type: str,
        data: Mapping[str, Any] | bytes,
        *,
        producer: str | None = None,
        producer_seq: int | None = None,
        expect_last_seq: int | None = None,
    ) -> Publication:
        """Publish one event; returns it with its assigned ``seq``.

        With ``expect_last_seq`` (a conditional publish, broker contract item 10) the
        event is published only if the topic's last seq is still that one, on every
        node; otherwise nothing is published and it returns a
        :class:`~agentcast.brokers.base.Conflict` with the topic's actual last seq.

        With ``producer`` and ``producer_seq`` (an idempotent producer, broker contract
        item 9) a retry of an event already published (by this process or another) is
        not published again: it returns a :class:`~agentcast.brokers.base.Duplicate`
        with the original seq (0 when older than the broker's window).

        ``data`` is a JSON object (or its JSON encoding). Raises :class:`ProtocolError`
        for invalid input, :class:`BrokerError` when the broker failed and nothing was
        assigned, :class:`PublishOutcomeUnknownError` (a ``BrokerError``) when the
        broker's answer was lost: the event may or may not have been published.

        On a broker with the synchronous capability the event is published at once, and a
        producer publishing in a tight loop yields to the event loop now and then, so
        that outboxes are flushed instead of overflowing. Otherwise the event joins the
        publishes of this loop iteration, sent to the broker as one batch (see
        :meth:`publish_nowait`).
        """
        payload = self.check_event(topic, type, data)
        publish_now = self._publish_now
        if producer is not None or producer_seq is not None:
            self.check_producer(producer, producer_seq)
            return await self._enqueue(
                topic, type, payload, producer, producer_seq, expect_last_seq
            )
        if expect_last_seq is not None:
            return await self._enqueue(topic, type, payload, None, None, expect_last_seq)
        if publish_now is None:
            return await self._enqueue(topic, type, payload)
        pub = publish_now(topic, type, payload, time.time())
        self.stats.published += 1
        for own in self.publish_observers:
            own(pub)
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

    def publish_nowait(
        self,
        topic: str,
        type: str,
        data: Mapping[str, Any] | bytes,
        *,
        producer: str | None = None,
        producer_seq: int | None = None,
    ) -> asyncio.Future[Publication]:
        """:meth:`publish` from code that cannot await (a protocol's callback, a token
        stream): returns a future of the publication, on every broker.

        Invalid input raises :class:`ProtocolError` at once; a broker failure is set on
        the future (:class:`BrokerError`, :class:`PublishOutcomeUnknownError`). With the
        broker's synchronous capability the future is already done. Otherwise the event
        is queued: every publish of one event-loop iteration (from any producer, this
        method or :meth:`publish`) goes to the broker in one ``publish_many``, in call
        order, and the next batch is sent when the broker answered the previous one, so
        the events of one producer keep their order and a stream of tokens costs one
        round trip per batch, not per token. A future that is cancelled before its batch
        is sent is not published. Call it from the event loop's thread, once the gateway
        started (before, it raises :class:`BrokerError`); a future whose failure nobody
        retrieves is reported by asyncio when it is garbage-collected. ``producer`` and
        ``producer_seq`` as in :meth:`publish` (such an event always joins a batch).
        """
        payload = self.check_event(topic, type, data)
        publish_now = self._publish_now
        if producer is not None or producer_seq is not None:
            self.check_producer(producer, producer_seq)
            return self._enqueue(topic, type, payload, producer, producer_seq)
        if publish_now is None or self._loop is None:
            return self._enqueue(topic, type, payload)
        future: asyncio.Future[Publication] = self._loop.create_future()
        try:
            pub = publish_now(topic, type, payload, time.time())
        except BrokerError as exc:
            future.set_exception(exc)
        else:
            future.set_result(pub)
            self.stats.published += 1
            for own in self.publish_observers:
                own(pub)
        return future

    def _enqueue(
        self,
        topic: str,
        type: str,
        payload: bytes,
        producer: str | None = None,
        producer_seq: int | None = None,
        expect_last_seq: int | None = None,
    ) -> asyncio.Future[Publication]:
        """Queue one checked event for the next batch; start the batch sender if idle."""
        if self._loop is None:
            raise BrokerError("gateway not started")
        future: asyncio.Future[Publication] = self._loop.create_future()
        draft = Draft(topic, type, payload, time.time(), producer, producer_seq, expect_last_seq)
        self._batch.append((draft, future))
        if self._batching is None:
            # its first step runs after the current callbacks: it takes this iteration's
            # publishes as one batch
            self._batching = self._spawn(self._publish_batches())
        return future

    async def _publish_batches(self) -> None:
        """Send the queued events with one ``publish_many`` at a time until none is left
        and resolve each caller's future with its publication (or the batch's error)."""
        try:
            while self._batch:
                batch = [item for item in self._batch if not item[1].done()]
                self._batch = []
                if not batch:
                    continue
                error: BaseException | None = None
                try:
                    pubs = await self.broker.publish_many([draft for draft, _ in batch])
                    if len(pubs) != len(batch):
                        raise PublishOutcomeUnknownError(
                            f"the broker answered {len(pubs)} publications for {len(batch)}"
                        )
                except BrokerError as exc:
                    error = exc
                except asyncio.CancelledError:
                    unknown = PublishOutcomeUnknownError("the gateway stopped while publishing")
                    unsent = BrokerError("the gateway stopped")
                    for items, failure in ((batch, unknown), (self._batch, unsent)):
                        for _, future in items:
                            if not future.done():
                                future.set_exception(failure)
                    self._batch = []
                    raise
                except Exception as exc:
                    logger.exception("broker publish_many failed")
                    error = PublishOutcomeUnknownError(f"broker failed: {exc!r}")
                if error is not None:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.stats.published += sum(type(p) not in (Duplicate, Conflict) for p in pubs)
                if self.publish_observers:
                    for pub in pubs:
                        if type(pub) not in (Duplicate, Conflict):
                            for own in self.publish_observers:
                                own(pub)
                for (_, future), pub in zip(batch, pubs, strict=True):
                    if not future.done():
                        future.set_result(pub)
        finally:
            self._batching = None

    @property
    def publishes_now(self) -> bool:
        """Whether :meth:`publish_now` works: the broker has the synchronous capability
        (``Broker.publish_sync``: the in-memory broker has it; Redis does not).
        :meth:`publish_nowait` works on every broker."""
        return self._publish_now is not None

    def publish_now(self, topic: str, type: str, data: Mapping[str, Any] | bytes) -> Publication:
        """:meth:`publish` from code that cannot await (a protocol's callback): same
        validation, same errors, delivered on the next flush. Only when
        :attr:`publishes_now`; else raises :class:`BrokerError` (use
        :meth:`publish_nowait`). Does not yield: a tight loop of these must give the event
        loop its turn itself.
        """
        publish_now = self._publish_now
        if publish_now is None:
            raise BrokerError("this broker publishes asynchronously: use publish_nowait()")
        pub = publish_now(topic, type, self.check_event(topic, type, data), time.time())
        self.stats.published += 1
        for own in self.publish_observers:
            own(pub)
        return pub

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
        hub = self.hub
        gap = hub.dispatch(pub)
        if not self._oldest_at and hub.dirty:  # the latency of the next flush's batch
            self._oldest_at = pub.at
        if gap:
            if gap == RESET:
                logger.warning(
                    "topic %s: numbering restarted (epoch %s): its subscribers resync",
                    pub.topic,
                    pub.epoch,
                    extra={"topic": pub.topic},
                )
            else:
                logger.warning(
                    "topic %s: %d publications missed before seq %d: reading history",
                    pub.topic,
                    gap,
                    pub.seq,
                    extra={"topic": pub.topic},
                )
        self._after_dispatch()

    def _fill_gap(self, topic: str) -> None:
        """Hub callback: ``topic`` holds its publications until its gap is filled."""
        self._spawn(self._fill(topic))

    async def _fill(self, topic: str) -> None:
        """Read the missed publications of ``topic`` from history and deliver them, then
        the held ones (until the topic no longer has a gap)."""
        hub = self.hub
        while (since := hub.fill_from(topic)) is not None:
            try:
                page = await self.broker.history(topic, since)
            except BrokerError as exc:
                logger.warning(
                    "topic %s: history unavailable to fill a gap: %s",
                    topic,
                    exc,
                    extra={"topic": topic},
                )
                page = None
            more = hub.fill(topic, page)
            self._after_dispatch()
            if not more:
                return

    def _resync(self, session: Session, topic: str) -> None:
        """Hub callback: ``session`` can no longer be given ``topic`` in order."""
        extra = {"connection": session.id, "user": session.principal.subject, "topic": topic}
        logger.info("closing %s to resync %s", session, topic, extra=extra)
        self.close(session, CloseCode.RESYNC)

    async def _trim_history(self, now: float) -> None:
        try:
            await self.broker.trim(now)
        except BrokerError as exc:
            logger.warning("history trim failed: %s", exc)
        finally:
            self._trimming = None

    def _after_dispatch(self) -> None:
        hub = self.hub
        if hub.overflowed:
            for session in hub.take_overflowed():
                self.stats.slow_consumers += 1
                logger.info(
                    "closing slow consumer %s",
                    session,
                    extra={"connection": session.id, "user": session.principal.subject},
                )
                self.close(session, CloseCode.SLOW_CONSUMER)
        dirty = hub.dirty
        if dirty:
            left = self._write_now_left
            if _WRITE_GROUP <= len(dirty) <= left:  # a group, early in the iteration
                self._write_now_left = left - len(dirty)
                self._write(hub.take_dirty())
                if self._oldest_at:
                    self._observe_latency()
            if self._flush_handle is None:  # the rest, and the budget's reset
                self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write every dirty outbox with one write each (once per loop iteration)."""
        self._flush_handle = None
        self._write_now_left = _WRITE_BUDGET
        self.stats.flushes += 1
        self._write(self.hub.take_dirty())
        if self._oldest_at:
            self._observe_latency()
        if self._writable:  # bulk producers waiting for room (wait_writable)
            for waiter in self._writable.values():
                if not waiter.done():
                    waiter.set_result(None)
            self._writable.clear()

    def _observe_latency(self) -> None:
        """One observation per flushed batch: from the publish time (``Publication.at``,
        the publishing node's clock) of the oldest publication dispatched since the
        previous flush to now, when its frames were handed to the sockets. So the
        histogram counts batches, not events, and each batch at its worst event."""
        self.stats.latency.observe(time.time() - self._oldest_at)
        self._oldest_at = 0.0

    def _write(self, sessions: list[Session]) -> None:
        """Drain each outbox into its writer. A writer that raises is closed; the others
        are written and the error does not reach the publisher."""
        stats = self.stats
        for session in sessions:
            if session.paused or session.closed:
                continue
            outbox = session.outbox
            nbytes = outbox.nbytes
            frames = outbox.drain()
            if frames:
                stats.frames_written += len(frames)
                stats.bytes_written += nbytes
                try:
                    session.writer.write_frames(frames)
                except Exception:
                    logger.exception(
                        "writing to %s failed",
                        session,
                        extra={"connection": session.id, "user": session.principal.subject},
                    )
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
        subject = principal.subject
        self.user_connected(principal)
        session.limits = self.rate_limiter.connection(
            subject, session.last_seen, anonymous=principal.anonymous
        )
        if principal is UNAUTHENTICATED:  # it authenticates with its first `auth` message
            session.auth_deadline = session.last_seen + s.auth_timeout
            self.loop.call_later(s.auth_timeout, self._auth_deadline, session)
        if logger.isEnabledFor(logging.DEBUG):
            extra = {"connection": session.id, "user": subject}
            logger.debug("connection %d opened", session.id, extra=extra)
        return session

    def user_connected(self, principal: Principal) -> None:
        """Count one more connection of ``principal``'s user (``max_connections_per_user``):
        sessions are counted by :meth:`open_session`; other sockets (seed 003's endpoint)
        call this after :meth:`connection_refusal` allowed them, and
        :meth:`user_disconnected` when they end."""
        subject = principal.subject
        self.user_connections[subject] = self.user_connections.get(subject, 0) + 1

    def user_disconnected(self, principal: Principal) -> None:
        """One connection of ``principal``'s user ended (here and, for an admitted one,
        in the cluster)."""
        subject = principal.subject
        left = self.user_connections.get(subject, 1) - 1
        if left > 0:
            self.user_connections[subject] = left
        else:
            self.user_connections.pop(subject, None)
        if not principal.anonymous:
            self.cluster.release(subject)

    def set_principal(self, session: Session, principal: Principal) -> bool | Awaitable[bool]:
        """Make ``principal`` the connection's (its first ``auth`` message, or a refresh),
        moving it to its user's connection count. False, and the connection closed with
        4529, when that user already holds ``max_connections_per_user`` here or across
        the cluster (a connection that authenticated at the handshake was refused with
        HTTP 429 instead). Awaitable when the cluster state must be asked."""
        old = session.principal.subject
        new = principal.subject
        if new != old:
            if self.user_connections.get(new, 0) >= self.settings.max_connections_per_user:
                self.close(session, CloseCode.TOO_MANY_CONNECTIONS)
                return False
            if not principal.anonymous:
                pending = self.cluster.reserve(new, self.settings.max_connections_per_user)
                if pending is not None:
                    return self._set_principal_reserved(session, principal, pending)
            self.user_disconnected(session.principal)
            self.user_connected(principal)
        session.authenticated(principal)
        return True

    async def _set_principal_reserved(
        self, session: Session, principal: Principal, pending: Awaitable[int | None]
    ) -> bool:
        held = await pending
        if held is not None or session.closed or session.principal.subject == principal.subject:
            if held is None:  # granted, but the connection is gone (or moved) meanwhile
                self.cluster.release(principal.subject)
            else:
                self.close(session, CloseCode.TOO_MANY_CONNECTIONS)
            return False
        self.user_disconnected(session.principal)
        self.user_connected(principal)
        session.authenticated(principal)
        return True

    def _auth_deadline(self, session: Session) -> None:
        """Close a connection still unauthenticated at its deadline (4508)."""
        if session.authenticating:  # the timer may fire a clock tick early: no time check
            self.close(session, CloseCode.AUTH_TIMEOUT)

    def close_session(self, session: Session) -> None:
        """Forget a connection whose transport is gone. Idempotent."""
        session.closed = True
        if self.sessions.pop(session.id, None) is None:
            return
        if logger.isEnabledFor(logging.DEBUG):
            extra = {"connection": session.id, "user": session.principal.subject}
            logger.debug("connection %d ended", session.id, extra=extra)
        self.user_disconnected(session.principal)
        self._wake_writable(session)
        if self._distributed:
            for topic in session.topics:
                self.cluster.topic_changed(topic)
        for topic in self.hub.remove_all(session):
            self._spawn(self._unlisten(topic))
        session.outbox.drain()
        if session.pending:
            session.pending.clear()

    def close(self, session: Session, code: CloseCode, reason: str | None = None) -> None:
        """Close a connection with ``code`` (and the code's standard reason by default),
        after the frames it has queued unless it is a slow consumer."""
        if session.closed:
            return
        session.closed = True
        if logger.isEnabledFor(logging.DEBUG):
            extra = {"connection": session.id, "user": session.principal.subject}
            logger.debug("closing connection %d with %d", session.id, code, extra=extra)
        stats = self.stats
        stats.closes[code] = stats.closes.get(code, 0) + 1
        if code is CloseCode.AUTH_TIMEOUT or code is CloseCode.TOKEN_EXPIRED:
            reason_key = "auth_timeout" if code is CloseCode.AUTH_TIMEOUT else "expired"
            stats.count(stats.auth_refusals, reason_key)
        if self._distributed:
            for topic in session.topics:
                self.cluster.topic_changed(topic)
        for topic in self.hub.remove_all(session):
            self._spawn(self._unlisten(topic))
        frames = session.outbox.drain()
        if frames and not session.paused and not session.outbox.overflowed:
            # what is queued (an error frame saying why) goes before the close frame
            with contextlib.suppress(Exception):
                session.writer.write_frames(frames)
        self._wake_writable(session)
        session.writer.close(code, reason if reason is not None else CLOSE_CODES[code].reason)

    def set_paused(self, session: Session, paused: bool) -> None:
        """The transport's write buffer crossed its high (True) or low (False) water mark."""
        session.paused = paused
        if not paused:
            if session.outbox.frames and not session.closed:
                self.hub.dirty.append(session)
                self._after_dispatch()
            self._wake_writable(session)

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
        now = session.last_command = self.loop.time()
        self.stats.commands += 1
        limits = session.limits
        if limits is not None and (wait := limits.take("commands", now)):
            self._rate_limited(session, "commands", wait, command_id(text), now)
            return
        command: ClientCommand | bytes
        try:
            command = self.commands.parse(text)
        except ProtocolError as exc:
            command = error_frame(exc, self.now_iso(), id=command_id(text))
            if not session.running:
                self.send(session, command)
                return
        if session.auth_deadline and (
            not isinstance(command, ClientCommand)
            or command.type not in self.unauthenticated_commands
        ):
            refused = CommandError(ErrorCode.UNAUTHORIZED, "authenticate first: send `auth`")
            cid = command.id if isinstance(command, ClientCommand) else command_id(text)
            self.send(session, error_frame(refused, self.now_iso(), id=cid))
            return
        if isinstance(command, ClientCommand) and limits is not None:
            kind = self.rate_kinds.get(command.type)
            if kind is not None and (wait := limits.take(kind, now)):
                self._rate_limited(session, kind, wait, command.id, now)
                return
        admission = session.admit(command, _MAX_PENDING_COMMANDS)
        if admission is Admission.REFUSED:
            self.stats.count(self.stats.rate_limited, "in_flight")
            limited = CommandError(ErrorCode.RATE_LIMITED, "too many commands in flight")
            cid = command.id if isinstance(command, ClientCommand) else None
            self.send(session, error_frame(limited, self.now_iso(), id=cid))
            return
        if admission is Admission.RUN and isinstance(command, ClientCommand):
            self._execute(session, command)

    def _rate_limited(self, session: Session, kind: str, wait: float, cid: Any, now: float) -> None:
        """Refuse one command over a rate limit; close the connection with 4530 when it
        keeps sending over it (``rate_limit_close_after`` refusals in the window). After
        a few refusals (:meth:`ConnectionLimits.hold`) the connection's reading is also
        held for the ``retry_after``: what it sent meanwhile waits unparsed."""
        self.stats.count(self.stats.rate_limited, kind)
        limits = session.limits
        if limits is not None and limits.refused(now):
            logger.info(
                "closing %s: sustained rate-limit abuse (%s)",
                session,
                kind,
                extra={"connection": session.id, "user": session.principal.subject},
            )
            self.close(session, CloseCode.RATE_LIMITED)
            return
        exc = RateLimitedError(f"rate limit of {kind} exceeded; retry later", wait)
        self.send(session, error_frame(exc, self.now_iso(), id=cid))
        if limits is not None and (hold := limits.hold(wait)):
            session.writer.hold_reading(hold)  # TCP back-pressure, not a parse per frame

    def receive_binary(self, session: Session) -> None:
        """Binary frames are not part of protocol v1: answer with an error frame."""
        limits = session.limits
        if limits is not None and (wait := limits.take("commands", now := self.loop.time())):
            self._rate_limited(session, "commands", wait, None, now)
            return
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
        handler = self.handlers.get(command.type)
        if handler is None:  # a model added to `commands` without a handler
            exc = ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"no handler for {command.type!r}")
            self.send(session, error_frame(exc, self.now_iso(), id=command.id))
            return None
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
            logger.exception(
                "command %s failed",
                name,
                extra={"connection": session.id, "user": session.principal.subject},
            )
            internal = ProtocolError(ErrorCode.INTERNAL, "internal error")
            self.send(session, error_frame(internal, self.now_iso(), id=cid))

    async def _run_commands(self, session: Session, first: Awaitable[None]) -> None:
        try:
            await first
            while (command := session.next_command()) is not None:
                result = self._call(session, command)
                if result is not None:
                    await result
        finally:
            session.running = False

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, cancel_on_drain: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this gateway (features' per-connection work):
        :meth:`drain` gives it until ``shutdown_timeout`` to finish, then cancels it; with
        ``cancel_on_drain`` it is cancelled as soon as draining begins (work with nothing
        to finish, such as a replay)."""
        task = self._spawn(coro)
        if cancel_on_drain:
            self._background_tasks.add(task)
            task.add_done_callback(self._background_tasks.discard)
        return task

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
        if principal is UNAUTHENTICATED:
            return False
        if not await resolve(self.authorizer.can_subscribe(principal, topic)):
            return False
        for prefix, guard in self.subscribe_guards.items():
            if topic.startswith(prefix) and not await resolve(guard(principal, topic)):
                return False
        return True

    async def may_publish(self, principal: Principal, topic: str) -> bool:
        """May a client publish to ``topic``: not a server topic, the authorizer's answer,
        then the publish guard of the topic's prefix, if any (per publish, not per event
        delivered)."""
        if self.server_owned(topic):
            return False
        if not await resolve(self.authorizer.can_publish(principal, topic)):
            return False
        for prefix, guard in self.publish_guards.items():
            if topic.startswith(prefix) and not await resolve(guard(principal, topic)):
                return False
        return True

    async def may_control(self, principal: Principal, topic: str) -> bool:
        """May ``principal`` control the run of ``topic`` (pause, resume, cancel,
        execute): the authorizer's ``can_control`` where it has one, else its
        ``can_publish``."""
        check = getattr(self.authorizer, "can_control", None)
        if check is None:
            check = self.authorizer.can_publish
        return bool(await resolve(check(principal, topic)))

    async def _cmd_publish(self, session: Session, command: PublishCommand) -> None:
        if not await self.may_publish(session.principal, command.topic):
            raise CommandError(ErrorCode.FORBIDDEN, f"may not publish to {command.topic!r}")
        try:
            pub = await self.publish(
                command.topic,
                command.event,
                command.data,
                producer=command.producer_id,
                producer_seq=command.producer_seq,
            )
        except PublishOutcomeUnknownError as exc:
            raise CommandError(
                ErrorCode.OUTCOME_UNKNOWN,
                "publish outcome unknown (the event may have been published; read the "
                f"topic's history before publishing it again): {exc}",
            ) from exc
        except BrokerError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"publish failed: {exc}") from exc
        ack: dict[str, Any] = {"topic": pub.topic, "seq": pub.seq}
        if type(pub) is Duplicate:
            ack["duplicate"] = True
        self.reply(session, "ack", ack, id=command.id)

    def _cmd_unsubscribe(self, session: Session, command: UnsubscribeCommand) -> None:
        self.unsubscribe(session, command.topic)
        self.reply(session, "unsubscribed", {}, id=command.id, topic=command.topic)

    async def recheck_subscriptions(self, session: Session) -> list[str]:
        """End the subscriptions the connection's (new) principal may no longer hold, after
        an ``auth:refresh`` with fewer rights: each gets an ``unsubscribed`` frame with
        ``reason: "forbidden"``. Returns the topics ended."""
        ended: list[str] = []
        for topic in sorted(session.topics):
            if topic in session.topics and not await self.may_subscribe(session.principal, topic):
                self.unsubscribe(session, topic)
                self.reply(session, "unsubscribed", {"reason": "forbidden"}, topic=topic)
                ended.append(topic)
        return ended

    def unsubscribe(self, session: Session, topic: str) -> None:
        """End one subscription; raises :class:`CommandError` when there is none."""
        if topic not in session.topics:
            raise CommandError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {topic!r}")
        self.hub.remove(session, topic)
        if self._distributed:
            self.cluster.topic_changed(topic)
        if not self.hub.presence(topic):
            self._spawn(self._unlisten(topic))

    async def presence(self, topic: str) -> TopicPresence:
        """Who is subscribed to ``topic`` on every live node: this node's hub plus the
        cluster state's other nodes (not authorized here: see the ``presence`` command).
        Raises :class:`BrokerError` when the cluster state cannot be read."""
        found = await self.cluster.presence(topic)
        users, anonymous = _local_presence(self.hub, topic)
        found.add(users, anonymous)
        return found

    async def _cmd_presence(self, session: Session, command: PresenceCommand) -> None:
        topic = command.topic
        if not await self.may_subscribe(session.principal, topic):
            # the answer of a denied subscribe: nothing about the topic or its subscribers
            raise CommandError(ErrorCode.FORBIDDEN, f"may not subscribe to {topic!r}")
        try:
            found = await self.presence(topic)
        except BrokerError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"presence unavailable: {exc}") from exc
        self.reply(session, "presence", presence_data(found), id=command.id, topic=topic)

    async def _cmd_subscribe(self, session: Session, command: SubscribeCommand) -> None:
        if command.replay is not None:  # protocol v1: the same as a `replay` command
            model = self.commands.models.get("replay")
            if model is None:
                raise CommandError(
                    ErrorCode.INVALID_FIELD, "replay is not available here", field="replay"
                )
            replay = model.model_validate(
                {
                    "type": "replay",
                    "topic": command.topic,
                    "speed": command.replay,
                    "since": command.since or 0,
                    "id": command.id,
                }
            )
            result = self.handlers["replay"](session, replay)
            if result is not None:
                await result
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
        if self._distributed:
            self.cluster.topic_changed(topic)
        snapshot: tuple[int, dict[str, Any]] | None = None
        try:
            if first_here:
                await self._listen(topic)
            elif (listening := self._listening.get(topic)) is not None:
                # another subscriber's listen() is under way: history read before it
                # returns could miss publications that are not delivered yet
                await asyncio.shield(listening)
            provider = self._by_prefix(self.snapshot_providers, topic)
            if since is None:
                snapshot = await provider(topic) if provider is not None else None
                start = snapshot[0] if snapshot is not None else 0
                # after a snapshot at seq S: the events after S that it does not reflect
                if snapshot is None:
                    page = await self.broker.history(topic, start, limit=0)
                else:
                    page = await self.history(topic, start)
                recovered = True
            else:
                page = await self.history(topic, since)
                reset = epoch is not None and epoch != page.epoch
                if reset:  # `since` counts in another life of the topic: replay all of it
                    page = await self.history(topic, 0)
                recovered = page.complete and not reset
                if not recovered and provider is not None:
                    snapshot = await provider(topic)  # the reset a client needs: the state
                    if snapshot is not None:
                        page = await self.history(topic, snapshot[0])
        except BrokerError as exc:
            self.hub.remove(session, topic)
            if self._distributed:
                self.cluster.topic_changed(topic)
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
        hub.complete(session, topic, upto, page.epoch)
        self._after_dispatch()

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        """The publications of ``topic`` after ``since``: the broker's history, reaching
        further back through the topic's history source (a store) when the broker's no
        longer does. ``complete`` is False only when the events are really gone."""
        page = await self.broker.history(topic, since, limit)
        if page.complete or since > page.last_seq:
            return page
        source = self._by_prefix(self.history_sources, topic)
        if source is None:
            return page
        older = await source(topic, since, page, limit)
        return page if older is None else older

    async def _listen(self, topic: str) -> None:
        """``broker.listen(topic)``, which later subscribers of the topic wait for."""
        done: asyncio.Future[None] = self.loop.create_future()
        self._listening[topic] = done
        try:
            await self.broker.listen(topic)
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, Exception) else BrokerError("cancelled"))
            done.exception()  # retrieved here; waiters get it too
            raise
        else:
            done.set_result(None)
        finally:
            if self._listening.get(topic) is done:
                del self._listening[topic]

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
        """Ping, reap dead and idle connections, close those whose token expired more than
        ``auth_expiry_grace`` ago (4501) or that did not authenticate in time (4508), trim
        history (called periodically: the credentials are checked per connection here,
        never per event)."""
        s = self.settings
        interval, timeout, idle = s.ping_interval, s.ping_timeout, s.idle_timeout
        wall, grace = time.time(), s.auth_expiry_grace
        for session in list(self.sessions.values()):
            credentials = session.credentials(now, wall, grace)
            if credentials is Credentials.CLOSE_EXPIRED:
                self.close(session, CloseCode.TOKEN_EXPIRED)
                continue
            if credentials is Credentials.CLOSE_AUTH_TIMEOUT:
                self.close(session, CloseCode.AUTH_TIMEOUT)
                continue
            action = session.keepalive(now, interval, timeout, idle)
            if action is Keepalive.PING:
                session.writer.send_ping()
            elif action is Keepalive.CLOSE_DEAD:
                self.close(session, CloseCode.KEEPALIVE_TIMEOUT)
            elif action is Keepalive.CLOSE_IDLE:
                self.close(session, CloseCode.IDLE_TIMEOUT)
        if self._trimming is None:
            self._trimming = self._spawn(self._trim_history(time.time()))
        limiter = self.rate_limiter
        if limiter.tracked > len(self.user_connections):
            limiter.forget_idle(now, self.user_connections.keys())

    def activity(self, session: Session) -> None:
        """Bytes from the client (pongs included) prove the connection is alive."""
        session.last_seen = self.loop.time()
        session.ping_sent = 0.0


def _local_presence(hub: Hub, topic: str) -> tuple[dict[str, int], int]:
    """The subscribers of ``topic`` on this node: connections per user, anonymous ones."""
    users: dict[str, int] = {}
    anonymous = 0
    for session in hub.subscribers(topic):
        principal = session.principal
        if principal.anonymous:
            anonymous += 1
        else:
            users[principal.subject] = users.get(principal.subject, 0) + 1
    return users, anonymous


def presence_data(found: TopicPresence) -> dict[str, Any]:
    """The ``data`` of a ``presence`` reply (and of ``GET /api/topics/{topic}/presence``):
    users sorted by name with their connections, anonymous connections, totals."""
    return {
        "users": [{"user": u, "connections": n} for u, n in sorted(found.users.items())],
        "anonymous": found.anonymous,
        "connections": found.connections,
        "nodes": found.nodes,
    }


class _ClusterView:
    """The gateway as the cluster state sees it (:class:`agentcast.cluster.LocalView`)."""

    __slots__ = ("gateway",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def local_presence(self, topic: str) -> tuple[dict[str, int], int]:
        return _local_presence(self.gateway.hub, topic)

    def local_topics(self) -> list[str]:
        return [name for name, state in self.gateway.hub.topics.items() if len(state)]

    def take_drawn(self) -> dict[str, dict[str, float]]:
        return self.gateway.rate_limiter.take_drawn()

    def charge(self, subject: str, kind: str, tokens: float) -> None:
        gateway = self.gateway
        gateway.rate_limiter.charge(subject, kind, tokens, gateway.loop.time())
