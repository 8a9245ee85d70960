"""TLS: https and wss from a certificate and key, over real sockets with a throwaway CA
(trustme). The native WebSocket path, the ASGI routes it hands on (seed 003's endpoint)
and the HTTP API all run over it, in-process and as ``agentcast serve --tls-cert …``."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import UNIT, RunningServer, free_port, start_server, stop_server
from tests.integration.wsutil import recv, recv_until, send, subscribe

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()


@dataclass
class Certs:
    cert: Path
    key: Path
    client: ssl.SSLContext
    """Trusts the test CA."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    home = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = home / "cert.pem", home / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    for pem in issued.cert_chain_pems[1:]:
        pem.write_to_path(cert, append=True)
    issued.private_key_pem.write_to_path(key)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Certs(cert, key, client)


@pytest.fixture
async def tls_server(certs: Certs) -> AsyncIterator[RunningServer]:
    running, task = await start_server(
        "native",
        offline_tokens_per_second=0,
        tls_certfile=str(certs.cert),
        tls_keyfile=str(certs.key),
    )
    try:
        yield running
    finally:
        await stop_server(running, task)


async def test_wss_and_https_in_process(tls_server: RunningServer, certs: Certs) -> None:
    base = f"127.0.0.1:{tls_server.port}"
    async with websockets.connect(f"wss://{base}/ws", ssl=certs.client) as conn:
        await subscribe(conn, "board:tls")
        async with httpx.AsyncClient(base_url=f"https://{base}", verify=certs.client) as http:
            r = await http.post("/api/topics/board:tls/events", json={"type": "tick", "data": {}})
            assert r.status_code == 200
        event = await recv_until(conn, "tick")
        assert (event["topic"], event["seq"]) == ("board:tls", 1)
    # a per-run endpoint (native path) and seed 003's endpoint (ASGI, handed on)
    async with websockets.connect(f"wss://{base}/api/ws/workflow/w1", ssl=certs.client) as conn:
        await send(conn, {"type": "ping", "id": "p"})
        assert (await recv_until(conn, "pong"))["type"] == "pong"
    async with websockets.connect(f"wss://{base}/api/v1/ws/helper", ssl=certs.client) as conn:
        assert (await recv(conn))["type"] == "welcome"
        await conn.send("hello")
        assert (await recv(conn, 5 * UNIT))["type"] == "message"
    # the Origin check holds over TLS too
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"wss://{base}/ws",
            ssl=certs.client,
            origin="https://evil.example",  # type: ignore[arg-type]
        ):
            pass
    assert info.value.response.status_code == 403


async def test_plain_and_untrusted_clients_do_not_connect(tls_server: RunningServer) -> None:
    base = f"127.0.0.1:{tls_server.port}"
    with pytest.raises((OSError, websockets.exceptions.WebSocketException)):
        async with websockets.connect(f"ws://{base}/ws", open_timeout=5 * UNIT):
            pass
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.connect(f"wss://{base}/ws", open_timeout=5 * UNIT):
            pass  # the system's trust store does not know the test CA


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


@contextlib.contextmanager
def serving(
    args: list[str], client: ssl.SSLContext, log: Path, cwd: Path | None = None
) -> Iterator[int]:
    """``agentcast serve ARGS --port P`` (uvloop, as in production) until healthy over
    https; yields the port."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentcast.cli", "serve", *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    try:
        deadline = time.monotonic() + 10 * UNIT
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                url = f"https://127.0.0.1:{port}/healthz"
                if httpx.get(url, verify=client, timeout=UNIT).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not become healthy"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10 * UNIT)


@pytest.fixture
def tls_process(certs: Certs, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``agentcast serve --tls-cert … --tls-key …``."""
    log = tmp_path / "serve.log"
    args = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    with serving(args, certs.client, log) as port:
        yield port, log


async def test_security_docs_example(certs: Certs, tmp_path: Path) -> None:
    """docs/security.md's command, as written, in a directory holding cert.pem and key.pem."""
    section = DOCS.split("## Origins, CORS and TLS", 1)[1].split("\n## ", 1)[0]
    (line,) = re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)
    words = shlex.split(line)
    assert words[:2] == ["agentcast", "serve"]
    shutil.copy(certs.cert, tmp_path / "cert.pem")
    shutil.copy(certs.key, tmp_path / "key.pem")
    with serving(words[2:], certs.client, tmp_path / "log", cwd=tmp_path) as port:
        base = f"wss://127.0.0.1:{port}/ws"
        async with websockets.connect(base, ssl=certs.client, origin="http://localhost:3000"):  # type: ignore[arg-type]
            pass
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(base, ssl=certs.client, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403


async def test_serve_with_tls_flags(tls_process: tuple[int, Path], certs: Certs) -> None:
    port, log = tls_process
    async with websockets.connect(f"wss://127.0.0.1:{port}/ws", ssl=certs.client) as conn:
        await conn.send(json.dumps({"type": "ping", "id": "p"}))
        assert json.loads(await conn.recv())["type"] == "pong"
    output = log.read_text()
    assert f"on https://127.0.0.1:{port}" in output
    assert f"WebSocket wss://127.0.0.1:{port}/ws" in output
    assert "without TLS" not in output


def test_serve_reports_bad_tls_files(certs: Certs, tmp_path: Path) -> None:
    port = str(free_port())
    missing = run_cli("serve", "--port", port, "--tls-cert", str(tmp_path / "no.pem"),
                      "--tls-key", str(certs.key))  # fmt: skip
    assert missing.returncode == 2
    assert "no.pem" in missing.stderr and "does not exist" in missing.stderr
    other = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(other)
    wrong = run_cli("serve", "--port", port, "--tls-cert", str(certs.cert), "--tls-key", str(other))
    assert wrong.returncode == 2
    assert "TLS: cannot load certificate" in wrong.stderr
    half = run_cli("serve", "--port", port, "--tls-cert", str(certs.cert))
    assert half.returncode == 2 and "go together" in half.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr + half.stderr


def test_public_bind_without_tls_warns(certs: Certs) -> None:
    """A non-loopback address without TLS starts with a warning (with TLS: none)."""
    for tls, warned in (((), True), (("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)), False)):  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentcast.cli", "serve", "--host", "0.0.0.0", "--insecure",
             "--port", str(free_port()), *tls],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            lines = []
            while not re.match(r"agentcast \S+ on ", line := proc.stderr.readline()):
                assert line, "".join(lines)
                lines.append(line)
            assert any("without TLS" in x for x in lines) is warned, lines
            assert ("on https://0.0.0.0:" in line) is not warned
        finally:
            proc.terminate()
            proc.communicate(timeout=10 * UNIT)
