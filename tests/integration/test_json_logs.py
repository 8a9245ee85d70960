"""``agentcast serve --log-format json``: a real server process whose every output line is
one JSON object (its own lines, uvicorn's, the access log), with connection ids and users
where the log call has them, and never a token, however the client passed it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import jwt
import websockets
from websockets.exceptions import InvalidStatus

from agentcast.logs import JsonFormatter
from tests.conftest import UNIT, ServerProcess, free_port
from tests.integration.wsutil import recv, send

SECRET = "json-logs-secret-" + "x" * 40


def token(sub: str, *scopes: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 3600}
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def traffic(proc: ServerProcess, good: str, bad: str, admin: str) -> None:
    ws_url = f"ws://127.0.0.1:{proc.port}/ws"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{proc.url}/api/topics?token={good}")).status_code == 200
        answer = await client.get(
            f"{proc.url}/api/topics", headers={"Authorization": f"Bearer {bad}"}
        )
        assert answer.status_code == 401
        ticket = await client.post(
            f"{proc.url}/api/tickets", headers={"Authorization": f"Bearer {good}"}
        )
        assert ticket.status_code in (200, 201), ticket.text
        ticket_value = ticket.json()["ticket"]
        metrics = await client.get(
            f"{proc.url}/metrics", headers={"Authorization": f"Bearer {admin}"}
        )
        assert metrics.status_code == 200
    async with websockets.connect(f"{ws_url}?token={good}") as ws:
        await send(ws, {"type": "ping", "id": 1})
        assert (await recv(ws))["type"] == "pong"
    async with websockets.connect(f"{ws_url}?ticket={ticket_value}") as ws:
        await send(ws, {"type": "ping", "id": 2})
        assert (await recv(ws))["type"] == "pong"
    async with websockets.connect(ws_url, subprotocols=["agentcast.v1", f"bearer.{good}"]) as ws:  # type: ignore[list-item]
        await send(ws, {"type": "auth", "token": good, "id": 3})
        assert (await recv(ws))["type"] in ("authenticated", "error")
    try:
        async with websockets.connect(f"{ws_url}?token={bad}"):
            raise AssertionError("a bad token was accepted")
    except InvalidStatus as exc:
        assert exc.response.status_code == 401


def test_json_logs_of_a_real_server_parse_and_hold_no_token() -> None:
    good, bad, admin = token("alice"), token("mallory") + "tampered", token("ops", "admin")
    proc = ServerProcess(
        free_port(),
        "--log-format",
        "json",
        "--log-level",
        "debug",
        env={"AGENTCAST_JWT_SECRET": SECRET, "AGENTCAST_STORE_URL": ""},
    )
    proc.start()
    try:
        asyncio.run(traffic(proc, good, bad, admin))
    finally:
        assert proc.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises it
        output = proc.output()
        proc.log.close()
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) > 10, output
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    for secret in (good, bad, admin, SECRET):
        assert secret not in output
        signature = secret.split(".")[-1]
        for i in range(0, len(signature) - 8, 4):  # not even a fragment of it
            assert signature[i : i + 8] not in output, signature[i : i + 8]
    # uvicorn's own lines and the CLI's banner are JSON too
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access", "agentcast.cli", "agentcast"} <= loggers, loggers
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    topics = [e for e in access if e["path"].startswith("/api/topics?")]
    assert topics and topics[0]["path"] == "/api/topics?token=[redacted]", topics
    assert topics[0]["method"] == "GET" and topics[0]["status"] == 200
    opened = [
        e for e in entries if e["message"].startswith("connection ") and "opened" in e["message"]
    ]
    assert opened, entries
    assert all(isinstance(e["connection"], int) for e in opened)
    assert "alice" in {e["user"] for e in opened}
    assert entries[0]["time"].endswith("Z")


def test_the_formatter_redacts_messages_extras_and_tracebacks() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("Authorization: Bearer abc.def.ghi-secret")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "agentcast", logging.WARNING, __file__, 1, "GET %s", ("/ws?token=abc&x=1",), exc_info
    )
    record.topic = "t?ticket=zzz"
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "GET /ws?token=[redacted]&x=1"
    assert entry["topic"] == "t?ticket=[redacted]"
    assert "abc.def.ghi-secret" not in entry["exc_info"]
    assert entry["level"] == "warning"


def test_an_unknown_log_format_stops_the_server_with_the_setting_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentcast.cli", "serve", "--log-format", "xml", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 2
    assert "log_format" in result.stderr
