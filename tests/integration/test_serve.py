"""``agentcast serve`` as a process: start-up checks, settings errors, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import UNIT, ServerProcess, free_port


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


def test_open_mode_refuses_public_bind_without_insecure() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "--insecure" in result.stderr
    assert "open dev mode" in result.stderr


def test_bad_settings_are_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ping_interval: -1\n")
    result = run_cli("serve", "--config", str(cfg))
    assert result.returncode == 2
    assert "ping_interval" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("agentcast ")


async def test_sigterm_closes_clients_with_1001_and_exits_cleanly(
    server_process: ServerProcess,
) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{server_process.port}/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "t"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), UNIT))["type"] == "subscribed"
        assert server_process.proc is not None
        server_process.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10 * UNIT)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
    # uvicorn re-raises the signal once its graceful shutdown is complete
    code = await asyncio.to_thread(server_process.stop)
    assert code in (0, -signal.SIGTERM)
    output = server_process.output()
    assert "OPEN DEV MODE" in output
    assert "Application shutdown complete" in output
