"""Single-use WebSocket tickets: ``POST /api/tickets`` trades a token for one.

A ticket opens one WebSocket (``/ws?ticket=…``) within ``ticket_ttl`` seconds (60 by
default) and never again, so that no long-lived token sits in a browser's URL.

:class:`TicketStore` keeps them in memory: one process (``memory://``).
:class:`ClusterTicketStore` keeps them in the cluster state's shared keys
(:mod:`agentcast.cluster.shared`; on Redis a ``SET PX`` per ticket issued and a
``GETDEL`` per ticket redeemed): a ticket issued by any node opens a WebSocket on any
node, once across the cluster (two nodes redeeming one ticket at once: exactly one
succeeds). The security feature picks the cluster store when the gateway's cluster state
is distributed (``cluster_url`` on Redis).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Protocol

import orjson

from agentcast.cluster.shared import SharedKeys
from agentcast.errors import BrokerError
from agentcast.policy import AuthenticationError, Principal

__all__ = ["ClusterTicketStore", "TicketStore", "Tickets"]


class Tickets(Protocol):
    """What the ``POST /api/tickets`` route and the authenticator need of a ticket store."""

    ttl: float

    def issue(self, principal: Principal) -> str | Awaitable[str]:
        """A new ticket for ``principal``, valid for :attr:`ttl` seconds, once."""
        ...

    def redeem(self, ticket: str) -> Principal | Awaitable[Principal]:
        """The principal of ``ticket``, used up; raise :class:`AuthenticationError`."""
        ...


class TicketStore:
    """Tickets issued and not yet used, each with its principal and expiry.

    At most ``max_tickets`` are held: issuing one more forgets the oldest (which then
    fails like an expired one). Expired tickets are forgotten as new ones are issued.
    """

    def __init__(
        self,
        ttl: float = 60.0,
        *,
        max_tickets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_tickets = max_tickets
        self._clock = clock
        self._tickets: dict[str, tuple[Principal, float]] = {}  # in order of expiry

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, principal: Principal) -> str:
        """A new ticket for ``principal``, valid for :attr:`ttl` seconds, once."""
        now = self._clock()
        tickets = self._tickets
        for ticket, (_, expires) in list(tickets.items()):
            if expires > now and len(tickets) < self.max_tickets:
                break
            del tickets[ticket]
        ticket = secrets.token_urlsafe(32)
        tickets[ticket] = (principal, now + self.ttl)
        return ticket

    def redeem(self, ticket: str) -> Principal:
        """The principal of ``ticket``, which is used up; raises
        :class:`~agentcast.policy.AuthenticationError` (401) for an unknown, used or
        expired ticket."""
        entry = self._tickets.pop(ticket, None)
        if entry is None:
            raise AuthenticationError("invalid ticket: unknown or already used")
        principal, expires = entry
        if self._clock() >= expires:
            raise AuthenticationError("invalid ticket: expired")
        return principal


class ClusterTicketStore:
    """Tickets in the cluster's shared keys: issued on any node, redeemed once on any.

    Each ticket is stored under ``ticket:<sha256 of the ticket>`` (the key does not
    reveal the ticket) with the principal as JSON, expiring after :attr:`ttl`.
    :meth:`redeem` takes it (atomic get-and-delete), so reuse on any node is refused.
    When the backend is unreachable, issuing raises
    :class:`~agentcast.errors.BrokerError` and redeeming refuses (HTTP 503): a ticket
    that cannot be checked never opens a connection.
    """

    def __init__(self, keys: SharedKeys, ttl: float = 60.0) -> None:
        self.keys = keys
        self.ttl = ttl

    @staticmethod
    def _key(ticket: str) -> str:
        return "ticket:" + hashlib.sha256(ticket.encode()).hexdigest()

    async def issue(self, principal: Principal) -> str:
        ticket = secrets.token_urlsafe(32)
        await self.keys.put(self._key(ticket), _encode(principal), self.ttl)
        return ticket

    async def redeem(self, ticket: str) -> Principal:
        try:
            raw = await self.keys.take(self._key(ticket))
        except BrokerError as exc:
            raise AuthenticationError(f"tickets unavailable: {exc}", status=503) from None
        if raw is None:
            raise AuthenticationError("invalid ticket: unknown, already used or expired")
        try:
            return _decode(raw)
        except (ValueError, TypeError, KeyError):
            raise AuthenticationError("invalid ticket: unreadable") from None


def _encode(principal: Principal) -> bytes:
    return orjson.dumps(
        {
            "subject": principal.subject,
            "anonymous": principal.anonymous,
            "claims": dict(principal.claims),
            "scopes": sorted(principal.scopes),
            "topics": list(principal.topics),
            "expires_at": principal.expires_at,
        }
    )


def _decode(raw: bytes) -> Principal:
    data: dict[str, Any] = orjson.loads(raw)
    expires = data.get("expires_at")
    return Principal(
        subject=str(data["subject"]),
        anonymous=bool(data.get("anonymous", False)),
        claims=MappingProxyType(dict(data.get("claims") or {})),
        scopes=frozenset(str(s) for s in data.get("scopes", ())),
        topics=tuple(str(t) for t in data.get("topics", ())),
        expires_at=None if expires is None else float(expires),
    )
