"""docs/scaling.md's nginx configuration, run as written (the upstream addresses and the
listen port replaced) with nginx from Debian's packages in front of two real ``agentcast
serve`` processes on one Redis: WebSocket upgrades and HTTP pass through, the Origin check
still works behind it, and clients whose node is killed reconnect through nginx to the
other node and resume, counted: zero lost, zero duplicated.

nginx runs with a private prefix, configuration, pid file and temp directories in the
test's tmp directory, on a free port, in the foreground (never the system service)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import UNIT, ServerProcess, free_port
from tests.integration.test_scale_out import Nodes
from tests.integration.wsutil import subscribe
from tests.services import delete_prefix, redis_prefix, require_redis, require_service

DOC = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")


def doc_config() -> str:
    """The ``nginx`` block of docs/scaling.md, as written there."""
    (body,) = re.findall(r"```nginx\n(.*?)```", DOC, flags=re.S)
    return str(body)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


class Nginx:
    """nginx in the foreground with the doc's configuration included in a private main
    configuration (pid file, temp paths, error log: all under ``root``)."""

    def __init__(self, root: Path, upstreams: list[int]) -> None:
        self.root = root
        self.port = free_port()
        conf = doc_config()
        conf = replace_once(conf, "server 10.0.0.11:8000", f"server 127.0.0.1:{upstreams[0]}")
        conf = replace_once(conf, "server 10.0.0.12:8000", f"server 127.0.0.1:{upstreams[1]}")
        conf = replace_once(conf, "listen 80;", f"listen 127.0.0.1:{self.port};")
        (root / "agentcast.conf").write_text(conf)
        temps = "\n".join(
            f"    {kind}_temp_path {root / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (root / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    include {root / "agentcast.conf"};
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx is None:
            require_service("nginx is not installed (apt-get install nginx-light)")
        check = subprocess.run(
            [
                nginx,
                "-t",
                "-p",
                str(self.root),
                "-c",
                str(self.root / "nginx.conf"),
                "-e",
                "stderr",
            ],
            capture_output=True,
            text=True,
            timeout=10 * UNIT,
        )
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10 * UNIT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=UNIT).close()
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("nginx did not listen")

    def log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: master and worker exit
            try:
                self.proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10 * UNIT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@pytest.fixture
def broker_url() -> Iterator[str]:
    url = require_redis()
    prefix = redis_prefix()
    yield f"{url}?prefix={prefix}"
    asyncio.run(delete_prefix(url, prefix))


@pytest.fixture
async def cluster(broker_url: str, tmp_path: Path) -> AsyncIterator[tuple[Nodes, Nginx]]:
    """Two nodes on one Redis, nginx in front of them."""
    nodes = Nodes(broker_url)
    nginx: Nginx | None = None
    try:
        a, b = await nodes.start(), await nodes.start()
        nginx = Nginx(tmp_path, [a.port, b.port])
        await asyncio.to_thread(nginx.start)
        yield nodes, nginx
    finally:
        if nginx is not None:
            await asyncio.to_thread(nginx.stop)
        await asyncio.to_thread(nodes.close)


def test_the_doc_has_one_nginx_configuration() -> None:
    conf = doc_config()
    for needed in (
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "least_conn;",
    ):
        assert needed in conf


async def test_http_websocket_and_the_origin_check_through_nginx(
    cluster: tuple[Nodes, Nginx],
) -> None:
    _, nginx = cluster
    async with httpx.AsyncClient(base_url=nginx.url) as http:
        for _ in range(4):  # both nodes, whichever nginx picks
            r = await http.get("/readyz")
            assert r.status_code == 200, r.text
        r = await http.post("/api/topics/via-nginx/events", json={"type": "e", "data": {"n": 1}})
        assert r.status_code == 200, r.text
        assert r.json()["seqs"] == [1]
    # a same-origin browser page: Origin is the Host the browser used, which nginx forwards
    async with websockets.connect(nginx.ws, origin=nginx.url) as ws:  # type: ignore[arg-type]
        reply = await subscribe(ws, "via-nginx", since=0)
        assert reply["data"]["seq"] == 1
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
        assert (frame["seq"], frame["data"]) == (1, {"n": 1})
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(nginx.ws, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403


async def _subscribers(node: ServerProcess, topic: str) -> int:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{node.url}/api/topics")
    for entry in r.json():
        if entry["topic"] == topic:
            return int(entry["subscribers"])
    return 0


async def test_sigkill_the_node_behind_nginx_clients_resume_on_the_other(
    cluster: tuple[Nodes, Nginx],
) -> None:
    """10 clients connect through nginx (``least_conn`` spreads them over both nodes) and
    read a stream published through nginx; one node is killed mid-stream; its clients
    reconnect to the same nginx address, land on the survivor and resume from their last
    seq: every client gets every seq once, in order."""
    nodes, nginx = cluster
    a, b = nodes.procs
    total, clients = 300, 10
    received: list[list[int]] = [[] for _ in range(clients)]
    reconnects = [0] * clients

    async def client(i: int) -> None:
        last = 0
        while len(received[i]) < total:
            try:
                async with websockets.connect(nginx.ws) as ws:
                    await subscribe(ws, "stream", since=last)
                    while len(received[i]) < total:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == "tick":
                            received[i].append(frame["seq"])
                            last = frame["seq"]
            except (OSError, websockets.ConnectionClosed, InvalidStatus):
                reconnects[i] += 1
                await asyncio.sleep(0.05)  # a client's reconnect backoff

    readers = [asyncio.create_task(client(i)) for i in range(clients)]
    async with asyncio.timeout(10 * UNIT):
        while (await _subscribers(a, "stream")) + (await _subscribers(b, "stream")) < clients:  # noqa: ASYNC110 - bounded above
            await asyncio.sleep(0.05)
    on_a, on_b = await _subscribers(a, "stream"), await _subscribers(b, "stream")
    assert on_a > 0 and on_b > 0, (on_a, on_b)  # least_conn spread them
    async with asyncio.timeout(60 * UNIT), httpx.AsyncClient(base_url=nginx.url) as http:
        for n in range(total):
            r = await http.post("/api/topics/stream/events", json={"type": "tick", "data": {}})
            assert r.status_code == 200, r.text  # through nginx, whichever node is up
            if n == total // 3:
                assert a.proc is not None
                a.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(a.proc.wait, 10 * UNIT)
        await asyncio.gather(*readers)
    lost = sum(total - len(set(r)) for r in received)
    duplicated = sum(len(r) - len(set(r)) for r in received)
    assert (lost, duplicated) == (0, 0)
    assert all(r == list(range(1, total + 1)) for r in received)
    # A's clients did reconnect, and the only node left is B
    assert sum(1 for n in reconnects if n) >= on_a
    assert nginx.proc is not None and nginx.proc.poll() is None, nginx.log()
