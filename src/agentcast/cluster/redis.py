"""Cluster state on Redis (redis-py asyncio): counts, rate consumption and presence
shared by every node on one Redis (``redis://host:port/db?prefix=name``).

Keys (all under the hash tag ``{prefix}``, so that a Redis Cluster keeps them on one
slot and the scripts may touch them together):

* ``{p}:nodes``: sorted set, node id → its last heartbeat (Redis's clock, ms). A node is
  live while its heartbeat is younger than ``ttl``.
* ``{p}:conns:<node>``: hash, user → connections on that node; ``PEXPIRE ttl`` at every
  heartbeat, so a dead node's counts vanish by themselves.
* ``{p}:presence:<node>``: hash, topic → ``[{user: connections}, anonymous]`` (JSON) of
  that node's subscribers; the same expiry.
* ``{p}:queue:*`` and channel ``{p}:queue``: the LLM queues
  (:class:`~agentcast.cluster.queue.RedisQueues`).
* channel ``{p}:rates``: each node publishes, every ``sync_interval``, the tokens its
  users drew (``{"n": node, "d": {user: {kind: tokens}}}``); the others charge them.

Ordering: every command goes through one connection (``single_connection_client``:
redis-py serializes them with a FIFO lock), in the order the gateway made the calls, and
this node's entries are written as absolute values it computes synchronously right before
the call. So a heartbeat and a reservation can never undo each other, and a retried
command (after a timeout) writes the same value again.

**Reservations** (:meth:`RedisClusterState.reserve`) are one Lua script, atomic in Redis:
sum the user's count on every other live node, add this node's own (the reservation
included), and write this node's count only if the total stays within the limit. Two
handshakes on two nodes at once are serialized by Redis: at most ``limit`` connections
are ever granted while every node is live. One round trip per authenticated handshake;
the reservations asked in one event-loop iteration (a reconnect storm) share one script
call, checked in the order they were asked.

**Staleness.** A release (a connection closed) reaches Redis with the next sync, which is
woken at once (a few ms later unless a sync is in flight): until then another node still
counts it. Presence changes wait for the next periodic sync (``sync_interval``). A dead
node's counts and presence vanish at most ``ttl`` after its last heartbeat
(``heartbeat`` < ``ttl``). Rate consumption is exchanged every ``sync_interval``; a lost
message (pub/sub is at most once: a reconnecting subscriber) is never charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio import connection as redis_connection
from redis.asyncio.client import PubSub
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agentcast.cluster.base import ClusterState, LocalView, TopicPresence
from agentcast.cluster.queue import FairQueue, RedisQueues, UpstreamQueue
from agentcast.cluster.shared import RedisKeys
from agentcast.cluster.work import RedisWork
from agentcast.errors import BrokerError
from agentcast.security.secrets import redact_url

__all__ = ["RedisClusterState"]

logger = logging.getLogger("agentcast.cluster")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
"""

_RESERVE = (
    _NOW
    + """
-- KEYS: nodes, own conns. ARGV: node, ttl_ms, base, n, then n x (subject, own count with
-- this one, limit), in the order they were asked. Returns per reservation -1 (granted,
-- recorded) or the connections the user holds elsewhere and here (refused).
local others = {}
local refused = {}  -- refusals so far per subject: later counts of the batch include them
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - ttl, '+inf')
local out = {}
local i = 5
for k = 1, tonumber(ARGV[4]) do
  local subject = ARGV[i]
  local total = others[subject]
  if total == nil then
    total = 0
    for _, node in ipairs(live) do
      if node ~= ARGV[1] then
        local c = redis.call('HGET', ARGV[3] .. ':conns:' .. node, subject)
        if c then total = total + tonumber(c) end
      end
    end
    others[subject] = total
  end
  local own = tonumber(ARGV[i + 1]) - (refused[subject] or 0)
  if total + own > tonumber(ARGV[i + 2]) then
    refused[subject] = (refused[subject] or 0) + 1
    out[k] = total + own - 1
  else
    redis.call('HSET', KEYS[2], subject, own)
    out[k] = -1
  end
  i = i + 3
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return out
"""
)

_FLUSH = (
    _NOW
    + """
-- KEYS: nodes, own conns, own presence. ARGV: node, ttl_ms, reset, n, n x (user, count),
-- m, m x (topic, json): count '0' / json '' deletes
if ARGV[3] == '1' then redis.call('DEL', KEYS[2], KEYS[3]) end
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  if ARGV[i + 1] == '0' then redis.call('HDEL', KEYS[2], ARGV[i])
  else redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[3], ARGV[i])
  else redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return {redis.call('HLEN', KEYS[2]), redis.call('HLEN', KEYS[3]), redis.call('ZCARD', KEYS[1])}
"""
)

_PRESENCE = (
    _NOW
    + """
-- KEYS: nodes. ARGV: node, ttl_ms, base, topic
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - ttl, '+inf')) do
  if node ~= ARGV[1] then
    local v = redis.call('HGET', ARGV[3] .. ':presence:' .. node, ARGV[4])
    if v then
      out[#out + 1] = node
      out[#out + 1] = v
    end
  end
end
return out
"""
)

_WITHDRAW = """
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


_REDIS_PARAMS = frozenset(
    {
        *getattr(redis_connection, "URL_QUERY_ARGUMENT_PARSERS", {}),
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
"""Query parameters redis-py's ``from_url`` understands; the others of a shared broker URL
(the broker's own options) are not passed to it."""


async def _settle(tasks: list[asyncio.Task[None]], within: float) -> list[asyncio.Task[None]]:
    """Wait at most ``within`` seconds for ``tasks`` to end; the ones still running."""
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=within)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: a failure was logged where it happened
    return list(pending)


def _split_url(url: str) -> tuple[str, str]:
    """The URL with only redis-py's query parameters, and the ``prefix`` parameter (the
    deployment's name, default ``agentcast``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "agentcast"
    kept = []
    for name, value in query:
        if name == "prefix":
            prefix = value or prefix
        elif name in _REDIS_PARAMS:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), prefix


class RedisClusterState(ClusterState):
    """One node's share of the cluster state in Redis (see the module docstring)."""

    distributed = True

    def __init__(
        self,
        url: str,
        *,
        heartbeat: float = 1.0,
        ttl: float = 5.0,
        sync_interval: float = 0.25,
        node: str | None = None,
        timeout: float = 1.0,
    ) -> None:
        super().__init__(node)
        if not 0 < heartbeat < ttl:
            raise ValueError(f"the heartbeat ({heartbeat} s) must be shorter than ttl ({ttl} s)")
        self.url, self.prefix = _split_url(url)
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.sync_interval = min(sync_interval, heartbeat)
        self.timeout = timeout
        self.base = "{" + self.prefix + "}"
        self.shared = RedisKeys(self.url, self.base, timeout=timeout)
        self.k_nodes = f"{self.base}:nodes"
        self.k_conns = f"{self.base}:conns:{self.node}"
        self.k_presence = f"{self.base}:presence:{self.node}"
        self.channel = f"{self.base}:rates"
        self.counts: dict[str, int] = {}
        """This node's connections per user, reservations in flight included."""
        self._dirty_users: set[str] = set()
        self._dirty_topics: set[str] = set()
        self._present: set[str] = set()
        """Topics this node's presence hash holds (when in sync)."""
        self._reset = True
        """Rewrite this node's part in full at the next flush (start, after a failure)."""
        self._view: LocalView | None = None
        self._client: Redis | None = None
        self._subscriber: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._live_nodes: int | None = None
        self._failing = False
        self.charged = 0.0
        """Tokens charged here for what other nodes reported (counter)."""
        self._ready: asyncio.Future[None] | None = None
        self._closed = False
        self._reservations: list[tuple[str, int, int, asyncio.Future[int | None]]] = []
        self._reserving: asyncio.Task[None] | None = None
        self.work = RedisWork(
            self._redis, self.base, self.node, heartbeat=heartbeat, ttl=ttl, timeout=timeout
        )
        self.queues = RedisQueues(
            self._pooled,
            base=self.base,
            node=self.node,
            ttl=ttl,
            poll_interval=self.sync_interval,
            on_error=self._failed,
            on_recovered=self._recovered,
        )
        """The LLM queues (started on first use)."""

    def _redis(self, **kwargs: Any) -> Redis:
        return Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
            **kwargs,
        )

    def _pooled(self) -> Redis:
        """The LLM queues' client: its pool waits for a free connection (at most 16)
        instead of failing, so a burst of queue calls (hundreds of generations at once)
        queues here; a reply may take up to ``ttl`` (a slow Redis is not an unreachable
        one: a queue call that times out sends the request to the node's own queue)."""
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=16,
            timeout=None,
            socket_timeout=max(self.timeout, self.ttl),
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return Redis.from_pool(pool)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, view: LocalView) -> None:
        self._view = view
        self._client = client = self._redis(single_connection_client=True)
        self._reserve = client.register_script(_RESERVE)
        self._flush_script = client.register_script(_FLUSH)
        self._presence_script = client.register_script(_PRESENCE)
        self._withdraw = client.register_script(_WITHDRAW)
        self._reset = True
        try:
            await client.ping()
            await self._sync()  # this node is live before its first handshake
        except (RedisError, OSError) as exc:
            await client.aclose()
            self._client = None
            where = redact_url(self.url)  # never the password
            raise BrokerError(f"cluster state: Redis unreachable at {where}: {exc}") from exc
        self._subscriber = self._redis()
        self._closed = False
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ready = loop.create_future()
        self._tasks = [
            loop.create_task(self._listen(), name="agentcast-cluster-rates"),
            loop.create_task(self._run(), name="agentcast-cluster-sync"),
        ]
        with contextlib.suppress(TimeoutError):  # the subscription, to share rates at once
            await asyncio.wait_for(asyncio.shield(self._ready), self.timeout * 5)
        await self.work.start()

    def queue(self, key: str, limit: int | None) -> UpstreamQueue:
        """The cluster-wide queue of ``key`` (unlimited: nothing to share, in process)."""
        return FairQueue(None) if limit is None else self.queues.queue(key, limit)

    async def stop(self) -> None:
        await self.work.stop()
        with contextlib.suppress(Exception):
            await self.queues.stop()  # before the node withdraws: its slots go back first
        self._closed = True
        if self._reserving is not None:
            self._tasks.append(self._reserving)
        for task in self._tasks:
            task.cancel()
        # bounded: redis-py can absorb a cancellation in a blocked read; closing the
        # connections below ends such a read
        stuck = await _settle(self._tasks, min(self.timeout, 0.5))
        self._tasks = []
        client = self._client
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._withdraw(keys=self._keys(), args=[self.node])
            await client.aclose()
        if self._subscriber is not None:
            await self._subscriber.aclose()
        for task in await _settle(stuck, min(self.timeout, 0.5)):  # pragma: no cover
            logger.warning("cluster state: %s did not stop; left behind", task.get_name())
        self._client = self._subscriber = None
        await self.shared.close()

    def _keys(self) -> list[str]:
        return [self.k_nodes, self.k_conns, self.k_presence]

    # -- connections -----------------------------------------------------------------

    def reserve(self, subject: str, limit: int) -> Awaitable[int | None]:
        """Queue the reservation: every reservation asked in one event-loop iteration (a
        reconnect storm) goes to Redis in one script call, checked in order."""
        count = self.counts.get(subject, 0) + 1
        self.counts[subject] = count  # before the call: a flush built meanwhile includes it
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        self._reservations.append((subject, count, limit, future))
        if self._reserving is None:
            self._reserving = loop.create_task(self._send_reservations())
        return future

    async def _send_reservations(self) -> None:
        """Send the queued reservations, one script call per batch, until none is left."""
        try:
            while self._reservations:
                batch, self._reservations = self._reservations, []
                args: list[Any] = [self.node, math.ceil(self.ttl * 1000), self.base, len(batch)]
                for subject, count, limit, _ in batch:
                    args += (subject, count, limit)
                try:
                    answers = await self._reserve(keys=self._keys()[:2], args=args)
                    if len(answers) != len(batch):
                        raise ValueError(f"{len(answers)} answers for {len(batch)} reservations")
                except Exception as exc:  # Redis down, a timeout: never into the handshake
                    self._failed("reserve", exc)
                    answers = [-1] * len(batch)  # fail open: the per-node limit still holds
                except BaseException:  # cancelled (stopping): granted, as when failing open
                    self._reservations = batch + self._reservations
                    raise
                else:
                    self._recovered()
                for (subject, _, _, future), held in zip(batch, answers, strict=True):
                    if int(held) >= 0:
                        self._drop(subject)
                    if not future.done():
                        future.set_result(None if int(held) < 0 else int(held))
        finally:
            self._reserving = None
            for _, _, _, future in self._reservations:  # cancelled: fail open, counted
                if not future.done():
                    future.set_result(None)
            self._reservations = []

    def release(self, subject: str) -> None:
        if subject in self.counts:
            self._drop(subject)

    def _drop(self, subject: str) -> None:
        left = self.counts.get(subject, 0) - 1
        if left > 0:
            self.counts[subject] = left
        else:
            self.counts.pop(subject, None)
        self._dirty_users.add(subject)
        if self._wake is not None:
            self._wake.set()

    # -- presence --------------------------------------------------------------------

    def topic_changed(self, topic: str) -> None:
        # not woken at once (unlike a release): a storm of subscriptions to one big topic
        # re-encodes its presence at most once per sync interval, not once per round trip
        self._dirty_topics.add(topic)

    async def presence(self, topic: str) -> TopicPresence:
        found = TopicPresence()
        if self._client is None:
            return found
        try:
            flat = await self._presence_script(
                keys=[self.k_nodes], args=[self.node, math.ceil(self.ttl * 1000), self.base, topic]
            )
        except Exception as exc:
            self._failed("presence", exc)
            raise BrokerError(f"presence unavailable: {exc}") from exc
        for i in range(1, len(flat), 2):
            try:
                users, anonymous = orjson.loads(flat[i])
                found.add(
                    {str(u): int(c) for u, c in users.items()},
                    int(anonymous),
                )
            except (ValueError, TypeError, AttributeError):
                logger.warning("cluster state: bad presence entry of node %r", flat[i - 1])
        return found

    def nodes(self) -> int | None:
        return self._live_nodes

    def stats(self) -> dict[str, float]:
        out = super().stats()
        out["users"] = len(self.counts)
        out["tokens_charged"] = self.charged
        out.update(self.work.stats())
        return out

    # -- the sync loop ---------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        last_beat = loop.time()
        backoff = self.sync_interval
        while not self._closed:
            self._wake.clear()
            try:
                await self._publish_rates()
                if (
                    self._dirty_users
                    or self._dirty_topics
                    or self._reset
                    or loop.time() - last_beat >= self.heartbeat
                ):
                    await self._sync()
                    last_beat = loop.time()
                backoff = self.sync_interval
            except Exception as exc:  # the loop must outlive any failure
                self._failed("sync", exc)
                backoff = min(backoff * 2, self.heartbeat)
            # not wait_for: on 3.11 it can swallow a cancellation that races the event
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()

    async def _sync(self) -> None:
        """One heartbeat: this node's changed counts and presence (everything after a
        reset), its expiry refreshed. Built synchronously, right before the call."""
        view = self._view
        assert view is not None
        reset = self._reset
        counts = self.counts
        users = list(counts) if reset else list(self._dirty_users)
        topics = list(view.local_topics()) if reset else list(self._dirty_topics)
        self._dirty_users = set()
        self._dirty_topics = set()
        self._reset = False
        args: list[Any] = [self.node, math.ceil(self.ttl * 1000), "1" if reset else "0", len(users)]
        for user in users:
            args += (user, counts.get(user, 0))
        args.append(len(topics))
        present = self._present
        if reset:
            present.clear()
        for topic in topics:
            members, anonymous = view.local_presence(topic)
            if members or anonymous:
                args += (topic, orjson.dumps([members, anonymous]))
                present.add(topic)
            else:
                args += (topic, "")
                present.discard(topic)
        try:
            n_conns, n_presence, live = await self._flush_script(keys=self._keys(), args=args)
        except BaseException:
            self._reset = True  # what was taken is unknown: rewrite it all next time
            raise
        self._recovered()
        self._live_nodes = int(live)
        mismatch = int(n_conns) != len(self.counts) or int(n_presence) != len(self._present)
        if mismatch and not (self._dirty_users or self._dirty_topics):  # not merely in flight
            self._reset = True  # expired meanwhile (an outage) or a flushed Redis

    async def _publish_rates(self) -> None:
        view = self._view
        assert view is not None
        assert self._client is not None
        drawn = view.take_drawn()
        if drawn:
            await self._client.publish(self.channel, orjson.dumps({"n": self.node, "d": drawn}))

    async def _listen(self) -> None:
        assert self._subscriber is not None
        backoff = self.sync_interval
        while not self._closed:
            pubsub: PubSub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                backoff = self.sync_interval
                while not self._closed:  # not True: a cancellation may be absorbed
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
            except Exception as exc:  # the loop must outlive any failure
                self._failed("rate subscription", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.heartbeat)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _apply(self, raw: bytes) -> None:
        """Charge what another node reported; anything malformed is skipped."""
        view = self._view
        try:
            message = orjson.loads(raw)
            if message.get("n") == self.node or view is None:
                return
            for subject, kinds in message["d"].items():
                for kind, tokens in kinds.items():
                    amount = float(tokens)
                    if isinstance(subject, str) and isinstance(kind, str) and amount > 0:
                        view.charge(subject, kind, amount)
                        self.charged += amount
        except (ValueError, TypeError, AttributeError, KeyError):
            logger.warning("cluster state: malformed rate message skipped")

    # -- failures --------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._reset = True
        if not isinstance(exc, RedisError | OSError):
            logger.error("cluster state: %s failed", what, exc_info=exc)
        elif not self._failing:
            self._failing = True
            logger.warning(
                "cluster state: Redis %s failed (%s); limits hold per node until it is back",
                what,
                exc,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("cluster state: Redis is back")
