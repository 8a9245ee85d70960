"""HTTP plumbing shared by every router (the gateway's and the features'): who sent a
request, whether an authorizer's answer allows it, and the one shape of error answers,
``{"detail": {"code", "message", "field"?}}`` with codes from :mod:`agentcast.codes`."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from agentcast.codes import ErrorCode
from agentcast.gateway import Gateway
from agentcast.policy import (
    UNAUTHENTICATED,
    AuthenticationError,
    ConnectionRequest,
    Principal,
    resolve,
)

__all__ = ["admin_of", "allowed", "http_error", "principal_of", "request_of"]


def request_of(conn: HTTPConnection) -> ConnectionRequest:
    """The authenticator's view of an HTTP request or a WebSocket handshake."""
    client = conn.client
    return ConnectionRequest(
        path=conn.url.path,
        query=dict(conn.query_params),
        headers={k.lower(): v for k, v in conn.headers.items()},
        client=(client.host, client.port) if client else None,
        kind="websocket" if conn.scope["type"] == "websocket" else "http",
    )


async def principal_of(gateway: Gateway, request: Request, *, count: bool = True) -> Principal:
    """Who sent ``request``; raises HTTP 401 when the authenticator refuses it (counted
    as an authentication refusal for ``/metrics`` unless ``count`` is False: a question
    such as ``/healthz``'s "is it an admin?" refuses nothing)."""
    try:
        result = gateway.authenticate(request_of(request))
        principal = await result if inspect.isawaitable(result) else result
        if principal is UNAUTHENTICATED:  # first-message authentication is for sockets
            raise AuthenticationError("no credentials")
        return principal
    except AuthenticationError as exc:
        if count:
            gateway.auth_refused(exc)
        code = ErrorCode.UNAUTHORIZED if exc.status == 401 else ErrorCode.FORBIDDEN
        raise http_error(exc.status, code, str(exc) or "unauthorized") from exc


async def admin_of(gateway: Gateway, request: Request) -> Principal:
    """The caller, who must hold ``admin`` once authentication is on (anyone in open dev
    mode); raises HTTP 401 (not authenticated) or 403 ``forbidden``."""
    principal = await principal_of(gateway, request)
    if not gateway.open_mode and not principal.admin:
        raise http_error(403, ErrorCode.FORBIDDEN, "needs the admin scope")
    return principal


async def allowed(value: Any) -> bool:
    """An authorizer's answer, awaited when it is awaitable."""
    return bool(await resolve(value))


def http_error(
    status: int, code: ErrorCode, message: str, field: str | None = None
) -> HTTPException:
    """The exception to raise for an HTTP error answer."""
    detail: dict[str, Any] = {"code": code.value, "message": message}
    if field is not None:
        detail["field"] = field
    return HTTPException(status_code=status, detail=detail)
