"""A fake OpenAI-compatible streaming server for the chat benchmark, cheap enough to pace
tens of thousands of tokens per second from one core.

Plain asyncio (uvloop when installed), HTTP/1.1 keep-alive, chunked SSE exactly as
OpenAI's ``/v1/chat/completions`` with ``stream: true``. Streams are held (headers sent,
no token) until ``GET /go``, which waits until ``--streams`` are held; then stream *i* of *N* gets its tokens at
``t0 + i/N·period + k·period`` (``period`` = 1 / ``--rate``, ``t0`` one second after
``/go``), so the load is spread evenly instead of arriving in bursts; answers have 0.8× to
1.2× ``--tokens`` tokens, so they also end spread over time. Every token's text is ``ts=<time_ns> ``: the nanosecond
wall-clock time it was written, from which a client computes the delay added after it.
``GET /stats`` gives the counts.

    python benchmarks/chat_upstream.py --port 9100 --rate 50 --tokens 250
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import time
from typing import Any

_CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":"ts=%d "},'
    b'"finish_reason":null}]}\n\n'
)
_END = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
    b'"model":"bench","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _json(status: str, obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


SETTLE_S = 1.0
"""Between ``/go`` and the first token: the gateway finishes opening every stream."""


def answer_tokens(tokens: int, index: int, streams: int) -> int:
    """Tokens of stream ``index``: from 0.8× to 1.2× ``tokens`` across the streams, so
    answers end over a spread of time instead of all at once (as they do in real use)."""
    n = max(1, streams)
    return max(1, int(tokens * (0.8 + 0.4 * (index % n) / n)))


class Stream:
    __slots__ = ("left", "transport")

    def __init__(self, transport: asyncio.Transport, tokens: int) -> None:
        self.transport = transport
        self.left = tokens


class Upstream:
    def __init__(self, rate: float, tokens: int, streams: int = 0) -> None:
        self.expected = streams
        self.all_held = asyncio.Event()
        self.period = 1.0 / rate
        self.tokens = tokens
        self.held: list[Stream] = []
        self.heap: list[tuple[float, int, Stream]] = []
        self.started = False
        self.wake = asyncio.Event()
        self.sent = 0
        self.streams = 0
        self.lost = 0
        self.late_max = 0.0

    def add(self, transport: asyncio.Transport) -> None:
        transport.write(_HEAD)
        stream = Stream(transport, answer_tokens(self.tokens, self.streams, self.expected))
        self.streams += 1
        if self.started:
            self._schedule(stream, time.monotonic())
        else:
            self.held.append(stream)
            if len(self.held) >= self.expected:
                self.all_held.set()

    def _schedule(self, stream: Stream, due: float) -> None:
        heapq.heappush(self.heap, (due, id(stream), stream))
        self.wake.set()

    def go(self) -> int:
        if self.started:
            return 0
        self.started = True
        t0 = time.monotonic() + SETTLE_S
        n = max(1, len(self.held))
        for i, stream in enumerate(self.held):
            self._schedule(stream, t0 + i / n * self.period)
        count, self.held = len(self.held), []
        return count

    async def run(self) -> None:
        heap = self.heap
        while True:
            if not heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            due = heap[0][0]
            if due > now:
                await asyncio.sleep(max(0.0, due - now))
                continue
            now_ns = time.time_ns()
            while heap and heap[0][0] <= now:
                due, _, stream = heapq.heappop(heap)
                self.late_max = max(self.late_max, now - due)
                transport = stream.transport
                if transport.is_closing():
                    self.lost += 1
                    continue
                transport.write(_chunked(_CHUNK % now_ns))
                self.sent += 1
                stream.left -= 1
                if stream.left > 0:
                    heapq.heappush(heap, (due + self.period, id(stream), stream))
                else:
                    transport.write(_chunked(_END) + b"0\r\n\r\n")


class Connection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head.split(" ", 2)[:2], body)

    async def go(self) -> None:
        """Start when every expected stream is held (at most 30 s), then answer."""
        up = self.upstream
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(up.all_held.wait(), 30)
        started = up.go()
        assert self.transport is not None
        self.transport.write(_json("200 OK", {"started": started}))

    def handle(self, line: list[str], body: bytes) -> None:
        assert self.transport is not None
        method, path = line if len(line) == 2 else ("GET", "/")
        up = self.upstream
        if path.endswith("/chat/completions") and method == "POST":
            request = json.loads(body or b"{}")
            if request.get("stream"):
                up.add(self.transport)
            else:
                self.transport.write(
                    _json(
                        "200 OK",
                        {
                            "id": "chatcmpl-bench",
                            "object": "chat.completion",
                            "model": "bench",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                        },
                    )
                )
        elif path.endswith("/models"):
            self.transport.write(
                _json("200 OK", {"object": "list", "data": [{"id": "bench", "object": "model"}]})
            )
        elif path.startswith("/go"):
            asyncio.get_running_loop().create_task(self.go())
        elif path.startswith("/stats"):
            self.transport.write(
                _json(
                    "200 OK",
                    {
                        "streams": up.streams,
                        "sent": up.sent,
                        "lost": up.lost,
                        "late_max_ms": round(up.late_max * 1000, 3),
                    },
                )
            )
        else:
            self.transport.write(_json("404 Not Found", {"error": {"message": "not found"}}))


async def main(port: int, rate: float, tokens: int, streams: int) -> None:
    upstream = Upstream(rate, tokens, streams)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(upstream), "127.0.0.1", port, backlog=4096)
    print(
        f"fake upstream on http://127.0.0.1:{port}/v1 ({rate:g} tok/s, {tokens} tokens)", flush=True
    )
    async with server:
        await upstream.run()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream")
    ap.add_argument("--tokens", type=int, default=250, help="tokens per answer")
    ap.add_argument("--streams", type=int, default=0, help="GET /go waits for this many")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.port, args.rate, args.tokens, args.streams))
    except ImportError:
        asyncio.run(main(args.port, args.rate, args.tokens, args.streams))
