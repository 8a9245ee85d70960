"""Server-sent events over HTTP/1.1, read straight off the socket: the upstream's hot path.

A streamed completion is one small event per token, and a gateway relays tens of
thousands of them per second across its conversations. Through httpx and httpx-sse each
event costs ~20 µs of CPU in their generator layers; here an asyncio protocol feeds the
socket's bytes to httptools' C parser (llhttp, as in uvicorn), the body to
:class:`EventStreamDecoder` and the events' data to one waiting reader: ~9 µs per event
(``benchmarks/chat_floor.py``). Requests are serialized by h11. Connections are kept
alive and reused, LIFO, up to ``max_idle`` per client.

**A request is written at most once.** A completion request starts a (possibly paid)
generation, so nothing here ever sends one again, not even on a kept-alive connection
that the server closed before answering: the server may have read the request before it
closed. Instead, a pooled connection is checked *before* the request is written and
discarded (a new one is opened) when it cannot carry it:

* the transport has seen the server's end: ``eof_received``, ``connection_lost``, a
  close (also after bytes that nobody asked for arrived on the idle connection);
* its socket is readable although no request is in flight: a FIN, a reset or stray bytes
  that the kernel has received but the event loop has not processed yet (a busy loop
  runs its read callbacks late; one ``poll`` call, no read);
* it has been idle for ``keepalive_expiry`` seconds (default 2 s) or more. Servers close
  idle connections after their own keep-alive timeout (5 s in uvicorn, which serves
  llama-cpp-python and vLLM, and in Node.js; 75 s in nginx), and a close that crosses our
  request on the wire cannot be seen beforehand by any check; reusing only connections
  idle for well under that timeout keeps us out of that race. A new connection costs a
  TCP (and TLS) handshake, little next to a generation, and only when requests are
  further apart than the expiry.

Once the request is written, a connection that closes before the first byte of the
answer fails the request with :class:`BrokenStreamError`, as a cut mid-answer does; the caller
decides (and :mod:`agentcast.chat.llm` does not resend it, see there).

:class:`HTTPStreamClient` is deliberately small: one origin, ``http``/``https``, no
proxies, no redirects, no compression (``accept-encoding: identity``) -- what an
OpenAI-compatible completion endpoint needs. :class:`~agentcast.chat.llm.OpenAIUpstream`
uses it for completions and keeps httpx for everything else (and for completions behind
a proxy). Its failures are :class:`StreamError` subclasses, translated into
:mod:`agentcast.errors` by the upstream; nothing else escapes.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import h11
import httptools

from agentcast.errors import AgentcastError

__all__ = [
    "BrokenStreamError",
    "ConnectFailedError",
    "EventStreamDecoder",
    "HTTPStreamClient",
    "InvalidRequestError",
    "NotAnEventStreamError",
    "StalledError",
    "StreamError",
    "StreamResponse",
]

_PAUSE_AT = 256
"""Events buffered unread before the socket stops being read (flow control)."""
_RESUME_AT = 32
"""Events left unread when reading resumes."""
_MAX_BODY = 16 << 20
"""The largest non-stream body read (an error answer or a non-streamed completion); a
larger one fails the response (:class:`BrokenStreamError`) instead of being cut silently."""


class StreamError(AgentcastError):
    """Base of this module's failures; ``str()`` says what happened."""


class ConnectFailedError(StreamError):
    """No connection (refused, unresolvable, TLS failure, connect timeout, client closed):
    nothing of the request was written, so sending it again is safe."""


class InvalidRequestError(StreamError):
    """The request cannot be written (an invalid header, method or target): nothing was
    sent, and sending it again would fail the same way."""


class StalledError(StreamError):
    """The server sent nothing for ``read_timeout`` seconds."""


class BrokenStreamError(StreamError):
    """The request was written but its answer is missing, cut or not valid HTTP: the
    connection closed before the first byte of the answer or mid-answer, or the answer
    cannot be parsed. The server may have received the request."""


class NotAnEventStreamError(StreamError):
    """:meth:`StreamResponse.events` on a response that is not ``text/event-stream``."""


class EventStreamDecoder:
    """Incremental decoder of ``text/event-stream`` bodies (WHATWG HTML, §9.2.6).

    :meth:`feed` takes body bytes as they arrive, split anywhere, and returns the ``data``
    of every event completed by them: the event's ``data`` lines joined by ``\\n``,
    bytes, not decoded (JSON parsers take bytes). Lines end with CRLF, LF or CR; a
    leading BOM is dropped; comments and other fields (``event``, ``id``, ``retry``) are
    ignored; an event without ``data`` is not dispatched.
    """

    __slots__ = ("_data", "_pending", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._pending = b""  # an incomplete line
        self._data: list[bytes] = []  # data lines of the event being read
        self._started = False
        self._skip_lf = False  # the last chunk ended with CR: an LF now is its CRLF's

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of the events that ``chunk`` completes, in order."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 10:  # b"\n"
                chunk = chunk[1:]
        buf = self._pending + chunk if self._pending else chunk
        if not self._started and buf:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._pending = buf
                return []
            self._started = True
            if buf.startswith(b"\xef\xbb\xbf"):
                buf = buf[3:]
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data"):
                if len(line) == 4:
                    data.append(b"")
                elif line[4] == 58:  # b":"
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
        return out


class StreamResponse:
    """One response of a :class:`HTTPStreamClient` request, its headers read.

    Read its body once, with :meth:`aread` (whole), :meth:`events` (server-sent events'
    data as they come, pulled) or :meth:`push` (the same, handed to a callback as they are
    parsed); then, or to stop early, :meth:`aclose` (safe to call twice). The connection
    goes back to the client's pool only when the body was read to its end, the server
    allows keep-alive and nothing failed.
    """

    def __init__(self, conn: _Connection, status_code: int, headers: list[tuple[bytes, bytes]]):
        self._conn: _Connection | None = conn
        self.status_code = status_code
        self.headers = headers

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as latin-1."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None

    @property
    def is_event_stream(self) -> bool:
        return (self.header("content-type") or "").lower().startswith("text/event-stream")

    def _open_conn(self) -> _Connection:
        if self._conn is None:
            raise BrokenStreamError("the response is closed")
        return self._conn

    def _event_stream(self) -> _Connection:
        if not self.is_event_stream:
            raise NotAnEventStreamError(
                f"content-type is {self.header('content-type')!r}, not text/event-stream"
            )
        conn = self._open_conn()
        conn.start_events()
        return conn

    async def aread(self) -> bytes:
        """The whole body. Raises :class:`StalledError`, or :class:`BrokenStreamError` (also
        for a body over 16 MiB)."""
        conn = self._open_conn()
        await conn.wait_until(lambda: conn.complete)
        return b"".join(conn.body)

    async def events(self) -> AsyncIterator[bytes]:
        """The data of each server-sent event, in order, until the body ends.

        Raises :class:`NotAnEventStreamError` (checked first), :class:`StalledError` or
        :class:`BrokenStreamError`.
        """
        conn = self._event_stream()
        queue = conn.events
        while True:
            if self._conn is not conn:  # closed meanwhile (it may serve another request now)
                raise BrokenStreamError("the response is closed")
            while queue:
                data = queue.popleft()
                if conn.paused and len(queue) <= _RESUME_AT:
                    conn.resume()
                yield data
            if conn.complete:
                return
            if conn.failure is not None:
                raise conn.failure
            await conn.wait()

    def push(self, on_event: Callable[[bytes], bool | None]) -> asyncio.Future[None]:
        """Hand each event's data to ``on_event`` as soon as it is parsed, from the
        protocol's callback (no task switch per event), starting with events already
        buffered; ``on_event`` returns True to stop. The returned future is done (None)
        when the body ended or ``on_event`` stopped; it fails with :class:`StalledError` or
        :class:`BrokenStreamError`, or with what ``on_event`` raised (then no further call comes).
        Raises :class:`NotAnEventStreamError` at once. To stop early, :meth:`aclose`.
        """
        return self._event_stream().start_push(on_event)

    async def drain(self, seconds: float) -> None:
        """Read what is left of the body for at most ``seconds`` (dropping it), so that the
        connection can be reused; never raises."""
        conn = self._conn
        if conn is None or conn.complete or conn.failure is not None:
            return
        conn.discard_body()
        try:
            async with asyncio.timeout(seconds):
                while not conn.complete and conn.failure is None:
                    await conn.wait()
        except TimeoutError:
            pass

    async def aclose(self) -> None:
        """Give the connection back (body complete, keep-alive) or close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()


class HTTPStreamClient:
    """HTTP/1.1 requests to one origin (``base_url``'s scheme, host and port) whose
    answers may be event streams; see the module docstring for what it leaves out.

    ``headers`` go with every request. ``connect_timeout`` bounds the TCP (and TLS)
    connect; ``read_timeout`` the silence allowed at any point of a response (before its
    headers, between two chunks). At most ``max_idle`` connections are kept alive, each
    reused only while idle for less than ``keepalive_expiry`` seconds (see the module
    docstring). Call :meth:`aclose` when done: it closes idle connections (those in use
    close when their responses do).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_idle: int = 64,
        keepalive_expiry: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        self.path_prefix = parts.path.rstrip("/")
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self.headers = [(k, v) for k, v in headers]
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self._idle: list[_Connection] = []  # oldest first
        self._closed = False

    @property
    def idle_connections(self) -> int:
        """Connections kept alive, waiting for a request."""
        return len(self._idle)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> StreamResponse:
        """Send one request (``path`` is relative to the base URL's path) and return its
        response once the status and headers are in.

        The request is written once, on a kept-alive connection that passed the checks of
        the module docstring or on a new one; it is never written again. Raises
        :class:`InvalidRequestError` (nothing sent), :class:`ConnectFailedError` when no
        connection could be made (nothing sent), :class:`StalledError` when no header came
        within ``read_timeout``, :class:`BrokenStreamError` when the connection closed before the
        answer or the answer is invalid (the server may have received the request).
        """
        if self._closed:
            raise ConnectFailedError("client closed")
        all_headers = [
            ("host", self.authority),
            ("user-agent", "agentcast"),
            ("accept-encoding", "identity"),
            *self.headers,
            *headers,
            ("content-length", str(len(body))),
        ]
        h = h11.Connection(h11.CLIENT)
        try:
            wire = (
                h.send(
                    h11.Request(method=method, target=self.path_prefix + path, headers=all_headers)
                )
                or b""
            )
            if body:
                wire += h.send(h11.Data(data=body)) or b""
            wire += h.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise InvalidRequestError(f"invalid request: {exc}") from None
        conn = self._take_idle() or await self._connect()
        return await conn.send(wire)

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection that can carry a request; the others
        met on the way (closed by the server, expired) are closed."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since >= self.keepalive_expiry:
                for old in (conn, *self._idle):  # the rest were released earlier: expired too
                    old.close()
                self._idle.clear()
                return None
            if conn.usable and not conn.peer_spoke():
                return conn
            conn.close(abort=True)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            raise ConnectFailedError(
                f"connect to {self.authority} timed out after {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailedError(f"cannot connect to {self.authority}: {exc}") from exc
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    async def aclose(self) -> None:
        """Close the idle connections; later requests raise :class:`ConnectFailedError`."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the parser's callbacks and one response's state."""

    def __init__(self, client: HTTPStreamClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False  # connection_lost came
        self.eof = False  # eof_received came: the server will send nothing more
        self.idle_since = 0.0  # when it went back to the pool
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.active = False  # a request is in flight
        self.got_bytes = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.interim = False  # parsing a 1xx answer: the final one follows
        self.complete = False
        self.keep_alive = False
        self.failure: StreamError | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.decoder: EventStreamDecoder | None = None
        self.discarding = False
        self.events: collections.deque[bytes] = collections.deque()
        self.sink: Callable[[bytes], bool | None] | None = None
        self.pushed: asyncio.Future[None] | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        """Open as far as the transport has seen: no EOF, no loss, not closing."""
        return (
            not self.lost
            and not self.eof
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def peer_spoke(self) -> bool:
        """Whether the socket of this idle connection is readable (or unknown): a FIN,
        a reset or bytes the loop has not read yet. Any of them means the connection
        cannot carry a request. One zero-timeout ``poll``; nothing is read."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        try:
            fd = sock.fileno()
            if fd < 0:
                return True
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(fd, select.POLLIN | select.POLLPRI)
                return bool(poller.poll(0))
            return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows
        except (AttributeError, OSError, ValueError):
            return True

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        self.got_bytes = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(
                BrokenStreamError(f"invalid HTTP response from {self.client.authority}: {exc}")
            )
            self.close()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client._forget(self)
        if self.active and not self.complete:
            if not self.got_bytes:
                why = f" ({exc})" if exc else ""
                self._fail(
                    BrokenStreamError(
                        f"{self.client.authority} closed the connection before answering{why}; "
                        "the request may have reached it"
                    )
                )
            elif self.headers_done and not self._delimited() and exc is None:
                self.on_message_complete()  # a body delimited by the end of the connection
            else:
                why = f": {exc}" if exc else ""
                self._fail(
                    BrokenStreamError(
                        f"{self.client.authority} closed the connection mid-answer{why}"
                    )
                )
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request: the connection is not trusted
            self.keep_alive = False
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete and not self.headers_done:  # not the trailers
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        if 100 <= self.parser.get_status_code() < 200:  # 100 Continue, 103 Early Hints
            self.interim = True
            self.headers = []
            return
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete or self.failure is not None:
            return
        decoder = self.decoder
        if decoder is not None:
            events = decoder.feed(body)
            if self.sink is not None:
                self._deliver(events)
            elif events:
                self.events.extend(events)
                self._wake()
                if len(self.events) >= _PAUSE_AT and not self.paused and self.transport:
                    self.paused = True
                    self.transport.pause_reading()
        elif not self.discarding:
            self.body_size += len(body)
            if self.body_size > _MAX_BODY:
                self._fail(BrokenStreamError(f"a body of more than {_MAX_BODY} bytes"))
                self.close(abort=True)
                return
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.complete or self.failure is not None:
            return
        # llhttp answers this only inside on_headers_complete / on_message_complete
        self.keep_alive = not self.lost and self.parser.should_keep_alive()
        self.complete = True
        self._wake()
        self._settle(None)

    # -- the response's side -------------------------------------------------------------

    def _delimited(self) -> bool:
        """The body has a length or is chunked (else it ends with the connection)."""
        for k, v in self.headers:
            k = k.lower()
            if k == b"content-length" or (
                k == b"transfer-encoding" and v.lower().rstrip().endswith(b"chunked")
            ):
                return True
        return False

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, failure: StreamError) -> None:
        if self.failure is None and not self.complete:
            self.failure = failure
        self._wake()
        self._settle(self.failure)

    def start_push(self, on_event: Callable[[bytes], bool | None]) -> asyncio.Future[None]:
        self.pushed = pushed = self.loop.create_future()
        self.sink = on_event
        queued, self.events = list(self.events), collections.deque()
        self.resume()
        self._deliver(queued)
        if self.complete:
            self._settle(None)
        elif self.failure is not None:
            self._settle(self.failure)
        return pushed

    def _deliver(self, events: list[bytes]) -> None:
        sink = self.sink
        for data in events:
            if sink is None or self.sink is None:
                return
            if self.pushed is None or self.pushed.done():  # its future was cancelled
                self.pushed = None
                self.discard_body()
                return
            try:
                stop = sink(data)
            except Exception as exc:
                self._settle(exc)
                self.close(abort=True)
                return
            if stop:
                self._settle(None)
                self.discard_body()
                return

    def _settle(self, outcome: BaseException | None) -> None:
        """End push mode: its future gets ``outcome`` (an exception, or None: done)."""
        pushed = self.pushed
        if pushed is None:
            return
        self.sink = self.pushed = None
        if not pushed.done():
            if outcome is None:
                pushed.set_result(None)
            else:
                pushed.set_exception(outcome)

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``; raises the response's failure. A failure or a cancel
        abandons the response (:meth:`finish`)."""
        try:
            while not ready():
                if self.failure is not None:
                    raise self.failure
                await self.wait()
        except BaseException:
            self.finish()
            raise

    async def wait(self) -> None:
        """Until the parser or the connection has news (or the stall timer fires)."""
        self.waiter = waiter = self.loop.create_future()
        await waiter

    def _arm(self) -> None:
        self.timer = self.loop.call_at(self.last_read + self.client.read_timeout, self._check)

    def _check(self) -> None:
        self.timer = None
        if not self.active or self.complete or self.failure is not None:
            return
        now = self.loop.time()
        if self.paused:  # the reader is behind, not the server
            self.last_read = now
        elif now - self.last_read >= self.client.read_timeout:
            self._fail(
                StalledError(
                    f"{self.client.authority} sent nothing for {self.client.read_timeout:g} s"
                )
            )
            self.close(abort=True)
            return
        self._arm()

    async def send(self, wire: bytes) -> StreamResponse:
        assert self.transport is not None
        assert not self.active
        self.active = True
        self.last_read = self.loop.time()
        self._arm()
        self.transport.write(wire)
        await self.wait_until(lambda: self.headers_done)
        status = self.parser.get_status_code()
        return StreamResponse(self, status, self.headers)

    def start_events(self) -> None:
        """Decode the body as an event stream from now on, starting with the bytes that
        came with the headers."""
        if self.decoder is None:
            self.decoder = EventStreamDecoder()
        if self.body:  # bytes that came with the headers
            body, self.body = b"".join(self.body), []
            self.events.extend(self.decoder.feed(body))

    def discard_body(self) -> None:
        self.decoder = self.sink = None
        self.discarding = True
        self.events.clear()
        self.resume()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def finish(self) -> None:
        """The response is done with: back to the pool if reusable, else closed."""
        if not self.active:
            return
        reusable = self.complete and self.failure is None and self.usable and self.keep_alive
        if self.timer is not None:
            self.timer.cancel()
        pushed, self.sink, self.pushed = self.pushed, None, None
        if pushed is not None and not pushed.done():  # the reader gave up (cancelled)
            pushed.cancel()
        if reusable:
            self.resume()
            self._reset()
            self.client._release(self)
        else:
            self._fail(
                BrokenStreamError("the response was closed")
            )  # wakes a reader in another task
            self.active = False
            self.close(abort=True)  # no TLS close_notify wait: the upstream must stop now

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        state: dict[str, Any] = {"active": self.active, "complete": self.complete}
        return f"<_Connection {self.client.authority} {state}>"
