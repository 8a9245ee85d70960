"""Cluster state: connection counts per user, rate-limit consumption and presence shared
by every node on one broker (``base.py`` states the contract).

Chosen by URL scheme like the broker (:func:`create_cluster_state`): ``memory://`` is one
process (today's behaviour), ``redis://`` shares them through Redis (the ``[redis]``
extra). The ``cluster_url`` setting defaults to ``broker_url``.
"""

from __future__ import annotations

from agentcast.cluster.base import ClusterState, LocalView, TopicPresence, new_node_id
from agentcast.cluster.memory import LocalState
from agentcast.errors import ConfigError

__all__ = [
    "ClusterState",
    "LocalState",
    "LocalView",
    "TopicPresence",
    "create_cluster_state",
    "new_node_id",
]


def create_cluster_state(
    url: str,
    *,
    heartbeat: float = 1.0,
    ttl: float = 5.0,
    sync_interval: float = 0.25,
    node: str | None = None,
) -> ClusterState:
    """The cluster state for ``url``; raises :class:`ConfigError` for an unknown scheme
    or a missing ``redis`` package."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme == "memory":
        return LocalState(node)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from agentcast.cluster.redis import RedisClusterState
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigError(
                f"{url!r} needs the redis package: pip install 'agentcast[redis]'"
            ) from exc
        return RedisClusterState(
            url, heartbeat=heartbeat, ttl=ttl, sync_interval=sync_interval, node=node
        )
    raise ConfigError(
        f"unknown cluster URL scheme {scheme!r} in {url!r} (known: memory://, redis://)"
    )
