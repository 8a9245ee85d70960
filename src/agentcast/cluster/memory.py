"""The in-process cluster state: one node, nothing shared (``memory://``).

It behaves exactly as a gateway without a cluster: the gateway's own per-user count is
the total, the token buckets are the only rate limit, presence is the hub's.
"""

from __future__ import annotations

from agentcast.cluster.base import ClusterState

__all__ = ["LocalState"]


class LocalState(ClusterState):
    """A cluster of one: :meth:`reserve` has nothing to check, no other node is present."""

    distributed = False

    def reserve(self, subject: str, limit: int) -> None:
        return None

    def release(self, subject: str) -> None:
        return None

    def nodes(self) -> int:
        return 1
