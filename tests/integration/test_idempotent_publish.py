"""Idempotent producers on a real server (memory broker; the Redis broker and two nodes
are covered by the contract suite and ``test_scale_out_idempotent.py``): the HTTP headers
``Producer-Id``/``Producer-Seq``, the WebSocket ``publish`` fields, the Python client's
numbering and retries, ``agentcast publish --producer-id``."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest
import websockets

from agentcast.client import connect
from agentcast.client.errors import CommandFailedError
from tests.conftest import UNIT, RunningServer, ServerProcess
from tests.integration.wsutil import recv, recv_until, send


def _headers(pid: str, pseq: int) -> dict[str, str]:
    return {"Producer-Id": pid, "Producer-Seq": str(pseq)}


async def test_a_repeated_http_request_publishes_once_and_answers_the_original_seqs(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        url = "/api/topics/idem:1/events"
        body = [{"type": "a", "data": {"i": 1}}, {"type": "b", "data": {"i": 2}}]
        first = await http.post(url, json=body, headers=_headers("p1", 1))
        assert first.status_code == 200, first.text
        assert (first.json()["seqs"], first.json()["duplicates"]) == ([1, 2], 0)
        await http.post(url, json={"type": "other"})  # seq 3, not idempotent
        again = await http.post(url, json=body, headers=_headers("p1", 1))
        assert (again.json()["seqs"], again.json()["duplicates"]) == ([1, 2], 2)
        # the next numbers publish; a half-overlapping request publishes only the new one
        overlap = await http.post(url, json=body, headers=_headers("p1", 2))
        assert (overlap.json()["seqs"], overlap.json()["duplicates"]) == ([2, 4], 1)
        hist = (await http.get(url, params={"since": 0})).json()
        assert [(e["seq"], e["type"]) for e in hist["events"]] == [
            (1, "a"),
            (2, "b"),
            (3, "other"),
            (4, "b"),
        ]


async def test_bad_producer_headers_get_400_naming_the_header(server: RunningServer) -> None:
    cases = [
        ({"Producer-Id": "p"}, "Producer-Seq"),
        ({"Producer-Seq": "1"}, "Producer-Id"),
        (_headers("p", 0), "Producer-Seq"),
        ({"Producer-Id": "p", "Producer-Seq": "one"}, "Producer-Seq"),
        (_headers("p", (1 << 53) + 1), "Producer-Seq"),
        (_headers("x" * 129, 1), "Producer-Id"),
    ]
    async with httpx.AsyncClient(base_url=server.url) as http:
        for headers, field in cases:
            r = await http.post("/api/topics/idem:2/events", json={"type": "x"}, headers=headers)
            assert r.status_code == 400, (headers, r.text)
            detail = r.json()["detail"]
            assert (detail["code"], detail["field"]) == ("invalid_field", field), detail
        # the server still works, and nothing was published
        hist = (await http.get("/api/topics/idem:2/events")).json()
        assert hist["events"] == []


async def test_websocket_publish_with_a_producer_acks_a_retry_as_duplicate(
    server: RunningServer,
) -> None:
    async with websockets.connect(server.ws_url) as ws:
        frame = {"type": "publish", "topic": "idem:3", "event": "e", "data": {}}
        ident = {"producer_id": "ws-1", "producer_seq": 7}
        await send(ws, {**frame, **ident, "id": 1})
        ack = await recv_until(ws, "ack")
        assert ack["data"] == {"topic": "idem:3", "seq": 1}
        await send(ws, {**frame, **ident, "id": 2})
        ack = await recv_until(ws, "ack")
        assert ack["data"] == {"topic": "idem:3", "seq": 1, "duplicate": True}
        await send(ws, {**frame, "producer_id": "ws-1", "id": 3})
        error = await recv(ws)
        assert error["type"] == "error" and error["data"]["code"] == "invalid_field"
        assert error["data"]["field"] == "producer_seq"
        await send(ws, {**frame, "producer_id": "ws-1", "producer_seq": 0, "id": 4})
        error = await recv(ws)
        assert error["type"] == "error" and error["data"]["field"] == "producer_seq"


async def test_the_python_client_numbers_its_publishes(server: RunningServer) -> None:
    async with connect(server.url, producer_id="client-a") as client:
        seqs = [await client.publish("idem:4", "e", {"i": i}) for i in range(3)]
        assert seqs == [1, 2, 3]
        assert client.producer_seq == 3
        # concurrent publishes are sent one at a time, in call order
        more = await asyncio.gather(*(client.publish("idem:4", "e", {"i": i}) for i in range(5)))
        assert more == [4, 5, 6, 7, 8]
        assert await client.publish("idem:4", "e", idempotent=False) == 9
        with pytest.raises(CommandFailedError) as info:
            await client.publish("bad topic", "e")
        assert info.value.code == "invalid_topic"
    # a second client with the same producer id continues its numbering: its first
    # numbers are retries of the first client's
    async with connect(server.url, producer_id="client-a") as again:
        assert await again.publish("idem:4", "e") == 1  # producer seq 1: already published
        again.producer_seq = 100
        assert await again.publish("idem:4", "e") == 10


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentcast.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30 * UNIT):
        out, errs = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), errs.decode()


async def test_cli_publish_with_a_producer_seq_is_idempotent(
    server_process: ServerProcess,
) -> None:
    url = server_process.url
    args = ("publish", "idem:5", "note", "{}", "--url", url)
    ident = ("--producer-id", "cron-job", "--producer-seq", "1")
    assert (await run_cli(*args, *ident))[:2] == (0, "1\n")
    code, out, errs = await run_cli(*args, *ident)
    assert (code, out) == (0, "1\n") and "already published" in errs
    assert (await run_cli(*args))[:2] == (0, "2\n")
    code, _, errs = await run_cli(*args, "--producer-id", "cron-job")
    assert code == 2 and "go together" in errs
