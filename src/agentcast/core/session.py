"""Per-connection state shared by every transport.

A :class:`Session` is what the hub delivers to: it owns the connection's outbox, the set
of topics it is subscribed to, the commands waiting to run, and the times the keepalive
sweep needs. Its ``writer`` is the transport's side of the connection
(:class:`Writer`); the session itself performs no I/O.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from agentcast.codes import CloseCode
from agentcast.core.outbox import Outbox

if TYPE_CHECKING:
    from agentcast.policy import Principal

__all__ = ["Session", "Writer"]


class Writer(Protocol):
    """What a transport offers the gateway for one connection."""

    def write_frames(self, frames: list[bytes]) -> None:
        """Send these pre-framed WebSocket frames, in order, with as few writes as possible."""

    def send_ping(self) -> None:
        """Send a WebSocket ping (a no-op where the server underneath pings by itself)."""

    def close(self, code: CloseCode, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``; idempotent."""


class Session:
    """One client connection, as the hub and the gateway see it."""

    __slots__ = (
        "__weakref__",
        "closed",
        "id",
        "last_command",
        "last_seen",
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
        """Free slot for transports and features (e.g. the seeds' per-run endpoints)."""

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.principal.subject!r} topics={len(self.topics)}>"
