"""When to reconnect, and how long to wait: close codes, handshake failures, backoff."""

from __future__ import annotations

import random
from collections.abc import Generator

from websockets.client import backoff, process_exception
from websockets.exceptions import InvalidStatus

from agentcast.client.errors import HandshakeRefused

__all__ = ["TERMINAL_CLOSE_CODES", "classify_failure", "jittered_backoff", "reconnectable"]

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

    A refused handshake (HTTP 401, 403, 404, …) becomes :class:`HandshakeRefused`
    (terminal); 429 and 5xx answers are retried; network errors and timeouts are retried
    (websockets' default rules decide the rest).
    """
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return None if status in RETRY_STATUSES else HandshakeRefused(status)
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
