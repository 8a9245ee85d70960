"""agentcast: a real-time WebSocket gateway for AI-agent and workflow platforms."""

from agentcast.__about__ import __version__
from agentcast.app import create_gateway, default_features
from agentcast.codes import CloseCode, ErrorCode
from agentcast.core.envelope import Publication
from agentcast.errors import (
    AgentcastError,
    BrokerError,
    ClientError,
    CommandError,
    ConfigError,
    ConnectionClosedError,
    HistoryLostError,
    ProtocolError,
)
from agentcast.gateway import Gateway
from agentcast.plugin import Feature, SocketEndpoint
from agentcast.policy import AuthenticationError, ConnectionRequest, OpenPolicy, Principal
from agentcast.settings import Settings, load_settings

__all__ = [
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
