"""Owned work: pieces of work each run by one node (a chat generation), found, controlled
and sealed from every node of the cluster.

Contract of :class:`OwnedWork` (one per cluster state: ``cluster.work``). An entry is a
``(kind, key)`` pair (``("chat", conversation_id)``) owned by one node, with a small JSON
``info`` its sealer needs.

* :meth:`~OwnedWork.acquire` registers this node as the owner unless an owner is
  registered (live, or dead and not sealed yet): None when acquired, else the owner's node
  id. Atomic across nodes: of two nodes acquiring one key at once, exactly one wins.
  Raises :class:`~agentcast.errors.BrokerError` when the backend is unreachable; the
  caller may then :meth:`~OwnedWork.adopt` the entry (run it anyway: it is written by the
  next heartbeat that reaches the backend, and reported lost if another node owns the key
  by then).
* :meth:`~OwnedWork.release` ends this node's ownership (its own entry only: a compare
  and delete). :meth:`~OwnedWork.owners` says who owns which keys.
* :meth:`~OwnedWork.request` sends a control message to the node that owns a key, over
  that node's own control channel, and returns what its ``control`` handler for the kind
  returned; BrokerError when the node is not listening (dead), does not answer within
  ``within`` seconds, or the handler failed.
* **Liveness.** An owner refreshes its entries at every heartbeat. An entry not refreshed
  for ``ttl`` is orphaned (its node died, or was cut off): exactly one live node with a
  ``seal`` handler for its kind claims it (an atomic ``SET NX PX claim_ttl`` inside the
  heartbeat's script) and calls ``seal(key, info, dead_node)``. When the seal returns, the
  entry is removed; when it raises, the claim is given back and the next heartbeat of any
  node retries. A claim whose holder dies lapses after ``claim_ttl`` and another node seals
  again: seal handlers must be idempotent, step by step.
* **A node taken for dead** that comes back finds at its next heartbeat that its entry was
  claimed or removed: its ``lost(key)`` handler is called, and it must drop its end of the
  work without publishing anything (the sealer did). The refresh and the claim are atomic
  in one script each, so either the owner refreshes first (no claim) or the claim wins
  (the owner drops it): never both. :meth:`~OwnedWork.finish` (a release that says
  whether the entry was still its own) tells it too, and :meth:`~OwnedWork.fresh` is
  False while its last heartbeat is old enough for a claim: what must not be doubled by
  a sealer (chat's deltas) waits for the next heartbeat then.

:class:`MemoryWork` is the same interface in one process (the in-process cluster state):
a node of one, whose entries never orphan and whose requests go to its own handlers.
:class:`RedisWork` is the Redis implementation (keys in its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from agentcast.errors import BrokerError

__all__ = [
    "ControlHandler",
    "LostHandler",
    "MemoryWork",
    "OwnedWork",
    "RedisWork",
    "SealHandler",
]

logger = logging.getLogger("agentcast.cluster")

ControlHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``(key, payload) -> reply`` (JSON-able): a control message for work this node owns."""
SealHandler = Callable[[str, dict[str, Any], str], Awaitable[None]]
"""``(key, info, dead_node)``: finish the work of a dead node (idempotent)."""
LostHandler = Callable[[str], None]
"""``(key)``: this node's entry was sealed by another node; drop this end of it."""


@dataclass(slots=True)
class _Handlers:
    control: ControlHandler | None = None
    seal: SealHandler | None = None
    lost: LostHandler | None = None


def _member(kind: str, key: str) -> str:
    if not kind or ":" in kind:
        raise ValueError(f"a work kind is a non-empty name without ':', not {kind!r}")
    return f"{kind}:{key}"


class OwnedWork:
    """This node's share of the owned-work registry (see the module docstring)."""

    distributed = False
    """False in one process: a caller may skip what only matters across nodes."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.handlers: dict[str, _Handlers] = {}
        self.sealed = 0
        """Entries of dead nodes this node sealed (counter)."""
        self.lost = 0
        """Entries of this node sealed by another one (counter)."""

    def handle(
        self,
        kind: str,
        *,
        control: ControlHandler | None = None,
        seal: SealHandler | None = None,
        lost: LostHandler | None = None,
    ) -> None:
        """This node's handlers for ``kind`` (a second call replaces them). The heartbeat
        claims orphans only for kinds that have a ``seal`` handler, from its next beat on:
        the cluster state starts before the gateway's start-up hooks, so a feature whose
        seal needs them (an open store) registers from a start-up hook of its own."""
        _member(kind, "")
        self.handlers[kind] = _Handlers(control, seal, lost)

    async def start(self) -> None:
        """Start heartbeats and the control channel (called by the cluster state)."""

    async def stop(self) -> None:
        """Stop at once (entries stay: the owner released them, or they are sealed)."""

    async def acquire(self, kind: str, key: str, info: dict[str, Any]) -> str | None:
        """Own ``(kind, key)`` (None) unless a node owns it (its id); BrokerError when
        the backend is unreachable."""
        raise NotImplementedError

    def adopt(self, kind: str, key: str, info: dict[str, Any]) -> None:
        """Own ``(kind, key)`` without asking (the backend was unreachable): written by
        the next heartbeat that reaches it; ``lost`` if another node owns it by then."""
        raise NotImplementedError

    async def release(self, kind: str, key: str) -> None:
        """The work ended here: remove this node's entry (never raises)."""
        await self.finish(kind, key)

    async def finish(self, kind: str, key: str) -> bool:
        """:meth:`release`, telling whether this node still owned the work: False when
        another node claimed or sealed it (this node was taken for dead: drop this end
        without publishing), True otherwise (released; or never written, or the backend
        unreachable: failing open). Never raises."""
        raise NotImplementedError

    async def owners(self, kind: str, keys: Iterable[str]) -> dict[str, str]:
        """``{key: owner node}`` for the keys of ``kind`` that have an owner."""
        raise NotImplementedError

    async def owner(self, kind: str, key: str) -> str | None:
        return (await self.owners(kind, [key])).get(key)

    async def request(
        self, node: str, kind: str, key: str, payload: dict[str, Any], within: float
    ) -> Any:
        """What ``node``'s control handler of ``kind`` returns for ``(key, payload)``;
        BrokerError when it is not listening, does not answer ``within`` seconds or the
        handler failed."""
        raise NotImplementedError

    def fresh(self) -> bool:
        """False while this node's last heartbeat is so old that another node may take
        its entries for dead (a stalled process, a backend out of reach): work that must
        not be doubled by a sealer waits (chat holds its deltas) until the next heartbeat
        tells whether the entries are still its own. Cheap: a clock read."""
        return True

    async def _call_control(self, kind: str, key: str, payload: dict[str, Any]) -> Any:
        handlers = self.handlers.get(kind)
        if handlers is None or handlers.control is None:
            raise BrokerError(f"node {self.node!r} has no control handler for {kind!r}")
        try:
            return await handlers.control(key, payload)
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc

    def stats(self) -> dict[str, float]:
        """Counters for ``/healthz`` (distributed states): ``work_sealed`` (dead nodes'
        entries sealed here), ``work_lost`` (this node's entries sealed elsewhere), and
        for Redis ``work_owned`` (entries held now) and ``work_errors``."""
        return {"work_sealed": self.sealed, "work_lost": self.lost}


class MemoryWork(OwnedWork):
    """Owned work in one process: entries in a dict, requests to this node's handlers."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.entries: dict[str, dict[str, Any]] = {}

    async def acquire(self, kind: str, key: str, info: dict[str, Any]) -> str | None:
        member = _member(kind, key)
        if member in self.entries:
            return self.node
        self.entries[member] = info
        return None

    def adopt(self, kind: str, key: str, info: dict[str, Any]) -> None:
        self.entries.setdefault(_member(kind, key), info)

    async def finish(self, kind: str, key: str) -> bool:
        self.entries.pop(_member(kind, key), None)
        return True

    async def owners(self, kind: str, keys: Iterable[str]) -> dict[str, str]:
        return {k: self.node for k in keys if _member(kind, k) in self.entries}

    async def request(
        self, node: str, kind: str, key: str, payload: dict[str, Any], within: float
    ) -> Any:
        if node != self.node:
            raise BrokerError(f"node {node!r} is not this process")
        async with asyncio.timeout(within):
            return await self._call_control(kind, key, payload)


# -- Redis ----------------------------------------------------------------------------

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_ACQUIRE = (
    _NOW
    + """
-- KEYS: beats (zset), owners (hash). ARGV: member, value. '' when acquired, else the owner
local v = redis.call('HGET', KEYS[2], ARGV[1])
if v then return cjson.decode(v)['n'] end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
return ''
"""
)

_RELEASE = """
-- KEYS: beats, owners. ARGV: member, node, claim prefix. Deletes the entry if that node
-- owns it and no node claimed it: 1; 2: no entry; 0: another node owns or claimed it.
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return 2 end
local d = cjson.decode(v)
if d['n'] ~= ARGV[2] or redis.call('EXISTS', ARGV[3] .. ARGV[1] .. '@' .. d['t']) == 1 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

_BEAT = (
    _NOW
    + """
-- KEYS: beats, owners. ARGV: node, ttl_ms, claim_ms, claim prefix, n, n x (member,
-- value: '' registered, else the entry of an adopted one), m, m x kind (sealable), limit.
-- Returns {lost members, adopted members, claimed (member, value) pairs}. A claim is
-- `<claim prefix><member>@<the entry's token>`: it concerns that entry only.
local node, ttl, claim_ms, cp = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local lost, adopted, claimed = {}, {}, {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local member, value = ARGV[i], ARGV[i + 1]
  local v = redis.call('HGET', KEYS[2], member)
  if not v then
    if value ~= '' then
      redis.call('HSET', KEYS[2], member, value)
      redis.call('ZADD', KEYS[1], now, member)
      adopted[#adopted + 1] = member
    else
      lost[#lost + 1] = member
    end
  else
    local d = cjson.decode(v)
    if d['n'] == node and redis.call('EXISTS', cp .. member .. '@' .. d['t']) == 0 then
      redis.call('ZADD', KEYS[1], now, member)
      if value ~= '' then adopted[#adopted + 1] = member end
    else
      lost[#lost + 1] = member
    end
  end
  i = i + 2
end
local kinds = {}
local m = tonumber(ARGV[i])
for k = 1, m do kinds[ARGV[i + k]] = true end
if m > 0 then
  local limit = tonumber(ARGV[i + m + 1])
  local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl), 'LIMIT', 0, limit)
  for _, member in ipairs(stale) do
    local kind = string.match(member, '^([^:]+):')
    if kind and kinds[kind] then
      local v = redis.call('HGET', KEYS[2], member)
      if not v then
        redis.call('ZREM', KEYS[1], member)
      else
        local claim = cp .. member .. '@' .. cjson.decode(v)['t']
        if redis.call('SET', claim, node, 'NX', 'PX', claim_ms) then
          claimed[#claimed + 1] = member
          claimed[#claimed + 1] = v
        end
      end
    end
  end
end
return {lost, adopted, claimed}
"""
)

_SEALED = """
-- KEYS: beats, owners. ARGV: member, token. The sealed entry goes (not a newer one); its
-- claim stays until it expires (a late owner then finds it lost either way).
local v = redis.call('HGET', KEYS[2], ARGV[1])
if v and cjson.decode(v)['t'] == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""

_UNCLAIM = """
-- KEYS: claim. ARGV: node. Give the claim back (the seal failed): the next beat retries.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisWork(OwnedWork):
    """Owned work in Redis, beside :class:`~agentcast.cluster.redis.RedisClusterState`.

    Keys (under the cluster state's hash tag ``{p}``):

    * ``{p}:work:owners``: hash, ``<kind>:<key>`` → ``{"n": node, "t": token, "i": info}``
      (JSON; the token is new at every acquire);
    * ``{p}:work:beats``: sorted set, ``<kind>:<key>`` → the owner's last refresh (Redis's
      clock, ms), refreshed at every heartbeat; older than ``ttl``: orphaned;
    * ``{p}:work:claim:<kind>:<key>@<token>``: the sealing node's id, ``SET NX PX
      claim_ttl`` (a claim of that entry only: a later acquire of the key is not claimed);
    * channel ``{p}:ctl:<node>``: that node's control messages (requests and replies).

    Its own two connections: one for commands (single, FIFO: a release is in Redis before
    a later acquire of this node) and one subscribed to the control channel. Neither is
    shared with the cluster state's, so a slow seal never delays a reservation.
    """

    distributed = True

    def __init__(
        self,
        client_factory: Callable[..., Any],
        base: str,
        node: str,
        *,
        heartbeat: float,
        ttl: float,
        timeout: float,
        claim_ttl: float | None = None,
        scan_limit: int = 100,
    ) -> None:
        super().__init__(node)
        self._factory = client_factory
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.timeout = timeout
        self.claim_ttl = claim_ttl if claim_ttl is not None else max(4 * ttl, 2.0)
        self.scan_limit = scan_limit
        self.k_beats = f"{base}:work:beats"
        self.k_owners = f"{base}:work:owners"
        self.claim_prefix = f"{base}:work:claim:"
        self.channel_base = f"{base}:ctl:"
        self.channel = self.channel_base + node
        self.own: dict[str, bytes] = {}
        """This node's entries: member → b'' (registered) or its entry (adopted, to write)."""
        self.errors = 0
        self._client: Any = None
        self._subscriber: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ready: asyncio.Future[None] | None = None
        self._closed = True
        self._failing = False
        self._fresh_at = -math.inf
        """``time.monotonic()`` when the last heartbeat that refreshed every entry began."""
        self._fresh_for = max(ttl - heartbeat, heartbeat)
        """How old that heartbeat may be while no other node can have claimed an entry."""

    def fresh(self) -> bool:
        return time.monotonic() - self._fresh_at < self._fresh_for

    def _keys(self) -> list[str]:
        return [self.k_beats, self.k_owners]

    async def start(self) -> None:
        self._client = client = self._factory(single_connection_client=True)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._beat_script = client.register_script(_BEAT)
        self._sealed_script = client.register_script(_SEALED)
        self._unclaim = client.register_script(_UNCLAIM)
        self._subscriber = self._factory()
        self._closed = False
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._tasks = [
            loop.create_task(self._listen(), name="agentcast-work-control"),
            loop.create_task(self._run(), name="agentcast-work-beat"),
        ]
        with contextlib.suppress(TimeoutError):  # subscribed: requests reach this node
            await asyncio.wait_for(asyncio.shield(self._ready), self.timeout * 5)

    async def stop(self) -> None:
        """Stop at once: redis-py may not end a blocked read when cancelled (a read in
        progress can absorb the cancellation), so the tasks get half a second (at most
        ``timeout``) to end, their connections are then closed under them, and a task
        that still runs half a second later is left behind (logged)."""
        self._closed = True
        tasks = [*self._tasks, *self._jobs]
        for task in tasks:
            task.cancel()
        bound = min(self.timeout, 0.5)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=bound)
        else:
            stuck = set()
        for client in (self._subscriber, self._client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), self.timeout)
        if stuck:
            _, stuck = await asyncio.wait(stuck, timeout=bound)
            for task in stuck:  # pragma: no cover - redis-py holding on
                logger.warning("cluster work: %s did not stop; left behind", task.get_name())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerError("cluster work stopped"))
                future.exception()  # retrieved here: its requester may be gone too
        self._pending.clear()
        self._tasks = []
        self._client = self._subscriber = None

    # -- entries ---------------------------------------------------------------------

    def _entry(self, info: dict[str, Any]) -> bytes:
        return orjson.dumps({"n": self.node, "t": secrets.token_hex(6), "i": info})

    async def acquire(self, kind: str, key: str, info: dict[str, Any]) -> str | None:
        member = _member(kind, key)
        if self._client is None:
            raise BrokerError("cluster work not started")
        began = time.monotonic()
        alone = not self.own
        try:
            found = await self._acquire(keys=self._keys(), args=[member, self._entry(info)])
        except Exception as exc:
            self._failed("acquire", exc)
            raise BrokerError(f"cluster state unreachable: {exc}") from exc
        self._recovered()
        owner = found.decode() if isinstance(found, bytes) else str(found)
        if owner:
            return owner
        self.own[member] = b""
        if alone:  # its only entry, refreshed just now
            self._fresh_at = max(self._fresh_at, began)
        return None

    def adopt(self, kind: str, key: str, info: dict[str, Any]) -> None:
        self.own[_member(kind, key)] = self._entry(info)

    async def finish(self, kind: str, key: str) -> bool:
        """Failures are logged (True: failing open); the entry then orphans and its seal
        finds the work done."""
        member = _member(kind, key)
        held = self.own.pop(member, None)
        if self._client is None:
            return True
        try:
            args = [member, self.node, self.claim_prefix]
            done = int(await self._release(keys=self._keys(), args=args))
        except Exception as exc:
            self._failed("release", exc)
            return True
        self._recovered()
        if done == 2:  # never written (adopted), or removed by its sealer
            return held is None or held != b""
        return done == 1

    async def owners(self, kind: str, keys: Iterable[str]) -> dict[str, str]:
        wanted = list(keys)
        if not wanted:
            return {}
        if self._client is None:
            raise BrokerError("cluster work not started")
        try:
            found = await self._client.hmget(self.k_owners, [_member(kind, k) for k in wanted])
        except Exception as exc:
            self._failed("owners", exc)
            raise BrokerError(f"cluster state unreachable: {exc}") from exc
        out = {}
        for key, raw in zip(wanted, found, strict=True):
            if raw is not None:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    out[key] = str(orjson.loads(raw)["n"])
        return out

    # -- control channel -------------------------------------------------------------

    async def request(
        self, node: str, kind: str, key: str, payload: dict[str, Any], within: float
    ) -> Any:
        if node == self.node:
            async with asyncio.timeout(within):
                return await self._call_control(kind, key, payload)
        if self._client is None:
            raise BrokerError("cluster work not started")
        rid = secrets.token_hex(8)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        message = {"t": "q", "id": rid, "f": self.node, "k": kind, "key": key, "p": payload}
        try:
            try:
                heard = await self._client.publish(self.channel_base + node, orjson.dumps(message))
            except Exception as exc:
                self._failed("request", exc)
                raise BrokerError(f"cluster state unreachable: {exc}") from exc
            if not heard:
                raise BrokerError(f"node {node!r} is not listening (gone)")
            try:
                async with asyncio.timeout(within):
                    return await future
            except TimeoutError:
                raise BrokerError(f"node {node!r} did not answer within {within} s") from None
        finally:
            self._pending.pop(rid, None)

    async def _listen(self) -> None:
        backoff = min(self.heartbeat, 0.1)
        while not self._closed:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                backoff = min(self.heartbeat, 0.1)
                while not self._closed:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except Exception as exc:  # the loop must outlive any failure
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)  # start does not wait for an outage
                if self._closed:
                    return
                self._failed("control channel", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.heartbeat)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self.timeout)

    def _on_message(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            if message["t"] == "r":
                future = self._pending.get(message["id"])
                if future is not None and not future.done():
                    if "e" in message:
                        future.set_exception(BrokerError(str(message["e"])))
                    else:
                        future.set_result(message.get("r"))
            elif message["t"] == "q":
                task = asyncio.get_running_loop().create_task(self._answer(message))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
        except (ValueError, TypeError, KeyError):
            logger.warning("cluster work: malformed control message skipped")

    async def _answer(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"t": "r", "id": message["id"]}
        try:
            reply["r"] = await self._call_control(
                str(message["k"]), str(message["key"]), dict(message.get("p") or {})
            )
        except Exception as exc:
            reply["e"] = f"{type(exc).__name__}: {exc}"
        try:
            await self._client.publish(self.channel_base + str(message["f"]), orjson.dumps(reply))
        except Exception as exc:
            self._failed("reply", exc)

    # -- heartbeat: refresh, adopt, claim the orphans ----------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self.beat()
            except Exception as exc:  # the loop must outlive any failure
                self._failed("heartbeat", exc)
            # not wait_for: on 3.11 it can swallow a cancellation that races the sleep
            await asyncio.sleep(self.heartbeat)

    async def beat(self) -> None:
        """One heartbeat: refresh this node's entries, write the adopted ones, claim and
        seal the orphans of the kinds this node seals."""
        sealable = [kind for kind, h in self.handlers.items() if h.seal is not None]
        if (not self.own and not sealable) or self._client is None:
            return
        own = dict(self.own)
        args: list[Any] = [
            self.node,
            math.ceil(self.ttl * 1000),
            math.ceil(self.claim_ttl * 1000),
            self.claim_prefix,
            len(own),
        ]
        for member, value in own.items():
            args += (member, value)
        args += (len(sealable), *sealable, self.scan_limit)
        began = time.monotonic()
        lost, adopted, claimed = await self._beat_script(keys=self._keys(), args=args)
        self._recovered()
        self._fresh_at = began
        for raw in adopted:
            member = raw.decode()
            if member in self.own:
                self.own[member] = b""
        for raw in lost:
            member = raw.decode()
            if self.own.pop(member, None) is not None:
                self.lost += 1
                kind, _, key = member.partition(":")
                handlers = self.handlers.get(kind)
                logger.warning("cluster work: %s was sealed by another node; dropped", member)
                if handlers is not None and handlers.lost is not None:
                    try:
                        handlers.lost(key)
                    except Exception:
                        logger.exception("cluster work: lost handler of %s failed", kind)
        loop = asyncio.get_running_loop()
        for i in range(0, len(claimed), 2):
            task = loop.create_task(self._seal(claimed[i].decode(), claimed[i + 1]))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _seal(self, member: str, raw: bytes) -> None:
        kind, _, key = member.partition(":")
        claim = ""
        try:
            entry = orjson.loads(raw)
            dead, token, info = str(entry["n"]), str(entry["t"]), dict(entry.get("i") or {})
            claim = f"{self.claim_prefix}{member}@{token}"
            handlers = self.handlers.get(kind)
            if handlers is None or handlers.seal is None:
                raise BrokerError(f"no seal handler for {kind!r}")
            logger.warning("cluster work: sealing %s of lost node %s", member, dead)
            await handlers.seal(key, info, dead)
            await self._sealed_script(keys=self._keys(), args=[member, token])
            self.sealed += 1
        except Exception:
            logger.exception("cluster work: sealing %s failed; will retry", member)
            if claim:
                with contextlib.suppress(Exception):
                    await self._unclaim(keys=[claim], args=[self.node])

    # -- failures --------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if not self._failing:
            self._failing = True
            logger.warning("cluster work: Redis %s failed (%s)", what, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("cluster work: Redis is back")

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out["work_owned"] = len(self.own)
        out["work_errors"] = self.errors
        return out
