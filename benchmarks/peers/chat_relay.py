"""Chat peer (the floor): a minimal relay from the upstream's event stream to the client.

Hand-written asyncio + uvloop, like ``raw_server.py``: WebSocket handshake and framing by
hand; for each ``chat:send`` text frame it answers ``chat:accepted`` and opens one HTTP/1.1
connection to the OpenAI-compatible upstream (``POST {upstream}/chat/completions``,
``stream: true``), decodes the chunked body and the event stream in the connection's read
callback and writes each delta to the client at once, one ``transport.write`` per token
(``{"type":"chat:chunk","id":…,"chunk":"…"}``), then ``{"type":"chat:done"}``. No store,
no sequence numbers, no history, no queue, no task per conversation; the delta is taken
from the chunk's JSON by byte search, not decoded. What it costs is what relaying a token
costs at the least.

Usage: chat_relay.py --port 8000 --upstream http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import urlsplit

import uvloop
from common import HandWrittenWS, frame

UPSTREAM = ("127.0.0.1", 9100, "/v1")
CONTENT = b'"content":"'


class Completion(asyncio.Protocol):
    """One streamed completion: chunked body → events → one client frame per delta."""

    def __init__(self, client: asyncio.Transport, cid: int, body: bytes) -> None:
        self.client = client
        self.prefix = b'{"type":"chat:chunk","id":%d,"chunk":"' % cid
        self.done = b'{"type":"chat:done","id":%d}' % cid
        self.body = body
        self.buf = bytearray()
        self.events = bytearray()
        self.head = True
        self.left = -1  # bytes of the current chunk still to read; -1: at a size line
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        host, port, path = UPSTREAM
        self.t.write(
            b"POST %s/chat/completions HTTP/1.1\r\nHost: %s:%d\r\n"
            b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (path.encode(), host.encode(), port, len(self.body), self.body)
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self.head = False
        while buf:  # chunked transfer coding
            if self.left < 0:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                self.left = int(bytes(buf[:eol]).split(b";")[0], 16)
                del buf[: eol + 2]
                if self.left == 0:
                    break
            if len(buf) < self.left + 2:
                break
            self.events += buf[: self.left]
            del buf[: self.left + 2]
            self.left = -1
        self.relay()
        if self.left == 0:
            self.finish()

    def relay(self) -> None:
        events = self.events
        while (end := events.find(b"\n\n")) >= 0:
            event = bytes(events[:end])
            del events[: end + 2]
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    self.finish()
                    return
                at = line.find(CONTENT)
                if at < 0:
                    continue
                at += len(CONTENT)
                stop = line.find(b'"', at)
                while stop > 0 and line[stop - 1] == 0x5C:  # an escaped quote
                    stop = line.find(b'"', stop + 1)
                if stop > at and not self.client.is_closing():
                    self.client.write(frame(1, self.prefix + line[at:stop] + b'"}'))

    def finish(self) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.close()
            if not self.client.is_closing():
                self.client.write(frame(1, self.done))

    def connection_lost(self, exc: Exception | None) -> None:
        self.t = None


class Conn(HandWrittenWS):
    def text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("type") != "chat:send":
            return
        cid = int(msg.get("id") or 0)
        question = str((msg.get("data") or {}).get("message", ""))
        self.t.write(frame(1, b'{"type":"chat:accepted","id":%d}' % cid))
        body = json.dumps(
            {"model": "bench", "stream": True, "messages": [{"role": "user", "content": question}]}
        ).encode()
        host, port, _ = UPSTREAM
        task = asyncio.ensure_future(
            asyncio.get_running_loop().create_connection(
                lambda: Completion(self.t, cid, body), host, port
            )
        )
        connecting.add(task)
        task.add_done_callback(connecting.discard)


connecting: set[asyncio.Future[object]] = set()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--upstream", default="http://127.0.0.1:9100/v1")
    args = ap.parse_args()
    url = urlsplit(args.upstream)
    UPSTREAM = (url.hostname or "127.0.0.1", url.port or 80, url.path.rstrip("/"))
    uvloop.run(main(args.port))
