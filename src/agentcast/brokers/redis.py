"""The Redis broker (``redis://host:port/db?prefix=agentcast``): several processes, one numbering.

Needs Redis 6.2 or later (``XTRIM MINID``); 7 or later is best (see :func:`_scripts`).

Every process of a deployment connects to the same Redis server; the broker contract
(:mod:`agentcast.brokers.base`) holds across all of them. What lives in Redis, under the
key prefix ``P`` (the URL's ``prefix`` query parameter, default ``agentcast``):

``P:m:TOPIC``
    A hash: the topic's last ``seq``, its ``epoch`` and the ``bytes`` its history holds.
``P:s:TOPIC``
    A stream: the retained publications, entry id ``SEQ-0``, fields ``t`` (type), ``d``
    (data), ``a`` (publish time). Ids are the seqs, so the retained seqs are the
    contiguous run ``last - XLEN + 1 .. last`` and a history read is one ``XRANGE``.
``P:durable``
    The durable prefixes (:meth:`RedisBroker.declare_durable`). A flushed or restarted
    server loses this set with the numbering: durable topics created afterwards get a
    random epoch, never :data:`~agentcast.brokers.base.DURABLE_EPOCH` again, until a
    store continues their numbering (:meth:`RedisBroker.continue_numbering`) or a process
    starting later declares the prefixes again.
``P:p:PRODUCER``
    An idempotent producer (contract item 9): a hash of its highest producer seq ``n``
    and, per producer seq of the latest :data:`~agentcast.brokers.base.PRODUCER_WINDOW`,
    ``SEQ EPOCH TOPIC`` of its publication; written by the publish script, expiring
    ``producer_ttl`` after the producer's last publish.
``P:ages``, ``P:empty``, ``P:prefixes``
    What :meth:`RedisBroker.trim` needs: topics by the age of their oldest retained
    publication, topics retaining none (candidates to forget), and the prefixes some
    process listens to (their topics are never forgotten).

Publishing is one Lua script per batch (one round trip for a loop iteration's
publications, contract item 7): for each topic it reads the meta hash (creating the topic
with the caller's random epoch candidate, or the durable one), then per draft increments
the seq, ``XADD`` s the entry, evicts the oldest entries past ``max_events`` and
``max_bytes`` (the newest is always kept) and ``PUBLISH`` es the publication on the
topic's channel ``P:c:TOPIC``, all in one atomic step: seqs are gapless across every
process and a publication is in history before anyone is notified (items 1, 2). A draft
with a producer (item 9) or a condition (``expect_last_seq``, item 10) makes the batch
take the script's long form: a producer's retry, or a draft whose condition fails (the
topic's seq at that point is not the expected one), is answered without being appended. Age
(``max_age``) is applied by :meth:`RedisBroker.trim`, another script.

Notifications use plain pub/sub: ``SUBSCRIBE P:c:TOPIC`` per listened topic and
``PSUBSCRIBE P:c:PREFIX*`` per listened prefix, on one connection per process read by a
task. Sharded pub/sub (``SSUBSCRIBE``) only spreads channels over the shards of a Redis
Cluster; this broker's batch script touches the keys of several topics, which Cluster
refuses unless they share a hash slot, so it targets one server (or a primary with
replicas) and plain pub/sub costs the same there. The hash ``P:index`` holds every
topic's last seq (written by the same script) for :meth:`RedisBroker.topics`.

Pub/sub is at most once: when the connection drops, the reader reconnects with
exponential backoff and jitter (tenacity), subscribes again and then delivers the latest
publication of every listened topic once more (contract item 3), so the hub notices the
seqs it missed and reads them from history. Notifications already delivered are dropped
(a seq at or below the last one delivered in the same epoch), so the listener sees each
seq at most once per life of the connection.

What a publisher learns (item 6): a connection that cannot be made (refused, timed out,
authentication failed) raises :class:`~agentcast.errors.BrokerError`: nothing was sent.
Once the request was written, a lost connection or a timeout (``socket_timeout``, from
the URL, default 5 s) raises :class:`~agentcast.errors.PublishOutcomeUnknownError`. No
request is retried by the broker: a retry after an unknown outcome could publish twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from agentcast.brokers.base import (
    PRODUCER_TTL,
    PRODUCER_WINDOW,
    Broker,
    Conflict,
    Draft,
    Duplicate,
    Listener,
)
from agentcast.core.envelope import Publication, format_timestamp
from agentcast.core.history import HistoryLimits, HistoryPage
from agentcast.errors import BrokerError, ConfigError, PublishOutcomeUnknownError
from agentcast.security.secrets import redact_url

__all__ = ["RedisBroker", "parse_redis_url"]

logger = logging.getLogger("agentcast.broker.redis")

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a lost or failed connection raises (redis-py wraps most socket errors)."""

_PUBLISH = """
local maxev, maxb = tonumber(ARGV[1]), tonumber(ARGV[2])
local chan, nt = ARGV[3], tonumber(ARGV[5])
local prefixes = nil
local seq, epoch, nbytes, len, names, fresh = {}, {}, {}, {}, {}, {}
for i = 1, nt do
  local name, meta = ARGV[4 + 2 * i], KEYS[2 + 2 * i]
  names[i] = name
  local m = redis.call('HMGET', meta, 'seq', 'epoch', 'bytes')
  if not m[1] then
    local e = ARGV[5 + 2 * i]
    if prefixes == nil then prefixes = redis.call('SMEMBERS', KEYS[1]) end
    for _, p in ipairs(prefixes) do
      if string.sub(name, 1, #p) == p then e = 'durable' break end
    end
    seq[i], epoch[i], nbytes[i], fresh[i] = 0, e, 0, true
  else
    seq[i], epoch[i], nbytes[i] = tonumber(m[1]), m[2], tonumber(m[3] or '0')
  end
  len[i] = redis.call('XLEN', KEYS[3 + 2 * i])
end
local base = 5 + 2 * nt
local stride, pp = tonumber(ARGV[base + 1]), ARGV[base + 2]
local pttl, window = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
local out, plast = {}, {}
for j = base + 5, #ARGV, stride do
  local ti, typ, data, at = tonumber(ARGV[j]), ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local stream, name = KEYS[3 + 2 * ti], names[ti]
  local pk, ps, dup = nil, 0, false
  if stride == 7 and ARGV[j + 4] ~= '' then
    pk, ps = pp .. ARGV[j + 4], tonumber(ARGV[j + 5])
    local last = plast[pk]
    if last == nil then last = tonumber(redis.call('HGET', pk, 'n') or '0') end
    plast[pk] = last
    if ps <= last then
      dup = true
      local orig = false
      if ps > last - window then orig = redis.call('HGET', pk, tostring(ps)) end
      out[#out + 1] = orig or '0'
    end
  end
  if stride == 7 and not dup then
    local ex = tonumber(ARGV[j + 6])
    if ex >= 0 and ex ~= seq[ti] then  -- the condition failed: a conflict, nothing made
      dup = true
      out[#out + 1] = -1 - seq[ti]
    end
  end
  if not dup then
  local s = seq[ti] + 1
  seq[ti] = s
  if len[ti] == 0 then
    redis.call('ZADD', KEYS[2], at, name)
    redis.call('ZREM', KEYS[3], name)
  end
  redis.call('XADD', stream, s .. '-0', 't', typ, 'd', data, 'a', at)
  local n, b = len[ti] + 1, nbytes[ti] + #data + 128
  while n > maxev or (b > maxb and n > 1) do
    local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    b = b - (#old[2][4] + 128)
    redis.call('XTRIM', stream, 'MINID', (s - n + 2) .. '-0')
    n = n - 1
  end
  len[ti], nbytes[ti] = n, b
  local head = s .. ' ' .. at .. ' ' .. epoch[ti] .. ' ' .. #typ .. ' '
  redis.call('PUBLISH', chan .. name, head .. typ .. data)
  out[#out + 1] = s
  if pk then
    redis.call('HSET', pk, tostring(ps), s .. ' ' .. epoch[ti] .. ' ' .. name)
    redis.call('HDEL', pk, tostring(ps - window))
    plast[pk] = ps
  end
  end
end
for pk, last in pairs(plast) do
  redis.call('HSET', pk, 'n', last)
  redis.call('PEXPIRE', pk, pttl)
end
local epochs = {}
for i = 1, nt do
  if not (fresh[i] and seq[i] == 0) then  -- a new topic only retries were for stays unmade
    redis.call('HSET', KEYS[2 + 2 * i], 'seq', seq[i], 'epoch', epoch[i], 'bytes', nbytes[i])
    redis.call('HSET', ARGV[4], names[i], seq[i])
  end
  epochs[i] = epoch[i]
end
return {out, epochs}
"""
"""KEYS: durable set, ages, empty, then (meta, stream) per topic. ARGV: max_events,
max_bytes, channel prefix, index hash, topic count, (name, epoch candidate) per topic,
the stride (4, or 7 with producers or conditions), the producer key prefix, the producer
TTL (ms), the window, then (topic index, type, data, at[, producer or '', producer seq,
expected last seq or -1]) per draft. Returns (per draft its seq, or for a producer's retry
the string 'SEQ EPOCH TOPIC' of the original publication, '0' beyond the window, or for a
failed condition -1 - the topic's last seq; epochs per topic)."""

_HISTORY = """
local m = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
if not m[1] then return {0, '', {}, 1} end
local last, n = tonumber(m[1]), redis.call('XLEN', KEYS[2])
local first = last - n + 1
local since, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local start = since + 1
if since > last or start < first then start = first end
local entries = {}
if limit ~= 0 and n > 0 and start <= last then
  if limit < 0 then
    entries = redis.call('XRANGE', KEYS[2], start .. '-0', '+')
  else
    entries = redis.call('XRANGE', KEYS[2], start .. '-0', '+', 'COUNT', limit)
  end
end
return {last, m[2], entries, first}
"""
"""KEYS: meta, stream. ARGV: since, limit (-1: none). Returns (last seq, epoch, entries,
first retained seq)."""

_ENSURE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local e = ARGV[2]
for _, p in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if string.sub(ARGV[1], 1, #p) == p then e = 'durable' break end
end
redis.call('HSET', KEYS[1], 'seq', 0, 'epoch', e, 'bytes', 0)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HSETNX', KEYS[4], ARGV[1], 0)
return 1
"""
"""A listened topic exists (its epoch is stable). KEYS: meta, durable set, empty, index.
ARGV: name, epoch candidate, now."""

_LATEST = """
local out = {}
for i = 1, #KEYS, 2 do
  local m = redis.call('HMGET', KEYS[i], 'seq', 'epoch')
  if m[1] and tonumber(m[1]) > 0 then
    out[#out + 1] = {m[2], redis.call('XRANGE', KEYS[i + 1], m[1] .. '-0', m[1] .. '-0')}
  else
    out[#out + 1] = false
  end
end
return out
"""
"""KEYS: (meta, stream) per topic. Returns per topic nil or (epoch, [its latest entry])."""

_CONTINUE = """
for i = 1, #ARGV, 2 do
  local meta, stream, seq = KEYS[i], KEYS[i + 1], tonumber(ARGV[i + 1])
  local last = redis.call('HGET', meta, 'seq')
  if not last then
    if seq > 0 then redis.call('HSET', meta, 'seq', seq, 'epoch', 'durable', 'bytes', 0) end
  elseif tonumber(last) < seq and redis.call('XLEN', stream) == 0 then
    redis.call('HSET', meta, 'seq', seq, 'epoch', 'durable')
  end
end
return 0
"""
"""KEYS: (meta, stream) per topic; ARGV: (name, last seq) per topic."""

_TRIM = """
local mp, sp, cp = ARGV[1], ARGV[2], ARGV[3]
local horizon, now, limit = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local forgotten = 0
if horizon then
  local aged = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. horizon, 'LIMIT', 0, limit)
  for _, name in ipairs(aged) do
    local stream, meta = sp .. name, mp .. name
    local dropped = 0
    while true do
      local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
      if not old then
        redis.call('ZREM', KEYS[1], name)
        redis.call('ZADD', KEYS[2], now, name)
        break
      end
      local at = tonumber(old[2][6])
      if at >= horizon then
        redis.call('ZADD', KEYS[1], at, name)
        break
      end
      dropped = dropped + #old[2][4] + 128
      local s = tonumber(string.match(old[1], '^(%d+)'))
      redis.call('XTRIM', stream, 'MINID', (s + 1) .. '-0')
    end
    if dropped > 0 then redis.call('HINCRBY', meta, 'bytes', -dropped) end
  end
end
local prefixes = redis.call('SMEMBERS', KEYS[3])
for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, limit - 1)) do
  local stream, meta = sp .. name, mp .. name
  local listened = redis.call('XLEN', stream) > 0
    or redis.call('PUBSUB', 'NUMSUB', cp .. name)[2] > 0
  if not listened then
    for _, p in ipairs(prefixes) do
      if string.sub(name, 1, #p) == p then listened = true break end
    end
  end
  if listened then
    if redis.call('XLEN', stream) == 0 then redis.call('ZADD', KEYS[2], now, name)
    else redis.call('ZREM', KEYS[2], name) end
  else
    redis.call('ZREM', KEYS[2], name)
    local m = redis.call('HMGET', meta, 'seq', 'epoch')
    redis.call('DEL', stream)
    redis.call('HDEL', ARGV[7], name)
    if m[2] == 'durable' and tonumber(m[1] or '0') > 0 then
      redis.call('HSET', meta, 'bytes', 0)
    else
      redis.call('DEL', meta)
    end
    forgotten = forgotten + 1
  end
end
return forgotten
"""
"""KEYS: ages, empty, prefixes. ARGV: meta prefix, stream prefix, channel prefix, horizon
('' for no age bound), now, topics per call, index hash."""


class _Script:
    """A Lua script called by ``EVALSHA``, sent with ``EVAL`` when the server lacks it
    (``NOSCRIPT``: nothing ran, so sending it again is safe)."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


_READS = frozenset({"history", "latest"})


def _scripts(major: int) -> dict[str, _Script]:
    """The scripts for a server of version ``major``. From Redis 7 on they carry a
    shebang: a writing script is then refused *before it runs* when Redis is out of memory
    (``deny-oom``), instead of failing at its first write after earlier ones took effect
    (a batch half applied); reading ones are ``no-writes`` (allowed then, and on replicas).
    """
    bodies = {
        "publish": _PUBLISH,
        "history": _HISTORY,
        "ensure": _ENSURE,
        "latest": _LATEST,
        "continue": _CONTINUE,
        "trim": _TRIM,
    }
    if major < 7:
        return {name: _Script(body) for name, body in bodies.items()}
    return {
        name: _Script(("#!lua flags=no-writes" if name in _READS else "#!lua") + body)
        for name, body in bodies.items()
    }


def parse_redis_url(url: str) -> tuple[str, str]:
    """``(redis_url, prefix)``: the URL without agentcast's ``prefix`` query parameter
    (which redis-py would not accept) and the key prefix (default ``agentcast``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"not a Redis URL: {redact_url(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "agentcast"
    rest = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            rest.append((key, value))
    if not prefix or any(c in prefix for c in " *?[]\\"):
        raise ConfigError(f"invalid Redis key prefix {prefix!r} in {redact_url(url)!r}")
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _decode(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class RedisBroker(Broker):
    """The broker over one Redis server; see the module docstring for what lives where.

    ``url``: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS) with redis-py's
    query parameters (``socket_timeout``, ``socket_connect_timeout``, …) and agentcast's
    ``prefix`` (the key namespace). ``name``: the client name its connections carry
    (``CLIENT LIST``), by default ``PREFIX@HOST:PID`` (which node holds which connection).
    """

    def __init__(
        self,
        url: str,
        limits: HistoryLimits | None = None,
        *,
        name: str | None = None,
        health_interval: float = 5.0,
        trim_batch: int = 1000,
        producer_ttl: float = PRODUCER_TTL,
    ) -> None:
        self.url = url
        self.redis_url, self.prefix = parse_redis_url(url)
        self.limits = limits or HistoryLimits()
        self.name = name or f"{self.prefix}@{socket.gethostname()}:{os.getpid()}"
        self._health = health_interval
        self._trim_batch = trim_batch
        self._producer_ttl_ms = max(1, round(producer_ttl * 1000))
        p = self.prefix
        self._producer = f"{p}:p:"
        self._meta, self._stream, self._chan = f"{p}:m:", f"{p}:s:", f"{p}:c:"
        self._durable, self._ages, self._empty = f"{p}:durable", f"{p}:ages", f"{p}:empty"
        self._prefix_set, self._index = f"{p}:prefixes", f"{p}:index"
        self._alive = f"{p}:alive"
        """A channel nothing publishes on: the pub/sub connection always subscribes to it
        (a connection subscribed to nothing would leave the subscribed state)."""
        self._pool: ConnectionPool | None = None
        self._sync: Any = None
        """The synchronous client of :meth:`topics` (made on first use)."""
        self._topics_cache: tuple[float, dict[str, int]] | None = None
        self._listener: Listener | None = None
        self._listened: set[str] = set()
        self._prefixes: tuple[str, ...] = ()
        self._known: dict[str, int] = {}
        """:meth:`topics`: last seqs seen (own publishes, notifications, the index)."""
        self._delivered: dict[str, tuple[str, int]] = {}
        """Per topic, the epoch and seq last given to the listener (duplicates dropped)."""
        self._pending: dict[bytes, deque[asyncio.Future[None]]] = {}
        """Subscription confirmations awaited, per channel or pattern."""
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._sub: AbstractConnection | None = None
        """The pub/sub connection while it is up (subscribed to what is listened)."""
        self._up: asyncio.Event | None = None
        self._connects = 0
        self._counters = {"round_trips": 0, "errors": 0, "reconnects": 0}
        self._scripts = _scripts(7)
        self.server_version: tuple[int, ...] = ()
        """The Redis server's version (known once started)."""

    def __repr__(self) -> str:
        return f"RedisBroker({redact_url(self.url)!r})"

    # -- connections -----------------------------------------------------------------

    def _new_pool(self) -> ConnectionPool:
        options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),  # never resend a request (a publish twice)
            "client_name": self.name,
        }
        query = dict(parse_qsl(urlsplit(self.redis_url).query))
        if "socket_timeout" not in query:
            options["socket_timeout"] = 5.0
        if "socket_connect_timeout" not in query:
            options["socket_connect_timeout"] = 5.0
        # bounded (default 32, the URL's max_connections): 1,000 subscribes at once must
        # queue for a connection, not open 1,000 sockets (and run out of descriptors);
        # waiting longer than the connect timeout is a BrokerError (nothing was sent)
        options.setdefault("max_connections", 32)
        options["timeout"] = float(query.get("socket_connect_timeout", 5.0))
        try:
            return BlockingConnectionPool.from_url(self.redis_url, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Redis URL {redact_url(self.url)!r}: {exc}") from None

    async def _call(self, script: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        """Run one script: one round trip (two when the server lacks the script)."""
        pool = self._pool
        if pool is None or self._listener is None:
            raise BrokerError("broker not started")
        counters = self._counters
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (*_LOST, RedisError) as exc:
            counters["errors"] += 1
            raise BrokerError(f"Redis at {redact_url(self.redis_url)} unavailable: {exc}") from exc
        s = self._scripts[script]
        try:
            counters["round_trips"] += 1
            try:
                await conn.send_command("EVALSHA", s.sha, len(keys), *keys, *args)
                return await conn.read_response()
            except NoScriptError:
                counters["round_trips"] += 1
                await conn.send_command("EVAL", s.body, len(keys), *keys, *args)
                return await conn.read_response()
        except (ResponseError, BusyLoadingError) as exc:
            # the server answered with an error before running it (BUSY, READONLY, OOM on
            # Redis 7, LOADING): nothing was applied
            counters["errors"] += 1
            raise BrokerError(f"Redis refused {script}: {exc}") from exc
        except (*_LOST, asyncio.CancelledError) as exc:
            counters["errors"] += 1
            await conn.disconnect()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise PublishOutcomeUnknownError(
                f"Redis at {redact_url(self.redis_url)}: {script} sent, no answer: {exc}"
            ) from exc
        finally:
            await pool.release(conn)

    async def _read(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """:meth:`_call` for a request that changes nothing: a lost answer is a plain
        :class:`BrokerError` (the read can simply be made again)."""
        try:
            return await self._call(script, keys, args)
        except PublishOutcomeUnknownError as exc:
            raise BrokerError(str(exc)) from exc

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        if self._listener is not None:
            self._listener = listener
            return
        self._pool = self._new_pool()
        self._listener = listener
        try:
            info = await self._call_plain("INFO", "server")
        except BrokerError as exc:
            await self._close()
            raise BrokerError(
                f"cannot connect to Redis at {redact_url(self.redis_url)}: {exc.__cause__ or exc}"
            ) from None
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("redis_version:"):
                version = line.split(":", 1)[1].strip()
                self.server_version = tuple(int(x) for x in version.split(".") if x.isdigit())
        if self.server_version and self.server_version < (6, 2):
            await self._close()
            found = ".".join(map(str, self.server_version))
            raise BrokerError(
                f"Redis {found} at {redact_url(self.redis_url)}: agentcast needs 6.2 or later"
            )
        self._scripts = _scripts(self.server_version[0] if self.server_version else 0)
        self._up = up = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(
            self._read_forever(), name="agentcast-redis-pubsub"
        )
        try:
            async with asyncio.timeout(self._connect_timeout()):
                await up.wait()
        except TimeoutError:
            await self._close()
            raise BrokerError(
                f"Redis at {redact_url(self.redis_url)}: pub/sub did not connect"
            ) from None

    def _connect_timeout(self) -> float:
        assert self._pool is not None
        kwargs = self._pool.connection_kwargs
        return float(kwargs.get("socket_connect_timeout") or 5.0) + float(
            kwargs.get("socket_timeout") or 5.0
        )

    async def stop(self) -> None:
        await self._close()

    async def _close(self) -> None:
        self._listener = None
        for task in (self._reader, self._pinger):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._pinger = None
        if self._sub is not None:
            await self._sub.disconnect()
            self._sub = None
        for waiters in self._pending.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(BrokerError("broker stopped"))
                    fut.exception()
        self._pending.clear()
        self._listened.clear()
        self._prefixes = ()
        self._delivered.clear()
        if self._pool is not None:
            await self._pool.disconnect()
            self._pool = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def metrics(self) -> dict[str, int]:
        return dict(self._counters)

    # -- publishing ------------------------------------------------------------------

    async def publish_many(self, drafts: Sequence[Draft]) -> list[Publication]:
        if not drafts:
            return []
        if self._listener is None:
            raise BrokerError("broker not started")
        topics: dict[str, int] = {}
        keys: list[str] = [self._durable, self._ages, self._empty]
        head: list[Any] = []
        tail: list[Any] = []
        ats: list[str] = []
        long = any(d.producer is not None or d.expect_last_seq is not None for d in drafts)
        for d in drafts:
            index = topics.get(d.topic)
            if index is None:
                index = topics[d.topic] = len(topics) + 1
                keys += (self._meta + d.topic, self._stream + d.topic)
                head += (d.topic, secrets.token_hex(4))
            at = repr(float(d.at))
            ats.append(at)
            if long:
                expect = -1 if d.expect_last_seq is None else max(0, d.expect_last_seq)
                if d.producer is None or d.producer_seq is None:
                    tail += (index, d.type, d.data, at, "", 0, expect)
                else:
                    tail += (index, d.type, d.data, at, d.producer, d.producer_seq, expect)
            else:
                tail += (index, d.type, d.data, at)
        limits = self.limits
        args = [limits.max_events, limits.max_bytes, self._chan, self._index, len(topics)]
        mid = [7 if long else 4, self._producer, self._producer_ttl_ms, PRODUCER_WINDOW]
        seqs, epochs = await self._call("publish", keys, [*args, *head, *mid, *tail])
        names = list(topics)
        epoch_of = {name: _decode(e) for name, e in zip(names, epochs, strict=True)}
        pubs: list[Publication] = []
        for d, seq, at in zip(drafts, seqs, ats, strict=True):
            when = float(at)
            if isinstance(seq, int) and seq < 0:  # a failed condition (contract item 10)
                last = -1 - seq
                pubs.append(
                    Conflict(
                        d.topic,
                        last,
                        d.type,
                        d.data,
                        format_timestamp(when),
                        when,
                        epoch_of[d.topic] if last else "",
                    )
                )
                continue
            if isinstance(seq, bytes):  # a producer's retry: the original publication
                parts = seq.decode().split(" ", 2)
                if len(parts) == 3:
                    pubs.append(
                        Duplicate(
                            parts[2],
                            int(parts[0]),
                            d.type,
                            d.data,
                            format_timestamp(when),
                            when,
                            parts[1],
                        )
                    )
                else:
                    pubs.append(Duplicate(d.topic, 0, d.type, d.data, format_timestamp(when), when))
                continue
            pubs.append(
                Publication(
                    d.topic,
                    int(seq),
                    d.type,
                    d.data,
                    format_timestamp(when),
                    when,
                    epoch_of[d.topic],
                )
            )
        known = self._known
        for pub in pubs:
            known[pub.topic] = max(known.get(pub.topic, 0), pub.seq)
        return pubs

    # -- reading ---------------------------------------------------------------------

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        keys = [self._meta + topic, self._stream + topic]
        last, epoch_raw, entries, first = await self._read(
            "history", keys, [since, -1 if limit is None else max(limit, 0)]
        )
        epoch = _decode(epoch_raw)
        if not epoch:  # never published
            return HistoryPage([], 1, 0, since)
        last = int(last)
        if last:
            self._known[topic] = max(self._known.get(topic, 0), last)
        pubs = [self._entry(topic, entry, epoch) for entry in entries]
        return HistoryPage(pubs, int(first), last, since, epoch)

    @staticmethod
    def _entry(topic: str, entry: Any, epoch: str) -> Publication:
        entry_id, fields = entry
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        at = float(values[b"a"])
        seq = int(entry_id.split(b"-", 1)[0])
        return Publication(
            topic, seq, values[b"t"].decode(), values[b"d"], format_timestamp(at), at, epoch
        )

    def topics(self) -> dict[str, int]:
        """Every topic of the deployment with its last seq (the ``P:index`` hash), read
        synchronously: one blocking round trip (bounded by ``socket_timeout``, at most 1 s),
        at most once a second (``/healthz`` probes do not read the whole index each time),
        merged with what this process saw since (its publishes, notifications, history
        reads). For ``/healthz`` and ``/api/topics``, never on a hot path. When Redis does
        not answer, what this process saw."""
        if self._pool is None:
            return dict(self._known)
        now = time.monotonic()
        cached = self._topics_cache
        if cached is not None and now - cached[0] < 1.0:
            merged = dict(cached[1])
            for topic, seq in self._known.items():
                if seq > merged.get(topic, -1):
                    merged[topic] = seq
            return merged
        client = self._sync
        if client is None:
            kwargs = self._pool.connection_kwargs
            timeout = min(float(kwargs.get("socket_timeout") or 1.0), 1.0)
            client = self._sync = redis.Redis.from_url(
                self.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                client_name=self.name,
                retry=SyncRetry(NoBackoff(), 0),
            )
        try:
            self._counters["round_trips"] += 1
            raw = client.hgetall(self._index)
        except redis.RedisError as exc:
            self._counters["errors"] += 1
            logger.warning("topics of %s unreadable: %s", redact_url(self.redis_url), exc)
            return dict(self._known)
        topics = {_decode(k): int(v) for k, v in raw.items()}
        self._topics_cache = (now, topics)
        return dict(topics)

    def listens(self, topic: str) -> bool:
        """Whether this instance gets notifications of ``topic``."""
        return topic in self._listened or topic.startswith(self._prefixes)

    # -- listening -------------------------------------------------------------------

    async def listen(self, topic: str) -> None:
        if self._listener is None:
            raise BrokerError("broker not started")
        new = topic not in self._listened
        if new:
            self._listened.add(topic)
            try:
                await self._subscribe(b"SUBSCRIBE", (self._chan + topic).encode())
            except BaseException:
                self._listened.discard(topic)
                raise
        try:
            await self._read(  # creating the topic twice is harmless: never "unknown"
                "ensure",
                [self._meta + topic, self._durable, self._empty, self._index],
                [topic, secrets.token_hex(4), repr(time.time())],
            )
        except BaseException:
            if new:
                await self.unlisten(topic)
            raise

    async def unlisten(self, topic: str) -> None:
        if topic not in self._listened:
            return
        self._listened.discard(topic)
        self._delivered.pop(topic, None)
        sub = self._sub
        if sub is not None:
            with contextlib.suppress(*_LOST):
                await sub.send_command("UNSUBSCRIBE", self._chan + topic)

    async def listen_prefix(self, prefix: str) -> None:
        if self._listener is None:
            raise BrokerError("broker not started")
        if prefix in self._prefixes:
            return
        await self._call_plain("SADD", self._prefix_set, prefix)
        self._prefixes = (*self._prefixes, prefix)
        try:
            await self._subscribe(b"PSUBSCRIBE", (self._chan + _glob_escape(prefix) + "*").encode())
        except BaseException:
            self._prefixes = tuple(p for p in self._prefixes if p != prefix)
            raise

    async def _call_plain(self, *command: Any) -> Any:
        pool = self._pool
        if pool is None:
            raise BrokerError("broker not started")
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (*_LOST, RedisError) as exc:
            self._counters["errors"] += 1
            raise BrokerError(f"Redis at {redact_url(self.redis_url)} unavailable: {exc}") from exc
        try:
            self._counters["round_trips"] += 1
            await conn.send_command(*command)
            return await conn.read_response()
        except (*_LOST, RedisError) as exc:
            self._counters["errors"] += 1
            await conn.disconnect()
            raise BrokerError(f"Redis at {redact_url(self.redis_url)}: {exc}") from exc
        finally:
            await pool.release(conn)

    async def _subscribe(self, command: bytes, channel: bytes) -> None:
        """Send ``command`` for ``channel`` and wait for its confirmation (on this
        connection or, if it drops meanwhile, on the next one)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, deque()).append(fut)
        sub = self._sub
        if sub is not None:
            with contextlib.suppress(*_LOST):  # the reader reconnects and subscribes again
                await sub.send_command(command, channel)
        try:
            async with asyncio.timeout(self._connect_timeout()):
                await asyncio.shield(fut)
        except TimeoutError:
            waiters = self._pending.get(channel)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
            raise BrokerError(
                f"Redis at {redact_url(self.redis_url)}: {command.decode()} not confirmed"
            ) from None

    # -- the pub/sub reader ----------------------------------------------------------

    async def _read_forever(self) -> None:
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            # anything but a cancellation: a reader that stopped would deliver nothing again
            retry=retry_if_exception_type(Exception),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._session()

    def _before_sleep(self, state: Any) -> None:
        self._counters["errors"] += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None and not isinstance(exc, (*_LOST, RedisError)):
            logger.error("Redis pub/sub reader failed", exc_info=exc)
        logger.warning(
            "Redis pub/sub at %s lost (%s): reconnecting (attempt %d)",
            redact_url(self.redis_url),
            exc,
            state.attempt_number,
        )

    async def _session(self) -> None:
        """One pub/sub connection's life: connect, subscribe to everything listened,
        re-deliver after a reconnect, then read until the connection fails."""
        assert self._pool is not None
        pool = self._pool
        # no health check: it would read this connection's messages itself
        conn = pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0})
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            channels = [self._alive.encode()] + [
                (self._chan + t).encode() for t in sorted(self._listened)
            ]
            patterns = [(self._chan + _glob_escape(p) + "*").encode() for p in self._prefixes]
            await conn.send_command(b"SUBSCRIBE", *channels)
            if patterns:
                await conn.send_command(b"PSUBSCRIBE", *patterns)
            waiting = set(channels) | set(patterns)
            resubscribed = set(self._pending)  # all their waiters: this subscribe answers
            reconnected = self._connects > 0
            self._connects += 1
            if reconnected:
                self._counters["reconnects"] += 1
            self._sub = conn
            if self._pinger is None or self._pinger.done():
                self._pinger = asyncio.get_running_loop().create_task(self._ping())
            timeout = self._health * 3
            redelivered = False
            while True:
                # push_request: under RESP3 (redis-py 8's default) messages are pushes
                message = await conn.read_response(timeout=timeout, push_request=True)
                if message is None:
                    raise RedisTimeoutError(f"nothing received for {timeout} s (pings unanswered)")
                if not isinstance(message, list) or not message:
                    continue  # a PING's answer
                kind = message[0]
                if kind == b"message":
                    self._on_message(message[1], message[2])
                elif kind == b"pmessage":
                    self._on_message(message[2], message[3])
                elif kind in (b"subscribe", b"psubscribe"):
                    channel = message[1]
                    waiters = self._pending.get(channel)
                    if waiters:
                        if channel in resubscribed:
                            resubscribed.discard(channel)
                            while waiters:
                                _resolve(waiters.popleft())
                        else:
                            _resolve(waiters.popleft())
                        if not waiters:
                            del self._pending[channel]
                    waiting.discard(channel)
                    if not waiting and not redelivered:
                        redelivered = True
                        if self._up is not None:
                            self._up.set()
                        if reconnected:
                            if self._prefixes:  # lost if the server lost its data
                                with contextlib.suppress(BrokerError):
                                    await self._call_plain(
                                        "SADD", self._prefix_set, *self._prefixes
                                    )
                            await self._redeliver()
        except BaseException:
            self._sub = None
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise

    async def _ping(self) -> None:
        """Keep the pub/sub connection proven alive: a PING every ``health_interval``
        (its answer resets the reader's timeout, 3 intervals)."""
        while True:
            await asyncio.sleep(self._health)
            sub = self._sub
            if sub is not None:
                with contextlib.suppress(*_LOST):
                    await sub.send_command(b"PING")

    async def _redeliver(self) -> None:
        """After a reconnect: the latest publication of every listened topic, once more
        (the hub notices what it missed and reads it from history); one request per 500
        topics."""
        topics = sorted(set(self._listened) | {t for t in self._delivered if self.listens(t)})
        for start in range(0, len(topics), 500):
            chunk = topics[start : start + 500]
            keys = [key for t in chunk for key in (self._meta + t, self._stream + t)]
            try:
                latest = await self._read("latest", keys, [])
            except BrokerError as exc:
                logger.warning("latest publications not re-read after a reconnect: %s", exc)
                return
            for topic, item in zip(chunk, latest, strict=True):
                if item:
                    epoch, entries = item
                    for entry in entries:
                        self._deliver(self._entry(topic, entry, _decode(epoch)))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        topic = channel.decode()[len(self._chan) :]
        try:
            seq_raw, at_raw, epoch_raw, tlen_raw, rest = data.split(b" ", 4)
            tlen = int(tlen_raw)
            at = float(at_raw)
            pub = Publication(
                topic,
                int(seq_raw),
                rest[:tlen].decode(),
                rest[tlen:],
                format_timestamp(at),
                at,
                epoch_raw.decode(),
            )
        except (ValueError, UnicodeDecodeError):
            logger.warning("topic %s: unreadable notification dropped: %r", topic, data[:80])
            return
        self._deliver(pub)

    def _deliver(self, pub: Publication) -> None:
        listener = self._listener
        topic = pub.topic
        if listener is None or not (topic in self._listened or topic.startswith(self._prefixes)):
            return
        last = self._delivered.get(topic)
        if last is not None and last[0] == pub.epoch and pub.seq <= last[1]:
            return  # delivered already (a pattern and a channel, or a re-delivery)
        self._delivered[topic] = (pub.epoch, pub.seq)
        known = self._known
        if pub.seq > known.get(topic, 0):
            known[topic] = pub.seq
        try:
            listener(pub)
        except Exception:  # pragma: no cover - the listener must not raise
            logger.exception("broker listener failed on %r", pub)

    # -- housekeeping ----------------------------------------------------------------

    async def trim(self, now: float) -> None:
        max_age = self.limits.max_age
        horizon = repr(now - max_age) if max_age > 0 else ""
        await self._call(
            "trim",
            [self._ages, self._empty, self._prefix_set],
            [
                self._meta,
                self._stream,
                self._chan,
                horizon,
                repr(now),
                self._trim_batch,
                self._index,
            ],
        )
        for seen in (self._delivered, self._known):  # bounded by the listened topics
            for topic in [t for t in seen if t not in self._listened]:
                del seen[topic]

    async def declare_durable(self, prefixes: Iterable[str]) -> None:
        prefixes = list(prefixes)
        if prefixes:
            await self._call_plain("SADD", self._durable, *prefixes)

    async def continue_numbering(self, last_seqs: Mapping[str, int]) -> None:
        keys: list[str] = []
        args: list[Any] = []
        for topic, seq in last_seqs.items():
            keys += (self._meta + topic, self._stream + topic)
            args += (topic, int(seq))
        if keys:
            await self._call("continue", keys, args)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
