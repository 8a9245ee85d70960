"""Authenticators that take a token from wherever a client can put one.

:class:`TokenAuthenticator` finds the credentials of a handshake or HTTP request
(:mod:`agentcast.security.credentials`), redeems tickets, and lets a ``/ws`` handshake
without credentials in as :data:`~agentcast.policy.UNAUTHENTICATED` (it must send an
``auth`` message next); subclasses say how a token is verified. :class:`JwtAuthenticator`
verifies JWTs (:class:`~agentcast.security.jwt.JwtVerifier`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection

from agentcast.policy import UNAUTHENTICATED, AuthenticationError, ConnectionRequest, Principal
from agentcast.security.credentials import token_of
from agentcast.security.jwt import JwtVerifier
from agentcast.security.tickets import Tickets

__all__ = ["JwtAuthenticator", "TokenAuthenticator"]


class TokenAuthenticator:
    """Credentials from the request, verified by :meth:`verify` (override it).

    ``tickets``: the store ``POST /api/tickets`` issues from (a WebSocket handshake with
    ``?ticket=`` is authenticated by it alone). ``first_message_paths``: WebSocket paths
    whose handshakes may come without credentials and authenticate with an ``auth``
    message (empty: such handshakes get HTTP 401).
    """

    def __init__(
        self,
        tickets: Tickets | None = None,
        *,
        first_message_paths: Collection[str] = ("/ws",),
    ) -> None:
        self.tickets = tickets
        self.first_message_paths = frozenset(first_message_paths)

    def verify(self, token: str) -> Principal | Awaitable[Principal]:
        """The principal of ``token``, or raise :class:`AuthenticationError`."""
        raise NotImplementedError

    def authenticate(self, request: ConnectionRequest) -> Principal | Awaitable[Principal]:
        if request.kind == "websocket" and "ticket" in request.query:
            if self.tickets is None:
                raise AuthenticationError("tickets are not enabled here")
            return self.tickets.redeem(request.query["ticket"])
        token = token_of(request)
        if token is None:
            if request.kind == "websocket" and request.path in self.first_message_paths:
                return UNAUTHENTICATED
            raise AuthenticationError(
                "no credentials: send `Authorization: Bearer <token>`, a `bearer.<token>` "
                "subprotocol, a `token` or `ticket` query parameter"
            )
        return self.verify(token)


class JwtAuthenticator(TokenAuthenticator):
    """:class:`TokenAuthenticator` for JSON Web Tokens."""

    def __init__(
        self,
        verifier: JwtVerifier,
        tickets: Tickets | None = None,
        *,
        first_message_paths: Collection[str] = ("/ws",),
    ) -> None:
        super().__init__(tickets, first_message_paths=first_message_paths)
        self.verifier = verifier

    def verify(self, token: str) -> Principal | Awaitable[Principal]:
        return self.verifier.verify(token)
