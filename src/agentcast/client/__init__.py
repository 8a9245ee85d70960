"""The async Python client of wire protocol v1.

::

    from agentcast.client import connect

    async with connect("http://127.0.0.1:8000", token=...) as client:
        async for event in client.subscribe("workflow:123", since=0):
            print(event.seq, event.type, event.data)

One WebSocket carries every subscription. When the connection drops (network, server
restart, slow-consumer close) the client reconnects with jittered exponential backoff
(websockets' reconnecting ``connect``) and resubscribes each topic with the last seq and
epoch it delivered: every event arrives once, in order, with no gap — or, when the server
can no longer provide the missing events, the subscription says so
(:class:`~agentcast.errors.HistoryLostError`, or a :class:`HistoryLost` item in ``reset``
mode). Terminal close codes (4500–4999, 1002, 1007, 1008, 1009) and refused handshakes
raise :class:`~agentcast.errors.ConnectionClosedError`.
"""

from agentcast.client.connection import Client, Event, HistoryLost, Subscription, connect

__all__ = ["Client", "Event", "HistoryLost", "Subscription", "connect"]
