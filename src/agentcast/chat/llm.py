"""An OpenAI-compatible upstream over httpx: LM Studio, Ollama, vLLM, llama.cpp, OpenAI.

:class:`OpenAIUpstream` offers what seed 001's LM Studio service offers that a user needs:

* :meth:`~OpenAIUpstream.list_models` (cached 5 minutes), :meth:`~OpenAIUpstream.health`,
  :meth:`~OpenAIUpstream.switch_model`;
* :meth:`~OpenAIUpstream.complete` (non-streaming) and :meth:`~OpenAIUpstream.stream`
  (server-sent events, parsed by httpx-sse);
* retries with exponential backoff and jitter (tenacity) on connection errors, 5xx and 429,
  **only before the first token** (text is never duplicated), then fallback to the
  configured other models; :class:`~agentcast.errors.UpstreamUnavailable` when all fail,
  :class:`~agentcast.errors.UpstreamTimeout` when the server is silent longer than
  ``read_timeout`` (a stalled generation), :class:`~agentcast.errors.UpstreamError` for
  an error answer or an ``error`` object mid-stream;
* token estimates, truncation to the model's context, overlapping chunks, processing a
  long text chunk by chunk, and :meth:`~OpenAIUpstream.benchmark` (seed 001's
  ``benchmarkModel``).

Closing or cancelling a stream closes its HTTP response at once, so the upstream stops
generating. The HTTP transport is aiohttp's (through httpx-aiohttp) when available: per
streamed token it costs about a quarter of httpx's own transport
(``docs/performance.md``); ``transport="httpx"`` selects httpx's.

:class:`LLMAgent` is the :class:`~agentcast.chat.agents.Agent` that answers with an upstream.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson
from httpx_sse import EventSource, SSEError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from agentcast.chat.agents import ChatRequest
from agentcast.chat.text import Turn, chunk_text, estimate_tokens, truncate_to_tokens
from agentcast.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

__all__ = [
    "BenchResult",
    "Completion",
    "LLMAgent",
    "OpenAIUpstream",
    "UpstreamConfig",
]

MODEL_CACHE_SECONDS = 300.0


@dataclass(frozen=True)
class UpstreamConfig:
    """Where and how to reach one OpenAI-compatible server."""

    base_url: str
    model: str
    api_key: str | None = None
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
    transport: Literal["auto", "aiohttp", "httpx"] = "auto"


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class BenchResult:
    """Seed 001's benchmarkModel: per run and median."""

    model: str
    runs: int
    ttft_ms: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

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


class _Retryable(Exception):
    """A failure worth another attempt (connection, 5xx, 429)."""


def _transport(kind: str) -> httpx.AsyncBaseTransport | None:
    if kind == "httpx":
        return None
    try:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport
    except ImportError:  # pragma: no cover - a declared dependency
        if kind == "aiohttp":
            raise
        return None

    def session() -> aiohttp.ClientSession:
        # no connection limit (aiohttp's default is 100): the fair queue bounds concurrency
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    return AiohttpTransport(client=session)


class OpenAIUpstream:
    """One OpenAI-compatible server (see the module docstring). Use as an async context
    manager, or call :meth:`aclose` when done."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.model = config.model
        self._client: httpx.AsyncClient | None = None
        self._models: list[str] | None = None
        self._models_at = 0.0

    async def __aenter__(self) -> OpenAIUpstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            headers = {"authorization": f"Bearer {c.api_key}"} if c.api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(
                    connect=c.connect_timeout, read=c.read_timeout, write=30.0, pool=None
                ),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                transport=_transport(c.transport),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- models and health ---------------------------------------------------------

    async def list_models(self, force: bool = False) -> list[str]:
        """Model ids the server offers, cached for 5 minutes (``force`` refreshes)."""
        now = time.monotonic()
        if not force and self._models is not None and now - self._models_at < MODEL_CACHE_SECONDS:
            return list(self._models)
        try:
            response = await self.client.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"{self.base_url} unreachable: {_why(exc)}") from exc
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
        """``{"ok", "models", "latency_ms", "error"}``; never raises (seed 001's isRunning)."""
        started = time.perf_counter()
        try:
            models = await self.list_models(force=True)
        except UpstreamError as exc:
            return {
                "ok": False,
                "url": self.base_url,
                "models": [],
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "error": exc.message,
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

    def _models_to_try(self, model: str | None) -> list[str]:
        first = model or self.model
        return [first, *(m for m in self.config.fallback_models if m != first)]

    def _retrying(self) -> AsyncRetrying:
        c = self.config
        return AsyncRetrying(
            stop=stop_after_attempt(c.max_retries + 1),
            wait=wait_exponential(multiplier=c.backoff_initial, max=c.backoff_max)
            + wait_random(0, c.backoff_initial),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )

    async def _open(self, body: dict[str, Any], stream: bool) -> httpx.Response:
        """Send one request; the response is open (stream) or read. Raises _Retryable,
        UpstreamError or UpstreamTimeout."""
        url = f"{self.base_url}/chat/completions"
        request = self.client.build_request(
            "POST", url, content=orjson.dumps(body), headers={"content-type": "application/json"}
        )
        try:
            response = await self.client.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            raise _Retryable(f"{self.base_url} unreachable: {_why(exc)}") from exc
        except httpx.ReadTimeout as exc:
            raise UpstreamTimeout(
                f"{self.base_url} sent nothing for {self.config.read_timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise _Retryable(f"{self.base_url}: {_why(exc)}") from exc
        if response.status_code >= 400:
            try:
                text = (await response.aread()).decode(errors="replace")
            except httpx.HTTPError:
                text = ""
            finally:
                await response.aclose()
            message = _error_message(text) or text[:200]
            detail = (
                f"{self.base_url} answered HTTP {response.status_code} "
                f"for model {body['model']!r}: {message}"
            )
            if response.status_code >= 500 or response.status_code == 429:
                raise _Retryable(detail)
            raise UpstreamError(detail)
        return response

    async def complete(
        self, messages: Sequence[Turn], model: str | None = None, **params: Any
    ) -> Completion:
        """One non-streaming completion (retries and fallback as :meth:`stream`)."""
        last: Exception | None = None
        for name in self._models_to_try(model):
            body = self._body(messages, name, False, params)
            try:
                async for attempt in self._retrying():
                    with attempt:
                        response = await self._open(body, stream=False)
            except _Retryable as exc:
                last = exc
                continue
            try:
                data = response.json()
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
        raise UpstreamUnavailable(
            f"every model failed ({', '.join(self._models_to_try(model))}): {last}"
        )

    async def stream(
        self, messages: Sequence[Turn], model: str | None = None, **params: Any
    ) -> AsyncIterator[str]:
        """Stream the completion's text deltas (see the module docstring for failures)."""
        last: Exception | None = None
        for name in self._models_to_try(model):
            body = self._body(messages, name, True, params)
            try:
                async for attempt in self._retrying():
                    with attempt:
                        response = await self._open(body, stream=True)
            except _Retryable as exc:
                last = exc
                continue
            try:
                async for delta in self._deltas(response):
                    yield delta
            finally:
                await response.aclose()
            return
        tried = ", ".join(self._models_to_try(model))
        raise UpstreamUnavailable(f"LLM server unavailable (models tried: {tried}): {last}")

    async def _deltas(self, response: httpx.Response) -> AsyncIterator[str]:
        try:
            async for sse in EventSource(response).aiter_sse():
                data = sse.data
                if data == "[DONE]":
                    return
                if not data:
                    continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError(f"{self.base_url}: a stream event is not JSON") from exc
                if not isinstance(obj, dict):
                    continue
                error = obj.get("error")
                if error:
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise UpstreamError(f"the LLM server failed mid-answer: {message}")
                for choice in obj.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
        except httpx.ReadTimeout as exc:
            raise UpstreamTimeout(
                f"{self.base_url} stalled: nothing for {self.config.read_timeout:g} s"
            ) from exc
        except SSEError as exc:
            raise UpstreamError(f"{self.base_url}: not an event stream ({exc})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.base_url}: stream broken: {_why(exc)}") from exc

    # -- long texts ----------------------------------------------------------------

    def estimate_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def truncate_to_context(self, text: str, reserve: int = 512) -> str:
        """``text`` cut (with a note) to the model's context minus ``reserve`` tokens."""
        return truncate_to_tokens(text, max(1, self.config.context_tokens - reserve))[0]

    def chunk_text(self, text: str, chunk_tokens: int = 1000, overlap: int = 100) -> list[str]:
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
        """Apply ``instruction`` to each chunk of ``text``, then combine the partial
        answers with one more completion when there is more than one (seed 001)."""
        size = chunk_tokens or max(64, self.config.context_tokens // 2)
        chunks = chunk_text(text, size, min(overlap, size - 1))
        partials = []
        for i, chunk in enumerate(chunks, 1):
            prompt = f"{instruction}\n\n[part {i} of {len(chunks)}]\n{chunk}"
            partials.append((await self.complete([Turn("user", prompt)], model)).text)
        if len(partials) <= 1:
            return partials[0] if partials else ""
        joined = "\n\n".join(f"[part {i}] {p}" for i, p in enumerate(partials, 1))
        combine = f"{instruction}\n\nCombine these partial answers into one:\n\n{joined}"
        return (await self.complete([Turn("user", combine)], model)).text

    async def benchmark(
        self,
        prompt: str = "Explain in three sentences what a WebSocket is.",
        runs: int = 3,
        model: str | None = None,
    ) -> BenchResult:
        """Time to first token and tokens/s (deltas per second after the first) per run."""
        name = model or self.model
        result = BenchResult(name, runs)
        for _ in range(runs):
            started = time.perf_counter()
            first: float | None = None
            count = 0
            async for _delta in self.stream([Turn("user", prompt)], name):
                now = time.perf_counter()
                if first is None:
                    first = now
                count += 1
            end = time.perf_counter()
            ttft = ((first or end) - started) * 1000
            result.ttft_ms.append(ttft)
            result.tokens.append(count)
            result.seconds.append(end - started)
            span = end - (first or end)
            result.tokens_per_second.append((count - 1) / span if count > 1 and span > 0 else 0.0)
        return result


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


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
    """The agent of an :class:`OpenAIUpstream`: streams the budgeted prompt to the model."""

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
        return self.upstream.model

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        return self.upstream.stream(request.messages)
