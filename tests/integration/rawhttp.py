"""A raw HTTP/1.1 server for tests of HTTP clients: each test writes the handler, so that
the server can misbehave exactly (close at a chosen moment, answer invalid HTTP); it counts
connections and the requests it read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from tests.conftest import UNIT, free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(payload: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def events(*datas: bytes) -> bytes:
    """Server-sent events with these data, as chunks."""
    return b"".join(chunk(b"data: " + d + b"\n\n") for d in datas)


END = b"0\r\n\r\n"
"""The last chunk."""


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (headers and a content-length body); b"" at end of connection."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


class Server:
    """A TCP server on 127.0.0.1 that runs ``handler(reader, writer, connection_number)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()  # a connection's handler ended and its socket closed
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.closed.set()


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[Server, str]]:
    """A :class:`Server` on a free port, and its base URL (``http://127.0.0.1:<port>/v1``)."""
    server = Server(handler)
    port = free_port()
    tcp = await asyncio.start_server(server._serve, "127.0.0.1", port)
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        tcp.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(UNIT):
                await tcp.wait_closed()
