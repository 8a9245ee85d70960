"""One port for HTTP and WebSocket: uvicorn with the native ``ws`` protocol class.

:func:`build_server` returns a ``uvicorn.Server`` whose HTTP requests go to the FastAPI
app and whose WebSocket upgrades on ``/ws`` go to the native protocol; other WebSocket
paths reach the app's ASGI routes; with ``tls_certfile`` and ``tls_keyfile`` set, both
run over TLS (https, wss). uvicorn handles SIGINT/SIGTERM: it stops accepting,
asks every connection to shut down (ours close with 1001 ``server shutting down``),
waits up to ``shutdown_timeout`` for them, then runs the app's lifespan shutdown.

:func:`build_asgi_server` serves the same app with the ASGI adapter on uvicorn's own
WebSocket protocol instead (embedding; slower), as a :class:`DrainingServer`: uvicorn
closes its WebSockets before the app's lifespan ends, so this server drains the gateway
first (the stopping producers' last events, then 1001), as the native protocol does.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from agentcast.gateway import Gateway
from agentcast.logs import uvicorn_log_config
from agentcast.transports import asgi, uvicorn_protocols
from agentcast.transports.http import create_app
from agentcast.transports.native import protocol_class

__all__ = ["DrainingServer", "build_asgi_server", "build_server"]

logger = logging.getLogger("agentcast")


def _config(gateway: Gateway, app: FastAPI | None, ws: Any) -> uvicorn.Config:
    """uvicorn's configuration from the gateway's settings; ``ws`` is its WebSocket
    protocol (agentcast's native class, or uvicorn's sans-I/O one for the ASGI adapter)."""
    s = gateway.settings
    log_config = uvicorn_log_config(s)  # None: uvicorn's own text format
    logging_options: dict[str, Any] = {"log_config": log_config} if log_config else {}
    return uvicorn.Config(
        app if app is not None else create_app(gateway),
        host=s.host,
        port=s.port,
        http=uvicorn_protocols.http_protocol_class(s.header_timeout),  # slowloris deadline
        ws=ws,
        ws_max_size=s.max_message_bytes,
        ws_ping_interval=s.ping_interval,
        ws_ping_timeout=s.ping_timeout,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level=s.log_level,
        timeout_graceful_shutdown=max(1, round(s.shutdown_timeout)),
        backlog=4096,
        access_log=s.access_log or s.log_level in ("debug", "trace"),
        ssl_certfile=s.tls_certfile or None,  # https and wss (agentcast.security.tls)
        ssl_keyfile=s.tls_keyfile or None,
        **logging_options,
    )


def build_server(gateway: Gateway, app: FastAPI | None = None) -> uvicorn.Server:
    """A uvicorn server for ``gateway`` (``app`` defaults to :func:`create_app`)."""
    return uvicorn.Server(_config(gateway, app, protocol_class(gateway)))


class DrainingServer(uvicorn.Server):
    """uvicorn serving ``gateway`` through the ASGI adapter, with the gateway's drain.

    On shutdown (SIGTERM, SIGINT, ``should_exit``) it stops accepting connections, then
    :func:`agentcast.transports.asgi.drain`: producers stop, their last events are sent,
    every WebSocket is closed with 1001; only then does uvicorn's own shutdown run (which
    would close them with 1012 without those events) and the app's lifespan.
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connection while draining (uvicorn closes them again)
        await asgi.drain(self.gateway)
        await super().shutdown(sockets)


def build_asgi_server(gateway: Gateway, app: FastAPI | None = None) -> DrainingServer:
    """A uvicorn server for ``gateway`` whose WebSockets go through the ASGI adapter
    (uvicorn's ``websockets-sansio`` protocol, completing the closing handshake of the
    connections it fails: :mod:`agentcast.transports.uvicorn_protocols`), draining on shutdown."""
    ws = uvicorn_protocols.protocol_class(gateway.settings.close_timeout)
    return DrainingServer(_config(gateway, app, ws), gateway)
