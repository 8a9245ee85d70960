"""A fake OpenAI-compatible server: a real HTTP server speaking the streaming wire format.

A Starlette app (:func:`create_app`) served by uvicorn. It serves ``GET /v1/models`` and
``POST /v1/chat/completions``: streamed as server-sent events exactly like OpenAI
(``data: {"object": "chat.completion.chunk", ...}`` with a role-only first delta, one
delta per token, a last chunk with ``finish_reason: "stop"``, then ``data: [DONE]``), or
a whole ``chat.completion`` with ``usage`` when ``stream`` is false. Answers are
deterministic (:func:`answer_for`): derived from the last user message, so different
questions get different answers, ``tokens`` tokens long (capped by the request's
``max_tokens``), paced at ``tokens_per_second``. A non-streamed answer arrives after the
time its tokens would have taken.

The model name selects a behaviour, so one server serves every test:

===================  =============================================================
``fake``             a normal answer
``fake-slow``        the same at 5 tokens/s
``fake-error-mid``   3 tokens, then an SSE ``{"error": {"message": "model crashed
                     mid-answer"}}`` object and ``[DONE]`` (non-streamed: HTTP 500)
``fake-stall``       2 tokens, then silence with the connection open until the client
                     goes away (non-streamed: no answer at all)
``fake-drop``        2 tokens, then the connection is cut mid-body
``fake-no-done``     a whole answer ending with ``finish_reason: "stop"`` but no
                     ``[DONE]``; the connection stays open
``fake-500``         HTTP 500 with an OpenAI-style error body (``model crashed``)
``fake-429``         HTTP 429 (``rate limited``) with ``retry-after: 1``
``fake-flaky``       HTTP 503 for the first ``flaky_failures`` requests, then ``fake``
``fake-flaky-drop``  for the first ``flaky_failures`` requests the connection is cut
                     after the response head, before any token; then ``fake``
``bench``            tokens whose text is ``ts=<time_ns> ``: the wall-clock time they
                     were written, so a client can measure the delay it adds per token
anything else        HTTP 404 ``model ... not found``
===================  =============================================================

The pace of one request can be changed with a ``:<tokens per second>`` suffix on the
model name (``fake:20``, ``bench:1000``; ``0`` is unpaced) or the header
``x-fake-tokens-per-second``; its length with the header ``x-fake-tokens``. With
``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get HTTP 401.

The server records what happened, for assertions (thread-safe; wait for a condition with
:meth:`FakeOpenAIServer.wait_for`, never by sleeping):

* :attr:`~FakeOpenAIServer.requests`: model, messages, stream, the other body fields,
  arrival time and client address (one per kept-alive connection) of each completion;
* :attr:`~FakeOpenAIServer.disconnects`: ``time.monotonic()`` whenever a client went away
  before its answer ended;
* :attr:`~FakeOpenAIServer.active` and :attr:`~FakeOpenAIServer.max_active`: answers being
  generated now, and at most at once; :attr:`~FakeOpenAIServer.completed`: answers sent
  whole; :attr:`~FakeOpenAIServer.models_requests`.

::

    with FakeOpenAIServer(tokens=20, tokens_per_second=100) as server:  # own thread + loop
        upstream = OpenAIUpstream(UpstreamConfig(server.base_url, "fake"))

    python -m agentcast.testing.openai_server --port 1234 --tokens-per-second 50
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["MODELS", "FakeOpenAIServer", "Recorded", "answer_for", "create_app"]

MODELS = (
    "fake",
    "fake-slow",
    "fake-error-mid",
    "fake-stall",
    "fake-drop",
    "fake-no-done",
    "fake-500",
    "fake-429",
    "fake-flaky",
    "fake-flaky-drop",
    "bench",
)
"""The model names the server lists and the behaviours they select (module docstring)."""

SLOW_TOKENS_PER_SECOND = 5.0
ERROR_AFTER = 3
STALL_AFTER = 2
DROP_AFTER = 2

_TEXT = (
    "agents stream tokens over sockets while dashboards watch runs resume cleanly after "
    "reconnects with ordered events snapshots history queues fairness cancel storage "
    "latency throughput gateway topics messages models context budget chunks"
)
_WORDS = _TEXT.split()


def answer_for(question: str, tokens: int) -> list[str]:
    """The fake answer to ``question``: ``tokens`` deterministic tokens (words, each but
    the first with a leading space), so ``"".join(answer_for(q, n))`` is the answer."""
    digest = hashlib.sha256(question.encode()).digest()
    out = []
    for i in range(tokens):
        word = _WORDS[(digest[i % len(digest)] + i) % len(_WORDS)]
        out.append(word if i == 0 else " " + word)
    return out


@dataclass(frozen=True)
class Recorded:
    """One ``POST /v1/chat/completions`` the server received."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    at: float
    """``time.monotonic()`` on arrival."""
    params: dict[str, Any] = field(default_factory=dict)
    """The other fields of the body (``max_tokens``, ``temperature``...)."""
    client: tuple[str, int] | None = None
    """The client's address and port: requests on one kept-alive connection share it."""


class _State:
    """Settings and records of one server; records change under ``changed``'s lock."""

    def __init__(
        self,
        tokens: int,
        tokens_per_second: float,
        flaky_failures: int,
        api_key: str | None,
    ) -> None:
        self.tokens = tokens
        self.tokens_per_second = tokens_per_second
        self.flaky_failures = flaky_failures
        self.api_key = api_key
        self.changed = threading.Condition()
        self.stopping = asyncio.Event()
        self.requests: list[Recorded] = []
        self.disconnects: list[float] = []
        self.failures: dict[str, int] = {}
        self.completed = 0
        self.active = 0
        self.max_active = 0
        self.models_requests = 0

    def update(self, change: Callable[[], None]) -> None:
        with self.changed:
            change()
            self.changed.notify_all()

    def should_fail(self, behaviour: str) -> bool:
        """Whether this request of a flaky behaviour fails (the first ``flaky_failures``)."""
        with self.changed:
            seen = self.failures[behaviour] = self.failures.get(behaviour, 0) + 1
            return seen <= self.flaky_failures

    def started(self) -> None:
        def change() -> None:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

        self.update(change)

    def ended(self, completed: bool, disconnected_at: float | None) -> None:
        def change() -> None:
            self.active -= 1
            if completed:
                self.completed += 1
            if disconnected_at is not None:
                self.disconnects.append(disconnected_at)

        self.update(change)

    def reset(self) -> None:
        def change() -> None:
            self.requests.clear()
            self.disconnects.clear()
            self.failures.clear()
            self.completed = self.models_requests = 0
            self.max_active = self.active

        self.update(change)


class _DropError(Exception):
    """Raised by an answer to make uvicorn cut the connection mid-response."""


class _HideDrops(logging.Filter):
    """Keeps the deliberate connection cuts out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DropError))


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _error(status: int, message: str, kind: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": None}}, status, headers=headers
    )


class _Answer(Response):
    """One generation, as an ASGI response: the tokens are produced while another task
    watches for the client going away (recorded as a disconnect at once, even during a
    stall) and a third for the server stopping."""

    def __init__(
        self,
        state: _State,
        model: str,
        behaviour: str,
        tokens: list[str],
        tokens_per_second: float,
        *,
        stream: bool,
        usage: dict[str, int] | None,
        drop_first: bool,
    ) -> None:
        # no Response.__init__: this response writes its own head
        self.state = state
        self.model = model
        self.behaviour = behaviour
        self.tokens = tokens
        self.delay = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self.stream = stream
        self.usage = usage
        self.drop_first = drop_first
        self.head_sent = False
        self.finished = False
        self.counted = False  # state.ended() was called
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.state.started()
        producer = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(self._watch(receive))
        stopper = asyncio.ensure_future(self.state.stopping.wait())
        gone: float | None = None
        try:
            await asyncio.wait((producer, watcher, stopper), return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not self.finished:
                gone = watcher.result()
        finally:
            for task in (producer, watcher, stopper):
                task.cancel()
            await asyncio.gather(producer, watcher, stopper, return_exceptions=True)
            self._ended(gone)
        failure = producer.exception() if producer.done() and not producer.cancelled() else None
        if failure is not None:
            raise failure  # _DropError: uvicorn cuts the connection
        if stopper.done() and gone is None and not self.finished:  # the server is stopping
            if not self.head_sent:
                await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _ended(self, gone: float | None = None) -> None:
        """Count this answer as over (once): right after its last byte was handed to the
        transport (no await in between), so that a client's next request, which the loop
        reads later, never overlaps it in :attr:`FakeOpenAIServer.max_active`."""
        if not self.counted:
            self.counted = True
            self.state.ended(self.finished, gone)

    async def _watch(self, receive: Receive) -> float:
        """Wait for ``http.disconnect`` (the client closed the connection); its time."""
        while (await receive())["type"] != "http.disconnect":
            pass
        return time.monotonic()

    async def _pace(self, index: int, started: float) -> None:
        """Sleep until token ``index`` is due (no drift: due times are absolute)."""
        if self.delay:
            wait = started + (index + 1) * self.delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _head(self, send: Send, content_type: bytes, length: int | None = None) -> None:
        headers = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self.head_sent = True

    async def _produce(self, send: Send) -> None:
        started = time.monotonic()
        if self.stream:
            await self._produce_stream(send, started)
            return
        if self.drop_first or self.behaviour == "fake-drop":
            await self._head(send, b"application/json", 1000)
            raise _DropError
        if self.behaviour == "fake-stall":
            await asyncio.Future()  # never answers: the client times out and leaves
        await self._pace(len(self.tokens) - 1, started)
        text = "".join(self.tokens)
        body = json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self.usage,
            }
        ).encode()
        await self._head(send, b"application/json", len(body))
        self.finished = True
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self._ended()

    async def _produce_stream(self, send: Send, started: float) -> None:
        async def event(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            payload = f"data: {data}\n\n".encode()
            await send({"type": "http.response.body", "body": payload, "more_body": True})

        await self._head(send, b"text/event-stream")
        await event(_chunk(self.model, {"role": "assistant", "content": ""}))
        if self.drop_first:
            raise _DropError
        behaviour = self.behaviour
        for i, token in enumerate(self.tokens):
            await self._pace(i, started)
            if behaviour == "fake-error-mid" and i == ERROR_AFTER:
                await event(
                    {"error": {"message": "model crashed mid-answer", "type": "server_error"}}
                )
                break
            if behaviour == "fake-stall" and i == STALL_AFTER:
                await asyncio.Future()  # silence, connection open, until the client leaves
            if behaviour == "fake-drop" and i == DROP_AFTER:
                raise _DropError
            text = f"ts={time.time_ns()} " if behaviour == "bench" else token
            await event(_chunk(self.model, {"content": text}))
        else:
            await event(_chunk(self.model, {}, "stop"))
            if self.usage is not None:
                await event({**_chunk(self.model, {}), "choices": [], "usage": self.usage})
            if behaviour == "fake-no-done":
                self.finished = True  # the answer is whole; only [DONE] never comes
                await asyncio.Future()
        self.finished = True
        await event("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._ended()


def _authorized(state: _State, request: Request) -> bool:
    return state.api_key is None or request.headers.get("authorization") == (
        f"Bearer {state.api_key}"
    )


async def _models(request: Request) -> Response:
    state: _State = request.app.state.fake

    def count() -> None:
        state.models_requests += 1

    state.update(count)
    if not _authorized(state, request):
        return _error(401, "invalid API key", "invalid_request_error")
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "agentcast"} for m in MODELS]
    return JSONResponse({"object": "list", "data": data})


async def _completions(request: Request) -> Response:
    state: _State = request.app.state.fake
    try:
        body = json.loads(await request.body())
        model = str(body["model"])
        messages = [dict(m) for m in body["messages"]]
    except (ValueError, KeyError, TypeError):
        return _error(400, "the body must be a JSON object with model and messages", "invalid")
    stream = bool(body.get("stream"))
    params = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
    client = (request.client.host, request.client.port) if request.client else None
    recorded = Recorded(model, messages, stream, time.monotonic(), params, client)
    state.update(lambda: state.requests.append(recorded))
    if not _authorized(state, request):
        return _error(401, "invalid API key", "invalid_request_error")

    behaviour, _, rate = model.partition(":")
    tokens_per_second = (
        SLOW_TOKENS_PER_SECOND if behaviour == "fake-slow" else state.tokens_per_second
    )
    count = state.tokens
    try:
        if rate:
            tokens_per_second = float(rate)
        if "x-fake-tokens-per-second" in request.headers:
            tokens_per_second = float(request.headers["x-fake-tokens-per-second"])
        if "x-fake-tokens" in request.headers:
            count = int(request.headers["x-fake-tokens"])
        if body.get("max_tokens") is not None:
            count = min(count, int(body["max_tokens"]))
    except (TypeError, ValueError):
        behaviour = ""  # an unparsable pace or length: the model is "not found"
    if behaviour not in MODELS:
        return _error(404, f"model {model!r} not found", "invalid_request_error")
    if behaviour == "fake-500":
        return _error(500, "model crashed", "server_error")
    if behaviour == "fake-429":
        return _error(429, "rate limited", "rate_limit_error", **{"retry-after": "1"})
    if behaviour == "fake-flaky" and state.should_fail(behaviour):
        return _error(503, "model is loading", "server_error")
    if behaviour == "fake-error-mid" and not stream:
        return _error(500, "model crashed mid-answer", "server_error")
    drop_first = behaviour == "fake-flaky-drop" and state.should_fail(behaviour)

    question = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    tokens = answer_for(question, max(0, count))
    usage = None
    options = body.get("stream_options")
    if not stream or (isinstance(options, dict) and options.get("include_usage")):
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        }
    return _Answer(
        state,
        model,
        behaviour,
        tokens,
        tokens_per_second,
        stream=stream,
        usage=usage,
        drop_first=drop_first,
    )


def create_app(
    *,
    tokens: int = 12,
    tokens_per_second: float = 200.0,
    flaky_failures: int = 2,
    api_key: str | None = None,
) -> Starlette:
    """The fake server as an ASGI app (to mount or serve yourself); its records are on
    ``app.state.fake``. :class:`FakeOpenAIServer` serves one on a free port."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideDrops) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_HideDrops())
    app = Starlette(
        routes=[
            Route("/v1/models", _models, methods=["GET"]),
            Route("/v1/chat/completions", _completions, methods=["POST"]),
        ]
    )
    app.state.fake = _State(tokens, tokens_per_second, flaky_failures, api_key)
    return app


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling a thread when it listens and ending the answers in
    progress when it stops (instead of waiting for them)."""

    def __init__(self, config: uvicorn.Config, state: _State) -> None:
        super().__init__(config)
        self.state = state
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.stopping.set()
        await super().shutdown(sockets)


def _listen(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # with Nagle's algorithm a token written right after another waits for the client's
    # delayed ACK (~40 ms) on a reused connection
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class FakeOpenAIServer:
    """The fake server (module docstring) on ``host`` (127.0.0.1) and ``port`` (0: a free
    one), served by uvicorn in a background thread with its own event loop.

    Use it as a context manager (``with`` or ``async with``), or :meth:`start` and
    :meth:`stop`. Stopping ends the answers in progress.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: int = 12,
        tokens_per_second: float = 200.0,
        flaky_failures: int = 2,
        api_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_app(
            tokens=tokens,
            tokens_per_second=tokens_per_second,
            flaky_failures=flaky_failures,
            api_key=api_key,
        )
        self.state: _State = self.app.state.fake
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- what happened ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what an OpenAI client is configured with."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        """The chat completion requests received so far (a copy), oldest first."""
        with self.state.changed:
            return list(self.state.requests)

    @property
    def disconnects(self) -> list[float]:
        """``time.monotonic()`` of every client that went away before its answer ended."""
        with self.state.changed:
            return list(self.state.disconnects)

    @property
    def active(self) -> int:
        """Answers being generated now."""
        return self.state.active

    @property
    def max_active(self) -> int:
        """The most answers generated at once (since the start or :meth:`reset`)."""
        return self.state.max_active

    @property
    def completed(self) -> int:
        """Answers sent whole."""
        return self.state.completed

    @property
    def models_requests(self) -> int:
        """``GET /v1/models`` requests received."""
        return self.state.models_requests

    def reset(self) -> None:
        """Forget the records and restart the flaky behaviours' failure counts."""
        self.state.reset()

    def wait_for(self, predicate: Callable[[FakeOpenAIServer], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (it is checked whenever a record
        changes), at most ``timeout`` seconds; whether it holds."""
        with self.state.changed:
            return self.state.changed.wait_for(lambda: predicate(self), timeout)

    async def wait(
        self,
        predicate: Callable[[FakeOpenAIServer], bool],
        timeout: float,  # noqa: ASYNC109 - a thread waits; asyncio.timeout cannot stop it
    ) -> bool:
        """:meth:`wait_for` for async code (it waits in a worker thread)."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    # -- running -----------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Listen (the port is known on return) and serve in a background thread."""
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = server = _Uvicorn(config, self.state)
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"fake-openai:{self.port}", daemon=True
        )
        self._thread.start()
        if not server.ready.wait(10) or self._failure is not None:
            self.stop()
            raise RuntimeError(f"the fake OpenAI server did not start: {self._failure!r}")
        return self

    def _run(self, server: _Uvicorn, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # pragma: no cover - reported by start()
            self._failure = exc
            server.ready.set()
        finally:
            sock.close()
            loop.close()

    def stop(self) -> None:
        """End the answers in progress, stop serving and join the thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.should_exit = True  # seen within 0.1 s by uvicorn's main loop
        if thread is not None:
            thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAIServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: list[str] | None = None) -> None:
    """``python -m agentcast.testing.openai_server``: serve until interrupted."""
    ap = argparse.ArgumentParser(
        prog="python -m agentcast.testing.openai_server",
        description="A fake OpenAI-compatible streaming server (models: "
        + ", ".join(MODELS)
        + "; see the module docstring).",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1234, help="0: a free port (printed)")
    ap.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    ap.add_argument("--tokens-per-second", type=float, default=50.0, help="0: unpaced")
    ap.add_argument("--flaky-failures", type=int, default=2)
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args(argv)
    app = create_app(
        tokens=args.tokens,
        tokens_per_second=args.tokens_per_second,
        flaky_failures=args.flaky_failures,
        api_key=args.api_key,
    )
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(
        f"fake OpenAI server on http://{host}:{port}/v1 ({args.tokens} tokens at "
        f"{args.tokens_per_second:g}/s; models: {', '.join(MODELS)})",
        flush=True,
    )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    _Uvicorn(config, app.state.fake).run(sockets=[sock])


if __name__ == "__main__":  # pragma: no cover
    main()
