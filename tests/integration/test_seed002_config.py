"""``agentcast serve --config`` with seed 002's configuration file as written
(``tests/data/seed002.yaml``) and its ``WEBSOCKET_*`` variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import UNIT, ServerProcess, free_port

SEED002 = Path(__file__).resolve().parents[1] / "data" / "seed002.yaml"


def test_seed002_file_as_written_requires_authentication() -> None:
    """The file enables authentication: without an authenticator configured the server
    refuses to start, with the reason (it never serves open while the file says
    authentication is on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBSOCKET_")}
    result = subprocess.run(
        [sys.executable, "-m", "agentcast.cli", "serve", "--config", str(SEED002),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=30 * UNIT, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "authentication is required" in result.stderr
    assert "Traceback" not in result.stderr


async def test_seed002_file_serves_its_origins(tmp_path: Path) -> None:
    """The same file with authentication switched off: it serves, with seed 002's CORS
    origins as the allow-list; WEBSOCKET_HOST overrides the file's host."""
    config = tmp_path / "seed002-open.yaml"
    text = SEED002.read_text()
    on = "authentication:\n      enabled: true"
    assert on in text
    config.write_text(text.replace(on, "authentication:\n      enabled: false"))
    proc = ServerProcess(free_port(), "--config", str(config), env={"WEBSOCKET_HOST": "127.0.0.1"})
    proc.start()
    try:
        ws_url = f"ws://127.0.0.1:{proc.port}/ws"
        async with websockets.connect(ws_url, origin="http://localhost:3000"):  # type: ignore[arg-type]
            pass
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url, origin="http://localhost:3001"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        async with httpx.AsyncClient(base_url=proc.url) as http:
            r = await http.options(
                "/api/topics",
                headers={
                    "Origin": "http://localhost:3000",
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert f"on http://127.0.0.1:{proc.port}" in proc.output()
    finally:
        proc.stop()
        proc.log.close()
