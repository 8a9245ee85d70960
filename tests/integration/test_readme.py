"""Every example of the README runs as written (the server's port aside).

A real ``agentcast serve --demo`` runs in a subprocess with a SQLite run store and a
small in-memory history (so that ``--since 0`` reaches back further than the broker
keeps: the store must fill in). The shell examples run in README order through bash,
``agentcast`` being this interpreter's ``python -m agentcast.cli`` and ``localhost:8000``
the test server's address; the Python examples run as scripts or, for the FastAPI mount,
are served by uvicorn and used over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets

from tests.conftest import UNIT, ServerProcess, eventually, free_port

README = Path(__file__).resolve().parents[2] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", TEXT, flags=re.S)
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
SHELL = [body for lang, body in BLOCKS if lang == "sh"]
AGENTCAST = f"{shlex.quote(sys.executable)} -m agentcast.cli"


def shell_commands() -> list[str]:
    """The README's runnable shell lines, in order: ``agentcast …`` and ``curl …``
    (synopses with ``[…]``, the server itself, interactive chat and LLM commands that
    need an upstream are left out: other tests cover them)."""
    found = []
    for body in SHELL:
        for line in body.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            words = command.split()
            if not words or words[0] not in ("agentcast", ".venv/bin/agentcast", "curl"):
                continue
            if words[0] != "curl" and (
                "[" in command or words[1] in ("serve", "chat", "llm", "--help")
            ):
                continue
            if words[0] == "curl" and "1234" in command:
                continue
            found.append(command)
    return found


def localize(command: str, port: int) -> str:
    command = re.sub(r"^(\.venv/bin/)?agentcast\b", AGENTCAST, command)
    return command.replace("localhost:8000", f"127.0.0.1:{port}").replace(
        "127.0.0.1:8000", f"127.0.0.1:{port}"
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("readme")
    env = {
        "AGENTCAST_STORE_URL": f"sqlite:///{home / 'agentcast.db'}",
        "AGENTCAST_HISTORY_MAX_EVENTS": "20",
    }
    server = ServerProcess(free_port(), "--demo", env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.close()


def wait_for_seq(server: ServerProcess, topic: str, seq: int) -> None:
    """Until ``topic`` has passed ``seq`` (the demo publishes a few events a second)."""
    deadline = 60 * UNIT
    with httpx.Client(base_url=server.url, timeout=UNIT) as http:
        for _ in range(int(deadline / 0.1)):
            topics = {t["topic"]: t["last_seq"] for t in http.get("/api/topics").json()}
            if topics.get(topic, 0) > seq:
                return
            time.sleep(0.1)  # a paced poll of server state, bounded above
    raise TimeoutError(f"{topic} did not pass seq {seq}")


def test_the_readme_has_the_examples_this_test_runs() -> None:
    commands = shell_commands()
    assert any("publish workflow:123 node_status" in c for c in commands)
    assert any("tail workflow:demo --since 0" in c for c in commands)
    assert any("/api/workflows/123/execute" in c for c in commands)
    assert any("replay workflow:123" in c for c in commands)
    assert len(PYTHON) >= 5


def test_shell_examples_run_as_written(demo: ServerProcess) -> None:
    # longer than the broker's history (20 events): `--since 0` needs the run store
    wait_for_seq(demo, "workflow:demo", 30)
    env = {**os.environ, "AGENTCAST_URL": demo.url}
    for command in shell_commands():
        follows = " tail " in f" {command} "
        line = localize(command, demo.port)
        count = 25 if "--since" in command else 3  # history, or live events only
        if follows:
            line += f" --count {count}"
        result = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, env=env, timeout=60 * UNIT
        )
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        out = result.stdout
        if command.startswith("curl"):
            assert '"detail"' not in out, (command, out)
        if follows:
            assert "lost" not in (out + result.stderr).lower(), (command, out, result.stderr)
            assert len(out.strip().splitlines()) >= count, (command, out)
        if "replay workflow:123" in command:
            assert "workflow_complete" in out, out
        if "agentcast publish" in command:
            assert out.strip().isdigit(), out
        if "/api/workflows/123/execute" in command:
            assert json.loads(out)["status"] == "started"
            _wait_run_finished(demo, "workflow:123")


def _wait_run_finished(server: ServerProcess, topic: str) -> None:
    with httpx.Client(base_url=server.url, timeout=UNIT) as http:
        for _ in range(int(60 * UNIT / 0.1)):
            found = http.get(f"/api/runs/{topic}")
            if found.status_code == 200 and found.json()["state"]["status"] in (
                "completed",
                "failed",
            ):
                return
            time.sleep(0.1)  # a paced poll of server state, bounded above
    raise TimeoutError(f"{topic} did not finish")


def example(marker: str) -> str:
    (body,) = [b for b in PYTHON if marker in b]
    return body


def run_script(source: str, tmp_path: Path, *, timeout: float) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, "AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'a.db'}"},
    )


def test_in_process_publish_example(tmp_path: Path) -> None:
    result = run_script(example("publish_threadsafe"), tmp_path, timeout=30 * UNIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "published seq 1"


def test_tracker_example(tmp_path: Path) -> None:
    result = run_script(example("WorkflowTracker"), tmp_path, timeout=30 * UNIT)
    assert result.returncode == 0, result.stderr


def test_client_example_follows_the_demo(demo: ServerProcess, tmp_path: Path) -> None:
    wait_for_seq(demo, "workflow:demo", 30)
    source = localize(example("client.subscribe"), demo.port)
    script = tmp_path / "client.py"
    script.write_text(source)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        seqs = [int(proc.stdout.readline().split()[0]) for _ in range(40)]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10 * UNIT)
    assert seqs == list(range(1, 41)), (seqs, err)
    assert "Error" not in err.replace("KeyboardInterrupt", ""), err


def test_echo_agent_example() -> None:
    namespace: dict[str, object] = {}
    exec(compile(example("register_agent"), "README.md", "exec"), namespace)
    from agentcast.chat.service import Chat
    from agentcast.gateway import Gateway

    gateway = namespace["gateway"]
    assert isinstance(gateway, Gateway)
    assert "echo" in gateway.feature(Chat).agents


async def test_fastapi_mount_example() -> None:
    namespace: dict[str, object] = {}
    exec(compile(example("include_router"), "README.md", "exec"), namespace)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(namespace["app"], host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
    )
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started)
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "workflow:9", "id": 1}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))["type"] == "subscribed"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                body = {"type": "node_status", "data": {"node_id": "n1", "status": "running"}}
                answer = await http.post("/api/topics/workflow:9/events", json=body)
                assert answer.status_code == 200, answer.text
                agents = await http.get("/api/agents")  # a feature's route is mounted too
                assert agents.status_code == 200, agents.text
            event = json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
            assert event["type"] == "node_status"
            assert event["data"]["workflow_id"] == "9"
        # the features' WebSocket endpoints are served too (seed 004's per-run socket)
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/ws/workflow/9") as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
            assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 1)
    finally:
        server.should_exit = True
        await task


def test_authentication_example_runs_as_written(tmp_path: Path) -> None:
    """The README's Authentication block through bash: a JWT server on a free port, bound
    to every address without --insecure, a minted token, a publish and a ticket."""
    (body,) = [b for lang, b in BLOCKS if lang == "bash" and "agentcast token" in b]
    port = free_port()
    script = localize_all(body, port).replace("python -c", f"{shlex.quote(sys.executable)} -c")
    script = script.replace("serve --host 0.0.0.0", f"serve --host 0.0.0.0 --port {port}")
    env = {**os.environ, "AGENTCAST_STORE_URL": ""}
    env.pop("AGENTCAST_URL", None)
    env["AGENTCAST_URL"] = f"http://127.0.0.1:{port}"
    result = subprocess.run(
        ["bash", "-c", f"set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60 * UNIT,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    assert lines[0].strip().isdigit(), result.stdout  # the publish's seq
    ticket = json.loads(lines[-1])
    assert ticket["expires_in"] == 60 and len(ticket["ticket"]) >= 32


def localize_all(text: str, port: int) -> str:
    """Every line of ``text`` localized (agentcast -> this interpreter, port 8000 -> ``port``)."""
    return "\n".join(
        re.sub(r"(^|\$\()agentcast\b", lambda m: m[1] + AGENTCAST, line).replace(
            "localhost:8000", f"127.0.0.1:{port}"
        )
        for line in text.splitlines()
    )
