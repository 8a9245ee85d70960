"""Single-use WebSocket tickets: ``POST /api/tickets`` trades a token for one.

A ticket opens one WebSocket (``/ws?ticket=…``) within ``ticket_ttl`` seconds (60 by
default) and never again, so that no long-lived token sits in a browser's URL. The store
is in memory, per process: a ticket works on the node that issued it (a shared store
arrives with the Redis broker).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from agentcast.policy import AuthenticationError, Principal

__all__ = ["TicketStore"]


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
