"""The Origin allow-list: against cross-site WebSocket hijacking and cross-site requests.

A browser puts the page's origin in the ``Origin`` header of every WebSocket handshake
and of every cross-origin HTTP request (and of same-origin ones other than GET and HEAD);
a page cannot forge it. WebSockets are not covered by the browser's same-origin policy,
so without this check any page the user visits could open ``ws://127.0.0.1:8000/ws``
and drive the gateway (and the LLM key behind it).

:meth:`OriginPolicy.allows` lets a request in when

* it carries no ``Origin`` (CLIs, servers, other non-browser clients: they can send any
  header they like, so the check protects browsers' users, not against those clients);
* its ``Origin`` is in the configured list (setting ``origins``);
* its ``Origin`` is the request's own: the same host and port as its ``Host`` header
  (a page served by this server). The scheme is not compared (the server does not know
  whether a TLS proxy sits in front of it); a ``Host`` without a port stands for the
  default port of the Origin's scheme.

Anything else is refused with HTTP 403 (:class:`~agentcast.policy.AuthenticationError`
with ``status=403``), including ``null`` (sandboxed frames, ``file:`` pages) and any value
that is not a serialized origin (``http://localhost:3000.evil.com``,
``http://evil.com#localhost:3000``, paths, user info). Matching is exact after one
normalisation, on both sides: scheme and host lower-cased, the default port of ``http``
and ``https`` (80, 443) dropped, which is how browsers serialize origins. No wildcards,
no suffix or prefix matching.

The check runs in :meth:`agentcast.gateway.Gateway.authenticate` (every WebSocket path of
both transports, seed 003's endpoint, the HTTP routes that authenticate) and, for every
HTTP request of the app, in :class:`OriginMiddleware`. Its cost: one dict lookup per
handshake or request without ``Origin``, a regular expression match with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from agentcast.codes import ErrorCode
from agentcast.policy import AuthenticationError, ConnectionRequest

__all__ = ["OriginMiddleware", "OriginPolicy", "normalize_origin", "parse_origin_setting"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HOST = r"(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)"
_ORIGIN = re.compile(rf"([a-z][a-z0-9+.-]*)://{_HOST}(?::([0-9]{{1,5}}))?", re.I | re.A)
_HOST_HEADER = re.compile(rf"{_HOST}(?::([0-9]{{1,5}}))?", re.I | re.A)


def _split(text: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of a serialized origin, lower-cased, or None."""
    match = _ORIGIN.fullmatch(text)
    if match is None:
        return None
    scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
    number = int(port) if port is not None else _DEFAULT_PORTS.get(scheme)
    if number is not None and not 0 < number <= 65535:
        return None
    return scheme, host, number


def normalize_origin(text: str) -> str | None:
    """``text`` as browsers serialize an origin (``scheme://host[:port]``, lower case, no
    default port), or None when it is not an origin (``null``, a path, a fragment, …)."""
    parts = _split(text)
    return None if parts is None else _serialize(parts)


def _serialize(parts: tuple[str, str, int | None]) -> str:
    scheme, host, port = parts
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origin_setting(text: str) -> str:
    """One entry of the ``origins`` setting, normalised; ValueError saying why it is not
    an origin (wildcards, ``null``, paths are refused, not guessed at)."""
    value = text.strip()
    if "*" in value:
        raise ValueError(f"{text!r}: wildcards are not supported, list each origin")
    if value.lower() == "null":
        raise ValueError("'null' is the origin of sandboxed and file: pages: never allowed")
    normalized = normalize_origin(value)
    if normalized is None:
        path = "/" in value.partition("://")[2]
        hint = " (an origin has no path: write it as scheme://host[:port])" if path else ""
        raise ValueError(f"{text!r} is not an origin scheme://host[:port]{hint}")
    return normalized


class OriginPolicy:
    """Who may connect, by ``Origin`` (module docstring). ``origins``: the allow-list,
    each entry as :func:`parse_origin_setting` accepts it."""

    __slots__ = ("allowed",)

    def __init__(self, origins: Iterable[str] = ()) -> None:
        self.allowed: frozenset[str] = frozenset(parse_origin_setting(o) for o in origins)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """May a request with this ``Origin`` and ``Host`` header value come in?"""
        if origin is None:
            return True
        parts = _split(origin)
        if parts is None:
            return False
        if self.allowed and _serialize(parts) in self.allowed:
            return True
        if host is None:
            return False
        match = _HOST_HEADER.fullmatch(host)
        if match is None:
            return False
        scheme, origin_host, origin_port = parts
        port = int(match.group(2)) if match.group(2) is not None else _DEFAULT_PORTS.get(scheme)
        return match.group(1).lower() == origin_host and port == origin_port

    def check(self, request: ConnectionRequest) -> None:
        """The gateway's handshake check: raise 403 when :meth:`allows` says no."""
        origin = request.headers.get("origin")
        if origin is not None and not self.allows(origin, request.headers.get("host")):
            raise AuthenticationError(_refusal(origin), status=403, reason="origin")


def _refusal(origin: str) -> str:
    shown = origin if len(origin) <= 100 else origin[:100] + "…"
    return f"origin {shown!r} is not allowed (setting origins)"


class OriginMiddleware:
    """Pure ASGI middleware: an HTTP request whose ``Origin`` the policy refuses gets 403
    with the API's error body (``{"detail": {"code": "forbidden", …}}``), whatever its
    method; other requests and other scope types (WebSocket: the gateway checks those)
    pass through unchanged.

    Refusing every method, not only the state-changing ones, keeps pages of other sites
    from making the server act at all: a simple cross-origin POST is sent without a CORS
    preflight (CSRF), and a GET such as ``/api/llm/health`` sends a request upstream.
    Browsers send no ``Origin`` on plain navigations and same-origin GETs, and give their
    own origin otherwise, so same-origin pages and non-browser clients are unaffected.
    """

    def __init__(self, app: Any, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            origin = host = None
            for name, value in scope["headers"]:
                if name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"host":
                    host = value.decode("latin-1")
            if origin is not None and not self.policy.allows(origin, host):
                detail = {"code": ErrorCode.FORBIDDEN.value, "message": _refusal(origin)}
                body = json.dumps({"detail": detail}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
