"""A fake OpenAI-compatible server: a real HTTP server speaking the streaming wire format.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as server-sent
events exactly like OpenAI's ``chat.completion.chunk`` stream ending with
``data: [DONE]``, or a whole ``chat.completion`` with ``usage``). Answers are
deterministic: derived from the last user message, so different questions get different
answers. The model name selects a behaviour, so one server serves every test:

=================  ==============================================================
``fake``           a normal answer of ``tokens`` tokens at ``tokens_per_second``
``fake-slow``      the same at 5 tokens/s
``fake-error-mid`` 3 tokens, then an SSE ``{"error": {...}}`` object, then the end
``fake-stall``     2 tokens, then silence with the connection open
``fake-500``       HTTP 500 with an OpenAI-style error body
``fake-flaky``     HTTP 503 for the first ``flaky_failures`` requests, then ``fake``
``bench``          tokens whose text is ``ts=<time_ns> `` (their write time)
anything else      HTTP 404 ``model not found``
=================  ==============================================================

The header ``x-fake-tokens-per-second`` overrides the pace of one request. The server
records what happened: :attr:`FakeOpenAIServer.requests` (model, messages, stream),
:attr:`~FakeOpenAIServer.disconnects` (monotonic times a client went away mid-stream),
:attr:`~FakeOpenAIServer.max_active` (most streams at once).

::

    with FakeOpenAIServer() as server:           # a thread with its own event loop
        upstream = OpenAIUpstream(UpstreamConfig(server.base_url, "fake"))

    python -m agentcast.testing.openai_server --port 1234 --tokens-per-second 50
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeOpenAIServer", "Recorded", "answer_for"]

MODELS = ("fake", "fake-slow", "fake-error-mid", "fake-stall", "fake-500", "fake-flaky", "bench")
_TEXT = (
    "agents stream tokens over sockets while dashboards watch runs resume cleanly after "
    "reconnects with ordered events snapshots history queues fairness cancel storage "
    "latency throughput gateway topics messages models context budget chunks"
)
_WORDS = _TEXT.split()


def answer_for(question: str, tokens: int) -> list[str]:
    """The fake answer to ``question``: ``tokens`` deterministic tokens."""
    digest = hashlib.sha256(question.encode()).digest()
    out = []
    for i in range(tokens):
        word = _WORDS[(digest[i % len(digest)] + i) % len(_WORDS)]
        out.append(word if i == 0 else " " + word)
    return out


@dataclass
class Recorded:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    at: float


@dataclass
class _State:
    tokens: int
    tokens_per_second: float
    flaky_failures: int
    requests: list[Recorded] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    completed: int = 0
    active: int = 0
    max_active: int = 0
    flaky_seen: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def note(self) -> None:
        with self.changed:
            self.changed.notify_all()


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class _Connection(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.streaming is not None and not self.streaming.done():
            self.state.disconnects.append(time.monotonic())
            self.streaming.cancel()
            self.state.note()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.streaming is None or self.streaming.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = ([*lines[0].split(" "), "", ""])[:2]
            self.handle(method, path, headers, body)

    def write_json(self, status: str, obj: Any) -> None:
        assert self.transport is not None
        body = json.dumps(obj).encode()
        self.transport.write(
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        state = self.state
        if path.endswith("/models") and method == "GET":
            self.write_json(
                "200 OK",
                {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]},
            )
            return
        if not (path.endswith("/chat/completions") and method == "POST"):
            self.write_json("404 Not Found", {"error": {"message": f"no route {path}"}})
            return
        try:
            request = json.loads(body or b"{}")
            model = str(request.get("model", ""))
            messages = list(request.get("messages", []))
        except (ValueError, AttributeError):
            self.write_json("400 Bad Request", {"error": {"message": "invalid JSON body"}})
            return
        stream = bool(request.get("stream"))
        state.requests.append(Recorded(model, messages, stream, time.monotonic()))
        state.note()
        if model == "fake-500":
            self.write_json("500 Internal Server Error", {"error": {"message": "model crashed"}})
            return
        if model == "fake-flaky":
            state.flaky_seen += 1
            if state.flaky_seen <= state.flaky_failures:
                self.write_json("503 Service Unavailable", {"error": {"message": "loading model"}})
                return
        if model not in MODELS:
            self.write_json("404 Not Found", {"error": {"message": f"model {model!r} not found"}})
            return
        question = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        tokens = answer_for(question, state.tokens)
        tps = 5.0 if model == "fake-slow" else state.tokens_per_second
        if "x-fake-tokens-per-second" in headers:
            tps = float(headers["x-fake-tokens-per-second"])
        if not stream:
            text = "".join(tokens)
            self.write_json(
                "200 OK",
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": sum(
                            len(str(m.get("content", "")).split()) for m in messages
                        ),
                        "completion_tokens": len(tokens),
                        "total_tokens": 0,
                    },
                },
            )
            state.completed += 1
            return
        self.streaming = asyncio.get_running_loop().create_task(self.stream(model, tokens, tps))

    async def stream(self, model: str, tokens: list[str], tps: float) -> None:
        transport = self.transport
        assert transport is not None
        state = self.state
        state.active += 1
        state.max_active = max(state.max_active, state.active)

        def send(payload: bytes) -> None:
            transport.write(b"%x\r\n%s\r\n" % (len(payload), payload))

        try:
            transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            send(_sse(_chunk(model, {"role": "assistant"})))
            delay = 1.0 / tps if tps > 0 else 0.0
            for i, token in enumerate(tokens):
                if delay:
                    await asyncio.sleep(delay)
                if model == "fake-error-mid" and i == 3:
                    send(
                        _sse(
                            {
                                "error": {
                                    "message": "model crashed mid-answer",
                                    "type": "server_error",
                                }
                            }
                        )
                    )
                    break
                if model == "fake-stall" and i == 2:
                    await self.lost  # silence until the client gives up
                    return
                text = f"ts={time.time_ns()} " if model == "bench" else token
                send(_sse(_chunk(model, {"content": text})))
            else:
                send(_sse(_chunk(model, {}, "stop")))
                state.completed += 1
            send(b"data: [DONE]\n\n")
            transport.write(b"0\r\n\r\n")
        finally:
            state.active -= 1


class FakeOpenAIServer:
    """The fake server on 127.0.0.1 in a background thread (see the module docstring)."""

    def __init__(
        self,
        *,
        port: int = 0,
        tokens: int = 12,
        tokens_per_second: float = 200.0,
        flaky_failures: int = 2,
    ) -> None:
        self.state = _State(tokens, tokens_per_second, flaky_failures)
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    @property
    def disconnects(self) -> list[float]:
        return self.state.disconnects

    @property
    def max_active(self) -> int:
        return self.state.max_active

    @property
    def active(self) -> int:
        return self.state.active

    def wait_for(self, predicate: Callable[[FakeOpenAIServer], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (after a request or a disconnect), at
        most ``timeout`` seconds; returns whether it holds. From async code, run it with
        ``asyncio.to_thread``."""
        with self.state.changed:
            return self.state.changed.wait_for(lambda: predicate(self), timeout)

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._server = await loop.create_server(
                lambda: _Connection(self.state), "127.0.0.1", self.port
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(serve())
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - manual use
    ap = argparse.ArgumentParser(description="A fake OpenAI-compatible streaming server.")
    ap.add_argument("--port", type=int, default=1234)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--tokens-per-second", type=float, default=50.0)
    args = ap.parse_args()
    server = FakeOpenAIServer(
        port=args.port, tokens=args.tokens, tokens_per_second=args.tokens_per_second
    ).start()
    print(f"fake OpenAI server on {server.base_url} (models: {', '.join(MODELS)})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
