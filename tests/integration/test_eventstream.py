"""The upstream's HTTP/1.1 event-stream client (``agentcast.chat.eventstream``) against real
sockets: servers written for each case, so that they can misbehave exactly."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
import threading
from typing import Any

import pytest

from agentcast.chat.eventstream import (
    BrokenStreamError,
    ConnectFailedError,
    HTTPStreamClient,
    InvalidRequestError,
    NotAnEventStreamError,
    StalledError,
)
from tests.conftest import UNIT, free_port
from tests.integration.rawhttp import END, SSE_HEAD, Server, events, read_request, serve


async def sse_answers(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
    """Answer every request on the connection with three events and [DONE], kept alive."""
    while True:
        request = await read_request(reader)
        if not request:
            return
        server.requests.append(request)
        writer.write(SSE_HEAD + events(b"1", b"2", b"3", b"[DONE]") + END)
        await writer.drain()


async def collect(client: HTTPStreamClient) -> list[bytes]:
    response = await client.request("POST", "/chat/completions", b'{"q":1}')
    try:
        return [d async for d in response.events()]
    finally:
        await response.aclose()


async def test_request_wire_form_and_keep_alive() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await sse_answers(server, r, w)

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url, headers=[("authorization", "Bearer k")])
        for _ in range(3):
            assert await collect(client) == [b"1", b"2", b"3", b"[DONE]"]
        assert server.connections == 1, "one connection, kept alive"
        assert client.idle_connections == 1
        head = server.requests[0].lower()
        assert head.startswith(b"post /v1/chat/completions http/1.1\r\n")
        for header in (b"host: 127.0.0.1:", b"authorization: bearer k", b"content-length: 7"):
            assert header in head
        assert server.requests[0].endswith(b'\r\n\r\n{"q":1}')
        await client.aclose()
        assert client.idle_connections == 0
        with pytest.raises(ConnectFailedError, match="closed"):
            await client.request("GET", "/models")


async def test_an_idle_connection_the_server_closed_is_replaced_before_the_request() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        server.requests.append(await read_request(r))
        w.write(SSE_HEAD + events(b"a", b"[DONE]") + END)  # kept alive, then closed idle
        await w.drain()

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        assert await collect(client) == [b"a", b"[DONE]"]
        (idle,) = client._idle
        lost = asyncio.Event()
        connection_lost = idle.connection_lost
        idle.connection_lost = lambda exc: (connection_lost(exc), lost.set())  # type: ignore[method-assign]
        await asyncio.wait_for(lost.wait(), UNIT)  # the transport saw the server's close
        assert idle.eof and client.idle_connections == 0, "out of the pool"
        assert await collect(client) == [b"a", b"[DONE]"], "answered on a new connection"
        assert server.connections == 2
        assert len(server.requests) == 2, "each request reached the server exactly once"
        await client.aclose()


class ThreadServer:
    """A blocking HTTP server in a thread, so that it can act while the event loop is
    blocked: answers one request per connection (kept alive, never ``connection:
    close``), then closes that connection when :attr:`close_now` is set."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.requests: list[bytes] = []
        self.close_now = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the listening socket was closed: stop
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                if not head:
                    continue
                self.requests.append(head)
                conn.sendall(SSE_HEAD + events(b"t", b"[DONE]") + END)
                self.close_now.wait(10 * UNIT)
            self.closed.set()

    def stop(self) -> None:
        self.close_now.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        self.sock.close()
        self.thread.join(5 * UNIT)


async def test_a_close_the_loop_has_not_processed_yet_is_seen_before_the_request() -> None:
    """The server closes the idle connection while the event loop is busy (here: blocked),
    so the transport has not seen it: the socket itself says so, and the request goes out
    on a new connection instead of being lost on the dead one."""
    server = ThreadServer()
    try:
        client = HTTPStreamClient(server.url)
        assert await collect(client) == [b"t", b"[DONE]"]
        (idle,) = client._idle
        assert idle.transport is not None
        sock = idle.transport.get_extra_info("socket")
        # from here to the request the loop does not run: it cannot see the close
        server.close_now.set()
        assert server.closed.wait(UNIT)
        assert select.select([sock.fileno()], [], [], UNIT)[0], "the FIN is in the socket"
        assert idle.usable, "the transport has not seen it"
        server.close_now.clear()
        assert await collect(client) == [b"t", b"[DONE]"], "answered on a new connection"
        assert len(server.requests) == 2, "each request reached the server exactly once"
        assert idle.transport.is_closing(), "the dead connection was discarded"
        await client.aclose()
    finally:
        server.stop()


async def test_a_connection_idle_too_long_is_not_reused() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await sse_answers(server, r, w)

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        assert client.keepalive_expiry == 2.0
        assert await collect(client) == [b"1", b"2", b"3", b"[DONE]"]
        client._idle[0].idle_since -= client.keepalive_expiry  # as if idle for 2 s
        assert await collect(client) == [b"1", b"2", b"3", b"[DONE]"]
        assert server.connections == 2 and len(server.requests) == 2
        await asyncio.wait_for(server.closed.wait(), UNIT)  # the client closed the expired one
        assert client.idle_connections == 1
        await client.aclose()


async def test_a_request_the_server_read_is_never_sent_again() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        server.requests.append(await read_request(r))
        if n == 1:
            w.write(SSE_HEAD + events(b"a", b"[DONE]") + END)
            await w.drain()
            server.requests.append(await read_request(r))  # read, then closed unanswered
            return
        w.write(SSE_HEAD + events(b"b", b"[DONE]") + END)
        await w.drain()

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        assert await collect(client) == [b"a", b"[DONE]"]
        with pytest.raises(BrokenStreamError, match="closed the connection before answering"):
            await client.request("POST", "/chat/completions", b'{"q":2}')
        assert server.connections == 1, "no new connection: the request was not resent"
        assert [r.endswith(b'{"q":1}') for r in server.requests] == [True, False]
        assert server.requests[1].endswith(b'{"q":2}'), "sent once, on the kept-alive one"
        assert await collect(client) == [b"b", b"[DONE]"], "the next request is served"
        assert server.connections == 2 and len(server.requests) == 3
        await client.aclose()


async def test_connection_refused_and_a_fresh_connection_closed_unanswered() -> None:
    client = HTTPStreamClient(f"http://127.0.0.1:{free_port()}/v1", connect_timeout=UNIT)
    with pytest.raises(ConnectFailedError, match="cannot connect"):
        await client.request("GET", "/models")

    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        server.requests.append(await read_request(r))

    async with serve(hang_up) as (server, url):
        client = HTTPStreamClient(url)
        with pytest.raises(BrokenStreamError, match=r"before answering.*may have reached it"):
            await client.request("POST", "/chat/completions", b"{}")
        assert server.connections == 1 and len(server.requests) == 1, "not sent again"


async def test_a_body_delimited_by_the_end_of_the_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        w.write(b"data: x\n\ndata: y\n\n")
        await w.drain()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        assert await collect(client) == [b"x", b"y"]
        assert client.idle_connections == 0, "not reusable"


async def test_stalls_before_the_headers_and_mid_body() -> None:
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        if n == 2:
            w.write(SSE_HEAD + events(b"first"))
        await release.wait()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url, read_timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StalledError, match=r"sent nothing for 0\.2 s"):
            await client.request("POST", "/chat/completions", b"{}")
        assert 0.2 <= loop.time() - started < 0.2 + UNIT
        response = await client.request("POST", "/chat/completions", b"{}")
        got = []
        with pytest.raises(StalledError):
            async for data in response.events():
                got.append(data)
        assert got == [b"first"]
        await response.aclose()
        release.set()


async def test_invalid_http_and_a_cut_body_are_broken() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        if n == 1:
            w.write(b"NONSENSE\r\n\r\n")
        else:
            w.write(SSE_HEAD + events(b"half") + b"ff\r\ndata: cut")
        await w.drain()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        with pytest.raises(BrokenStreamError, match="invalid HTTP response"):
            await client.request("GET", "/models")
        response = await client.request("POST", "/chat/completions", b"{}")
        got = []
        with pytest.raises(BrokenStreamError, match="mid-answer"):
            async for data in response.events():
                got.append(data)
        assert got == [b"half"]
        await response.aclose()


async def test_a_json_answer_is_read_whole_and_is_not_an_event_stream() -> None:
    body = b'{"error": {"message": "no such model"}}'

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await read_request(r):
            w.write(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await w.drain()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        assert response.status_code == 404
        assert response.header("Content-Type") == "application/json"
        assert response.header("x-missing") is None
        with pytest.raises(NotAnEventStreamError, match="application/json"):
            await anext(response.events())
        with pytest.raises(NotAnEventStreamError):
            response.push(lambda data: None)
        assert await response.aread() == body
        await response.aclose()
        assert client.idle_connections == 1, "read to its end: reusable"


class Watched:
    """A transport whose ``pause_reading`` sets an event."""

    def __init__(self, transport: Any, paused: asyncio.Event) -> None:
        self.transport, self.paused = transport, paused

    def pause_reading(self) -> None:
        self.transport.pause_reading()
        self.paused.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    many = [str(i).encode() for i in range(2000)]
    go, written = asyncio.Event(), asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(SSE_HEAD + events(many[0]))
        await go.wait()
        for i in range(1, len(many), 100):
            w.write(events(*many[i : i + 100]))
        w.write(END)
        await w.drain()
        written.set()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        paused = asyncio.Event()
        response._conn.transport = Watched(response._conn.transport, paused)
        reader = response.events()
        got = [await anext(reader)]
        go.set()  # the rest comes while this reader is busy elsewhere
        await asyncio.wait_for(written.wait(), UNIT)
        await asyncio.wait_for(paused.wait(), UNIT)
        got += [data async for data in reader]
        assert got == many
        assert not response._conn.paused, "reading resumed as the reader caught up"
        await response.aclose()
        assert client.idle_connections == 1


async def test_push_hands_over_events_as_parsed_and_can_stop() -> None:
    gate = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await read_request(r):
            w.write(SSE_HEAD + events(b"with-the-headers"))
            await gate.wait()
            w.write(events(b"2", b"3", b"stop", b"after") + END)
            await w.drain()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        seen: list[bytes] = []
        done = response.push(lambda data: seen.append(data) or data == b"stop")
        assert seen == [b"with-the-headers"], "events that came with the headers, at once"
        gate.set()
        await asyncio.wait_for(done, UNIT)
        assert seen == [b"with-the-headers", b"2", b"3", b"stop"], "nothing after stop"
        await response.drain(UNIT)
        await response.aclose()
        assert client.idle_connections == 1, "the rest was drained: reusable"


async def test_push_fails_with_what_the_callback_raised_and_cancel_closes() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(SSE_HEAD + events(b"ok", b"bad"))
        await w.drain()
        await r.read()  # until the client closes

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")

        def sink(data: bytes) -> None:
            if data == b"bad":
                raise ValueError("cannot use it")

        with pytest.raises(ValueError, match="cannot use it"):
            await asyncio.wait_for(response.push(sink), UNIT)
        await response.aclose()
        await asyncio.wait_for(server.closed.wait(), UNIT)

        server.closed.clear()
        response = await client.request("POST", "/chat/completions", b"{}")
        task = asyncio.ensure_future(response.push(lambda data: None))
        await asyncio.sleep(0)
        task.cancel()
        await response.aclose()
        await asyncio.wait_for(server.closed.wait(), UNIT)
        assert client.idle_connections == 0


async def test_bytes_nobody_asked_for_close_an_idle_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(SSE_HEAD + events(b"[DONE]") + END)
        await w.drain()
        if n == 1:
            w.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            await w.drain()
        await r.read()

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        assert await collect(client) == [b"[DONE]"]
        await asyncio.wait_for(server.closed.wait(), UNIT)
        assert client.idle_connections == 0, "dropped, not reused"
        assert await collect(client) == [b"[DONE]"]
        assert server.connections == 2


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HTTPStreamClient("ftp://example.com/v1")
    client = HTTPStreamClient("https://[::1]/v1")
    assert client.authority == "[::1]" and client.port == 443 and client.ssl is not None


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_reset_is_not_the_end_of_a_body_delimited_by_the_connection() -> None:
    sent = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: a\n\n")
        await w.drain()
        await sent.wait()
        reset(w)

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        reader = response.events()
        assert await anext(reader) == b"a"
        sent.set()
        with pytest.raises(BrokenStreamError, match="mid-answer"):
            await anext(reader)
        await response.aclose()


async def test_interim_answers_trailers_and_upgrades() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while request := await read_request(r):
            server.requests.append(request)
            if len(server.requests) == 1:  # 103 Early Hints, then the answer with trailers
                w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
                w.write(SSE_HEAD + events(b"1") + b"0\r\nx-trailer: t\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n")
            await w.drain()

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        assert response.status_code == 200
        assert [d async for d in response.events()] == [b"1"]
        names = [k.lower() for k, _ in response.headers]
        assert b"link" not in names, "the interim answer's headers are not the answer's"
        assert b"x-trailer" not in names, "trailers are not headers"
        await response.aclose()
        assert client.idle_connections == 1
        with pytest.raises(BrokenStreamError, match="invalid HTTP response"):
            await client.request("POST", "/chat/completions", b"{}")


async def test_a_closed_response_never_touches_the_connection_again() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await sse_answers(server, r, w)

    async with serve(handler) as (server, url):
        client = HTTPStreamClient(url)
        first = await client.request("POST", "/chat/completions", b"{}")
        assert [d async for d in first.events()][-1] == b"[DONE]"
        await first.aclose()
        second = await client.request("POST", "/chat/completions", b"{}")
        await first.aclose()  # twice: must not close the connection the second one uses
        with pytest.raises(BrokenStreamError, match="closed"):
            await anext(first.events())
        assert [d async for d in second.events()] == [b"1", b"2", b"3", b"[DONE]"]
        await second.aclose()
        assert server.connections == 1


async def test_no_event_reaches_a_push_whose_future_was_cancelled() -> None:
    more = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(SSE_HEAD + events(b"1"))
        await w.drain()
        await more.wait()
        w.write(events(b"2", b"3") + END)
        await w.drain()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        seen: list[bytes] = []
        pushed = response.push(seen.append)
        pushed.cancel()
        more.set()
        await asyncio.wait_for(response.drain(UNIT), 2 * UNIT)
        assert seen == [b"1"], "nothing after the cancel"
        await response.aclose()


async def test_bad_requests_and_oversized_bodies_are_broken() -> None:
    big = b"x" * (17 << 20)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big))
        w.write(big)
        await w.drain()

    async with serve(handler) as (_server, url):
        client = HTTPStreamClient(url, headers=[("authorization", "Bearer key\n")])
        with pytest.raises(InvalidRequestError, match="invalid request"):
            await client.request("POST", "/chat/completions", b"{}")
        client = HTTPStreamClient(url)
        response = await client.request("POST", "/chat/completions", b"{}")
        with pytest.raises(BrokenStreamError, match="more than"):
            await response.aread()
        await response.aclose()
