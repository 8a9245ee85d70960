"""How features plug into a gateway.

A feature is any object with a ``name`` and an ``install(gateway)`` method
(:class:`Feature`). :class:`~agentcast.gateway.Gateway` calls ``install`` once, in the
order the features were given, and the feature adds what it brings through the gateway's
extension points (litestar's ``on_app_init``, Centrifuge's node hooks):

* commands: ``gateway.add_command(Model, "name", handler=…)`` (a per-gateway table);
* event checks: ``gateway.add_validator(check)`` (raise ``ProtocolError`` to refuse);
* state for late joiners: ``gateway.add_snapshot_provider(prefixes, provider)``;
* older history than the broker keeps: ``gateway.add_history_source(prefixes, source)``;
* topics only the server writes (``gateway.server_prefixes``), subscription guards per
  prefix (``gateway.subscribe_guards``), observers of every publication;
* HTTP routes (``gateway.add_router(router)``; ``create_app`` includes them) and
  WebSocket endpoints served with the gateway's protocol (``gateway.add_socket_endpoint``);
* lifecycle: ``add_startup``, ``add_background``, ``add_shutdown``.

The gateway imports no feature; ``agentcast.app.default_features`` is where the CLI and
``create_app`` pick the default set. A feature looks another up with
``gateway.feature(Kind)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agentcast.core.session import Session
    from agentcast.gateway import Gateway

__all__ = ["Feature", "GatewayFeature", "SocketEndpoint"]


@runtime_checkable
class Feature(Protocol):
    """Something that installs itself into a gateway."""

    name: str
    """Unique per gateway (a second feature of the same name is refused)."""

    def install(self, gateway: Gateway) -> None:
        """Register commands, hooks, routes and lifecycle tasks on ``gateway``.

        Called once, from ``Gateway.__init__`` (no event loop is needed or running). Must
        do no I/O: start-up work goes into ``gateway.add_startup``.
        """


class GatewayFeature:
    """A base for features that keep the gateway they were installed into.

    Subclasses set ``name`` and extend :meth:`install` (calling it first);
    :attr:`gateway` raises ``RuntimeError`` before the feature is installed.
    """

    name = ""
    _gateway: Gateway | None = None

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError(f"the {self.name} feature is not installed")
        return self._gateway

    def install(self, gateway: Gateway) -> None:
        if self._gateway is not None and self._gateway is not gateway:
            raise RuntimeError(f"the {self.name} feature is installed in another gateway")
        self._gateway = gateway


@dataclass(frozen=True, slots=True)
class SocketEndpoint:
    """A WebSocket path besides ``/ws`` that speaks the gateway's protocol.

    ``path`` has exactly one parameter, Starlette style (``/api/ws/workflow/{workflow_id}``).
    A handshake whose parameter ``accepts`` refuses is answered 404 before the upgrade.
    After the upgrade ``open(session, value, query)`` sets the connection up (typically an
    implicit subscription through ``gateway.run_command``).
    """

    path: str
    open: Callable[[Session, str, Mapping[str, str]], None]
    accepts: Callable[[str], bool] = field(default=lambda value: True)

    @property
    def param(self) -> str:
        """The name of the path parameter."""
        found = re.search(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.path)
        if found is None:
            raise ValueError(f"socket endpoint path {self.path!r} has no parameter")
        return found[1]

    def match(self, path: str) -> str | None:
        """The parameter's value when ``path`` is this endpoint's (accepted or not)."""
        head, _, tail = self.path.partition("{" + self.param + "}")
        if not (path.startswith(head) and path.endswith(tail)):
            return None
        value = path[len(head) : len(path) - len(tail)]
        if not value or "/" in value:
            return None
        return value
