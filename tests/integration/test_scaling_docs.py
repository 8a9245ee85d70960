"""The examples of docs/scaling.md run as written: the ``serve`` command lines (against
the test Redis, under a key prefix of their own), the settings file, and the two error
messages it quotes."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from agentcast.settings import load_settings
from tests.conftest import UNIT, ServerProcess, free_port
from tests.services import delete_prefix, redis_prefix, require_redis

DOC = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S)


def blocks(lang: str) -> list[str]:
    return [body.strip() for kind, body in BLOCKS if kind == lang]


def test_the_page_has_the_examples_this_test_runs() -> None:
    assert [kind for kind, _ in BLOCKS] == ["sh", "yaml", "text", "sh", "text", "nginx"]


def test_settings_example(tmp_path: Path) -> None:
    (body,) = blocks("yaml")
    config = tmp_path / "agentcast.yaml"
    config.write_text(body)
    settings = load_settings(config)
    assert settings.broker_url == "redis://127.0.0.1:6379/0?prefix=myapp"
    assert settings.workers == 2


async def test_serve_examples_run_as_written() -> None:
    url = require_redis()
    for line in blocks("sh"):
        argv = shlex.split(line)
        assert argv[:2] == ["agentcast", "serve"], line
        prefix = redis_prefix()
        args = [
            a.replace("redis://127.0.0.1:6379/0", url.rstrip("/").rsplit("/", 1)[0] + "/0").replace(
                "prefix=myapp", f"prefix={prefix}"
            )
            for a in argv[2:]
        ]
        proc = ServerProcess(free_port(), *args)
        try:
            await asyncio.to_thread(proc.start)
            async with httpx.AsyncClient(base_url=proc.url) as http:
                r = await http.post("/api/topics/docs/events", json={"type": "e", "data": {}})
                assert r.status_code == 200, r.text
                assert r.json()["seqs"] == [1]
        finally:
            if proc.proc is not None:
                assert await asyncio.to_thread(proc.stop) in (0, -15), proc.output()
            proc.log.close()
            await delete_prefix(url, prefix)


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcast.cli", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


def test_quoted_error_messages_are_the_real_ones() -> None:
    unreachable, refused = blocks("text")
    port = free_port()
    result = serve("--broker", f"redis://:pw@127.0.0.1:{port}/0")
    expected = unreachable.replace("10.0.0.5", "127.0.0.1").replace("6379", str(port))
    assert " ".join(result.stderr.split()) == expected
    result = serve("--workers", "2")
    assert " ".join(result.stderr.split()) == refused
