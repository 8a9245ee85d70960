"""``agentcast chat`` against a real server process: one-shot, stdin, Ctrl-C stops an
answer and keeps the partial text."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import UNIT, ServerProcess, free_port
from tests.integration.test_cli import run


@pytest.fixture
def slow_server() -> Iterator[ServerProcess]:
    """A server whose offline agent streams 8 words a second."""
    proc = ServerProcess(free_port(), env={"AGENTCAST_OFFLINE_TOKENS_PER_SECOND": "8"})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        proc.log.close()


async def test_chat_one_shot_and_stdin(server_process: ServerProcess) -> None:
    url = server_process.url
    done = await run(
        "chat", "tws-general", "-m", "qual job esta em abend?", "-m", "obrigado", "--url", url
    )
    assert done.returncode == 0, done.stderr
    assert "ABEND" in done.stdout and "1 earlier question" in done.stdout
    assert "conversation " in done.stderr
    piped = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agentcast.cli", "chat", "helper", "--url", url],
        input="hello\n\nstatus?\n",
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.count("\n") >= 2 and "TWS_MASTER" in piped.stdout
    # continue that conversation
    cid = piped.stderr.split("conversation ", 1)[1].split()[0]
    again = await run("chat", "helper", "-c", cid, "-m", "thanks", "--url", url)
    assert again.returncode == 0 and "2 earlier question" in again.stdout
    missing = await run("chat", "helper", "-c", "nope", "-m", "x", "--url", url)
    assert missing.returncode == 1 and "404" in missing.stderr
    down = await run("chat", "helper", "-m", "x", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach" in down.stderr


async def test_ctrl_c_stops_the_answer_and_keeps_the_partial(slow_server: ServerProcess) -> None:
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-m",
            "agentcast.cli",
            "chat",
            "helper",
            "-m",
            "tell me a long story about streaming",
            "--url",
            slow_server.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.read, 8), 20 * UNIT)
        assert first, "the answer started streaming"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=20 * UNIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert b"stopped" in stderr
    async with httpx.AsyncClient(base_url=slow_server.url) as http:
        conversations = (await http.get("/api/conversations")).json()["conversations"]
        cid = conversations[0]["id"]
        messages = (await http.get(f"/api/conversations/{cid}/messages")).json()["messages"]
    answer = messages[-1]
    assert answer["role"] == "assistant" and answer["status"] == "cancelled"
    assert answer["content"] and (first + stdout).decode().strip().startswith(
        answer["content"].strip()[:8]
    )


async def test_llm_commands_against_a_fake_upstream(server_process: ServerProcess) -> None:
    from agentcast.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(tokens=8, tokens_per_second=200) as fake:
        models = await run("llm", "models", "--llm-url", fake.base_url)
        assert models.returncode == 0 and "fake-slow" in models.stdout.split()
        health = await run("llm", "health", "--llm-url", fake.base_url)
        assert health.returncode == 0 and health.stdout.startswith("ok:")
        bench = await run(
            "llm",
            "bench",
            "--llm-url",
            fake.base_url,
            "--model",
            "fake",
            "--model",
            "fake-500",
            "--runs",
            "2",
            "--url",
            server_process.url,
        )
        assert bench.returncode == 1, "one model failed"
        assert "fake" in bench.stdout and "error" in bench.stdout
        assert "TTFT" in bench.stdout and "live figures" in bench.stdout
        default = await run("llm", "bench", "--llm-url", fake.base_url, "--runs", "1")
        assert default.returncode == 0 and "fake" in default.stdout
        configured = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "agentcast.cli",
                "llm",
                "bench",
                "--llm-url",
                fake.base_url,
                "--runs",
                "1",
            ],
            env={
                **os.environ,
                "AGENTCAST_LLM_MODEL": "fake-slow",
                "AGENTCAST_LLM_FALLBACK_MODELS": '["fake"]',
            },
            capture_output=True,
            text=True,
            timeout=60 * UNIT,
        )
        assert configured.returncode == 0, configured.stderr
        assert "fake-slow" in configured.stdout and "│ fake " in configured.stdout
    down = await run("llm", "health", "--llm-url", f"http://127.0.0.1:{free_port()}/v1")
    assert down.returncode == 1 and "down" in down.stderr
    none = await run("llm", "models", "--llm-url", f"http://127.0.0.1:{free_port()}/v1")
    assert none.returncode == 1 and "unreachable" in none.stderr
