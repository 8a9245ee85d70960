"""The runs feature: state, leases, control and storage of every run topic this node sees.

:class:`Runs` installs itself into a gateway (``Gateway(features=[Runs(store), …])``),
listens to every ``execution:`` and ``workflow:`` topic and:

* validates their events against the seeds' vocabularies (:mod:`agentcast.runs.vocabulary`);

* folds each publication into a :class:`~agentcast.runs.state.RunState` and answers the
  gateway's snapshot requests with ``(seq, state)``; it keeps at most ``max_runs``
  states, forgetting finished runs first (the run store has them all);
* records the run events **this node published** in the run store (when one is given;
  each event is written by one node: the one whose broker assigned its seq, told by the
  gateway's :attr:`~agentcast.gateway.Gateway.publish_observers`), and serves the store as
  the history of run topics where the broker's no longer reaches back, so a client that
  had seq N before a restart resumes at N+1 with ``recovered: true``. The node that
  records a run's terminal event checks, ``fill_delay`` seconds later, that the store
  holds every seq of the run and writes the missing ones from the broker's history (a
  node that died before its recorder flushed);
* keeps a **lease** per unfinished run: every event of the run renews it for
  ``run_lease_ttl`` seconds (on every node: every node folds every event), a producer can
  renew it explicitly (``lease`` command, ``PUT /api/runs/{run}/lease``, or a tracker
  doing it for you) with its own TTL, which a distributed cluster state shares with every
  node (a shared key ``lease:<topic>`` expiring with the lease). When a lease lapses on a
  node that sees no shared renewal either, the node appends a terminal
  ``publisher_lost`` event **conditionally** (``expect_last_seq``, broker contract item
  10: only if the run's last seq is still the last one it folded), so of N nodes racing
  exactly one seals the run, and a producer event that arrived meanwhile makes every
  seal fail (the lease is renewed instead): dashboards and history show what happened
  instead of a run "running" for ever;
* folds every run from its first event on every node: a node that sees a run's events
  from the middle (started later, or a notification lost) reads the missing ones from
  history first, so a late joiner gets the same snapshot on every node;
* records each run's **owner** (the principal that executed it or published its first
  event, or the ``owner`` that event names; None for runs the server makes), in memory
  and in the run store, and answers the gateway's owner lookups of run topics (the
  default authorizer's, :mod:`agentcast.security.ownership`);
* routes **control** (``pause``, ``resume``, ``cancel``) from authorized clients to the
  handler the producer registered for the run, then publishes ``run_paused``,
  ``run_resumed`` or ``run_cancelled`` on the run topic. One producer at a time holds a
  run topic (:meth:`Runs.claim`): a second ``execute`` of a live workflow is refused;
* brings the HTTP routes (:mod:`agentcast.runs.http`) and the seeds' per-run WebSocket
  endpoints (:mod:`agentcast.runs.endpoints`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field

from agentcast.brokers.base import Conflict
from agentcast.codes import ErrorCode
from agentcast.core.envelope import Publication
from agentcast.core.frames import TOPIC_PATTERN, ClientCommand
from agentcast.core.history import HistoryPage
from agentcast.errors import BrokerError, CommandError
from agentcast.policy import Principal
from agentcast.runs.endpoints import run_endpoints
from agentcast.runs.engine import WorkflowRegistry
from agentcast.runs.recorder import RunRecorder, summary_of
from agentcast.runs.state import RunState, run_kind
from agentcast.runs.vocabulary import validate_event
from agentcast.security.ownership import Owner
from agentcast.storage.base import RunStore, RunSummary, StoreError
from agentcast.storage.recorder import stored_page

if TYPE_CHECKING:
    from agentcast.core.session import Session
    from agentcast.gateway import Gateway

__all__ = ["RUN_PREFIXES", "ControlCommand", "ControlHandler", "LeaseCommand", "Runs"]

logger = logging.getLogger("agentcast")

RUN_PREFIXES = ("execution:", "workflow:")
ControlAction = Literal["pause", "resume", "cancel"]
ControlHandler = Callable[[ControlAction], Awaitable[None]]
_CONTROL_EVENTS = {"pause": "run_paused", "resume": "run_resumed", "cancel": "run_cancelled"}


class ControlCommand(ClientCommand):
    """``{"type": "control", "topic": "workflow:1", "action": "pause"}``."""

    type: Literal["control"] = "control"
    topic: str = Field(pattern=TOPIC_PATTERN)
    action: ControlAction


class LeaseCommand(ClientCommand):
    """``{"type": "lease", "topic": "workflow:1", "ttl": 30}``: the producer is alive."""

    type: Literal["lease"] = "lease"
    topic: str = Field(pattern=TOPIC_PATTERN)
    ttl: float = Field(gt=0, le=86400)


class Runs:
    """The runs feature: folded run states, leases, control, storage, routes, endpoints."""

    name = "runs"

    def __init__(
        self,
        store: RunStore | None = None,
        *,
        max_runs: int = 10_000,
        max_logs: int = 100,
        workflows: WorkflowRegistry | None = None,
    ) -> None:
        self.max_runs = max_runs
        self.max_logs = max_logs
        self.states: OrderedDict[str, RunState] = OrderedDict()
        self.leases: dict[str, tuple[float, float]] = {}
        """Unfinished run topic -> (deadline on the monotonic clock, ttl)."""
        self.handlers: dict[str, ControlHandler] = {}
        self.starting: dict[str, str] = {}
        """Workflow topic -> the execution id of the last ``workflow_start`` checked, until
        the fold has seen it (defaults for the events checked after it)."""
        self.producers: dict[str, object] = {}
        """Run topic -> the producer holding it (see :meth:`claim`)."""
        self.owners: OrderedDict[str, str | None] = OrderedDict()
        """Run topic -> its owner's subject (None: nobody, the server made it), for the
        runs seen here; the run store keeps them all (see :meth:`owner_of`)."""
        self.publishers: dict[str, str] = {}
        """Unowned run topic -> the first client allowed to publish to it, until its first
        event arrives (that client then owns it, unless the event names an ``owner``)."""
        self.gateway: Gateway | None = None
        self.default_ttl = 60.0
        self.store: RunStore | None = store
        self.recorder: RunRecorder | None = None
        self.workflows = workflows if workflows is not None else WorkflowRegistry()
        """Workflows the built-in engine runs on ``POST /api/workflows/{id}/execute``."""
        self.fill_delay = 2.0
        """Seconds after recording a run's terminal event before checking the store holds
        every seq of the run (the other nodes' recorders flush every 0.2 s)."""
        self.counters = {
            "recorded": 0,
            "filled": 0,
            "seals": 0,
            "seal_conflicts": 0,
            "catch_ups": 0,
        }
        """For ``/metrics``: run events this node recorded (its own publications), events
        filled from the broker's history, ``publisher_lost`` seals made, seals refused
        (another node sealed, or the producer published meanwhile), runs folded again
        from history (seen from the middle)."""
        self._mine: dict[str, dict[int, Publication]] = {}
        """Run topic -> this node's own publications not folded yet (recorded once folded,
        so that the summary written after them includes them)."""
        self._catching: dict[str, tuple[asyncio.Task[None], list[Publication]]] = {}
        """Run topic -> the task folding it again from history, and the live events
        that arrived meanwhile."""

    def install(self, gateway: Gateway) -> None:
        """Observe ``gateway``'s publications, validate run events, serve snapshots and
        stored history of run topics, handle ``control`` and ``lease``, bring the routes
        and the per-run endpoints."""
        from agentcast.runs.http import runs_router

        if self.gateway is not None and self.gateway is not gateway:
            raise RuntimeError("the runs feature is installed in another gateway")
        self.gateway = gateway
        self.default_ttl = gateway.settings.run_lease_ttl
        gateway.observers.append(self.observe)
        gateway.add_validator(self.check_event)
        gateway.add_snapshot_provider(RUN_PREFIXES, self.snapshot_async)
        for prefix in RUN_PREFIXES:
            gateway.owner_lookups[prefix] = self.owner_of
            gateway.publish_guards[prefix] = self._publishing
        gateway.add_command(ControlCommand, "control", handler=self._cmd_control)
        gateway.add_command(LeaseCommand, "lease", handler=self._cmd_lease)
        for endpoint in run_endpoints(gateway):
            gateway.add_socket_endpoint(endpoint)
        gateway.add_router(runs_router(gateway, self))
        if self.store is not None:
            self.recorder = RunRecorder(self.store, self)
            # only with a store: no per-publication call for nothing to record
            gateway.publish_observers.append(self.published)
            gateway.add_history_source(RUN_PREFIXES, self.stored_history)
            gateway.add_background(self.recorder.run)
            gateway.add_shutdown(self.recorder.flush)

        async def listen() -> None:
            if self.store is not None:
                await self._restore()
            for prefix in RUN_PREFIXES:
                await gateway.broker.listen_prefix(prefix)

        gateway.add_startup(listen)
        gateway.add_background(self._watch_leases)

    async def _restore(self) -> None:
        """After a restart: continue each run topic's numbering, reload unfinished runs
        (their lease starts now: a producer that does not come back is sealed)."""
        assert self.store is not None
        assert self.gateway is not None
        broker = self.gateway.broker
        await broker.declare_durable(RUN_PREFIXES)
        await broker.continue_numbering(await self.store.last_seqs())
        for topic in await self.store.unfinished():
            state = await self._load(topic)
            if state is not None and not state.finished:
                self.leases[topic] = (time.monotonic() + self.default_ttl, self.default_ttl)

    def check_event(self, topic: str, type: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """The gateway's validator for run topics: the run's own ids are filled in where
        the producer left them out (``workflow_id`` / ``execution_id`` from the topic, a
        workflow event's ``execution_id`` from the run in progress), then the event is
        checked against the seed's vocabulary (:func:`validate_event`)."""
        kind = run_kind(topic)
        if kind is None:
            return None
        run_id = topic.split(":", 1)[1]
        filled: dict[str, Any] | None = None
        if kind == "workflow":
            if "workflow_id" not in data or "execution_id" not in data:
                current = self.starting.get(topic)
                if current is None:
                    state = self.states.get(topic)
                    current = state.execution_id if state is not None else None
                filled = {"workflow_id": run_id, "execution_id": current or run_id, **data}
        elif "execution_id" not in data:
            filled = {"execution_id": run_id, **data}
        checked = filled if filled is not None else data
        validate_event(topic, type, checked)
        if type == "workflow_start":
            # the run it begins, for the events checked after it (before the fold sees it)
            self.starting[topic] = str(checked["execution_id"])
        return filled

    async def stored_history(
        self, topic: str, since: int, page: HistoryPage, limit: int | None = None
    ) -> HistoryPage | None:
        """The run store's events of ``topic`` after ``since``, joined to the broker's
        ``page`` (the gateway's history source for run topics), at most ``limit``. None
        when the store does not reach back to ``since + 1`` either, or is unavailable."""
        if self.store is None or self.recorder is None or run_kind(topic) is None:
            return None
        return await stored_page(self.store, self.recorder, topic, since, page, limit)

    # -- state ---------------------------------------------------------------------

    def observe(self, pub: Publication) -> None:
        """Fold one publication (ignores topics that are not runs); renews the lease."""
        topic = pub.topic
        if not topic.startswith(RUN_PREFIXES) or run_kind(topic) is None:
            return
        state = self.states.get(topic)
        if state is None:
            state = self.states[topic] = RunState(topic, self.max_logs)
            self._evict()
        else:
            self.states.move_to_end(topic)
        data = orjson.loads(pub.data)
        if pub.seq == 1 and topic not in self.owners:  # the topic's first event
            named = data.get("owner")
            self._own(topic, named if isinstance(named, str) else self.publishers.get(topic))
        catching = self._catching.get(topic)
        if catching is not None:
            catching[1].append(pub)
        elif pub.seq > state.seq + 1:
            self._catch_up(topic, pub)  # seen from the middle: fold it from history
        state.apply(pub.seq, pub.type, data, pub.timestamp)
        if pub.type == "workflow_start" and self.starting.get(topic) == state.execution_id:
            del self.starting[topic]  # the fold knows the run now
        if topic in self._mine:
            self._record_mine(topic, state.seq)
        if state.finished:
            self.leases.pop(topic, None)
        else:
            ttl = self.leases.get(topic, (0.0, self.default_ttl))[1]
            self.leases[topic] = (time.monotonic() + ttl, ttl)

    def published(self, pub: Publication) -> None:
        """The gateway's publish observer: a run event this node published is recorded
        in the run store (by this node only), once folded."""
        topic = pub.topic
        if self.recorder is None or not topic.startswith(RUN_PREFIXES) or run_kind(topic) is None:
            return
        state = self.states.get(topic)
        if state is not None and state.seq >= pub.seq:  # folded already (a local broker)
            self._record(pub, state)
        else:  # the notification comes later (a remote broker): recorded when folded
            mine = self._mine.setdefault(topic, {})
            mine[pub.seq] = pub
            if len(mine) > 10_000:  # notifications that never came: record them anyway
                self._record_mine(topic, pub.seq)

    def _record_mine(self, topic: str, upto: int) -> None:
        """Record this node's publications of ``topic`` up to seq ``upto``."""
        mine = self._mine.get(topic)
        if not mine:
            self._mine.pop(topic, None)
            return
        state = self.states.get(topic)
        for seq in sorted(q for q in mine if q <= upto):
            pub = mine.pop(seq)
            if state is not None:
                self._record(pub, state)
            elif self.recorder is not None:
                self.recorder.record(pub)
                self.counters["recorded"] += 1
        if not mine:
            del self._mine[topic]

    def _record(self, pub: Publication, state: RunState) -> None:
        assert self.recorder is not None
        self.recorder.record(pub)
        self.counters["recorded"] += 1
        gateway = self.gateway
        if (
            state.finished
            and pub.seq == state.seq  # this node published the run's end
            and gateway is not None
            and gateway.broker.publish_sync is None  # other nodes may have published
        ):
            gateway.spawn(self._fill(pub.topic), cancel_on_drain=True)

    async def _fill(self, topic: str) -> int:
        """After a run ended: write the seqs the run store lacks from the broker's
        history (a node that published them died before its recorder flushed); returns
        how many. Only on a broker shared by processes (one without the synchronous
        capability), skipped when this node stops within ``fill_delay``. The store's
        append is idempotent, so a fill racing a slow recorder writes a few events twice
        at worst, never wrong ones."""
        assert self.gateway is not None
        if self.store is None or self.recorder is None:
            return 0
        await asyncio.sleep(self.fill_delay)
        state = self.states.get(topic)
        if state is None:
            return 0
        upto = state.seq
        try:
            await self.recorder.flush()
            stored = {e.seq for e in await self.store.events(topic, 0, upto)}
            missing = [seq for seq in range(1, upto + 1) if seq not in stored]
            if not missing:
                return 0
            page = await self.gateway.broker.history(topic, missing[0] - 1)
        except (StoreError, BrokerError) as exc:
            logger.warning("run %s not checked for missing events: %s", topic, exc)
            return 0
        wanted = set(missing)
        found = [p for p in page.publications if p.seq in wanted]
        for pub in found:
            self.recorder.record(pub)
        self.counters["filled"] += len(found)
        logger.warning(
            "run %s: %d events missing in the run store (a node died before recording "
            "them?): %d written from the broker's history",
            topic,
            len(missing),
            len(found),
            extra={"topic": topic},
        )
        return len(found)

    def _catch_up(self, topic: str, pub: Publication | None) -> None:
        """``topic`` is seen from the middle (this node started later, or lost a
        notification): fold it again from its history, then the live events that
        arrive meanwhile (:meth:`snapshot_async` waits for it)."""
        if self.gateway is None:
            return
        self.counters["catch_ups"] += 1
        task = self.gateway.spawn(self._refold(topic), cancel_on_drain=True)
        self._catching[topic] = (task, [pub] if pub is not None else [])

    async def _refold(self, topic: str) -> None:
        assert self.gateway is not None
        try:
            page = await self.gateway.history(topic, 0)
        except (BrokerError, StoreError) as exc:
            logger.warning("run %s: history unreadable, folded from the middle: %s", topic, exc)
            page = None
        finally:
            _, buffered = self._catching.pop(topic, (None, []))
        state = self.states.get(topic)
        if page is None or state is None:
            return
        fresh = RunState(topic, self.max_logs)
        for p in page.publications:
            fresh.apply(p.seq, p.type, orjson.loads(p.data), p.timestamp)
        for p in buffered:
            fresh.apply(p.seq, p.type, orjson.loads(p.data), p.timestamp)
        if fresh.seq >= state.seq:
            self.states[topic] = state = fresh
            if fresh.finished:
                self.leases.pop(topic, None)
        if topic in self._mine:  # this node's own events whose notification was lost
            self._record_mine(topic, state.seq)

    def snapshot(self, topic: str) -> tuple[int, dict[str, Any]] | None:
        """``(seq, state)`` of a run topic this registry knows, else None."""
        state = self.states.get(topic)
        if state is None:
            return None
        return state.seq, state.snapshot()

    async def snapshot_async(self, topic: str) -> tuple[int, dict[str, Any]] | None:
        """:meth:`snapshot`, falling back to the run store for runs no longer in memory;
        waits (bounded) for a fold from history in progress."""
        catching = self._catching.get(topic)
        if catching is not None:  # neither its failure nor its cancellation is ours
            await asyncio.wait({catching[0]}, timeout=5.0)
        found = self.snapshot(topic)
        if found is not None or self.store is None or run_kind(topic) is None:
            return found
        state = await self._load(topic)
        return (state.seq, state.snapshot()) if state is not None else None

    async def _load(self, topic: str) -> RunState | None:
        """Fold a run from its stored events (and keep it in memory)."""
        assert self.store is not None
        events = await self.store.events(topic, 0)
        if not events:
            return None
        state = RunState(topic, self.max_logs)
        for event in events:
            state.apply(event.seq, event.type, event.data, event.timestamp)
        known = self.states.get(topic)
        if known is not None and known.seq >= state.seq:  # events arrived meanwhile
            return known
        self.states[topic] = state
        self._evict()
        return state

    def summary(self, topic: str) -> RunSummary | None:
        """The stored summary of a run this registry holds in memory."""
        state = self.states.get(topic)
        if state is None:
            return None
        return summary_of(topic, state.snapshot(), state.seq, self.owners.get(topic))

    def _evict(self) -> None:
        if len(self.states) <= self.max_runs:
            return
        for topic, state in self.states.items():
            if state.finished:
                del self.states[topic]
                return
        topic, _ = self.states.popitem(last=False)
        self.leases.pop(topic, None)

    # -- owners --------------------------------------------------------------------

    def _own(self, topic: str, subject: str | None) -> None:
        """Record ``topic``'s owner (bounded: the oldest are forgotten here, not in the
        store; a forgotten owner without a store makes the run readable by admin only)."""
        self.publishers.pop(topic, None)
        self.owners[topic] = subject
        self.owners.move_to_end(topic)
        if len(self.owners) > 10 * self.max_runs:
            self.owners.popitem(last=False)

    async def owner_of(self, topic: str) -> Owner | None:
        """Who owns the run ``topic`` (the gateway's owner lookup for run topics): the
        principal that executed it or published its first event, or the ``owner`` that
        event names; ``Owner(None)`` for a run the server made, and for one whose owner
        cannot be told (forgotten here, not in the store, still in the broker's history;
        or the store is unavailable): nobody may claim those; None for a run that exists
        neither here, nor in the store, nor in the broker."""
        assert self.gateway is not None
        if topic in self.owners:
            return Owner(self.owners[topic])
        if run_kind(topic) is None:
            return None
        if self.store is not None:
            try:
                summary = await self.store.get_run(topic)
            except StoreError as exc:
                logger.warning(
                    "owner of %s unknown, run store unavailable: %s",
                    topic,
                    exc,
                    extra={"topic": topic},
                )
                return Owner(None)
            if summary is not None:
                if topic not in self.owners:
                    self._own(topic, summary.owner)
                return Owner(self.owners[topic])
        try:
            page = await self.gateway.broker.history(topic, 0, limit=0)
        except BrokerError:
            return Owner(None)
        return Owner(None) if page.last_seq > 0 else None

    async def take_ownership(self, principal: Principal, topic: str) -> bool:
        """Before ``principal`` starts a run of ``topic`` (execute): a topic nobody owns
        yet becomes theirs; a topic they may read (their own, the ``topics`` claim,
        ``admin``, open dev mode) keeps its owner; False for any other (its owner's, or
        one the server made), which the caller refuses."""
        assert self.gateway is not None
        if await self.owner_of(topic) is None:
            self._own(topic, None if principal.anonymous else principal.subject)
            return True
        return await self.gateway.may_subscribe(principal, topic)

    def _publishing(self, principal: Principal, topic: str) -> bool:
        """Publish guard of run topics: remember the first client allowed to publish to
        a topic without an owner (it owns the topic when its first event arrives; an
        anonymous one of open dev mode leaves it nobody's)."""
        if topic not in self.owners and topic not in self.publishers and not principal.anonymous:
            if len(self.publishers) >= 10_000:  # publishes that never arrived
                self.publishers.clear()
            self.publishers[topic] = principal.subject
        return True

    # -- leases --------------------------------------------------------------------

    def renew(self, topic: str, ttl: float | None = None) -> float:
        """The producer of ``topic`` is alive for ``ttl`` more seconds, on this node;
        returns the ttl. :meth:`renew_everywhere` tells every node."""
        ttl = ttl if ttl is not None else self.default_ttl
        state = self.states.get(topic)
        if state is None or not state.finished:
            self.leases[topic] = (time.monotonic() + ttl, ttl)
        return ttl

    async def renew_everywhere(
        self, topic: str, ttl: float | None = None, *, strict: bool = True
    ) -> float:
        """:meth:`renew`, and on a distributed cluster state the shared key
        ``lease:<topic>`` (value: the ttl; expiring with the lease) that every node
        reads before sealing the run: once this returns, no node seals the run before
        the lease ends. One round trip. Raises :class:`BrokerError` when the key cannot
        be written (the renewal then holds on this node only), unless ``strict`` is
        False (a tracker's renewer: logged)."""
        assert self.gateway is not None
        ttl = self.renew(topic, ttl)
        shared = self.gateway.cluster.shared
        if shared.distributed:
            try:
                await shared.put(_lease_key(topic), repr(ttl).encode(), ttl)
            except BrokerError as exc:
                if strict:
                    raise
                logger.warning("lease of %s renewed on this node only: %s", topic, exc)
        return ttl

    def tracker_renewer(self, topic: str) -> Awaitable[float]:
        """What a tracker on this node calls to keep its run's lease (every node)."""
        return self.renew_everywhere(topic, strict=False)

    async def _watch_leases(self) -> None:
        while True:
            await asyncio.sleep(max(0.02, min(1.0, self.default_ttl / 4)))
            await self.expire(time.monotonic())

    async def expire(self, now: float) -> list[str]:
        """Seal every run whose lease lapsed at ``now`` (monotonic) with
        ``publisher_lost``, unless another node holds a renewal of it (shared key); the
        seal is conditional on the last seq folded here (broker contract item 10), so
        one node of the deployment seals. Returns the runs sealed here."""
        assert self.gateway is not None
        lapsed = [t for t, (deadline, _) in self.leases.items() if deadline <= now]
        if not lapsed:
            return []
        shared = self.gateway.cluster.shared
        if shared.distributed:
            try:
                renewed = await shared.read([_lease_key(t) for t in lapsed])
            except BrokerError as exc:  # cannot tell: look again a little later
                logger.warning("run leases unreadable, %d seals delayed: %s", len(lapsed), exc)
                for topic in lapsed:
                    if topic in self.leases:
                        self.leases[topic] = (now + 1.0, self.leases[topic][1])
                return []
            now = time.monotonic()
            alive = []
            for topic, found in zip(lapsed, renewed, strict=True):
                if found is not None and topic in self.leases:
                    value, left = found
                    try:
                        ttl = float(value)
                    except ValueError:
                        ttl = self.leases[topic][1]
                    self.leases[topic] = (now + left, ttl)  # renewed through another node
                    alive.append(topic)
            lapsed = [t for t in lapsed if t not in alive]
        sealed = []
        for topic in lapsed:
            lease = self.leases.pop(topic, None)
            if lease is None:
                continue
            ttl = lease[1]
            state = self.states.get(topic)
            if state is not None and state.finished:
                continue
            last = state.seq if state is not None else None
            try:
                pub = await self.gateway.publish(
                    topic,
                    "publisher_lost",
                    {"reason": "lease expired", "lease_ttl": ttl, "last_seq": last},
                    expect_last_seq=last,
                )
            except BrokerError as exc:
                logger.warning("run %s not sealed, retried later: %s", topic, exc)
                self.leases.setdefault(topic, (time.monotonic() + 1.0, ttl))
                continue
            if isinstance(pub, Conflict):
                # another node sealed it, or the producer published meanwhile: the run
                # is alive (its fold renews the lease) or finished (the fold drops it)
                self.counters["seal_conflicts"] += 1
                state = self.states.get(topic)
                if state is None or not state.finished:
                    self.leases.setdefault(topic, (time.monotonic() + ttl, ttl))
                if state is not None and pub.seq > state.seq and topic not in self._catching:
                    self._catch_up(topic, None)  # this node missed events: fold them
                continue
            self.counters["seals"] += 1
            sealed.append(topic)
        return sealed

    async def _cmd_lease(self, session: Session, command: LeaseCommand) -> None:
        assert self.gateway is not None
        await self._authorize(session, command.topic, control=False)
        try:
            ttl = await self.renew_everywhere(command.topic, command.ttl)
        except BrokerError as exc:
            raise CommandError(
                ErrorCode.UNAVAILABLE, f"lease renewed on this node only: {exc}"
            ) from exc
        self.gateway.reply(
            session, "lease_renewed", {"topic": command.topic, "ttl": ttl}, id=command.id
        )

    # -- control -------------------------------------------------------------------

    def on_control(self, topic: str, handler: ControlHandler) -> Callable[[], None]:
        """Register the producer's control handler for a run; returns the unregister call."""
        self.handlers[topic] = handler

        def unregister() -> None:
            if self.handlers.get(topic) is handler:
                del self.handlers[topic]

        return unregister

    def claim(
        self, topic: str, producer: object, control: ControlHandler | None = None
    ) -> Callable[[], None]:
        """``producer`` runs ``topic`` now (and takes its ``control``); returns the release.

        One producer at a time: while another holds the topic this raises
        :class:`CommandError` ``conflict`` (HTTP 409), so two runs never interleave their
        events on one topic. Claiming again with the same producer is a no-op.
        """
        holder = self.producers.get(topic)
        if holder is not None and holder is not producer:
            raise CommandError(
                ErrorCode.CONFLICT, f"a run of {topic!r} is in progress", field="topic"
            )
        self.producers[topic] = producer
        unregister = self.on_control(topic, control) if control is not None else None

        def release() -> None:
            if self.producers.get(topic) is producer:
                del self.producers[topic]
            if unregister is not None:
                unregister()

        return release

    async def control(self, topic: str, action: ControlAction) -> int:
        """Carry out ``action`` through the run's handler; returns the seq of the event."""
        assert self.gateway is not None
        handler = self.handlers.get(topic)
        if handler is None:
            raise _no_producer(topic)
        state = self.states.get(topic)
        if state is not None and state.finished:
            raise CommandError(ErrorCode.INVALID_FIELD, f"{topic!r} has finished", field="topic")
        await handler(action)
        pub = await self.gateway.publish(topic, _CONTROL_EVENTS[action], {"action": action})
        return pub.seq

    async def _cmd_control(self, session: Session, command: ControlCommand) -> None:
        assert self.gateway is not None
        await self._authorize(session, command.topic)
        seq = await self.control(command.topic, command.action)
        self.gateway.reply(session, "ack", {"topic": command.topic, "seq": seq}, id=command.id)

    async def _authorize(self, session: Session, topic: str, *, control: bool = True) -> None:
        assert self.gateway is not None
        if run_kind(topic) is None:
            raise CommandError(ErrorCode.INVALID_TOPIC, f"{topic!r} is not a run", field="topic")
        if control:
            await self.authorize_control(session.principal, topic)
        elif not await self.gateway.may_publish(session.principal, topic):
            raise CommandError(ErrorCode.FORBIDDEN, f"may not renew the lease of {topic!r}")

    async def authorize_control(self, principal: Principal, topic: str) -> None:
        """Raise unless ``principal`` may control the run ``topic``: it must read the run
        (else the answer is the one for a run without a producer here, which says nothing
        about whether the run exists), then hold control (``forbidden``)."""
        assert self.gateway is not None
        if not await self.gateway.may_subscribe(principal, topic):
            raise _no_producer(topic)
        if not await self.gateway.may_control(principal, topic):
            raise CommandError(ErrorCode.FORBIDDEN, f"may not control {topic!r}: needs control")


def _lease_key(topic: str) -> str:
    return "lease:" + topic


def _no_producer(topic: str) -> CommandError:
    return CommandError(
        ErrorCode.UNAVAILABLE,
        f"no producer on this node accepts control for {topic!r}",
        field="topic",
    )
