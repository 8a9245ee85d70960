"""Where a client's credentials come from, and keeping them out of logs.

A token travels in one of (first match wins):

1. ``Authorization: Bearer <token>`` (servers, CLIs, the Python client);
2. the ``Sec-WebSocket-Protocol`` header, for browsers (which cannot set headers): offer
   the subprotocols ``agentcast.v1`` and ``bearer.<token>``; the server answers
   ``agentcast.v1`` (:data:`SUBPROTOCOL`), never the token;
3. a ``token`` query parameter (accepted, never logged: see :class:`RedactingFilter`).

A ``ticket`` query parameter (from ``POST /api/tickets``) opens one WebSocket; a ``/ws``
handshake with none of these may authenticate with a first ``auth`` message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from agentcast.policy import ConnectionRequest

__all__ = [
    "SUBPROTOCOL",
    "SUBPROTOCOL_TOKEN_PREFIX",
    "RedactingFilter",
    "install_redaction",
    "redact_text",
    "select_subprotocol",
    "token_of",
]

SUBPROTOCOL = "agentcast.v1"
"""The subprotocol of wire protocol v1: the one a server answers a handshake with."""
SUBPROTOCOL_TOKEN_PREFIX = "bearer."
"""An offered subprotocol ``bearer.<token>`` carries the token (a JWT is made of token
characters: letters, digits, ``-``, ``_`` and ``.``)."""
_MAX_TOKEN_CHARS = 8192


def token_of(request: ConnectionRequest) -> str | None:
    """The token ``request`` carries (header, subprotocol, query), or None."""
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return _bounded(value.strip())
    for offered in request.headers.get("sec-websocket-protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(SUBPROTOCOL_TOKEN_PREFIX) and len(offered) > 7:
            return _bounded(offered[len(SUBPROTOCOL_TOKEN_PREFIX) :])
    token = request.query.get("token")
    return _bounded(token) if token else None


def _bounded(token: str) -> str:
    # an oversized value is still "a token": the verifier refuses it (401), cheaply
    return token if len(token) <= _MAX_TOKEN_CHARS else token[:_MAX_TOKEN_CHARS]


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer a handshake with: :data:`SUBPROTOCOL` when the client
    offered it, else none (a client that offered only ``bearer.<token>`` then fails its
    handshake: browsers require the answer to be one they offered, and it is never the
    token)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


_SECRET_PARAMS = re.compile(r"(?i)\b(token|ticket|access_token)=[^&\s\"']+")
_SECRET_PROTOCOLS = re.compile(r"bearer\.[A-Za-z0-9_\-.~+/=]+")
_SECRET_HEADERS = re.compile(r"(?i)\b(bearer) +[A-Za-z0-9_\-.~+/=]{8,}")
_SECRET_FIELDS = re.compile(r'(?i)("(?:token|ticket|access_token)"\s*:\s*")[^"]*')


def redact_text(text: str) -> str:
    """``text`` with ``token=…``/``ticket=…`` query values, ``bearer.…`` subprotocols,
    ``Bearer …`` header values and ``"token": "…"`` JSON fields (an ``auth`` message in
    the WebSocket protocol's debug log, even cut short) replaced by ``[redacted]``."""
    if "=" not in text and "earer" not in text and '"' not in text:
        return text
    text = _SECRET_PARAMS.sub(r"\1=[redacted]", text)
    text = _SECRET_PROTOCOLS.sub("bearer.[redacted]", text)
    text = _SECRET_FIELDS.sub(r"\1[redacted]", text)
    return _SECRET_HEADERS.sub(r"\1 [redacted]", text)


class RedactingFilter(logging.Filter):
    """Redacts (:func:`redact_text`) a log record's arguments, and its message when the
    secret is in the message itself (uvicorn's access log prints request paths with
    their query). Arguments stay arguments, so a structured formatter still sees them
    (the JSON formatter's ``method``, ``path``, ``status``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact_text(a) if isinstance(a, str) else a for a in args)
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "agentcast.transport.ws", "websockets")
_filter = RedactingFilter()


def install_redaction() -> None:
    """Add :class:`RedactingFilter` to the loggers that print request lines (uvicorn's
    access and error logs, the WebSocket protocol's debug log). Idempotent."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
