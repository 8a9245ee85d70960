"""The fair queue in front of an upstream (kept here for its importers): the
implementations live in :mod:`agentcast.cluster.queue`, since the cluster state chooses
one (:meth:`agentcast.cluster.base.ClusterState.queue`): in-process :class:`FairQueue`,
or across nodes on Redis."""

from __future__ import annotations

from agentcast.cluster.queue import FairQueue, UpstreamQueue

__all__ = ["FairQueue", "UpstreamQueue"]
