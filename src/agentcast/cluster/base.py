"""The cluster-state contract: what the nodes of one deployment share besides events.

A :class:`ClusterState` holds four things that must hold across every process (node)
pointed at one broker, not per process:

* **Connections per user.** :meth:`ClusterState.reserve` asks for one more connection of
  a user under ``max_connections_per_user`` counted on every live node, and counts it when
  granted (atomically: two handshakes on two nodes at once cannot both take the last
  slot). :meth:`ClusterState.release` gives one back. A node's counts live under a key
  that expires ``node_ttl`` seconds after its last heartbeat, so a node that dies (SIGKILL,
  power loss) stops counting at most ``node_ttl`` later.
* **Rate limits.** Every node keeps its synchronous token buckets (no round trip per
  command); each ``sync_interval`` a node tells the others what each user drew from its
  user buckets, and charges its own buckets with what the others report
  (:meth:`LocalView.take_drawn`, :meth:`LocalView.charge`).
* **The LLM queue per upstream** (:meth:`ClusterState.queue`): at most the upstream's
  ``concurrency`` generations at once, waiters served round-robin per user, positions
  (:mod:`agentcast.cluster.queue` states the contract). A dead node's slots and waiters
  vanish at most ``node_ttl`` (plus one poll) after its last heartbeat.
* **Presence per topic.** Which users (and how many connections, and how many anonymous
  ones) are subscribed to a topic on the other live nodes (:meth:`ClusterState.presence`);
  this node's own part comes from its hub. A node publishes its part when subscriptions
  change (:meth:`ClusterState.topic_changed`), never per event.
* **Shared keys** (:attr:`ClusterState.shared`, :mod:`agentcast.cluster.shared`): small
  values with an expiry, read by every node (run leases renewed through one node,
  single-use tickets redeemed on another).

Besides, :attr:`ClusterState.work` is the registry of work owned by one node (chat
generations): acquire, release, control requests to the owner, a dead node's work sealed
by one survivor; its contract is :mod:`agentcast.cluster.work`.

Anonymous principals (open dev mode: each connection its own user) are never counted
across nodes: their subjects are per process.

The in-process implementation (``memory://``, :class:`~agentcast.cluster.memory.LocalState`)
is one node: ``reserve`` returns None (nothing beyond the gateway's own count to check)
and presence has no other node. ``redis://`` is :mod:`agentcast.cluster.redis`.

A cluster state never raises into the connection path: when its backend is unreachable
``reserve`` grants (the per-node limit still holds: fail open, logged, counted in
``errors``), and the next successful heartbeat rewrites this node's part in full.
"""

from __future__ import annotations

import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agentcast.cluster.queue import FairQueue, UpstreamQueue
from agentcast.cluster.shared import MemoryKeys, SharedKeys
from agentcast.cluster.work import MemoryWork, OwnedWork

__all__ = ["ClusterState", "LocalView", "TopicPresence", "new_node_id"]


def new_node_id() -> str:
    """``hostname:pid:random``: unique per process (and per restart of one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(slots=True)
class TopicPresence:
    """Who is subscribed to a topic: connections per user, anonymous connections, and
    how many nodes have at least one subscriber."""

    users: dict[str, int] = field(default_factory=dict)
    anonymous: int = 0
    nodes: int = 0

    @property
    def connections(self) -> int:
        return sum(self.users.values()) + self.anonymous

    def add(self, users: Mapping[str, int], anonymous: int) -> None:
        """Add one node's part (a node with no subscriber adds nothing)."""
        if not users and not anonymous:
            return
        mine = self.users
        for user, count in users.items():
            mine[user] = mine.get(user, 0) + count
        self.anonymous += anonymous
        self.nodes += 1


class LocalView(Protocol):
    """What a cluster state reads from, and charges to, its own node (the gateway)."""

    def local_presence(self, topic: str) -> tuple[dict[str, int], int]:
        """This node's subscribers of ``topic``: connections per authenticated user, and
        the number of anonymous ones."""
        ...

    def local_topics(self) -> Iterable[str]:
        """Every topic with at least one subscriber on this node."""
        ...

    def take_drawn(self) -> dict[str, dict[str, float]]:
        """Tokens drawn from user buckets since the last call, per user and kind (reset)."""
        ...

    def charge(self, subject: str, kind: str, tokens: float) -> None:
        """Take ``tokens`` of ``kind`` from ``subject``'s bucket here (drawn on another
        node)."""
        ...


class ClusterState(ABC):
    """One node's view of the cluster: see the module docstring for the contract."""

    node: str
    """This node's id (``hostname:pid:random``), shown on ``/healthz``."""
    distributed: bool = False
    """False for the in-process state: the gateway skips every call it can."""

    def __init__(self, node: str | None = None) -> None:
        self.node = node or new_node_id()
        self.errors = 0
        """Backend failures so far (each one logged; the connection path failed open)."""
        self.work: OwnedWork = MemoryWork(self.node)
        """Work owned by one node (chat generations): :mod:`agentcast.cluster.work`."""
        self.shared: SharedKeys = MemoryKeys()
        """Small values with an expiry every node reads (run leases, tickets):
        :mod:`agentcast.cluster.shared`. In process here; in Redis for a distributed state."""

    async def start(self, view: LocalView) -> None:  # noqa: B027 - optional hook
        """Start heartbeats and syncing for the node ``view``; raises
        :class:`~agentcast.errors.BrokerError` when the backend is unreachable."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop, and withdraw this node's counts and presence at once (a clean stop
        frees its users' slots without waiting for the TTL)."""

    @abstractmethod
    def reserve(self, subject: str, limit: int) -> Awaitable[int | None] | None:
        """Count one more connection of ``subject`` here, if the cluster-wide total stays
        ≤ ``limit``. None: nothing to check (granted, nothing counted: the in-process
        state). Else an awaitable of None (granted and counted: pair it with
        :meth:`release`) or of the connections the user holds on all nodes (refused,
        nothing counted). Call only for non-anonymous subjects."""

    @abstractmethod
    def release(self, subject: str) -> None:
        """One connection granted by :meth:`reserve` ended (synchronous: propagated by
        the next sync)."""

    def queue(self, key: str, limit: int | None) -> UpstreamQueue:
        """The fair queue of the upstream ``key`` with at most ``limit`` generations at
        once (None: unlimited). This default is the in-process :class:`FairQueue` (a new
        one per call: the caller keeps it per key); a distributed state returns one queue
        of the whole cluster per key."""
        return FairQueue(limit)

    def topic_changed(self, topic: str) -> None:  # noqa: B027 - optional hook
        """The subscribers of ``topic`` on this node changed (subscribe, unsubscribe,
        close): its presence is published by the next sync."""

    async def presence(self, topic: str) -> TopicPresence:
        """The subscribers of ``topic`` on the *other* live nodes (the caller adds its
        own). Raises :class:`~agentcast.errors.BrokerError` when the backend fails."""
        return TopicPresence()

    def nodes(self) -> int | None:
        """Live nodes seen at the last heartbeat (None: not known yet)."""
        return None

    def stats(self) -> dict[str, float]:
        """Counters for ``/healthz``: ``nodes`` (live, at the last heartbeat), ``errors``
        (backend failures), and for a distributed state ``users`` (users with connections
        counted here) and ``tokens_charged`` (rate tokens other nodes reported)."""
        nodes = self.nodes()
        return {"nodes": -1 if nodes is None else nodes, "errors": self.errors}
