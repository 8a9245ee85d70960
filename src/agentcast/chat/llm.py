"""An OpenAI-compatible upstream: LM Studio, Ollama, vLLM, llama.cpp, OpenAI.

:class:`OpenAIUpstream` offers what seed 001's LM Studio service offers that a user needs:

* :meth:`~OpenAIUpstream.list_models` (cached 5 minutes), :meth:`~OpenAIUpstream.health`,
  :meth:`~OpenAIUpstream.switch_model`;
* :meth:`~OpenAIUpstream.complete` (non-streaming), :meth:`~OpenAIUpstream.stream` and
  :meth:`~OpenAIUpstream.stream_to` (server-sent events; the text of
  ``choices[0].delta.content``, until ``data: [DONE]`` or a ``finish_reason``);
* retries and fallback models, only where a request cannot be answered twice (below);
* token estimates, truncation to the model's context, overlapping chunks, processing a
  long text chunk by chunk, and :meth:`~OpenAIUpstream.benchmark` (seed 001's
  ``benchmarkModel``).

**Retries.** A completion request may start a paid generation, so one that the server may
have received is never sent again silently. Before the first delta, with exponential
backoff and jitter (tenacity, ``max_retries``), then for each of the configured fallback
models in order, these are retried:

* a connection that could not be made (refused, unresolvable, TLS failure, connect
  timeout): nothing was sent;
* an HTTP 5xx or 429 answer: the server received the request and answered that it failed
  or was refused, so the request is over and a new one duplicates no generation in
  progress. It did reach the server, so each retry and each fallback is logged (warning,
  logger ``agentcast.chat``) with its cause.

Everything else fails at once, without retry nor fallback:

* the connection closed after the request was written, before the answer or before its
  first delta (a stream cut before its first token): the server may be generating, or
  have generated, an answer, so
  :class:`~agentcast.errors.UpstreamUnavailableError`, whose message says it was not sent again;
* a stream cut after its first delta, an ``error`` object mid-stream (with the server's
  message), another 4xx answer, a protocol breach: :class:`~agentcast.errors.UpstreamError`
  (text already delivered is never repeated);
* silence longer than ``read_timeout`` (a stalled generation):
  :class:`~agentcast.errors.UpstreamTimeoutError`.

When retries and fallbacks are exhausted, UpstreamUnavailableError names the URL, the models
tried and the last cause. The transport itself never resends either (see
:mod:`agentcast.chat.eventstream`; httpx's pool also checks an idle connection before
reuse and does not resend). Transport errors, httpx's and eventstream's, become
agentcast's errors in one place, :meth:`OpenAIUpstream._translate`, chained with
``from``.

**Transports.** Completions go through :mod:`agentcast.chat.eventstream`
(``transport="native"``): an asyncio protocol with httptools' parser that reads a streamed
token for about half the CPU of httpx + httpx-sse (``docs/performance-chat.md``).
``transport="httpx"`` sends them through httpx and httpx-sse instead; ``"auto"`` (the
default) picks httpx when an environment proxy applies to the URL (the native client
speaks to the origin only) and native otherwise. Both use httpx's TLS context
(certificates from the system or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). The model list and
health check always use httpx. Closing or cancelling a stream closes its HTTP response at
once, so the upstream stops generating.

:class:`LLMAgent` is the :class:`~agentcast.chat.agents.Agent` that answers with an upstream.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
from httpx_sse import EventSource, SSEError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from agentcast.chat.agents import ChatRequest
from agentcast.chat.eventstream import (
    ConnectFailedError,
    HTTPStreamClient,
    InvalidRequestError,
    NotAnEventStreamError,
    StalledError,
    StreamError,
    StreamResponse,
)
from agentcast.chat.text import Turn, chunk_text, estimate_tokens, truncate_to_tokens
from agentcast.errors import UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError

__all__ = [
    "BenchResult",
    "Completion",
    "LLMAgent",
    "OpenAIUpstream",
    "UpstreamConfig",
]

_T = TypeVar("_T")
logger = logging.getLogger("agentcast.chat")

MODEL_CACHE_SECONDS = 300.0
"""How long :meth:`OpenAIUpstream.list_models` answers from its cache (seed 001: 5 min)."""
_DONE_GRACE = 0.5
"""After ``[DONE]`` or the last ``finish_reason``, how long a stream waits for the end of
the response body (so the HTTP connection can be reused) before closing it anyway."""
KEEPALIVE_EXPIRY = 2.0
"""Seconds an idle HTTP connection stays reusable, in both transports: under the
keep-alive timeout of common servers (see :mod:`agentcast.chat.eventstream`)."""
TRANSPORTS = ("auto", "native", "httpx")


@dataclass(frozen=True)
class UpstreamConfig:
    """Where and how to reach one OpenAI-compatible server.

    ``base_url`` ends with the API version (``http://localhost:1234/v1``). Timeouts are
    seconds: ``read_timeout`` is the longest silence allowed between two chunks of a
    stream (stall detection), not a limit on the whole answer. ``max_retries`` retries
    follow the first attempt, waiting ``backoff_initial`` × 2ⁿ (at most ``backoff_max``)
    plus up to ``backoff_initial`` of jitter. ``concurrency`` (generations at once; None:
    unlimited) is enforced by the gateway's fair queue, ``context_tokens`` (the model's
    context window) by the prompt budget. ``max_tokens`` and ``temperature`` are sent
    when set. ``transport`` (for completions): ``auto`` (``native`` unless an environment
    proxy applies to ``base_url``, then ``httpx``), ``native`` or ``httpx``; another value
    raises ValueError.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr
    fallback_models: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_retries: int = 2
    backoff_initial: float = 0.25
    backoff_max: float = 4.0
    concurrency: int | None = 4
    context_tokens: int = 4096
    max_tokens: int | None = None
    temperature: float | None = None
    name: str | None = None
    transport: Literal["auto", "native", "httpx"] = "auto"

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}"
            )


@dataclass(frozen=True)
class Completion:
    """A non-streamed answer. Token counts are the server's ``usage`` when it reports
    one, else estimates (:func:`~agentcast.chat.text.estimate_tokens`)."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class BenchResult:
    """Seed 001's benchmarkModel for ``model``: one entry per run in each list (time to
    first token in ms, tokens per second after the first token, tokens, and seconds from
    the request to the end), and medians/totals as properties. A token is a streamed
    delta."""

    model: str
    runs: int
    ttft_ms: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def seconds_median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    @property
    def ttft_ms_median(self) -> float:
        return statistics.median(self.ttft_ms) if self.ttft_ms else 0.0

    @property
    def tokens_per_second_median(self) -> float:
        return statistics.median(self.tokens_per_second) if self.tokens_per_second else 0.0

    @property
    def tokens_total(self) -> int:
        return sum(self.tokens)

    @property
    def seconds_total(self) -> float:
        return sum(self.seconds)


class _RetryableError(UpstreamUnavailableError):
    """A failure worth another attempt: no connection (nothing sent), or a 5xx or 429
    answer. Raised out of the retry loop only as the cause of the final
    UpstreamUnavailableError (or as itself where nothing retries, e.g. the model list)."""


class _StreamBrokenError(UpstreamError):
    """The connection failed in the middle of a stream."""


_TRANSPORT_ERRORS = (StreamError, httpx.HTTPError)
"""What the HTTP clients raise (httpx-sse's SSEError is an httpx error); translated by
:meth:`OpenAIUpstream._translate`."""


class _Response(Protocol):
    """One open completion response, whichever client carries it (see
    :class:`~agentcast.chat.eventstream.StreamResponse`); failures are
    :data:`_TRANSPORT_ERRORS`."""

    status_code: int

    async def aread(self) -> bytes: ...

    def events(self) -> AsyncIterator[str | bytes]: ...

    async def drain(self, seconds: float) -> None: ...

    async def aclose(self) -> None: ...


class _HttpxResponse:
    """An httpx response behind the :class:`_Response` interface (its errors are httpx's
    and httpx-sse's)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self._sse: AsyncIterator[Any] | None = None

    async def aread(self) -> bytes:
        return await self.response.aread()

    async def events(self) -> AsyncIterator[str]:
        self._sse = sse = EventSource(self.response).aiter_sse()
        async for event in sse:
            yield event.data

    async def drain(self, seconds: float) -> None:
        if self._sse is None:
            return
        try:
            async with asyncio.timeout(seconds):
                async for _event in self._sse:
                    pass
        except (TimeoutError, httpx.HTTPError, SSEError):
            pass

    async def aclose(self) -> None:
        await self.response.aclose()


def _proxied(url: str) -> bool:
    """Whether an environment proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, not
    bypassed by ``NO_PROXY``) applies to ``url``, as httpx would use it."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class OpenAIUpstream:
    """One OpenAI-compatible server (see the module docstring). Its HTTP client is created
    at first use; use the upstream as an async context manager, or call :meth:`aclose`
    when done. ``model`` is the model used when a call names none (see
    :meth:`switch_model`)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.model = config.model
        self._client: httpx.AsyncClient | None = None
        self._native: HTTPStreamClient | None = None
        kind = config.transport
        self.native = kind == "native" or (kind == "auto" and not _proxied(self.base_url))
        """Completions go through :mod:`agentcast.chat.eventstream`."""
        self._models: list[str] | None = None
        self._models_at = 0.0

    async def __aenter__(self) -> OpenAIUpstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        """The one HTTP client of this upstream (created lazily)."""
        if self._client is None:
            c = self.config
            headers = {"authorization": f"Bearer {c.api_key}"} if c.api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(
                    connect=c.connect_timeout, read=c.read_timeout, write=30.0, pool=None
                ),
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=64,
                    keepalive_expiry=KEEPALIVE_EXPIRY,
                ),
            )
        return self._client

    @property
    def stream_client(self) -> HTTPStreamClient:
        """The completions' client when :attr:`native` (created lazily)."""
        if self._native is None:
            c = self.config
            self._native = HTTPStreamClient(
                self.base_url,
                headers=[("authorization", f"Bearer {c.api_key}")] if c.api_key else [],
                connect_timeout=c.connect_timeout,
                read_timeout=c.read_timeout,
                keepalive_expiry=KEEPALIVE_EXPIRY,
                ssl_context=httpx.create_ssl_context()
                if self.base_url.startswith("https:")
                else None,
            )
        return self._native

    async def aclose(self) -> None:
        """Close the HTTP clients (a later call creates new ones)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._native is not None:
            await self._native.aclose()
            self._native = None

    # -- models and health ---------------------------------------------------------

    async def list_models(self, force: bool = False) -> list[str]:
        """Model ids the server offers, cached for 5 minutes (``force`` refreshes)."""
        now = time.monotonic()
        if not force and self._models is not None and now - self._models_at < MODEL_CACHE_SECONDS:
            return list(self._models)
        try:
            response = await self.client.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        if response.status_code != 200:
            raise UpstreamError(f"{self.base_url}/models: HTTP {response.status_code}")
        try:
            data = response.json()["data"]
            models = [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"{self.base_url}/models: unexpected answer") from exc
        self._models, self._models_at = models, now
        return list(models)

    async def health(self) -> dict[str, Any]:
        """``{"ok", "url", "models", "latency_ms", "error"}`` from a fresh model list;
        never raises (seed 001's isRunning)."""
        started = time.perf_counter()
        try:
            models = await self.list_models(force=True)
        except Exception as exc:
            return {
                "ok": False,
                "url": self.base_url,
                "models": [],
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "error": exc.message if isinstance(exc, UpstreamError) else _why(exc),
            }
        return {
            "ok": True,
            "url": self.base_url,
            "models": models,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": None,
        }

    async def switch_model(self, model: str) -> None:
        """Use ``model`` from now on; UpstreamError when the server does not list it."""
        models = await self.list_models()
        if model not in models:
            raise UpstreamError(f"{self.base_url} has no model {model!r} (it has {models})")
        self.model = model

    # -- completions ---------------------------------------------------------------

    def _body(
        self, messages: Sequence[Turn], model: str, stream: bool, params: dict[str, Any]
    ) -> dict[str, Any]:
        c = self.config
        body: dict[str, Any] = {
            "model": model,
            "messages": [t.to_openai() for t in messages],
            "stream": stream,
        }
        if c.max_tokens is not None:
            body["max_tokens"] = c.max_tokens
        if c.temperature is not None:
            body["temperature"] = c.temperature
        body.update(params)
        return body

    def _models_to_try(self, model: str | None, fallback: bool = True) -> list[str]:
        first = model or self.model
        if not fallback:
            return [first]
        return [first, *(m for m in self.config.fallback_models if m != first)]

    def _unavailable(self, tried: list[str], last: Exception | None) -> UpstreamUnavailableError:
        return UpstreamUnavailableError(
            f"{self.base_url} unavailable (models tried: {', '.join(tried)}): {last}"
        )

    async def _first_to_answer(
        self,
        messages: Sequence[Turn],
        model: str | None,
        fallback: bool,
        stream: bool,
        params: dict[str, Any],
        attempt: Callable[[dict[str, Any]], Awaitable[_T]],
    ) -> _T:
        """``attempt(body)`` for ``model`` (default: :attr:`model`), retried on _RetryableError
        (``max_retries``, with backoff), then for each fallback model in turn (unless
        ``fallback`` is false), each retry and fallback logged: the first result.
        UpstreamUnavailableError when all fail; any other error at once."""
        last: Exception | None = None
        tried = self._models_to_try(model, fallback)
        for name in tried:
            if last is not None:
                logger.warning("%s; falling back to model %r", last, name)
            body = self._body(messages, name, stream, params)
            try:
                async for retry in self._retrying():
                    with retry:
                        return await attempt(body)
            except _RetryableError as exc:
                last = exc
        raise self._unavailable(tried, last)

    def _retrying(self) -> AsyncRetrying:
        c = self.config
        return AsyncRetrying(
            stop=stop_after_attempt(c.max_retries + 1),
            wait=wait_exponential(multiplier=c.backoff_initial, max=c.backoff_max)
            + wait_random(0, c.backoff_initial),
            retry=retry_if_exception_type(_RetryableError),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _log_retry(self, state: RetryCallState) -> None:
        cause = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s; retrying in %.2f s (attempt %d of %d)",
            cause,
            pause,
            state.attempt_number + 1,
            self.config.max_retries + 1,
        )

    def _translate(
        self, exc: Exception, model: str | None = None, *, answered: bool = False
    ) -> UpstreamError:
        """The agentcast error for a failure of either HTTP client (httpx and httpx-sse,
        or :mod:`~agentcast.chat.eventstream`): the one place they are translated (raise
        it ``from exc``). ``model`` names the request's model; ``answered``: a delta of
        the answer was delivered already.

        * no connection (refused, unresolvable, TLS, connect timeout: nothing was sent):
          _RetryableError, an UpstreamUnavailableError that may be sent again;
        * silence longer than ``read_timeout``: UpstreamTimeoutError;
        * not an event stream, or a request that cannot be written: UpstreamError;
        * anything else happened after the request was written (the connection closed
          before or during the answer, invalid HTTP): the server may have received the
          request, which is not sent again: UpstreamUnavailableError saying so before the
          first delta, _StreamBrokenError (an UpstreamError) after it.
        """
        why = _why(exc)
        base = self.base_url
        if isinstance(exc, ConnectFailedError | httpx.ConnectError | httpx.ConnectTimeout):
            return _RetryableError(f"{base} unreachable: {why}")
        if isinstance(exc, httpx.ProxyError):  # the tunnel failed: nothing reached base
            return _RetryableError(f"{base} unreachable through the proxy: {why}")
        if isinstance(exc, httpx.WriteTimeout):  # part of the request may have gone out
            return UpstreamTimeoutError(f"{base}: the request could not be written: {why}")
        if isinstance(exc, StalledError | httpx.TimeoutException):
            return UpstreamTimeoutError(
                f"{base} stalled: sent nothing for {self.config.read_timeout:g} s"
            )
        if isinstance(exc, NotAnEventStreamError | SSEError):
            return UpstreamError(f"{base}: not an event stream ({why})")
        if isinstance(
            exc, InvalidRequestError | httpx.UnsupportedProtocol | httpx.LocalProtocolError
        ):
            return UpstreamError(f"{base}: cannot send the request: {why}")
        if answered:
            return _StreamBrokenError(f"{base}: stream broken: {why}")
        subject = f"model {model!r}" if model else "the request"
        return UpstreamUnavailableError(
            f"{base} failed before answering ({subject}): {why}; not sent again, since the "
            "server may have received it"
        )

    async def _send(self, body: dict[str, Any], stream: bool) -> _Response:
        """Send one completion request; the response's headers are in (and its body, unless
        ``stream``). Raises what :meth:`_translate` returns."""
        payload = orjson.dumps(body)
        try:
            if self.native:
                accept = "text/event-stream" if stream else "application/json"
                response = await self.stream_client.request(
                    "POST",
                    "/chat/completions",
                    payload,
                    [("content-type", "application/json"), ("accept", accept)],
                )
                if not stream:
                    await response.aread()
                return response
            request = self.client.build_request(
                "POST",
                f"{self.base_url}/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            )
            return _HttpxResponse(await self.client.send(request, stream=stream))
        except _TRANSPORT_ERRORS as exc:
            raise self._translate(exc, body["model"]) from exc

    async def _open(self, body: dict[str, Any], stream: bool) -> _Response:
        """Send one request; the response is open (stream) or read. Raises _RetryableError
        (5xx, 429, no connection), UpstreamError, UpstreamUnavailableError or
        UpstreamTimeoutError."""
        response = await self._send(body, stream)
        if response.status_code >= 400:
            try:
                text = (await response.aread()).decode(errors="replace")
            except _TRANSPORT_ERRORS:
                text = ""
            finally:
                await response.aclose()
            message = _error_message(text) or text[:200]
            detail = (
                f"{self.base_url} answered HTTP {response.status_code} "
                f"for model {body['model']!r}: {message}"
            )
            if response.status_code >= 500 or response.status_code == 429:
                raise _RetryableError(detail)
            raise UpstreamError(detail)
        return response

    async def complete(
        self,
        messages: Sequence[Turn],
        model: str | None = None,
        *,
        fallback: bool = True,
        **params: Any,
    ) -> Completion:
        """One non-streaming completion of ``model`` (default: :attr:`model`); ``params``
        are added to the request body. Retries, fallback models (unless ``fallback`` is
        false) and errors as :meth:`stream`."""

        async def attempt(body: dict[str, Any]) -> tuple[str, _Response]:
            return body["model"], await self._open(body, stream=False)

        name, response = await self._first_to_answer(
            messages, model, fallback, False, params, attempt
        )
        try:
            raw = await response.aread()
        except _TRANSPORT_ERRORS as exc:  # pragma: no cover - read whole by _send
            raise self._translate(exc, name) from exc
        finally:
            await response.aclose()
        try:
            data = orjson.loads(raw)
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(f"{self.base_url}: unexpected completion answer") from exc
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            model=str(data.get("model") or name),
            prompt_tokens=int(
                usage.get("prompt_tokens") or sum(estimate_tokens(t.content) for t in messages)
            ),
            completion_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)),
        )

    async def stream(
        self,
        messages: Sequence[Turn],
        model: str | None = None,
        *,
        fallback: bool = True,
        **params: Any,
    ) -> AsyncIterator[str]:
        """Stream the answer of ``model`` (default: :attr:`model`) as text deltas;
        ``params`` are added to the request body.

        Before the first delta, a connection that could not be made and a 5xx or 429
        answer are retried (``max_retries``, with backoff, logged), then each of
        ``fallback_models`` is tried in turn (unless ``fallback`` is false); when all
        fail, UpstreamUnavailableError. A connection lost after the request was written and
        before the first delta raises UpstreamUnavailableError at once (the server may have
        received the request: it is not sent again). After the first delta nothing is
        retried: a failure raises UpstreamError (the server's ``error`` message, or the
        cut). Silence longer than ``read_timeout`` raises UpstreamTimeoutError, another 4xx
        answer UpstreamError, at once. Closing the iterator or cancelling its task
        closes the HTTP response at once.
        """
        response, deltas, first = await self._first_to_answer(
            messages, model, fallback, True, params, self._start
        )
        try:
            if first is not None:
                yield first
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()
            await response.aclose()

    async def _start(
        self, body: dict[str, Any]
    ) -> tuple[_Response, AsyncGenerator[str, None], str | None]:
        """Open a stream and wait for its first delta (None: an empty answer)."""
        response = await self._open(body, stream=True)
        deltas = self._deltas(response, body["model"])
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            first = None
        except BaseException:  # the generator is finished: close the response
            await response.aclose()
            raise
        return response, deltas, first

    async def _deltas(self, response: _Response, model: str) -> AsyncGenerator[str, None]:
        """The content deltas of choice 0, until ``[DONE]`` or its ``finish_reason``."""
        interpret = self._interpret
        answered = False
        try:
            async for data in response.events():
                content, end = interpret(data)
                if content:
                    answered = True
                    yield content
                if end:
                    break
            else:
                return  # the body ended
        except _TRANSPORT_ERRORS as exc:
            raise self._translate(exc, model, answered=answered) from exc
        # the answer is whole: read the rest ([DONE], the end of the body) if it comes at
        # once, so that the HTTP connection is reused instead of closed
        await response.drain(min(_DONE_GRACE, self.config.read_timeout))

    def _interpret(self, data: str | bytes) -> tuple[str | None, bool]:
        """One event of a streamed completion: (choice 0's content delta, whether the
        answer is whole). Raises UpstreamError for a non-JSON event or an error object."""
        if data == b"[DONE]" or data == "[DONE]":
            return None, True
        if not data:
            return None, False
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{self.base_url}: a stream event is not JSON") from exc
        if not isinstance(obj, dict):
            return None, False
        error = obj.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"the LLM server failed mid-answer: {message}")
        choice = _first_choice(obj)
        if choice is None:
            return None, False
        content = (choice.get("delta") or {}).get("content")
        return content or None, bool(choice.get("finish_reason"))

    async def stream_to(
        self,
        messages: Sequence[Turn],
        on_delta: Callable[[str], None],
        model: str | None = None,
        *,
        fallback: bool = True,
        **params: Any,
    ) -> None:
        """:meth:`stream`, pushed: ``on_delta(text)`` is called with each delta, in order,
        and the call returns when the answer is whole. Same retries, fallback models,
        errors and cancellation as :meth:`stream`.

        Over the native transport each delta is handed over from the socket's read
        callback, without a task switch per token (the gateway's hot path); ``on_delta``
        must be quick and must not raise (what it raises ends the answer with that
        error). Over the other transports it iterates :meth:`stream`.
        """
        if not self.native:
            async for delta in self.stream(messages, model, fallback=fallback, **params):
                on_delta(delta)
            return
        await self._first_to_answer(
            messages, model, fallback, True, params, lambda body: self._push(body, on_delta)
        )

    async def _push(self, body: dict[str, Any], on_delta: Callable[[str], None]) -> None:
        """One attempt of :meth:`stream_to`."""
        response = await self._open(body, stream=True)
        assert isinstance(response, StreamResponse)
        interpret = self._interpret
        started = False

        def sink(data: bytes) -> bool:
            nonlocal started
            content, end = interpret(data)
            if content:
                started = True
                on_delta(content)
            return end

        try:
            try:
                await response.push(sink)
            except _TRANSPORT_ERRORS as exc:
                raise self._translate(exc, body["model"], answered=started) from exc
            await response.drain(min(_DONE_GRACE, self.config.read_timeout))
        finally:
            await response.aclose()

    # -- long texts ----------------------------------------------------------------

    def estimate_tokens(self, text: str) -> int:
        """Estimated tokens of ``text`` (seed 001's estimateTokens; see
        :func:`~agentcast.chat.text.estimate_tokens`)."""
        return estimate_tokens(text)

    def answer_reserve(self) -> int:
        """Tokens of the context kept for the answer: ``max_tokens`` when configured, else
        a quarter of the context (at least 64)."""
        c = self.config
        return c.max_tokens if c.max_tokens is not None else max(64, c.context_tokens // 4)

    def truncate_to_context(self, text: str, reserve: int | None = None) -> str:
        """``text`` cut, with a note saying so, to fit the model's context minus
        ``reserve`` tokens (default :meth:`answer_reserve`) (seed 001's
        truncateToContext); unchanged when it fits."""
        room = self.config.context_tokens - (self.answer_reserve() if reserve is None else reserve)
        return truncate_to_tokens(text, max(1, room))[0]

    def chunk_text(self, text: str, chunk_tokens: int = 1000, overlap: int = 100) -> list[str]:
        """Chunks of at most ``chunk_tokens`` estimated tokens, each overlapping the
        previous by up to ``overlap`` tokens (seed 001's chunkText; see
        :func:`~agentcast.chat.text.chunk_text`)."""
        return chunk_text(text, chunk_tokens, overlap)

    async def process_long_text(
        self,
        text: str,
        instruction: str,
        *,
        chunk_tokens: int | None = None,
        overlap: int = 100,
        model: str | None = None,
    ) -> str:
        """Apply ``instruction`` to a text too long for the context (seed 001's
        processLongText): one :meth:`complete` per chunk (``chunk_tokens``, default: what
        fits the context with the instruction and :meth:`answer_reserve`), then, when
        there is more than one chunk, one more that combines the partial answers (cut to
        fit the context if they are too long). ``""`` for an empty text."""
        overhead = estimate_tokens(instruction) + 32  # the part header and message costs
        room = max(64, self.config.context_tokens - self.answer_reserve() - overhead)
        size = chunk_tokens or room
        chunks = chunk_text(text, size, min(overlap, size - 1))
        partials = []
        for i, chunk in enumerate(chunks, 1):
            prompt = f"{instruction}\n\n[part {i} of {len(chunks)}]\n{chunk}"
            partials.append((await self.complete([Turn("user", prompt)], model)).text)
        if len(partials) <= 1:
            return partials[0] if partials else ""
        joined = "\n\n".join(f"[part {i}] {p}" for i, p in enumerate(partials, 1))
        joined = truncate_to_tokens(joined, room)[0]
        combine = f"{instruction}\n\nCombine these partial answers into one:\n\n{joined}"
        return (await self.complete([Turn("user", combine)], model)).text

    async def benchmark(
        self,
        prompt: str = "Explain in three sentences what a WebSocket is.",
        runs: int = 3,
        model: str | None = None,
    ) -> BenchResult:
        """Stream ``prompt`` ``runs`` times from ``model`` (default :attr:`model`; no
        fallback, so the figures are that model's) and measure each run (seed 001's
        benchmarkModel; see :class:`BenchResult`). Failures raise as :meth:`stream`."""
        name = model or self.model
        result = BenchResult(name, runs)
        for _ in range(runs):
            started = time.perf_counter()
            first: float | None = None
            count = 0
            async for _delta in self.stream([Turn("user", prompt)], name, fallback=False):
                if first is None:
                    first = time.perf_counter()
                count += 1
            end = time.perf_counter()
            result.ttft_ms.append(((first or end) - started) * 1000)
            result.tokens.append(count)
            result.seconds.append(end - started)
            span = end - (first or end)
            result.tokens_per_second.append((count - 1) / span if count > 1 and span > 0 else 0.0)
        return result


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _first_choice(obj: dict[str, Any]) -> dict[str, Any] | None:
    """Choice 0 of a stream chunk (None in chunks without it, e.g. a usage chunk)."""
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _error_message(text: str) -> str | None:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if obj.get("detail"):
            return str(obj["detail"])
    return None


class LLMAgent:
    """The :class:`~agentcast.chat.agents.Agent` of an :class:`OpenAIUpstream`.

    :meth:`stream` streams the request's budgeted prompt (``request.messages``, built by
    the gateway with :attr:`system_prompt` and :attr:`context_tokens`) to the upstream's
    current model; a prompt without a system turn gets :attr:`system_prompt` first.
    ``name`` (the configured name, else the model), ``queue_key`` (the base URL: agents
    of one server share one fair queue) and ``concurrency`` come from the config.
    """

    def __init__(self, upstream: OpenAIUpstream, *, system_prompt: str | None = None) -> None:
        self.upstream = upstream
        self.system_prompt = system_prompt
        c = upstream.config
        self.name = c.name or upstream.model
        self.queue_key = upstream.base_url
        self.concurrency = c.concurrency
        self.context_tokens = c.context_tokens

    @property
    def model(self) -> str:
        """The model answering now (it follows :meth:`OpenAIUpstream.switch_model`)."""
        return self.upstream.model

    def _messages(self, request: ChatRequest) -> list[Turn]:
        messages = list(request.messages)
        if self.system_prompt and not any(t.role == "system" for t in messages):
            messages.insert(0, Turn("system", self.system_prompt))
        return messages

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        return self.upstream.stream(self._messages(request))

    async def stream_to(self, request: ChatRequest, on_delta: Callable[[str], None]) -> None:
        """:meth:`stream`, pushed (see :meth:`OpenAIUpstream.stream_to`)."""
        await self.upstream.stream_to(self._messages(request), on_delta)
