"""The HTTP request body bound: ``max_http_body_bytes`` for every route of the app.

A pure ASGI middleware. A request whose ``Content-Length`` exceeds the bound is answered
413 at once, before any of its body is read. A body without a length (chunked) is counted
as the app reads it: the chunk that passes the bound raises a 413 ``HTTPException``
there, so no more than the bound plus one chunk (uvicorn's read size) is ever held. uvicorn
pauses reading a request whose body the app does not read (64 KiB buffered), and after the
answer discards the rest of the body, so an oversized upload costs bandwidth, not memory.
The answer is the API's error shape with code ``payload_too_large``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcast.codes import ErrorCode

__all__ = ["BodyLimit"]


def _detail(max_bytes: int) -> dict[str, Any]:
    return {
        "code": ErrorCode.PAYLOAD_TOO_LARGE.value,
        "message": f"request body larger than {max_bytes} bytes (max_http_body_bytes)",
        "field": "body",
    }


class BodyLimit:
    """Refuse HTTP request bodies over ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0  # the server refuses a malformed length itself
                if length > max_bytes:
                    await _refuse(send, max_bytes)
                    return
                break
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(status_code=413, detail=_detail(max_bytes))
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, max_bytes: int) -> None:
    body = orjson.dumps({"detail": _detail(max_bytes)})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
