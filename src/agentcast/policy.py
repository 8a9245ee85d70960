"""Authentication and authorization hooks.

An :class:`Authenticator` says who a connection or HTTP request is (a :class:`Principal`)
or refuses it; an :class:`Authorizer` says whether a principal may subscribe or publish
to a topic. Both may answer synchronously or return an awaitable. The default,
:class:`OpenPolicy`, is open dev mode: everybody is an anonymous principal allowed
everything (the server says so at start-up and refuses a non-loopback bind without
``--insecure``).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from agentcast.errors import AgentcastError

__all__ = [
    "SCOPES",
    "UNAUTHENTICATED",
    "AuthenticationError",
    "Authenticator",
    "Authorizer",
    "ConnectionRequest",
    "OpenPolicy",
    "Principal",
    "resolve",
]

_anonymous_ids = itertools.count(1)
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


SCOPES = frozenset({"publish", "control", "admin"})
"""The scopes a principal may hold: ``publish`` (events on any topic a client may write),
``control`` (run control: pause, resume, cancel, execute), ``admin`` (everything,
everybody's runs and conversations)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end. ``subject`` is stable across connections of one user.

    ``scopes`` are what the principal may do beyond reading its own (see :data:`SCOPES`;
    ``admin`` implies every scope); ``topics`` are topic patterns (``fnmatch`` style,
    ``workflow:team-42:*``) it may subscribe to beyond its own; ``expires_at`` is the
    wall-clock time (``time.time()``) at which its credentials end, None for never.
    ``claims``: the token's claims the application asked to keep (``jwt_claims``), empty
    otherwise. Principals are immutable and shared: every connection opened with one
    token holds the same object.
    """

    subject: str
    anonymous: bool = False
    claims: Mapping[str, Any] = field(default_factory=lambda: _NO_CLAIMS)
    scopes: frozenset[str] = frozenset()
    topics: tuple[str, ...] = ()
    expires_at: float | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def has_scope(self, scope: str) -> bool:
        """True when the principal holds ``scope`` or ``admin``."""
        return scope in self.scopes or "admin" in self.scopes

    @classmethod
    def new_anonymous(cls) -> Principal:
        """A fresh anonymous principal (one per connection in open dev mode)."""
        return cls(subject=f"anon-{next(_anonymous_ids)}", anonymous=True)


UNAUTHENTICATED = Principal(subject="", anonymous=True)
"""What an authenticator returns for a ``/ws`` handshake that carries no credentials when
the connection may still authenticate with a first ``auth`` message (see
:mod:`agentcast.security`): the gateway opens it as *authenticating* (every other command
refused, closed with 4508 after ``auth_timeout``). Compared by identity; never a valid
principal for an HTTP request or a subscription."""


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """What an authenticator may look at: path, query, headers (lower-case names), peer,
    and whether it is a WebSocket handshake (``kind == "websocket"``) or an HTTP request
    (``"http"``)."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    client: tuple[str, int] | None = None
    kind: str = "websocket"


T = TypeVar("T")


async def resolve(value: T | Awaitable[T]) -> T:
    """A hook's answer, awaited when the hook answered with an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


class AuthenticationError(AgentcastError):
    """Raised by an authenticator (or a handshake check) to refuse a request or a
    WebSocket handshake: it is answered with HTTP ``status`` (401 unless a subclass says
    otherwise, 403 for a refused Origin) and the message."""

    status: int = 401
    reason: str = ""
    """Why, for ``/metrics`` (``origin``); empty: by ``status`` (``unauthorized``,
    ``forbidden``)."""

    def __init__(
        self, message: str = "unauthorized", *, status: int | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if reason:
            self.reason = reason


class Authenticator(Protocol):
    def authenticate(self, request: ConnectionRequest) -> Principal | Awaitable[Principal]:
        """Return the principal or raise :class:`AuthenticationError`."""


class Authorizer(Protocol):
    def can_subscribe(self, principal: Principal, topic: str) -> bool | Awaitable[bool]:
        """May ``principal`` receive the events of ``topic``?"""

    def can_publish(self, principal: Principal, topic: str) -> bool | Awaitable[bool]:
        """May ``principal`` publish events to ``topic``?"""


class OpenPolicy:
    """Open dev mode: every request is a new anonymous principal, allowed everything."""

    open = True

    def authenticate(self, request: ConnectionRequest) -> Principal:
        return Principal.new_anonymous()

    def can_subscribe(self, principal: Principal, topic: str) -> bool:
        return True

    def can_publish(self, principal: Principal, topic: str) -> bool:
        return True
