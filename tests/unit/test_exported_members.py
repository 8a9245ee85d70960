"""The curated public API of the top-level package (changing it is a release note)."""

from __future__ import annotations

import agentcast


def test_exported_members() -> None:
    assert sorted(agentcast.__all__) == sorted(
        [
            "AgentcastError",
            "AuthenticationError",
            "BrokerError",
            "ClientError",
            "CloseCode",
            "CommandError",
            "ConfigError",
            "ConnectionClosedError",
            "ConnectionRequest",
            "ErrorCode",
            "Feature",
            "Gateway",
            "HistoryLostError",
            "OpenPolicy",
            "Principal",
            "ProtocolError",
            "Publication",
            "Settings",
            "SocketEndpoint",
            "__version__",
            "create_gateway",
            "default_features",
            "load_settings",
        ]
    )
    for name in agentcast.__all__:
        assert getattr(agentcast, name) is not None
