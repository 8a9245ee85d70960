"""The security feature: JWT authentication wired into a gateway, tickets, first-message
authentication and token refresh; and the application's own policy (``--auth``).

:class:`Security` installs

* the authenticator the settings configure (:class:`~agentcast.security.JwtAuthenticator`)
  when the gateway has none of its own;
* the ``auth`` and ``auth:refresh`` commands (:class:`~agentcast.security.protocol.AuthCommand`);
* ``POST /api/tickets`` (tickets in memory, or in the cluster state's shared keys when
  it is distributed: issued by one node, redeemed once on any);
* redaction of tokens and tickets in uvicorn's logs.

:func:`application_policy` loads ``settings.auth`` (``package.module:factory``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from agentcast.codes import CloseCode, ErrorCode
from agentcast.core.envelope import format_timestamp
from agentcast.errors import BrokerError, CommandError, ConfigError
from agentcast.plugin import GatewayFeature
from agentcast.policy import UNAUTHENTICATED, AuthenticationError, ConnectionRequest, resolve
from agentcast.security.authenticator import JwtAuthenticator, TokenAuthenticator
from agentcast.security.credentials import install_redaction
from agentcast.security.jwt import JwtVerifier
from agentcast.security.protocol import AuthCommand, TicketOut
from agentcast.security.tickets import ClusterTicketStore, Tickets, TicketStore
from agentcast.web import http_error, principal_of

if TYPE_CHECKING:
    from agentcast.core.session import Session
    from agentcast.gateway import Gateway
    from agentcast.settings import Settings

__all__ = ["Security", "application_policy"]

_MAX_REASON_BYTES = 123  # RFC 6455: a close reason fits in a control frame


class Security(GatewayFeature):
    """See the module docstring. ``authenticator``: installed unless the gateway was given
    one; ``tickets``: the store of ``POST /api/tickets`` (shared with the authenticator)."""

    name = "security"

    def __init__(
        self, authenticator: TokenAuthenticator | None = None, tickets: Tickets | None = None
    ) -> None:
        self.authenticator = authenticator
        self.tickets = tickets if tickets is not None else getattr(authenticator, "tickets", None)
        self._settings_tickets = False
        """The tickets are :meth:`from_settings`' in-memory store: on a distributed
        cluster state, :meth:`install` replaces it by the cluster's."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        """JWT authentication when ``settings`` configure a key, else just the commands
        (answering that authentication is not configured). Raises :class:`ConfigError`."""
        if not settings.jwt_configured:
            return cls()
        tickets = TicketStore(settings.ticket_ttl)
        paths = ("/ws",) if settings.auth_timeout > 0 else ()
        verifier = JwtVerifier.from_settings(settings)
        made = cls(JwtAuthenticator(verifier, tickets, first_message_paths=paths), tickets)
        made._settings_tickets = True
        return made

    def install(self, gateway: Gateway) -> None:
        super().install(gateway)
        shared = gateway.cluster.shared
        if self._settings_tickets and shared.distributed and self.tickets is not None:
            # across nodes: a ticket issued here opens a WebSocket on any node, once
            self.tickets = ClusterTicketStore(shared, self.tickets.ttl)
            if self.authenticator is not None:
                self.authenticator.tickets = self.tickets
        if self.authenticator is not None and gateway.open_mode:
            gateway.authenticator = self.authenticator
        gateway.add_command(AuthCommand, "auth", "auth:refresh", handler=self._auth)
        gateway.unauthenticated_commands.add("auth")
        gateway.add_router(self._router())
        verifier = getattr(self.authenticator, "verifier", None)
        if verifier is not None and verifier.jwks is not None:
            gateway.add_startup(self._prefetch_jwks)
        install_redaction()

    async def _prefetch_jwks(self) -> None:
        verifier = getattr(self.authenticator, "verifier", None)
        if verifier is not None and verifier.jwks is not None:
            await verifier.jwks.refresh()  # a failure is logged; tokens wait for the next

    async def _auth(self, session: Session, command: AuthCommand) -> None:
        """``auth`` (first message) and ``auth:refresh``: verify the token with the
        gateway's authenticator (as a Bearer header), then make it the connection's."""
        gateway = self.gateway
        first = session.authenticating
        request = ConnectionRequest(
            path="/ws", query={}, headers={"authorization": f"Bearer {command.token}"}
        )
        try:
            if gateway.open_mode:
                raise AuthenticationError("authentication is not configured on this server")
            principal = await resolve(gateway.authenticator.authenticate(request))
            if principal is UNAUTHENTICATED:  # pragma: no cover - a token was given
                raise AuthenticationError("no credentials")
        except AuthenticationError as exc:
            gateway.auth_refused(exc)
            if first:
                code = CloseCode.FORBIDDEN if exc.status == 403 else CloseCode.UNAUTHORIZED
                reason = str(exc).encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
                gateway.close(session, code, reason)
                return
            raise CommandError(ErrorCode.UNAUTHORIZED, f"{command.type}: {exc}") from None
        if session.closed:
            return
        if not first and principal.subject != session.principal.subject:
            raise CommandError(
                ErrorCode.FORBIDDEN,
                f"{command.type}: the token is for another subject than this connection's",
            )
        if not await resolve(gateway.set_principal(session, principal)):
            return
        if not first:  # a refreshed token may grant less: drop what it no longer allows
            await gateway.recheck_subscriptions(session)
        expires = principal.expires_at
        gateway.reply(
            session,
            "authenticated",
            {
                "subject": principal.subject,
                "scopes": sorted(principal.scopes),
                "expires_at": format_timestamp(expires) if expires is not None else None,
            },
            id=command.id,
        )

    def _router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/api/tickets", response_model=TicketOut, tags=["auth"])
        async def ticket(request: Request) -> TicketOut:
            """A single-use ticket that opens one WebSocket (``/ws?ticket=…``) within
            ``ticket_ttl`` seconds, for the caller of this request (authenticated with
            its token): no long-lived token in a browser's URL."""
            principal = await principal_of(self.gateway, request)
            tickets = self.tickets
            if tickets is None or self.gateway.authenticator is not self.authenticator:
                raise http_error(
                    404, ErrorCode.NOT_FOUND, "tickets need the JWT authenticator (jwt_* settings)"
                )
            try:
                ticket = await resolve(tickets.issue(principal))
            except BrokerError as exc:
                raise http_error(
                    503, ErrorCode.UNAVAILABLE, f"tickets unavailable: {exc}"
                ) from None
            return TicketOut(ticket=ticket, expires_in=tickets.ttl)

        return router


def application_policy(settings: Settings) -> dict[str, Any]:
    """The gateway options ``settings.auth`` (``package.module:factory``) gives:
    ``factory(settings)`` returns an object with ``authenticate`` (the authenticator)
    and/or ``can_subscribe`` and ``can_publish`` (the authorizer), and optionally
    ``jwt_claims``, the token claims its methods read from ``principal.claims`` (added to
    the ``jwt_claims`` setting: returned under that key, :func:`agentcast.app.create_gateway`
    applies it). Empty without ``settings.auth``; raises :class:`ConfigError` when it
    cannot be loaded."""
    spec = settings.auth
    if not spec:
        return {}
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"auth {spec!r}: expected package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"auth {spec!r}: cannot load it: {exc}") from None
    policy = factory(settings)
    options: dict[str, Any] = {}
    if callable(getattr(policy, "authenticate", None)):
        options["authenticator"] = policy
    if callable(getattr(policy, "can_subscribe", None)) and callable(
        getattr(policy, "can_publish", None)
    ):
        options["authorizer"] = policy
    if not options:
        raise ConfigError(
            f"auth {spec!r}: the factory's object has neither `authenticate` nor "
            "`can_subscribe` and `can_publish`"
        )
    wanted = getattr(policy, "jwt_claims", None)
    if wanted:
        if isinstance(wanted, str) or not all(isinstance(c, str) for c in wanted):
            raise ConfigError(f"auth {spec!r}: `jwt_claims` must be a collection of claim names")
        options["jwt_claims"] = sorted(wanted)
    return options
