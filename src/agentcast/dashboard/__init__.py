"""The live web dashboard served at ``/`` (:class:`~agentcast.dashboard.feature.Dashboard`)."""

from agentcast.dashboard.feature import Dashboard

__all__ = ["Dashboard"]
