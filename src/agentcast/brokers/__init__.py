"""Brokers: how publications reach every process, with sequence numbers and history.

``base.py`` states the contract; ``memory.py`` is the embedded default. A broker is
chosen by URL scheme with :func:`create_broker`: ``memory://`` (the default, one
process) or ``redis://host:port/db?prefix=agentcast`` (``redis.py``, several processes
and hosts; needs the ``[redis]`` extra).
"""

from __future__ import annotations

from agentcast.brokers.base import PRODUCER_TTL, Broker, Listener
from agentcast.brokers.memory import MemoryBackend, MemoryBroker
from agentcast.core.history import HistoryLimits
from agentcast.errors import ConfigError
from agentcast.security.secrets import redact_url

__all__ = ["Broker", "Listener", "MemoryBroker", "check_broker", "create_broker"]


def create_broker(url: str, limits: HistoryLimits, *, producer_ttl: float = PRODUCER_TTL) -> Broker:
    """The broker for ``url``; raises :class:`ConfigError` for an unknown scheme.

    ``producer_ttl``: how long idempotent producers are remembered (contract item 9)."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme == "memory":
        return MemoryBroker(backend=MemoryBackend(limits, producer_ttl=producer_ttl))
    if scheme in ("redis", "rediss", "unix"):
        try:
            from agentcast.brokers.redis import RedisBroker
        except ImportError as exc:  # pragma: no cover - the [redis] extra is not installed
            raise ConfigError(
                f"the Redis broker needs redis-py: pip install 'agentcast[redis]' ({exc})"
            ) from None
        return RedisBroker(url, limits, producer_ttl=producer_ttl)
    raise ConfigError(
        f"unknown broker URL scheme {scheme!r} in {redact_url(url)!r} "
        "(known: memory://, redis://, rediss://)"
    )


async def check_broker(url: str, limits: HistoryLimits) -> None:
    """Connect to the broker at ``url`` and disconnect: raises
    :class:`~agentcast.errors.BrokerError` (URL redacted) when it is unreachable, so that
    ``agentcast serve`` can say so in one line before it starts."""
    broker = create_broker(url, limits)
    await broker.start(lambda pub: None)
    await broker.stop()
