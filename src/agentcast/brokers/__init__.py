"""Brokers: how publications reach every process, with sequence numbers and history.

``base.py`` states the contract; ``memory.py`` is the embedded default. A broker is
chosen by URL scheme with :func:`create_broker` (``memory://``; ``redis://`` comes with
the ``[redis]`` extra).
"""

from __future__ import annotations

from agentcast.brokers.base import Broker, Listener
from agentcast.brokers.memory import MemoryBroker
from agentcast.core.history import HistoryLimits
from agentcast.errors import ConfigError

__all__ = ["Broker", "Listener", "MemoryBroker", "create_broker"]


def create_broker(url: str, limits: HistoryLimits) -> Broker:
    """The broker for ``url``; raises :class:`ConfigError` for an unknown scheme."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme == "memory":
        return MemoryBroker(limits)
    raise ConfigError(f"unknown broker URL scheme {scheme!r} in {url!r} (known: memory://)")
