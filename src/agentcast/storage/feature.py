"""The storage feature: starts and stops the store the other features share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentcast.errors import ConfigError
from agentcast.storage.base import RunStore, StoreError

if TYPE_CHECKING:
    from agentcast.gateway import Gateway

__all__ = ["Storage"]


class Storage:
    """Opens ``store`` (migrations included) when the gateway starts, closes it last.

    Install it before the features that use the store: start-up hooks run in
    installation order and shutdown hooks in reverse, so the store is open for their
    whole life. A store that cannot be opened stops the start with :class:`ConfigError`.
    """

    name = "storage"

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def install(self, gateway: Gateway) -> None:
        gateway.add_startup(self._start)
        gateway.add_readiness_check("store", self.store.ping)
        gateway.add_shutdown(self.store.stop)

    async def _start(self) -> None:
        try:
            await self.store.start()
        except StoreError as exc:
            raise ConfigError(str(exc)) from exc
