"""When to reconnect, and how long to wait: close codes, handshake failures, backoff."""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Generator
from dataclasses import dataclass

from websockets.client import backoff, process_exception
from websockets.exceptions import InvalidStatus

from agentcast.client.errors import HandshakeRefusedError

__all__ = [
    "TERMINAL_CLOSE_CODES",
    "Retry",
    "classify_failure",
    "describe_failure",
    "jittered_backoff",
    "reconnectable",
]

TERMINAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
"""RFC 6455 codes after which reconnecting as is fails again (besides 4500–4999)."""

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Handshake answers that are retried with backoff (anything else but 101 is terminal)."""


def reconnectable(code: int) -> bool:
    """True when a connection closed with ``code`` should be reconnected and resumed.

    Terminal: 4500–4999 and 1002, 1003, 1007, 1008, 1009, 1010 (the client or its
    credentials are at fault). Everything else reconnects: 1001 (server shutting down),
    1006 (lost without a close frame), 1011, 1012, 4000–4499 (idle, slow consumer,
    keepalive), and 1000 too (the server never sends it; a proxy closing an idle
    connection may).
    """
    return not (code in TERMINAL_CLOSE_CODES or 4500 <= code <= 4999)


def classify_failure(exc: Exception) -> Exception | None:
    """``process_exception`` for websockets' reconnecting ``connect``: None to retry.

    A refused handshake (HTTP 401, 403, 404, …) becomes :class:`HandshakeRefusedError`
    (terminal); 429 and 5xx answers are retried; network errors and timeouts are retried
    (websockets' default rules decide the rest).
    """
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return None if status in RETRY_STATUSES else HandshakeRefusedError(status)
    return process_exception(exc)


def jittered_backoff(
    initial_delay: float = 0.5, max_delay: float = 30.0, factor: float = 2.0
) -> Generator[float]:
    """websockets' exponential backoff with every delay jittered.

    websockets' :func:`~websockets.client.backoff` yields a random first delay in
    ``[0, initial_delay)``, then ``initial_delay × factorⁿ`` capped at ``max_delay``; only
    the first is random. Here each delay ``d`` becomes uniform in ``[d/2, d]`` ("equal
    jitter"), so clients disconnected together do not reconnect in lockstep while the
    delays still grow exponentially.
    """
    for delay in backoff(
        initial_delay=initial_delay, min_delay=initial_delay, max_delay=max_delay, factor=factor
    ):
        yield random.uniform(delay / 2, delay)


_ERRNO = re.compile(r"\[Errno (\d+)\]")


@dataclass(frozen=True, slots=True)
class Retry:
    """The client is not connected and tries again in ``delay`` seconds.

    Passed to the client's ``on_retry`` callback before each wait. ``close_code`` is None
    when a connection attempt failed (``error`` is its exception: refused, unresolvable,
    timed out, HTTP 429/5xx answer), else the close code of an open connection that closed
    (``error`` is None). ``reason`` says the same in words, for people: ``"connection
    refused"``, ``"HTTP 503"``, ``"closed with 1012 (service restart)"``.
    """

    reason: str
    delay: float
    error: Exception | None = None
    close_code: int | None = None


def describe_failure(exc: BaseException | None) -> str:
    """Why a connection attempt failed, in a few lowercase words.

    An ``OSError`` with an errno gives the system's message (``"connection refused"``,
    ``"network is unreachable"``; also when every address of the host failed the same way),
    a name lookup failure its resolver message, an HTTP
    answer other than 101 ``"HTTP <status>"``; anything else its ``str()`` (or its type's
    name when that is empty).
    """
    if exc is None:
        return "unknown error"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, socket.gaierror) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        text = os.strerror(exc.errno)
    elif isinstance(exc, OSError) and len(errnos := set(_ERRNO.findall(str(exc)))) == 1:
        text = os.strerror(int(errnos.pop()))  # asyncio's "Multiple exceptions: …", one cause
    elif isinstance(exc, TimeoutError) and not str(exc):
        text = "timed out"
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
