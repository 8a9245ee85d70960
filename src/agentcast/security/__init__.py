"""Security: what the gateway and the HTTP app install, one piece per module.

* :mod:`~agentcast.security.origin`: the Origin allow-list (a handshake check);
  :mod:`~agentcast.security.tls`, :mod:`~agentcast.security.secrets`: TLS files, secret settings;
* :class:`JwtVerifier` checks tokens (PyJWT) with keys and rules fixed by configuration;
* :class:`TokenAuthenticator` / :class:`JwtAuthenticator` find a request's credentials
  (``Authorization: Bearer``, a ``bearer.<token>`` subprotocol, ``?token=``, ``?ticket=``);
* :class:`TicketStore` issues single-use WebSocket tickets (in process;
  :class:`ClusterTicketStore` across the nodes of a Redis cluster state);
* :class:`Security` is the feature wiring them into a gateway, with the ``auth`` and
  ``auth:refresh`` commands and ``POST /api/tickets``.

See ``docs/security.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "JwtAuthenticator": "authenticator",
    "TokenAuthenticator": "authenticator",
    "SUBPROTOCOL": "credentials",
    "select_subprotocol": "credentials",
    "token_of": "credentials",
    "Security": "feature",
    "application_policy": "feature",
    "JwksKeys": "jwks",
    "JwtVerifier": "jwt",
    "mint_token": "jwt",
    "principal_of_claims": "jwt",
    "ClusterTicketStore": "tickets",
    "TicketStore": "tickets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The exports, imported on first use: ``gateway.py`` imports ``security.origin`` and
    ``security.feature`` imports the gateway, so this package imports nothing eagerly."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
