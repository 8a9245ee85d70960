"""Seed 002's configuration names, mapped onto agentcast's flat settings.

Seed 002 (the QA agent's WebSocket plan) configures its server with a ``websocket:``
section in YAML and ``WEBSOCKET_*`` environment variables. ``agentcast serve --config``
accepts that section as written (beside agentcast's own flat keys) and
:func:`environment` reads those variables, below ``AGENTCAST_*`` ones:
flags > ``AGENTCAST_*`` > ``WEBSOCKET_*`` > the YAML file > defaults.

========================================================  ==========================
seed 002                                                  agentcast setting
========================================================  ==========================
``websocket.enabled``, ``WEBSOCKET_ENABLED``              accepted, not used: it is the
                                                          QA agent's switch to start a
                                                          server; ``serve`` is one
``websocket.server.host``, ``WEBSOCKET_HOST``             ``host``
``websocket.server.port``, ``WEBSOCKET_PORT``             ``port``
``websocket.server.max_connections``                      ``max_connections``
``websocket.security.authentication.enabled``             ``auth_required``
``websocket.security.authentication.token_expiry``        ``token_expiry``
``WEBSOCKET_SECRET_KEY``                                  ``jwt_secret``
``websocket.security.cors.origins`` (``cors.enabled``)    ``origins`` (``[]`` when
                                                          ``enabled`` is false)
``websocket.security.rate_limiting.max_requests_per_minute``  ``rate_limit_chat_per_minute``
(``rate_limiting.enabled``)                               (0, no limit, when ``enabled``
                                                          is false; 60 when true alone)
========================================================  ==========================

Any other key under ``websocket:`` is refused with its dotted path and the keys known
there, like an unknown flat key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentcast.errors import ConfigError

__all__ = ["ENVIRONMENT", "SECTION", "environment", "flatten"]

SECTION = "websocket"
ENVIRONMENT = {
    "WEBSOCKET_HOST": "host",
    "WEBSOCKET_PORT": "port",
    "WEBSOCKET_SECRET_KEY": "jwt_secret",
    "WEBSOCKET_ENABLED": None,  # accepted, not used (module docstring)
}
"""Seed 002's environment variables and the setting each sets (None: none)."""

_DEFAULT_RATE = 60
"""Seed 002's max_requests_per_minute, when rate limiting is enabled without a figure."""


def _section(data: Mapping[str, Any], path: str, known: tuple[str, ...]) -> dict[str, Any]:
    """``data[path's last part]`` as a mapping whose keys are all in ``known``."""
    key = path.rsplit(".", 1)[-1]
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid settings: {path}: must be a mapping (seed 002's layout)")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ConfigError(
            f"invalid settings: unknown key {path}.{unknown[0]} (seed 002's {path} "
            f"knows {', '.join(known)})"
        )
    return dict(value)


def _flag(section: Mapping[str, Any], path: str) -> bool:
    """``section["enabled"]`` (true when absent), which must be a boolean."""
    value = section.get("enabled", True)
    if not isinstance(value, bool):
        raise ConfigError(f"invalid settings: {path}.enabled: must be true or false")
    return value


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a YAML document: its flat keys as they are, its ``websocket:``
    section mapped (module docstring); a setting given both ways raises ConfigError."""
    if SECTION not in data:
        return dict(data)
    flat = {k: v for k, v in data.items() if k != SECTION}
    ws = _section(data, SECTION, ("enabled", "server", "security"))
    mapped: dict[str, Any] = {}
    server = _section(ws, f"{SECTION}.server", ("host", "port", "max_connections"))
    mapped.update(server)
    security = _section(ws, f"{SECTION}.security", ("authentication", "cors", "rate_limiting"))
    auth = _section(security, f"{SECTION}.security.authentication", ("enabled", "token_expiry"))
    if "enabled" in auth:
        mapped["auth_required"] = _flag(auth, f"{SECTION}.security.authentication")
    if "token_expiry" in auth:
        mapped["token_expiry"] = auth["token_expiry"]
    cors = _section(security, f"{SECTION}.security.cors", ("enabled", "origins"))
    if cors:
        enabled = _flag(cors, f"{SECTION}.security.cors")
        mapped["origins"] = cors.get("origins", []) if enabled else []
    rate = _section(
        security,
        f"{SECTION}.security.rate_limiting",
        ("enabled", "max_requests_per_minute"),
    )
    if rate:
        enabled = _flag(rate, f"{SECTION}.security.rate_limiting")
        mapped["rate_limit_chat_per_minute"] = (
            rate.get("max_requests_per_minute", _DEFAULT_RATE) if enabled else 0
        )
    twice = sorted(set(mapped) & set(flat))
    if twice:
        raise ConfigError(
            f"invalid settings: {twice[0]} is set twice, as {twice[0]} and in seed 002's "
            f"{SECTION}: section"
        )
    return {**flat, **mapped}


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings seed 002's ``WEBSOCKET_*`` variables of ``environ`` give."""
    return {
        name: environ[var]
        for var, name in ENVIRONMENT.items()
        if name is not None and var in environ
    }
