"""The fair queue in front of an upstream that serves only a few generations at once,
in one process (:class:`FairQueue`) or across every node on one Redis
(:class:`RedisQueues`, :class:`RedisFairQueue`).

Both keep one contract (:class:`UpstreamQueue`):

* at most ``limit`` holders at once (None: unlimited); the others wait;
* waiters are served round-robin between users: each user's requests wait in FIFO
  order, and users take turns, so one user's ten requests do not starve another user's
  one (the order is ``a1 b1 c1 a2 a3`` for arrivals ``a1 a2 a3 b1 c1`` behind a holder);
* every waiter is told its position (1 = next) whenever it changes;
* a waiter cancelled while queued leaves the queue at once, without ever holding a slot
  (its request never reaches the upstream); one granted just before the cancel gives
  its slot back.

The cluster state chooses the implementation (:meth:`ClusterState.queue
<agentcast.cluster.base.ClusterState.queue>`): ``memory://`` is :class:`FairQueue`, plain
asyncio without I/O, as before; ``redis://`` is :class:`RedisFairQueue`, whose limit,
order and positions are the whole cluster's. The Redis side is described in
:class:`RedisQueues`. This module imports no Redis package: the Redis cluster state
hands :class:`RedisQueues` its client factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from agentcast.errors import BrokerError

__all__ = ["FairQueue", "RedisFairQueue", "RedisQueues", "UpstreamQueue"]

logger = logging.getLogger("agentcast.chat")

PositionCallback = Callable[[int], None]


class UpstreamQueue(Protocol):
    """What the chat feature needs of a queue (see the module docstring)."""

    @property
    def limit(self) -> int | None:
        """At most this many holders at once (None: unlimited)."""
        ...

    @property
    def active(self) -> int:
        """Slots held through this node now."""
        ...

    @property
    def waiting(self) -> int:
        """Requests of this node waiting for a slot now."""
        ...

    def slot(
        self, user: str, on_position: PositionCallback | None = None
    ) -> AbstractAsyncContextManager[int]:
        """Hold one slot for the block; yields the position the request had on arrival
        (0 when it got a slot at once). ``on_position(n)`` is called whenever the position
        of the waiting request changes (first with its arrival position). Cancelling
        while waiting leaves the queue; the block never runs."""
        ...


def _notify(notify: PositionCallback | None, position: int) -> None:
    if notify is not None:
        try:
            notify(position)
        except Exception:  # pragma: no cover - a callback must not break the queue
            logger.exception("position callback failed")


# -- one process -----------------------------------------------------------------------


class _Waiter:
    __slots__ = ("future", "notify", "position", "user")

    def __init__(self, user: str, notify: PositionCallback | None) -> None:
        self.user = user
        self.notify = notify
        self.position = 0
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class FairQueue:
    """At most ``limit`` concurrent holders (None: unlimited), round-robin between users;
    one event loop, no I/O."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1 or None")
        self.limit = limit
        self.active = 0
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._turns: deque[str] = deque()  # users with waiters, in serving order

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    def _free(self) -> bool:
        return self.limit is None or self.active < self.limit

    @asynccontextmanager
    async def slot(
        self, user: str, on_position: PositionCallback | None = None
    ) -> AsyncIterator[int]:
        """See :meth:`UpstreamQueue.slot`."""
        arrival = await self.acquire(user, on_position)
        try:
            yield arrival
        finally:
            self.release()

    async def acquire(self, user: str, on_position: PositionCallback | None = None) -> int:
        """Wait for a slot (see :meth:`slot`); the caller must :meth:`release` it."""
        if self._free() and not self._turns:
            self.active += 1
            return 0
        waiter = _Waiter(user, on_position)
        queue = self._waiting.get(user)
        if queue is None:
            queue = self._waiting[user] = deque()
            self._turns.append(user)
        queue.append(waiter)
        self._renumber()
        arrival = waiter.position
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # granted just before the cancel: give the slot back
            else:
                self._remove(waiter)
            raise
        return arrival

    def release(self) -> None:
        """Give a slot back; the next waiter in fair order gets it."""
        self.active -= 1
        while self._turns and self._free():
            user = self._turns.popleft()
            queue = self._waiting[user]
            waiter = queue.popleft()
            if queue:
                self._turns.append(user)  # the user's next request waits for its next turn
            else:
                del self._waiting[user]
            self.active += 1
            waiter.future.set_result(None)
        self._renumber()

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._waiting.get(waiter.user)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._waiting[waiter.user]
            self._turns.remove(waiter.user)
        self._renumber()

    def order(self) -> list[str]:
        """Users of the waiting requests in the order they will be served."""
        return [w.user for w in self._order()]

    def _order(self) -> list[_Waiter]:
        queues = [self._waiting[u] for u in self._turns]
        order: list[_Waiter] = []
        depth = 0
        while queues:
            queues = [q for q in queues if len(q) > depth]
            order.extend(q[depth] for q in queues)
            depth += 1
        return order

    def _renumber(self) -> None:
        for position, waiter in enumerate(self._order(), 1):
            if waiter.position != position:
                waiter.position = position
                _notify(waiter.notify, position)


# -- across nodes (Redis) ----------------------------------------------------------------

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - tonumber(ARGV[2])
local node = ARGV[1]
local qbase = ARGV[3]
local limit = tonumber(ARGV[4])
local K_NODES, K_HOLDERS, K_WAITERS, K_TURNS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
redis.call('ZADD', K_NODES, now, node)  -- the caller is alive right now
local alive = {}
local function live(n)
  local v = alive[n]
  if v == nil then
    local s = redis.call('ZSCORE', K_NODES, n)
    v = (s ~= false and s ~= nil) and tonumber(s) >= since
    alive[n] = v
  end
  return v
end
-- live holders; a dead node's are deleted
local function holders()
  local flat = redis.call('HGETALL', K_HOLDERS)
  local n = 0
  for i = 1, #flat, 2 do
    if live(flat[i + 1]) then n = n + 1 else redis.call('HDEL', K_HOLDERS, flat[i]) end
  end
  return n
end
-- waiter id -> 'node user'
local function unwait(id, user)
  local ukey = qbase .. ':u:' .. user
  redis.call('HDEL', K_WAITERS, id)
  redis.call('LREM', ukey, 0, id)
  if redis.call('LLEN', ukey) == 0 then redis.call('LREM', K_TURNS, 0, user) end
end
-- grant free slots in fair order; waiters of dead nodes are dropped on the way
local function grant(n, out)
  while n < limit do
    local user = redis.call('LPOP', K_TURNS)
    if not user then break end
    local ukey = qbase .. ':u:' .. user
    local id = redis.call('LPOP', ukey)
    if redis.call('LLEN', ukey) > 0 then redis.call('RPUSH', K_TURNS, user) end
    if id then
      local owner = redis.call('HGET', K_WAITERS, id)
      redis.call('HDEL', K_WAITERS, id)
      if owner then
        owner = string.match(owner, '^(%S+)')
        if live(owner) then
          redis.call('HSET', K_HOLDERS, id, owner)
          n = n + 1
          out[#out + 1] = id
        end
      end
    end
  end
  return n
end
local function changed(granted)
  redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. table.concat(granted, ','))
end
"""

_ACQUIRE = (
    _PRELUDE
    + """
-- ARGV[7] id, ARGV[8] user. Returns {0 (granted) | position, live holders, waiters}
local id, user = ARGV[7], ARGV[8]
local granted = {}
local n = holders()
if n < limit and redis.call('LLEN', K_TURNS) > 0 then n = grant(n, granted) end
if n < limit and redis.call('LLEN', K_TURNS) == 0 then
  redis.call('HSET', K_HOLDERS, id, node)
  if #granted > 0 then changed(granted) end
  return {0, n + 1, 0}
end
local ukey = qbase .. ':u:' .. user
if redis.call('RPUSH', ukey, id) == 1 then redis.call('RPUSH', K_TURNS, user) end
redis.call('HSET', K_WAITERS, id, node .. ' ' .. user)
changed(granted)
-- this waiter's position: see _POSITION
local turns = redis.call('LRANGE', K_TURNS, 0, -1)
local depth = redis.call('LLEN', ukey) - 1
local pos, before = 1, true
for _, v in ipairs(turns) do
  if v == user then
    before = false
    pos = pos + depth
  else
    local len = redis.call('LLEN', qbase .. ':u:' .. v)
    pos = pos + math.min(len, depth)
    if before and len > depth then pos = pos + 1 end
  end
end
return {pos, n, redis.call('HLEN', K_WAITERS)}
"""
)

_RELEASE = (
    _PRELUDE
    + """
-- ARGV[7..]: ids released. Returns {live holders, waiters, granted ids...}
for i = 7, #ARGV do redis.call('HDEL', K_HOLDERS, ARGV[i]) end
local granted = {}
local n = grant(holders(), granted)
changed(granted)
local out = {n, redis.call('HLEN', K_WAITERS)}
for _, id in ipairs(granted) do out[#out + 1] = id end
return out
"""
)

_LEAVE = (
    _PRELUDE
    + """
-- ARGV[7] id, ARGV[8] user: a waiter leaves (or gives back the slot granted meanwhile)
local id, user = ARGV[7], ARGV[8]
local granted = {}
if redis.call('HEXISTS', K_WAITERS, id) == 1 then
  unwait(id, user)
  changed(granted)
  return 1
end
if redis.call('HDEL', K_HOLDERS, id) == 1 then
  grant(holders(), granted)
  changed(granted)
  return 2
end
return 0
"""
)

_POLL = (
    _PRELUDE
    + """
-- ARGV[7] sweep (1: drop every waiter of a dead node), ARGV[8..]: (id, user) pairs of
-- the caller's waiters. Frees a dead node's slots and grants them. Returns {live holders,
-- waiters, then per pair 0 (holds a slot) | -1 (unknown: lost) | position}
local granted = {}
local dirty = false
if ARGV[7] == '1' then
  local flat = redis.call('HGETALL', K_WAITERS)
  for i = 1, #flat, 2 do
    local owner, user = string.match(flat[i + 1], '^(%S+) (.*)$')
    if owner == nil or not live(owner) then
      unwait(flat[i], user or '')
      dirty = true
    end
  end
end
local n = grant(holders(), granted)
if dirty or #granted > 0 then changed(granted) end
local turns = redis.call('LRANGE', K_TURNS, 0, -1)
local lens = {}
for i, v in ipairs(turns) do lens[i] = redis.call('LLEN', qbase .. ':u:' .. v) end
local out = {n, redis.call('HLEN', K_WAITERS)}
for i = 8, #ARGV, 2 do
  local id, user = ARGV[i], ARGV[i + 1]
  local r = -1
  if redis.call('HEXISTS', K_HOLDERS, id) == 1 then
    r = 0
  elseif redis.call('HEXISTS', K_WAITERS, id) == 1 then
    local depth = redis.call('LPOS', qbase .. ':u:' .. user, id)
    if depth then
      r = 1
      local before = true
      for j, v in ipairs(turns) do
        if v == user then
          before = false
          r = r + depth
        else
          r = r + math.min(lens[j], depth)
          if before and lens[j] > depth then r = r + 1 end
        end
      end
    end
  end
  out[#out + 1] = r
end
return out
"""
)


class _RemoteWaiter:
    __slots__ = ("future", "id", "joined", "notify", "position", "user")

    def __init__(self, id: str, user: str, notify: PositionCallback | None) -> None:
        self.id = id
        self.user = user
        self.notify = notify
        self.position = 0
        self.joined = False
        """In Redis's queue (its acquire call answered): only then is it polled, since a
        poll racing the acquire call would take it for lost."""
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def moved(self, position: int) -> None:
        if position != self.position and not self.future.done():
            self.position = position
            _notify(self.notify, position)


class RedisFairQueue:
    """One upstream's queue across the cluster (see :class:`RedisQueues`).

    :attr:`active` and :attr:`waiting` are this node's; :attr:`cluster_active` and
    :attr:`cluster_waiting` the whole cluster's as of the last script call.
    """

    def __init__(self, queues: RedisQueues, key: str, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.queues = queues
        self.key = key
        self.limit = limit
        self.digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        """The queue's name in Redis: the key (an upstream URL) is never written there."""
        self.qbase = f"{queues.base}:queue:{self.digest}"
        self.keys = [
            queues.k_nodes,
            f"{self.qbase}:holders",
            f"{self.qbase}:waiters",
            f"{self.qbase}:turns",
        ]
        self.fallback = FairQueue(limit)
        """Where requests wait while Redis is unreachable: the limit holds per node."""
        self._waiters: dict[str, _RemoteWaiter] = {}
        self._held: set[str] = set()
        self._unreleased: set[str] = set()
        """Ids whose release failed (Redis down): retried by every poll."""
        self._unleft: dict[str, _RemoteWaiter] = {}
        """Cancelled waiters whose leave failed: retried by every poll (a waiter left in
        Redis would be granted a slot nobody gives back while this node lives)."""
        self._refreshing: asyncio.Task[None] | None = None
        self._dirty = False
        self.cluster_active = 0
        self.cluster_waiting = 0

    @property
    def active(self) -> int:
        return len(self._held) + self.fallback.active

    @property
    def waiting(self) -> int:
        return len(self._waiters) + self.fallback.waiting

    def _args(self, *extra: Any) -> list[Any]:
        q = self.queues
        return [
            q.node,
            math.ceil(q.ttl * 1000),
            self.qbase,
            self.limit,
            q.channel,
            self.digest,
            *extra,
        ]

    @asynccontextmanager
    async def slot(
        self, user: str, on_position: PositionCallback | None = None
    ) -> AsyncIterator[int]:
        """See :meth:`UpstreamQueue.slot`. The slot is given back when the block ends
        (one script call, sent in the background: the block's end does not wait)."""
        handle, arrival = await self.acquire(user, on_position)
        try:
            yield arrival
        finally:
            self.release(handle)

    async def acquire(
        self, user: str, on_position: PositionCallback | None = None
    ) -> tuple[str | None, int]:
        """Wait for a slot: ``(handle, arrival position)``; pass the handle to
        :meth:`release`. A None handle is a slot of :attr:`fallback` (Redis was
        unreachable on arrival)."""
        queues = self.queues
        if not await queues.ready():
            return None, await self.fallback.acquire(user, on_position)
        waiter = _RemoteWaiter(secrets.token_hex(8), user, on_position)
        self._waiters[waiter.id] = waiter  # before the call: a grant may be read before its reply
        call = asyncio.ensure_future(queues.call("acquire", self.keys, self._args(waiter.id, user)))
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            self._waiters.pop(waiter.id, None)
            queues.spawn(self._leave_after(call, waiter))
            raise
        except Exception as exc:
            self._waiters.pop(waiter.id, None)
            queues.failed("queue acquire", exc)
            # the outcome is unknown (a timeout may have queued it, or granted a slot):
            # leave, retried by the polls until Redis answers, so nothing is left there
            queues.spawn(self._leave(waiter))
            return None, await self.fallback.acquire(user, on_position)
        position, self.cluster_active, self.cluster_waiting = (int(x) for x in reply)
        if position == 0:
            self._waiters.pop(waiter.id, None)
            self._held.add(waiter.id)
            return waiter.id, 0
        waiter.joined = True
        if not waiter.future.done():  # else granted already (a message before the reply)
            waiter.moved(position)
        arrival = waiter.position or position
        try:
            await waiter.future
        except asyncio.CancelledError:
            still_waiting = self._waiters.pop(waiter.id, None) is not None
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.id)  # granted just before the cancel: give it back
            elif still_waiting:  # (not when stopping: stop left the queue for it)
                queues.spawn(self._leave(waiter))
            raise
        return waiter.id, arrival

    def release(self, handle: str | None) -> None:
        """Give a slot back (synchronous: the script call runs in the background, and is
        retried by the polls while Redis is unreachable)."""
        if handle is None:
            self.fallback.release()
            return
        self._held.discard(handle)
        self.queues.spawn(self._release([handle]))

    async def _release(self, ids: list[str]) -> None:
        try:
            reply = await self.queues.call("release", self.keys, self._args(*ids))
        except Exception as exc:
            self._unreleased.update(ids)
            self.queues.failed("queue release", exc)
            return
        self._unreleased.difference_update(ids)
        self.cluster_active, self.cluster_waiting = int(reply[0]), int(reply[1])
        self.granted([str(x) for x in reply[2:]])

    async def _leave_after(self, call: asyncio.Future[Any], waiter: _RemoteWaiter) -> None:
        """Cancelled while the acquire call was in flight: let it finish, then leave."""
        with contextlib.suppress(Exception):
            await call
        await self._leave(waiter)

    async def _leave(self, waiter: _RemoteWaiter) -> None:
        try:
            await self.queues.call("leave", self.keys, self._args(waiter.id, waiter.user))
        except Exception as exc:
            self._unleft[waiter.id] = waiter  # unknown outcome: leave again (idempotent)
            self.queues.failed("queue leave", exc)
        else:
            self._unleft.pop(waiter.id, None)

    def granted(self, ids: list[str]) -> None:
        """Slots granted to ``ids`` (from a script's reply or a notification)."""
        for id in ids:
            waiter = self._waiters.pop(id, None)
            if waiter is not None and not waiter.future.done():
                self._held.add(id)
                waiter.future.set_result(None)

    def changed(self, ids: list[str]) -> None:
        """A notification: ``ids`` were granted, the positions may have moved."""
        self.granted(ids)
        if self._waiters:
            self.refresh()

    def refresh(self) -> None:
        """Read this node's waiters' positions again (coalesced: one call in flight)."""
        if self._refreshing is not None:
            self._dirty = True
            return
        self._refreshing = self.queues.spawn(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        try:
            while True:
                self._dirty = False
                await self.poll(sweep=False)
                if not self._dirty:
                    return
        finally:
            self._refreshing = None

    async def poll(self, *, sweep: bool) -> None:
        """One poll: retry failed releases, then read this node's waiters' state (grants
        whose notification was lost included); ``sweep`` also drops a dead node's
        waiters."""
        if self._unreleased:
            await self._release(sorted(self._unreleased))
        for left in list(self._unleft.values()):
            await self._leave(left)
        waiters = [w for w in self._waiters.values() if w.joined]
        if not waiters and not sweep:
            return
        args: list[Any] = self._args("1" if sweep else "0")
        for w in waiters:
            args += (w.id, w.user)
        try:
            reply = await self.queues.call("poll", self.keys, args)
        except Exception as exc:
            self.queues.failed("queue poll", exc)
            return
        self.cluster_active, self.cluster_waiting = int(reply[0]), int(reply[1])
        lost = []
        for w, state in zip(waiters, reply[2:], strict=True):
            value = int(state)
            if value == 0:
                self.granted([w.id])
            elif value > 0:
                w.moved(value)
            elif w.id in self._waiters:
                lost.append(w)
        for w in lost:  # Redis lost it (restarted, or took this node for dead): again
            await self._rejoin(w)

    async def _rejoin(self, waiter: _RemoteWaiter) -> None:
        try:
            reply = await self.queues.call("acquire", self.keys, self._args(waiter.id, waiter.user))
        except Exception as exc:
            self.queues.failed("queue acquire", exc)
            return
        position, self.cluster_active, self.cluster_waiting = (int(x) for x in reply)
        if waiter.id not in self._waiters:  # cancelled meanwhile
            if position == 0:
                self.release(waiter.id)
            else:
                await self._leave(waiter)
        elif position == 0:
            self.granted([waiter.id])
        else:
            waiter.moved(position)


class RedisQueues:
    """Every upstream queue of one node, in Redis; started on first use.

    Keys per upstream (``<d>``: the first 16 hex digits of the SHA-256 of the upstream's
    queue key, its base URL), under the cluster state's hash tag ``{prefix}``:

    * ``{p}:queue:<d>:holders``: hash, slot id → node holding it;
    * ``{p}:queue:<d>:waiters``: hash, waiter id → ``"<node> <user>"``;
    * ``{p}:queue:<d>:turns``: list, users with waiters in serving order;
    * ``{p}:queue:<d>:u:<user>``: list, that user's waiter ids, FIFO;
    * channel ``{p}:queue``: ``"<d> <granted ids, comma-separated>"`` after every change.

    **Atomicity.** Every change is one Lua script (acquire, release, leave, poll): it
    reads which nodes are live from ``{p}:nodes`` (a node is live while its heartbeat is
    younger than ``ttl``), deletes the slots of dead nodes, grants free slots to the next
    waiters in round-robin order across users (whatever node they wait on; a dead node's
    waiters are skipped and dropped) and publishes the change. Two nodes asking at once
    are serialized by Redis: never more than ``limit`` live holders.

    **Wakeups and positions.** A waiter is woken by the notification that carries its id
    (no extra round trip: a handoff costs the release script plus one pub/sub delivery).
    Each notification also makes every node with waiters in that queue read their
    positions again (one script call per node and change, coalesced while one is in
    flight). Pub/sub is at most once, so every ``poll_interval`` each node with waiters
    also polls (which also drops a dead node's waiters and frees its slots), and polls at
    once after its subscription reconnects: a lost notification delays a wakeup by at
    most ``poll_interval``, never loses it.

    **Failures.** A script call that fails (Redis unreachable) on arrival puts the
    request in the node's own :attr:`RedisFairQueue.fallback` (the limit then holds per
    node, as the connection limits do); a waiting request keeps its place and its last
    position while the polls fail, and rejoins at the end of the queue if Redis lost it;
    a failed release is retried by every poll.
    """

    def __init__(
        self,
        factory: Callable[..., Any],
        *,
        base: str,
        node: str,
        ttl: float,
        poll_interval: float,
        on_error: Callable[[str, BaseException], None],
        on_recovered: Callable[[], None],
    ) -> None:
        self.factory = factory
        self.base = base
        self.node = node
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.k_nodes = f"{base}:nodes"
        self.channel = f"{base}:queue"
        self.queues: dict[str, RedisFairQueue] = {}
        self.ready_timeout = 1.0
        """How long a first request waits for the subscription before using the fallback."""
        self.round_trips = 0
        """Script calls so far (every one is one round trip)."""
        self._on_error = on_error
        self._on_recovered = on_recovered
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._subscribed: asyncio.Future[None] | None = None
        self._closed = False

    def queue(self, key: str, limit: int) -> RedisFairQueue:
        """The queue of the upstream ``key`` (one object per key: the first limit wins)."""
        found = self.queues.get(key)
        if found is None:
            found = self.queues[key] = RedisFairQueue(self, key, limit)
        return found

    async def ready(self) -> bool:
        """Start on first use (a client, the subscription, the poll loop); True once
        notifications are subscribed, False when Redis cannot be reached now."""
        if self._closed:
            return False
        if self._client is None:
            self._client = client = self.factory()
            for name, source in (
                ("acquire", _ACQUIRE),
                ("release", _RELEASE),
                ("leave", _LEAVE),
                ("poll", _POLL),
            ):
                self._scripts[name] = client.register_script(source)
            loop = asyncio.get_running_loop()
            self._subscribed = loop.create_future()
            self._loops = [
                loop.create_task(self._listen(), name="agentcast-queue-notifications"),
                loop.create_task(self._poll_loop(), name="agentcast-queue-poll"),
            ]
        assert self._subscribed is not None
        if self._subscribed.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._subscribed), self.ready_timeout)
        except TimeoutError:
            return False
        return True

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script (one round trip)."""
        if self._client is None:
            raise BrokerError("the LLM queues are stopped")
        self.round_trips += 1
        try:
            reply = await self._scripts[name](keys=keys, args=args)
        except Exception:
            # redis-py may turn a cancellation into another error (its pool's release
            # failing while cancelled): a cancelled caller must still see CancelledError
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            raise
        self._on_recovered()
        return reply

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def failed(self, what: str, exc: BaseException) -> None:
        self._on_error(what, exc)

    async def _listen(self) -> None:
        backoff = self.poll_interval
        subscriber = self.factory()
        try:
            while not self._closed:
                pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.channel)
                    if self._subscribed is not None and not self._subscribed.done():
                        self._subscribed.set_result(None)
                    backoff = self.poll_interval
                    for queue in self.queues.values():  # missed while (re)connecting
                        if queue._waiters:
                            queue.refresh()
                    while not self._closed:
                        message = await pubsub.get_message(timeout=None)
                        if message is not None and message.get("type") == "message":
                            self._apply(message["data"])
                except Exception as exc:  # the loop must outlive any failure
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from None  # (see call)
                    self.failed("queue notifications", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
        finally:
            await subscriber.aclose()

    def _apply(self, raw: bytes) -> None:
        try:
            digest, _, ids = raw.decode().partition(" ")
        except UnicodeDecodeError:
            return
        for queue in self.queues.values():
            if queue.digest == digest:
                queue.changed([i for i in ids.split(",") if i])

    async def _poll_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            for queue in list(self.queues.values()):
                if queue._waiters or queue._unreleased or queue._unleft:
                    try:
                        await queue.poll(sweep=True)
                    except Exception as exc:  # pragma: no cover - poll catches its own
                        self.failed("queue poll", exc)

    async def stop(self) -> None:
        """Give back what this node holds and leave the queues (best effort: what is
        left expires with this node), then close."""
        self._closed = True
        for task in self._loops:
            task.cancel()
        if self._loops:  # bounded: redis-py may swallow the cancellation of a blocked read
            await asyncio.wait(self._loops, timeout=2.0)
        self._loops = []
        if self._client is None:
            return
        for queue in self.queues.values():
            for waiter in list(queue._waiters.values()):
                queue._waiters.pop(waiter.id, None)
                if not waiter.future.done():
                    waiter.future.cancel()
                self.spawn(queue._leave(waiter))
            for left in list(queue._unleft.values()):
                self.spawn(queue._leave(left))
            if queue._held or queue._unreleased:
                self.spawn(queue._release(sorted(queue._held | queue._unreleased)))
                queue._held.clear()
        with contextlib.suppress(Exception):  # bounded: Redis may be down
            async with asyncio.timeout(min(self.ttl, 2.0)):
                while self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
        self._client = None
