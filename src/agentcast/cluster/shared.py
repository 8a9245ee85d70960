"""Shared keys: small values with an expiry that every node of a cluster reads and writes.

A :class:`SharedKeys` is the part of the cluster state (:attr:`ClusterState.shared
<agentcast.cluster.base.ClusterState.shared>`) that features use for facts that must
hold across nodes but are not events: a run's lease renewed through one node
(:mod:`agentcast.runs.leases`), a WebSocket ticket issued by one node and redeemed on
another (:mod:`agentcast.security.tickets`). The contract
(``tests/contract/test_shared_keys.py`` runs it on memory, one Redis node and two nodes on
one Redis):

* :meth:`SharedKeys.put` stores ``value`` under ``key`` for ``ttl`` seconds, replacing
  what was there; once it returned, every node reads it.
* :meth:`SharedKeys.take` returns the value and deletes it in one atomic step: of any
  number of nodes taking one key at once, exactly one gets the value (single use).
* :meth:`SharedKeys.read` returns, per key, the value and the seconds it has left, or
  None (absent or expired), in one round trip for all the keys.
* A key expires ``ttl`` after its last :meth:`~SharedKeys.put`, measured by the backend's
  clock (Redis's own for :class:`RedisKeys`: clock skew between hosts does not matter).
* Failures raise :class:`~agentcast.errors.BrokerError` (the caller decides whether to
  fail open or closed).

:class:`MemoryKeys` is one process (``memory://``); :class:`RedisKeys` keeps each key as
a Redis string ``{prefix}:k:<key>`` with ``SET PX`` (``take`` is ``GETDEL``, ``read`` one
Lua script returning values and ``PTTL`` s).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from agentcast.errors import BrokerError

__all__ = ["MemoryKeys", "RedisKeys", "SharedKeys"]


class SharedKeys(ABC):
    """Values with an expiry shared by the nodes of a cluster (see the module docstring)."""

    distributed = False
    """True when other processes share the keys (the features then use them)."""

    @abstractmethod
    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (> 0), replacing any value."""

    @abstractmethod
    async def take(self, key: str) -> bytes | None:
        """The value of ``key``, deleted in the same atomic step; None when absent or
        expired."""

    @abstractmethod
    async def read(self, keys: Sequence[str]) -> list[tuple[bytes, float] | None]:
        """Per key, its value and the seconds it has left, or None; one request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (the cluster state's stop calls it)."""


class MemoryKeys(SharedKeys):
    """Shared keys of one process (``memory://``), expired by ``clock`` (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[bytes, float]] = {}
        self._puts = 0

    def __len__(self) -> int:
        return len(self._values)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._puts += 1
        if self._puts % 1024 == 0:  # forget the expired ones now and then: bounded memory
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._values[key] = (value, now + ttl)

    async def take(self, key: str) -> bytes | None:
        entry = self._values.pop(key, None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def read(self, keys: Sequence[str]) -> list[tuple[bytes, float] | None]:
        now = self._clock()
        out: list[tuple[bytes, float] | None] = []
        for key in keys:
            entry = self._values.get(key)
            out.append(None if entry is None or entry[1] <= now else (entry[0], entry[1] - now))
        return out


_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', key)
  else
    out[#out + 1] = false
    out[#out + 1] = -2
  end
end
return out
"""


class RedisKeys(SharedKeys):
    """Shared keys in Redis under ``{base}:k:`` (``base`` is the cluster state's hash
    tag, ``{prefix}``), through a small connection pool of their own (a ticket redeemed
    at a handshake does not wait behind the cluster state's heartbeat)."""

    distributed = True

    def __init__(self, url: str, base: str, *, timeout: float = 1.0) -> None:
        self.url = url
        self.base = base
        self.timeout = timeout
        self._client: Any = None
        self._read_script: Any = None

    def _key(self, key: str) -> str:
        return f"{self.base}:k:{key}"

    def _redis(self) -> Any:
        if self._client is None:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._client = Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                max_connections=16,
            )
            self._read_script = self._client.register_script(_READ)
        return self._client

    async def _do(self, what: str, call: Callable[[Any], Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await call(self._redis())
        except (RedisError, OSError) as exc:
            raise BrokerError(f"shared keys: Redis {what} failed: {exc}") from exc

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        ms = max(1, round(ttl * 1000))
        await self._do("SET", lambda r: r.set(self._key(key), value, px=ms))

    async def take(self, key: str) -> bytes | None:
        value = await self._do("GETDEL", lambda r: r.getdel(self._key(key)))
        return value if isinstance(value, bytes) else None

    async def read(self, keys: Sequence[str]) -> list[tuple[bytes, float] | None]:
        if not keys:
            return []
        names = [self._key(k) for k in keys]
        self._redis()
        flat = await self._do("read", lambda r: self._read_script(keys=names))
        out: list[tuple[bytes, float] | None] = []
        for i in range(0, len(flat), 2):
            value, pttl = flat[i], int(flat[i + 1])
            out.append((value, pttl / 1000) if isinstance(value, bytes) and pttl > 0 else None)
        return out

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
