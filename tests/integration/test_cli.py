"""The CLI against real server processes: publish, tail (also across a restart)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from tests.conftest import UNIT, RunningServer, ServerProcess, free_port


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentcast.cli", *args]


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, cli(*args), capture_output=True, text=True, timeout=30 * UNIT
    )


async def subscribed(http: httpx.AsyncClient) -> None:
    """Wait (bounded) until the tail process is subscribed: the server exposes no event."""
    async with asyncio.timeout(20 * UNIT):
        while not any(t["subscribers"] for t in (await http.get("/api/topics")).json()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_publish_and_tail_json(server_process: ServerProcess) -> None:
    url = server_process.url
    first = await run("publish", "board:1", "note", '{"n": 1}', "--url", url)
    assert (first.returncode, first.stdout.strip()) == (0, "1")
    second = await run("publish", "board:1", "note", '{"n": 2}', "--url", url)
    assert second.stdout.strip() == "2"
    tail = await run("tail", "board:1", "--since", "0", "--json", "--count", "2", "--url", url)
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(m["seq"], m["data"]["n"]) for m in lines] == [(1, 1), (2, 2)]
    assert all(set(m) == {"type", "topic", "seq", "timestamp", "data"} for m in lines)
    pretty = await run("tail", "board:1", "--since", "1", "--count", "1", "--url", url)
    assert "board:1" in pretty.stdout
    assert "#2" in pretty.stdout


async def test_publish_errors(server_process: ServerProcess) -> None:
    bad_json = await run("publish", "board:1", "note", "{nope", "--url", server_process.url)
    assert bad_json.returncode == 2
    assert "not valid JSON" in bad_json.stderr
    refused = await run("publish", "bad topic", "note", "{}", "--url", server_process.url)
    assert refused.returncode == 1
    assert "invalid_topic" in refused.stderr
    down = await run("publish", "t", "note", "{}", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "cannot reach" in down.stderr


async def test_tail_keeps_going_across_a_server_restart() -> None:
    port = free_port()
    server = ServerProcess(port)
    await asyncio.to_thread(server.start)
    tail = await asyncio.create_subprocess_exec(
        *cli("tail", "board:r", "--json", "--count", "3", "--url", server.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tail.stdout is not None
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await subscribed(http)
            await http.post("/api/topics/board:r/events", json={"type": "before", "data": {}})
        line = await asyncio.wait_for(tail.stdout.readline(), 10 * UNIT)
        assert json.loads(line)["type"] == "before"
        await asyncio.to_thread(server.stop)
        server.log.close()
        server = ServerProcess(port)
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url) as http:
            await subscribed(http)  # the tail reconnected and resubscribed
            await http.post(
                "/api/topics/board:r/events", json=[{"type": "after1"}, {"type": "after2"}]
            )
        rest = [
            json.loads(await asyncio.wait_for(tail.stdout.readline(), 10 * UNIT)) for _ in range(2)
        ]
        assert [m["type"] for m in rest] == ["after1", "after2"]
        assert [m["seq"] for m in rest] == [1, 2]  # the in-memory topic started again
        assert await asyncio.wait_for(tail.wait(), 10 * UNIT) == 0
        assert tail.stderr is not None
        notice = (await tail.stderr.read()).decode()
        assert "history of board:r no longer reaches seq 2" in notice
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
        await asyncio.to_thread(server.stop)
        server.log.close()


async def test_tail_says_when_it_cannot_reach_the_server_and_when_it_is_back() -> None:
    """No silent retries: each failed attempt is reported on stderr with the reason and
    the delay; once a server listens there, tail connects, says so and gets the event."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tail = await asyncio.create_subprocess_exec(
        *cli("tail", "board:late", "--json", "--count", "1", "--url", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tail.stdout is not None and tail.stderr is not None
    server = ServerProcess(port)
    try:
        notices = []
        for _ in range(2):  # the first attempt and a retry, each reported
            line = (await asyncio.wait_for(tail.stderr.readline(), 10 * UNIT)).decode()
            notices.append(line)
        for line in notices:
            assert re.fullmatch(
                rf"cannot reach {re.escape(url)}: connection refused; retrying in \d+\.\d s\n",
                line,
            ), line
        await asyncio.to_thread(server.start)
        line = (await asyncio.wait_for(tail.stderr.readline(), 20 * UNIT)).decode()
        while line.startswith("cannot reach"):  # attempts made before the server listened
            line = (await asyncio.wait_for(tail.stderr.readline(), 20 * UNIT)).decode()
        assert line == f"connected to {url}\n"
        async with httpx.AsyncClient(base_url=url) as http:
            await subscribed(http)
            await http.post("/api/topics/board:late/events", json={"type": "hello"})
        event = json.loads(await asyncio.wait_for(tail.stdout.readline(), 10 * UNIT))
        assert (event["topic"], event["type"]) == ("board:late", "hello")
        assert await asyncio.wait_for(tail.wait(), 10 * UNIT) == 0
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
        if server.proc is not None:
            await asyncio.to_thread(server.stop)
        server.log.close()


async def test_tail_says_when_the_connection_is_lost() -> None:
    port = free_port()
    server = ServerProcess(port)
    await asyncio.to_thread(server.start)
    tail = await asyncio.create_subprocess_exec(
        *cli("tail", "board:gone", "--url", server.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tail.stderr is not None
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await subscribed(http)
        await asyncio.to_thread(server.stop)  # SIGTERM: the server closes with 1001
        line = (await asyncio.wait_for(tail.stderr.readline(), 10 * UNIT)).decode()
        assert line.startswith(
            f"lost the connection to {server.url}: closed with 1001 (server shutting down); "
            "retrying in "
        ), line
        line = (await asyncio.wait_for(tail.stderr.readline(), 10 * UNIT)).decode()
        assert line.startswith(f"cannot reach {server.url}: connection refused; retrying in ")
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
        server.log.close()


async def test_tail_usage_errors() -> None:
    bad_url = await run("tail", "t", "--url", "ftp://example.org")
    assert bad_url.returncode == 2
    assert "URL" in bad_url.stderr
    bad_since = await run("tail", "t", "--since", "-1", "--url", "http://127.0.0.1:1")
    assert bad_since.returncode == 2
    assert "since" in bad_since.stderr


class Refuse:
    def authenticate(self, request: ConnectionRequest) -> Principal:
        raise AuthenticationError("no token here")


async def test_tail_stops_on_a_refused_handshake(native_server: RunningServer) -> None:
    """A terminal error (HTTP 401 on the handshake) ends tail with status 1."""
    native_server.gateway.authenticator = Refuse()
    refused = await run("tail", "t", "--url", native_server.url)
    assert refused.returncode == 1
    assert "401" in refused.stderr


async def test_replay_errors(native_server: RunningServer) -> None:
    down = await run("replay", "workflow:1", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "cannot reach" in down.stderr
    assert "connection refused" in down.stderr
    native_server.gateway.authenticator = Refuse()
    refused = await run("replay", "workflow:1", "--url", native_server.url)
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr
    assert "Traceback" not in refused.stderr


COMMANDS = [[], ["serve"], ["publish"], ["tail"], ["replay"], ["chat"], ["llm"]]
COMMANDS += [["llm", sub] for sub in ("models", "health", "bench")]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "agentcast")
async def test_help_shows_types_and_defaults_readably(command: list[str]) -> None:
    """Each option that takes a value names its type (INTEGER, URL, …), flags show none,
    and defaults read ``[default: …]``; no ``<bool>``, nothing swallowed as markup."""
    out = await asyncio.to_thread(
        subprocess.run,
        cli(*command, "--help"),
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "<bool>" not in text
    assert re.search(r"\S \.", text) is None, text  # e.g. "Address to bind ."
    assert re.search(r"^\s+--help\s+Show this message and exit\.$", text, re.M), text
    for line in text.splitlines():
        if re.match(r"\s+(-\w, )?--[\w-]+ <", line):
            raise AssertionError(f"an option shows a raw type: {line!r}")


async def test_serve_help_states_the_settings_defaults() -> None:
    from agentcast.settings import Settings

    out = await run("serve", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # unwrapped
    defaults = {name: Settings.model_fields[name].default for name in ("host", "port")}
    assert f"--port INTEGER Port to bind. [default: {defaults['port']}]" in text
    assert f"--host ADDRESS Address to bind. [default: {defaults['host']}]" in text
    assert f"[default: {Settings.model_fields['log_level'].default}]" in text
    assert "--demo Keep demo runs going" in text  # a flag: no type
    assert "--config PATH" in text
