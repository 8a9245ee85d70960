"""Handshakes that cannot lead anywhere are refused with an HTTP answer, on both transports:
404 for a path no WebSocket endpoint serves; 400 (or 404) for a per-run endpoint whose id
makes no valid topic name (what ``POST /api/workflows/{id}/execute`` refuses too), instead
of a connection accepted and never subscribed."""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningServer
from tests.integration.wsutil import recv, send

UNKNOWN = ["/", "/nope", "/wsx", "/ws/extra", "/api/ws/workflow/", "/api/ws/workflow/a/b"]
INVALID_IDS = ["a%20b", "x" * 201, "%C3%A9t%C3%A9", "a%23b"]


async def refused(url: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, open_timeout=10):
            pass
    return info.value


@pytest.mark.parametrize("path", UNKNOWN)
async def test_unknown_path_gets_404(server: RunningServer, path: str) -> None:
    error = await refused(f"ws://127.0.0.1:{server.port}{path}")
    assert error.response.status_code == 404
    assert b"no WebSocket endpoint at" in error.response.body
    assert not server.gateway.sessions


async def test_http_not_found_unchanged(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("kind", ["workflow", "executions"])
@pytest.mark.parametrize("run_id", INVALID_IDS)
async def test_invalid_run_id_gets_400(server: RunningServer, kind: str, run_id: str) -> None:
    error = await refused(f"ws://127.0.0.1:{server.port}/api/ws/{kind}/{run_id}")
    assert error.response.status_code in (400, 404)  # refused before any session opens
    assert not server.gateway.sessions
    if kind == "workflow":  # the same id is refused by execute
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post(f"/api/workflows/{run_id}/execute")
        assert response.status_code == 400
        assert response.json()["detail"]["code"] == "invalid_topic"


@pytest.mark.parametrize("kind", ["workflow", "executions"])
async def test_valid_run_id_still_accepted(server: RunningServer, kind: str) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/ws/{kind}/run-1") as ws:
        await send(ws, "ping")
        pong = await recv(ws)
        assert pong["type"] == "pong"
