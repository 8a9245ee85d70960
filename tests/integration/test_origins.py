"""The Origin allow-list and CORS over real sockets: every WebSocket path of both
transports refuses a handshake from another origin with HTTP 403 before the upgrade
(also in open dev mode, the default), the HTTP API refuses such requests and sends CORS
headers for the listed origins only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, recv_until, send

PATHS = ["/ws", "/api/ws/workflow/wf-1", "/api/ws/executions/ex-1", "/api/v1/ws/helper"]
"""Every WebSocket path of the default gateway: wire protocol v1, the per-run endpoints
of seeds 000 and 004, seed 003's chat endpoint."""
ALLOWED = "http://localhost:3000"
REFUSED = [
    "http://evil.example",
    "null",
    "http://localhost:3000.evil.com",
    "http://evil.com#localhost:3000",
    "http://LOCALHOST:3001",
    "https://localhost:3000",
]


@pytest.fixture(params=["native", "asgi"])
async def open_server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """Open dev mode, no origins configured (the defaults)."""
    running, task = await start_server(request.param, offline_tokens_per_second=0)
    try:
        assert running.gateway.open_mode
        yield running
    finally:
        await stop_server(running, task)


@pytest.fixture(params=["native", "asgi"])
async def listed(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """Open dev mode with origins [http://localhost:3000]."""
    running, task = await start_server(
        request.param, offline_tokens_per_second=0, origins=[ALLOWED]
    )
    try:
        yield running
    finally:
        await stop_server(running, task)


def ws(running: RunningServer, path: str) -> str:
    return f"ws://127.0.0.1:{running.port}{path}"


async def refused(url: str, origin: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, origin=origin, open_timeout=5 * UNIT):  # type: ignore[arg-type]
            pass
    body = info.value.response.body or b""
    assert b"not allowed" in body
    return info.value.response.status_code


async def accepted(url: str, origin: str | None) -> None:
    """The handshake succeeds and the connection works (a first frame arrives or a ping
    is answered)."""
    async with websockets.connect(url, origin=origin, open_timeout=5 * UNIT) as conn:  # type: ignore[arg-type]
        if "/api/v1/ws/" in url:  # seed 003's endpoint greets
            assert (await recv(conn))["type"] == "welcome"
        else:
            await send(conn, {"type": "ping", "id": "p"})
            assert (await recv_until(conn, "pong"))["type"] == "pong"


@pytest.mark.parametrize("path", PATHS)
async def test_cross_origin_handshake_refused_in_open_dev_mode(
    open_server: RunningServer, path: str
) -> None:
    for origin in REFUSED:
        assert await refused(ws(open_server, path), origin) == 403, origin
    assert open_server.gateway.sessions == {}


@pytest.mark.parametrize("path", PATHS)
async def test_no_origin_and_same_origin_accepted(open_server: RunningServer, path: str) -> None:
    await accepted(ws(open_server, path), None)
    await accepted(ws(open_server, path), f"http://127.0.0.1:{open_server.port}")


@pytest.mark.parametrize("path", PATHS)
async def test_listed_origin_accepted_others_refused(listed: RunningServer, path: str) -> None:
    await accepted(ws(listed, path), ALLOWED)
    await accepted(ws(listed, path), None)
    await accepted(ws(listed, path), f"http://127.0.0.1:{listed.port}")  # its own, still
    for origin in REFUSED:
        assert await refused(ws(listed, path), origin) == 403, origin


async def test_refused_before_the_authenticator(listed: RunningServer) -> None:
    calls = []

    class Counting:
        def authenticate(self, request: object) -> object:
            calls.append(request)
            raise AssertionError("not reached")

    listed.gateway.authenticator = Counting()  # type: ignore[assignment]
    assert await refused(ws(listed, "/ws"), "http://evil.example") == 403
    assert calls == []


# -- HTTP: CORS and cross-origin requests ------------------------------------------


async def test_http_without_list_sends_no_cors_headers_and_refuses_other_origins(
    open_server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=open_server.url) as http:
        r = await http.get("/api/topics", headers={"Origin": ALLOWED})
        assert r.status_code == 403
        assert r.json()["detail"]["code"] == "forbidden"
        assert "access-control-allow-origin" not in r.headers
        # a simple cross-origin POST (no preflight in browsers): refused, nothing published
        r = await http.post(
            "/api/topics/board:1/events",
            content='{"type": "x"}',
            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        )
        assert r.status_code == 403
        r = await http.delete("/api/conversations/c1", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = await http.options(
            "/api/topics/board:1/events",
            headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        assert (await http.get("/api/topics/board:1/events")).json()["last_seq"] == 0
        # no Origin (CLIs, servers) and the server's own origin get in
        assert (await http.post("/api/topics/board:1/events", json={"type": "x"})).is_success
        own = {"Origin": open_server.url}
        r = await http.post("/api/topics/board:1/events", json={"type": "y"}, headers=own)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert (await http.get("/api/topics/board:1/events")).json()["last_seq"] == 2


async def test_http_cors_follows_the_list(listed: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=listed.url) as http:
        preflight = await http.options(
            "/api/topics/board:2/events",
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        h = preflight.headers
        assert h["access-control-allow-origin"] == ALLOWED
        assert h["access-control-allow-credentials"] == "true"
        assert "POST" in h["access-control-allow-methods"]
        assert {"authorization", "content-type"} <= {
            v.strip().lower() for v in h["access-control-allow-headers"].split(",")
        }
        r = await http.post(
            "/api/topics/board:2/events", json={"type": "x"}, headers={"Origin": ALLOWED}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ALLOWED
        assert r.headers["access-control-allow-credentials"] == "true"
        assert "origin" in r.headers.get("vary", "").lower()
        # an error answer carries the headers too, so the page can read it
        r = await http.post(
            "/api/topics/board:2/events", json={"type": ""}, headers={"Origin": ALLOWED}
        )
        assert r.status_code == 400 and r.headers["access-control-allow-origin"] == ALLOWED
        # other origins: no CORS headers, refused
        for origin in REFUSED:
            r = await http.post(
                "/api/topics/board:2/events", json={"type": "x"}, headers={"Origin": origin}
            )
            assert r.status_code == 403, origin
            assert "access-control-allow-origin" not in r.headers
            preflight = await http.options(
                "/api/topics/board:2/events",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code >= 400
            assert "access-control-allow-origin" not in preflight.headers
        assert (await http.get("/api/topics/board:2/events")).json()["last_seq"] == 1
