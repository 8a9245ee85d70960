"""The async Python client of wire protocol v1.

::

    from agentcast.client import connect

    async with connect("http://127.0.0.1:8000", token=...) as client:
        async for event in client.subscribe("workflow:123", since=0):
            print(event.seq, event.type, event.data)

One WebSocket carries every subscription; a reader demultiplexes the frames into one
bounded buffer per subscription, so a slow consumer of one topic holds up no other.

When the connection drops (network error, server restart, slow-consumer or keepalive
close) the client reconnects with jittered exponential backoff (websockets' reconnecting
``connect``) and resubscribes each topic with the last seq it received and that seq's
epoch: every event arrives once, in order, with no gap. When the server can no longer
provide the missing events, the subscription says so: it raises
:class:`~agentcast.errors.HistoryLostError`, or yields a :class:`HistoryLost` marker in
``on_history_lost="reset"`` mode. Terminal close codes (4500–4999, 1002, 1003, 1007–1010)
and refused handshakes raise :class:`~agentcast.errors.ConnectionClosedError`. The
``on_retry`` and ``on_connect`` callbacks of :func:`connect` report each wait for a
(re)connection (:class:`Retry`: why, and for how long) and each connection opened.

``CommandFailed`` and ``HandshakeRefused`` are deprecated names of
:class:`CommandFailedError` and :class:`HandshakeRefusedError` (a ``DeprecationWarning``
on use; to be removed in 0.2).
"""

import warnings
from typing import TYPE_CHECKING, Any

from agentcast.client.connection import Client, connect, ws_url_of
from agentcast.client.errors import CommandFailedError, ConnectionLostError, HandshakeRefusedError
from agentcast.client.events import Event, HistoryLost, Snapshot
from agentcast.client.retry import Retry
from agentcast.client.subscription import Subscription
from agentcast.errors import ClientError, ConnectionClosedError, HistoryLostError

__all__ = [
    "Client",
    "ClientError",
    "CommandFailedError",
    "ConnectionClosedError",
    "ConnectionLostError",
    "Event",
    "HandshakeRefusedError",
    "HistoryLost",
    "HistoryLostError",
    "Retry",
    "Snapshot",
    "Subscription",
    "connect",
    "ws_url_of",
]

_DEPRECATED = {"CommandFailed": "CommandFailedError", "HandshakeRefused": "HandshakeRefusedError"}

if TYPE_CHECKING:  # the deprecated names, typed; at run time __getattr__ warns
    CommandFailed = CommandFailedError
    HandshakeRefused = HandshakeRefusedError
else:

    def __getattr__(name: str) -> Any:
        """The deprecated names, with a ``DeprecationWarning``."""
        new = _DEPRECATED.get(name)
        if new is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        warnings.warn(
            f"agentcast.client.{name} is deprecated, use agentcast.client.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
