"""The rule for secret settings: a setting typed ``SecretStr`` (``llm_api_key``,
``jwt_secret``, any added later) is never in an HTTP answer, a log line, ``--help`` or an
error message. A real ``agentcast serve`` runs with a marker in every such setting, at
log level trace, talking to a fake LLM upstream that requires the key (so the key is
used where it must be); every GET route it serves is read, a chat is held over seed
003's endpoint and wire protocol v1, and its whole output is searched."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import websockets

from agentcast.security.jwt import mint_token
from agentcast.security.secrets import secret_settings
from agentcast.settings import Settings
from agentcast.testing.openai_server import FakeOpenAIServer
from tests.conftest import UNIT, ServerProcess, free_port

MARKERS = {name: f"SECRET-MARKER-{name}-1f6c0e7d2b9a4c58e3" for name in secret_settings()}
"""Each at least 32 bytes: ``jwt_secret`` refuses shorter ones."""
ENV = {f"AGENTCAST_{name.upper()}": value for name, value in MARKERS.items()}


def leaks(text: str) -> list[str]:
    return [name for name, marker in MARKERS.items() if marker in text]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=MARKERS["llm_api_key"], tokens=4) as fake:
        yield fake


@pytest.fixture(scope="module")
def served(upstream: FakeOpenAIServer) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        free_port(),
        "--llm-url", upstream.base_url, "--model", "fake", "--log-level", "trace",
        env={**ENV, "AGENTCAST_BROKER_URL": "memory://"},
    )  # fmt: skip
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        proc.log.close()


async def test_secrets_never_leave_the_server(
    served: ServerProcess, upstream: FakeOpenAIServer
) -> None:
    assert set(MARKERS) >= {"llm_api_key", "jwt_secret"}
    answers: list[str] = []
    # jwt_secret turns authentication on: an admin token signed with it reaches every route
    token = mint_token(Settings(jwt_secret=MARKERS["jwt_secret"]), "root", 600, scopes=["admin"])
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=served.url, timeout=10 * UNIT, headers=auth) as http:
        spec = (await http.get("/openapi.json")).json()
        paths = [
            path
            for path, ops in spec["paths"].items()
            if "get" in ops and "{" not in path and not path.startswith("/_")
        ]
        assert {"/healthz", "/api/agents", "/api/llm/health", "/api/llm/stats"} <= set(paths)
        for path in [*paths, "/docs", "/redoc", "/openapi.json", "/api/nope"]:
            r = await http.get(path)
            answers.append(f"{path} {r.status_code} {r.headers} {r.text}")
        health = (await http.get("/api/llm/health")).json()
        assert health["upstreams"][0]["ok"], health  # the upstream got the key
    # a chat: the LLM agent's completion request carries the key (the upstream requires it)
    port = served.port
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/api/v1/ws/helper", additional_headers=auth
    ) as ws:
        answers.append(str(await asyncio.wait_for(ws.recv(), 5 * UNIT)))
        await ws.send("hello")
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10 * UNIT))
        answers.append(json.dumps(reply))
        assert reply["type"] == "message" and reply["message"], reply
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", additional_headers=auth) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "monitoring"}))
        answers.append(str(await asyncio.wait_for(ws.recv(), 5 * UNIT)))
        await ws.send("{not json")
        answers.append(str(await asyncio.wait_for(ws.recv(), 5 * UNIT)))
    assert upstream.requests, "no completion request reached the upstream"
    assert leaks("\n".join(answers)) == []
    served.stop()
    output = served.output()
    assert "OPEN DEV MODE" not in output and "GET /api/llm/health" in output  # trace logs
    assert leaks(output) == []


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--help"),
        ("llm", "health", "--help"),
        ("llm", "models", "--help"),
        ("llm", "models", "--llm-url", "http://127.0.0.1:9/v1"),  # nothing listens there
        ("serve", "--port", "not-a-port"),
        ("serve", "--log-level", "loud"),
        ("serve", "--llm-url", "http://127.0.0.1:9/v1"),  # llm_url without a model
    ],
)
def test_help_and_errors_do_not_show_secrets(args: tuple[str, ...]) -> None:
    result = run_cli(*args, env=ENV)
    assert leaks(result.stdout + result.stderr) == [], result.stdout + result.stderr
