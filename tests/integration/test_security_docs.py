"""The examples of docs/security.md's Authentication section run as written."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import websockets

from agentcast.security import mint_token
from agentcast.settings import Settings, load_settings
from tests.conftest import UNIT, start_server, stop_server
from tests.integration.wsutil import recv, send

DOC = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
SECTION = DOC.split("\n## Authentication\n", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", SECTION, flags=re.S)
SECRET = "docs-secret-" + "d" * 32


def block(lang: str, marker: str) -> str:
    (body,) = [b for kind, b in BLOCKS if kind == lang and marker in b]
    return body


def test_the_section_has_the_examples_this_test_runs() -> None:
    assert [kind for kind, _ in BLOCKS] == ["yaml", "python", "python", "python"]


def test_yaml_example_is_valid_settings(tmp_path: Path) -> None:
    config = tmp_path / "agentcast.yaml"
    config.write_text(block("yaml", "jwt_secret"))
    settings = load_settings(config)
    assert settings.jwt_configured and settings.jwt_audience == "agentcast"


async def test_the_ways_in_example(tmp_path: Path) -> None:
    running, task = await start_server("native", jwt_secret=SECRET)
    try:
        script = tmp_path / "ways_in.py"
        source = block("python", "mint_token").replace(
            "127.0.0.1:8000", f"127.0.0.1:{running.port}"
        )
        script.write_text(source)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=30 * UNIT,
            env={**os.environ, "AGENTCAST_JWT_SECRET": SECRET},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["subscribed", "pong", "agentcast.v1", "alice"]
    finally:
        await stop_server(running, task)


async def test_the_application_policy_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "owners_example.py").write_text(block("python", "ExecutionOwners"))
    monkeypatch.syspath_prepend(str(tmp_path))
    running, task = await start_server("native", jwt_secret=SECRET, auth="owners_example:make")
    try:
        settings = Settings(jwt_secret=SECRET)
        for user, expected in (("alice", "subscribed"), ("bob", "error")):
            headers = {"Authorization": f"Bearer {mint_token(settings, user, 60)}"}
            async with websockets.connect(running.ws_url, additional_headers=headers) as ws:
                await send(ws, {"type": "subscribe", "topic": "execution:exec-1", "id": 1})
                assert (await recv(ws))["type"] == expected, user
    finally:
        await stop_server(running, task)


async def test_the_claims_policy_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's ``jwt_claims`` keeps ``org`` on the principal (nothing else), and its
    authorizer decides with it."""
    (tmp_path / "org_example.py").write_text(block("python", "SameOrganisation"))
    monkeypatch.syspath_prepend(str(tmp_path))
    running, task = await start_server("native", jwt_secret=SECRET, auth="org_example:make")
    try:
        exp = int(time.time()) + 60
        token = jwt.encode({"sub": "alice", "org": "acme", "exp": exp}, SECRET, algorithm="HS256")
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(running.ws_url, additional_headers=headers) as ws:
            for topic, expected in (
                ("workflow:acme:1", "subscribed"),
                ("workflow:other:1", "error"),
            ):
                await send(ws, {"type": "subscribe", "topic": topic, "id": topic})
                assert (await recv(ws))["type"] == expected, topic
        assert running.gateway.settings.jwt_claims == ["org"]
    finally:
        await stop_server(running, task)
