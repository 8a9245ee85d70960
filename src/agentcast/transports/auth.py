"""Authentication and authorization of HTTP requests, shared by the HTTP routers."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import Request
from starlette.requests import HTTPConnection

from agentcast.codes import ErrorCode
from agentcast.gateway import Gateway
from agentcast.policy import AuthenticationError, ConnectionRequest, Principal, resolve
from agentcast.transports.errors import http_error

__all__ = ["allowed", "principal_of", "request_of"]


def request_of(conn: HTTPConnection) -> ConnectionRequest:
    """The authenticator's view of an HTTP request or a WebSocket handshake."""
    client = conn.client
    return ConnectionRequest(
        path=conn.url.path,
        query=dict(conn.query_params),
        headers={k.lower(): v for k, v in conn.headers.items()},
        client=(client.host, client.port) if client else None,
    )


async def principal_of(gateway: Gateway, request: Request) -> Principal:
    """Who sent ``request``; raises HTTP 401 when the authenticator refuses it."""
    try:
        result = gateway.authenticator.authenticate(request_of(request))
        return await result if inspect.isawaitable(result) else result
    except AuthenticationError as exc:
        raise http_error(401, ErrorCode.UNAUTHORIZED, str(exc) or "unauthorized") from exc


async def allowed(value: Any) -> bool:
    """An authorizer's answer, awaited when it is awaitable."""
    return bool(await resolve(value))
