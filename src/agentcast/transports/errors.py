"""HTTP error bodies: ``{"detail": {"code", "message", "field"?}}`` with codes from ``codes.py``."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from agentcast.codes import ErrorCode

__all__ = ["http_error"]


def http_error(
    status: int, code: ErrorCode, message: str, field: str | None = None
) -> HTTPException:
    """The exception to raise for an HTTP error answer."""
    detail: dict[str, Any] = {"code": code.value, "message": message}
    if field is not None:
        detail["field"] = field
    return HTTPException(status_code=status, detail=detail)
