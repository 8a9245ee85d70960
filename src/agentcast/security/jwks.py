"""The issuer's public keys from its JWKS URL, cached, fetched without blocking the loop.

:class:`JwksKeys` keeps the key set (parsed by PyJWT's :class:`jwt.PyJWKSet`) for
``lifetime`` seconds. A token whose ``kid`` the cache does not know triggers one fetch
(the issuer rotated its keys), at most once per ``min_refresh`` seconds whatever the
tokens say (random ``kid`` values cannot make the server hammer the issuer); concurrent
lookups share one fetch. Fetches use httpx's asynchronous client with a deadline of
``timeout`` seconds and read at most 1 MiB. Keys whose ``alg`` is not among the pinned
algorithms, and keys not meant for signatures (``use`` other than ``sig``), are dropped.

PyJWT's own ``PyJWKClient`` fetches with blocking ``urllib`` and refetches on every
unknown ``kid``; this class keeps its key parsing and adds the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import jwt

from agentcast.policy import AuthenticationError

__all__ = ["JwksKeys"]

logger = logging.getLogger("agentcast.security")
_MAX_JWKS_BYTES = 1024 * 1024


class JwksKeys:
    """The signing keys published at ``url`` (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str],
        timeout: float = 5.0,
        lifetime: float = 300.0,
        min_refresh: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = frozenset(algorithms)
        self.timeout = timeout
        self.lifetime = lifetime
        self.min_refresh = min_refresh
        self.fetches = 0
        """How many fetches were made (successful or not)."""
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self._fetched_at = -float("inf")
        self._attempted_at = -float("inf")
        self._fetching: asyncio.Task[None] | None = None

    def cached(self, kid: str | None) -> Any | None:
        """The cached key for ``kid`` (None: the only key, for a token without one) while
        the cache is fresh; None when a fetch is needed first."""
        if self._clock() - self._fetched_at >= self.lifetime:
            return None
        return self._keys.get(kid)

    async def get(self, kid: str | None) -> Any:
        """The key for ``kid``, fetching the set when it is stale or does not know ``kid``
        (within the refresh limits); raises :class:`~agentcast.policy.AuthenticationError`:
        401 for a ``kid`` the issuer does not publish, 503 when the JWKS is unreachable and
        nothing is cached."""
        now = self._clock()
        stale = now - self._fetched_at >= self.lifetime
        if (stale or kid not in self._keys) and now - self._attempted_at >= self.min_refresh:
            await self.refresh()
        elif self._fetching is not None:
            await asyncio.shield(self._fetching)
        if kid in self._keys:
            return self._keys[kid]
        if not self._keys and self._fetched_at == -float("inf"):
            raise AuthenticationError("cannot verify tokens: the JWKS is unavailable", status=503)
        raise AuthenticationError("invalid token: unknown `kid`")

    async def refresh(self) -> None:
        """Fetch the key set now (one fetch at a time; callers share it). A failed fetch
        keeps the keys cached before it."""
        if self._fetching is None:
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        task = self._fetching
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._fetching is task:
                self._fetching = None

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                async with asyncio.timeout(self.timeout):
                    response = await http.get(self.url, headers={"accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > _MAX_JWKS_BYTES:
                raise ValueError("JWKS larger than 1 MiB")
            keys = self._parse(response.json())
        except (httpx.HTTPError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            logger.warning("JWKS %s: fetch failed: %s", self.url, exc or type(exc).__name__)
            return
        self._keys = keys
        self._fetched_at = self._clock()

    def _parse(self, document: Any) -> dict[str | None, Any]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document (no `keys` list)")
        usable = [
            k
            for k in document["keys"]
            if isinstance(k, dict)
            and k.get("use", "sig") == "sig"
            and k.get("alg", next(iter(self.algorithms))) in self.algorithms
        ]
        keys: dict[str | None, Any] = {}
        if usable:
            for jwk in jwt.PyJWKSet.from_dict({"keys": usable}).keys:
                keys[jwk.key_id] = jwk.key
        if len(keys) == 1:
            keys[None] = next(iter(keys.values()))  # a token without `kid`: the only key
        return keys
