"""Per-connection state shared by every transport.

A :class:`Session` is what the hub delivers to: it owns the connection's outbox, the set
of topics it is subscribed to, the commands waiting to run, and the times the keepalive
sweep needs. Its ``writer`` is the transport's side of the connection
(:class:`Writer`); the session itself performs no I/O.

The protocol decisions about one connection are made here, without an event loop, from
times passed in: whether a command runs now, waits behind the running one or is refused
(:meth:`Session.admit`, :meth:`Session.next_command`), and what the keepalive sweep does
(:meth:`Session.keepalive`), and whether its credentials still hold
(:meth:`Session.credentials`: a connection waiting for its first ``auth`` message, a token
that expired). The gateway carries them out.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from agentcast.codes import CloseCode
from agentcast.core.outbox import Outbox

if TYPE_CHECKING:
    from agentcast.core.ratelimit import ConnectionLimits
    from agentcast.policy import Principal

__all__ = ["Admission", "Credentials", "Keepalive", "Session", "Writer"]


class Admission(IntEnum):
    """What :meth:`Session.admit` decided for a command."""

    RUN = 0
    """Nothing is running: run it now."""
    QUEUED = 1
    """Another command is running: it waits, in order (:meth:`Session.next_command`)."""
    REFUSED = 2
    """Too many commands wait already: answer ``rate_limited``."""


class Keepalive(IntEnum):
    """What :meth:`Session.keepalive` decided at one sweep."""

    NOTHING = 0
    PING = 1
    """Send a WebSocket ping (``ping_sent`` was set)."""
    CLOSE_DEAD = 2
    """The last ping went unanswered for ``ping_timeout``: close with 4002."""
    CLOSE_IDLE = 3
    """No subscription, nothing running and no command for ``idle_timeout``: close 4000."""


class Credentials(IntEnum):
    """What :meth:`Session.credentials` decided."""

    VALID = 0
    PENDING = 1
    """Waiting for the first ``auth`` message, within its deadline."""
    CLOSE_AUTH_TIMEOUT = 2
    """No ``auth`` message before ``auth_deadline``: close with 4508."""
    CLOSE_EXPIRED = 3
    """The principal's ``expires_at`` plus the grace period passed: close with 4501."""


class Writer(Protocol):
    """What a transport offers the gateway for one connection."""

    def write_frames(self, frames: list[bytes]) -> None:
        """Send these pre-framed WebSocket frames, in order, with as few writes as possible."""

    def send_ping(self) -> None:
        """Send a WebSocket ping (a no-op where the server underneath pings by itself)."""

    def close(self, code: CloseCode, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``; idempotent."""

    def hold_reading(self, seconds: float) -> None:
        """Read nothing more from the client for ``seconds`` (a rate limit refuses it):
        frames already received wait, in order, and the client's kernel stops it when
        its socket buffers fill (TCP back-pressure)."""


class Session:
    """One client connection, as the hub and the gateway see it."""

    __slots__ = (
        "__weakref__",
        "auth_deadline",
        "closed",
        "id",
        "last_command",
        "last_seen",
        "limits",
        "meta",
        "outbox",
        "paused",
        "pending",
        "ping_sent",
        "principal",
        "running",
        "topics",
        "writer",
    )

    def __init__(
        self,
        id: int,
        principal: Principal,
        writer: Writer,
        outbox: Outbox,
        now: float,
    ) -> None:
        self.id = id
        self.principal = principal
        self.writer = writer
        self.outbox = outbox
        self.topics: set[str] = set()
        self.paused = False
        """True while the transport's write buffer is above its high-water mark."""
        self.closed = False
        self.last_command = now
        """Loop time of the last client text frame (idle timeout)."""
        self.last_seen = now
        """Loop time of the last bytes from the client, pongs included (keepalive)."""
        self.ping_sent = 0.0
        """Loop time of the unanswered keepalive ping, 0.0 when none is outstanding."""
        self.pending: deque[Any] | None = None
        """Commands waiting while an earlier one is still running (ordering per connection)."""
        self.running = False
        self.meta: dict[str, Any] | None = None
        self.limits: ConnectionLimits | None = None
        """The rate-limit buckets this connection draws from (None: no rate limit)."""
        """Free slot for transports and features (e.g. the seeds' per-run endpoints)."""
        self.auth_deadline = 0.0
        """Loop time by which a connection opened without credentials must authenticate
        (its first ``auth`` message); 0.0 once it has (or when it came with credentials)."""

    @property
    def authenticating(self) -> bool:
        """True while the connection waits for its first ``auth`` message: every other
        command is refused."""
        return self.auth_deadline > 0.0

    def authenticated(self, principal: Principal) -> None:
        """The connection proved who it is (first ``auth``) or refreshed its token."""
        self.principal = principal
        self.auth_deadline = 0.0

    def credentials(self, now: float, wall: float, grace: float) -> Credentials:
        """Do the connection's credentials still hold at loop time ``now`` and wall-clock
        time ``wall`` (``time.time()``, the clock of tokens' ``exp``)? ``grace`` is how long
        an expired token is tolerated (time for an ``auth:refresh``)."""
        if self.closed:
            return Credentials.VALID
        if self.auth_deadline:
            return (
                Credentials.CLOSE_AUTH_TIMEOUT if now >= self.auth_deadline else Credentials.PENDING
            )
        expires = self.principal.expires_at
        if expires is not None and wall >= expires + grace:
            return Credentials.CLOSE_EXPIRED
        return Credentials.VALID

    def admit(self, command: Any, max_pending: int) -> Admission:
        """Commands of one connection run one at a time, in arrival order.

        While one is running, up to ``max_pending`` more wait (``command`` is queued);
        beyond that the command is refused. Mark the running one with :attr:`running`.
        """
        if not self.running:
            return Admission.RUN
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        if len(pending) >= max_pending:
            return Admission.REFUSED
        pending.append(command)
        return Admission.QUEUED

    def next_command(self) -> Any | None:
        """The next waiting command (None when none waits or the connection closed)."""
        if self.closed or not self.pending:
            return None
        return self.pending.popleft()

    def keepalive(
        self, now: float, ping_interval: float, ping_timeout: float, idle_timeout: float
    ) -> Keepalive:
        """The sweep's decision for this connection at loop time ``now``."""
        if self.closed:
            return Keepalive.NOTHING
        if self.ping_sent:
            if now - self.ping_sent >= ping_timeout:
                return Keepalive.CLOSE_DEAD
            return Keepalive.NOTHING
        if not self.topics and not self.running and now - self.last_command >= idle_timeout:
            return Keepalive.CLOSE_IDLE
        if now - self.last_seen >= ping_interval:
            self.ping_sent = now
            return Keepalive.PING
        return Keepalive.NOTHING

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.principal.subject!r} topics={len(self.topics)}>"
