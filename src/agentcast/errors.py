"""agentcast's exception tree: every exception class of the package.

::

    AgentcastError
    ├── ProtocolError            a client frame agentcast cannot act on (carries an ErrorCode)
    │   └── CommandError         a well-formed command that was refused (forbidden, limits)
    │       └── RateLimitedError  refused by a rate limit (carries ``retry_after``)
    ├── ConfigError              invalid settings
    ├── BrokerError              the broker failed; the publish or read was not applied
    │   └── PublishOutcomeUnknownError  the publish may or may not have been applied
    ├── StoreError               the run store failed (agentcast.storage)
    ├── AuthenticationError      an authenticator refuses a request: HTTP 401 (agentcast.policy)
    ├── WorkflowError            a graph that is no DAG or names unknown nodes; also a
    │                            ValueError (agentcast.runs.engine)
    ├── AgentError               an agent failed to answer (carries an ErrorCode)
    │   └── UpstreamError        the OpenAI-compatible LLM server failed
    │       ├── UpstreamUnavailableError  unreachable, refused, 5xx (after retries/fallback),
    │       │                             or gone before answering (not resent)
    │       └── UpstreamTimeoutError      stalled longer than the read timeout
    ├── StreamError              the streaming HTTP client failed (agentcast.chat.eventstream;
    │   │                        agentcast.chat.llm turns these into UpstreamError)
    │   ├── ConnectFailedError   no connection: nothing of the request was written
    │   ├── InvalidRequestError  the request cannot be written (header, method, target)
    │   ├── StalledError         nothing received for ``read_timeout`` seconds
    │   ├── BrokenStreamError    written, but the answer is missing, cut or not valid HTTP
    │   └── NotAnEventStreamError  events of an answer that is not ``text/event-stream``
    └── ClientError              raised by agentcast.client
        ├── ConnectionClosedError  the server closed with a terminal close code
        │   └── HandshakeRefusedError  the handshake was answered with an HTTP error
        ├── HistoryLostError       resume impossible: history no longer reaches back
        ├── CommandFailedError     the server answered a command with an ``error`` frame
        └── ConnectionLostError    the connection dropped before a command's reply came

Private ones, which callers catch as their public base: ``_RetryableError`` (an
UpstreamUnavailableError worth another attempt, agentcast.chat.llm), ``_StreamBrokenError``
(an UpstreamError: a stream cut mid-answer, agentcast.chat.llm), ``_DropError``
(agentcast.testing.openai_server: cut the connection; it never leaves the server).

Library errors are translated at the boundary and chained with ``from``.
"""

from __future__ import annotations

import math
from typing import Any

from agentcast.codes import ErrorCode


class AgentcastError(Exception):
    """Root of every exception agentcast raises on purpose."""


class ProtocolError(AgentcastError):
    """A client frame that cannot be acted upon.

    ``code`` is the stable :class:`~agentcast.codes.ErrorCode` sent to the client,
    ``field`` names the offending field when there is one.
    """

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_data(self) -> dict[str, Any]:
        """The ``data`` object of the error frame or HTTP error body."""
        data: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.field is not None:
            data["field"] = self.field
        return data


class CommandError(ProtocolError):
    """A valid command that the server refused (authorization, limits, availability)."""


class RateLimitedError(CommandError):
    """A command refused by a rate limit: retry after ``retry_after`` seconds (sent in the
    error frame's ``data.retry_after``)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message)
        self.retry_after = retry_after

    def to_data(self) -> dict[str, Any]:
        data = super().to_data()
        # rounded up to the millisecond: never below the real wait, never 0 (a client told
        # 0 would retry at once and be refused again)
        data["retry_after"] = max(0.001, math.ceil(self.retry_after * 1000) / 1000)
        return data


class ConfigError(AgentcastError):
    """Settings that cannot be used; the message says which and why."""


class BrokerError(AgentcastError):
    """The broker failed; the operation was not applied (a publish assigned nothing)."""


class PublishOutcomeUnknownError(BrokerError):
    """A publish was sent but its answer never came (a timeout or a lost connection after
    the request left): the event may or may not have been assigned a seq, and the broker
    cannot tell which. A publisher that must not duplicate reads the topic's history
    before publishing again. For a batch (:meth:`~agentcast.brokers.base.Broker.publish_many`)
    it is all of the batch or none of it.
    """


class AgentError(AgentcastError):
    """An agent could not answer. ``code`` is sent to the client with ``message``."""

    code: ErrorCode = ErrorCode.AGENT_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UpstreamError(AgentError):
    """The OpenAI-compatible upstream answered with an error or a broken stream."""

    code = ErrorCode.UPSTREAM_ERROR


class UpstreamUnavailableError(UpstreamError):
    """The upstream is unreachable, refused the request or answered 5xx/429, after the
    configured retries and fallback models; or the connection was lost after the request
    was sent and before the answer's first token (not retried: the server may have
    received it)."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE


class UpstreamTimeoutError(UpstreamError):
    """The upstream sent nothing for longer than its read timeout."""

    code = ErrorCode.UPSTREAM_TIMEOUT


class ClientError(AgentcastError):
    """Base of the errors raised by :mod:`agentcast.client`."""


class ConnectionClosedError(ClientError):
    """The server closed the connection with a terminal close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


class HistoryLostError(ClientError):
    """Resume is impossible because history no longer reaches back to the requested seq."""

    def __init__(self, topic: str, since: int, first_available: int) -> None:
        super().__init__(
            f"history of {topic!r} starts at seq {first_available}; events after {since} "
            f"up to {first_available - 1} are lost"
        )
        self.topic = topic
        self.since = since
        self.first_available = first_available
