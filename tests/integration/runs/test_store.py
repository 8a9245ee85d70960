"""Finished runs survive a restart (SQLite file); the same on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import websockets

from tests.conftest import UNIT, ServerProcess, free_port, start_server, stop_server
from tests.integration.wsutil import recv, recv_until, send
from tests.services import POSTGRES, require_postgres


async def run_to_completion(url: str, port: int, workflow: str) -> int:
    """Execute the sample graph on ``workflow`` and wait for its end; returns its last seq."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/ws/workflow/{workflow}") as ws:
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.post(
                f"/api/workflows/{workflow}/execute", json={"initial_inputs": {"items": 3}}
            )
            assert r.status_code == 202
        done = await recv_until(ws, "workflow_complete", 20 * UNIT)
        return int(done["seq"])


async def test_finished_runs_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    env = {"AGENTCAST_STORE_URL": f"sqlite:///{db}", "AGENTCAST_RUN_LEASE_TTL": "0.5"}
    port = free_port()
    first = ServerProcess(port, env=env)
    await asyncio.to_thread(first.start)
    try:
        last = await run_to_completion(first.url, port, "wf1")
        async with httpx.AsyncClient(base_url=first.url) as http:
            # a run whose producer will be gone after the restart
            await http.post(
                "/api/topics/workflow:orphan/events",
                json={
                    "type": "workflow_start",
                    "data": {
                        "workflow_id": "orphan",
                        "execution_id": "x",
                        "execution_order": ["a"],
                        "total_nodes": 1,
                    },
                },
            )
            listed = (await http.get("/api/runs", params={"kind": "workflow"})).json()
            assert {r["topic"]: r["status"] for r in listed["runs"]} == {
                "workflow:wf1": "completed",
                "workflow:orphan": "running",
            }
            # the dashboard's progress bars: as each run last reported it
            assert {r["topic"]: r["progress"] for r in listed["runs"]} == {
                "workflow:wf1": 100.0,
                "workflow:orphan": 0.0,
            }
    finally:
        await asyncio.to_thread(first.stop)
        first.log.close()

    second = ServerProcess(port, env=env)
    await asyncio.to_thread(second.start)
    try:
        async with httpx.AsyncClient(base_url=second.url) as http:
            listed = (await http.get("/api/runs", params={"status": "completed"})).json()
            assert [r["topic"] for r in listed["runs"]] == ["workflow:wf1"]
            assert listed["runs"][0]["last_seq"] == last
            state = (await http.get("/api/runs/workflow:wf1")).json()
            assert (state["seq"], state["state"]["status"]) == (last, "completed")
            assert state["state"]["nodes"]["report"]["status"] == "completed"
            events = (
                await http.get("/api/runs/workflow:wf1/events", params={"since": last - 2})
            ).json()
            assert [e["seq"] for e in events["events"]] == [last - 1, last]
            assert (await http.get("/api/runs/workflow:none")).status_code == 404
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            # a late joiner of the finished run gets its final state
            await send(ws, {"type": "subscribe", "topic": "workflow:wf1"})
            assert (await recv(ws))["type"] == "subscribed"
            snap = await recv(ws)
            assert (snap["type"], snap["seq"], snap["data"]["status"]) == (
                "snapshot",
                last,
                "completed",
            )
            # replay from the store, after the restart
            await send(ws, {"type": "replay", "topic": "workflow:wf1", "speed": 0})
            started = await recv(ws)
            assert started["data"]["events"] == last
            replayed = [await recv(ws) for _ in range(last)]
            assert [m["seq"] for m in replayed] == list(range(1, last + 1))
            assert all(m["replay"] is True for m in replayed)
            assert (await recv(ws))["type"] == "replay_complete"
            # numbering continues across the restart
            await send(
                ws,
                {
                    "type": "publish",
                    "topic": "workflow:wf1",
                    "event": "log",
                    "data": {
                        "workflow_id": "wf1",
                        "execution_id": "later",
                        "level": "info",
                        "message": "after restart",
                    },
                    "id": "p",
                },
            )
            event = await recv(ws)
            assert event["seq"] == last + 1
            # the orphaned run is sealed once its lease lapses
            await send(ws, {"type": "subscribe", "topic": "workflow:orphan"})
            await recv_until(ws, "publisher_lost", 20 * UNIT)
        async with httpx.AsyncClient(base_url=second.url) as http:
            orphan = (await http.get("/api/runs/workflow:orphan")).json()
            assert orphan["state"]["status"] == "lost"
    finally:
        await asyncio.to_thread(second.stop)
        second.log.close()


async def test_runs_on_postgresql() -> None:
    await require_postgres()
    running, task = await start_server("native", store_url=POSTGRES)
    try:
        last = await run_to_completion(running.url, running.port, "pg1")
        async with httpx.AsyncClient(base_url=running.url) as http:
            listed = (await http.get("/api/runs")).json()
            assert listed["total"] == 1
            assert listed["runs"][0]["last_seq"] == last
            events = (await http.get("/api/runs/workflow:pg1/events")).json()["events"]
            assert [e["seq"] for e in events] == list(range(1, last + 1))
            assert json.dumps(events[0]["data"])
    finally:
        await stop_server(running, task)


async def test_no_store_configured(native_server: object) -> None:
    running = native_server
    async with httpx.AsyncClient(base_url=running.url) as http:  # type: ignore[attr-defined]
        r = await http.get("/api/runs")
        assert r.status_code == 404
        assert r.json()["detail"]["code"] == "unavailable"
        assert (await http.get("/api/runs/board:1")).status_code == 400


async def test_run_history_reaches_back_into_the_store(tmp_path: Path) -> None:
    """The broker keeps 5 events; a run of 30 resumes from seq 0, 12 or 20 without loss."""
    running, task = await start_server(
        "native", store_url=f"sqlite:///{tmp_path / 'h.db'}", history_max_events=5
    )
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            for i in range(30):
                body = {"type": "log", "data": {"message": f"line {i}"}}
                r = await http.post("/api/topics/workflow:long/events", json=body)
                assert r.json()["seqs"] == [i + 1]
            page = (await http.get("/api/topics/workflow:long/events", params={"since": 12})).json()
            assert page["complete"] is True
            assert [e["seq"] for e in page["events"]] == list(range(13, 31))
            page = (
                await http.get("/api/topics/workflow:long/events", params={"since": 0, "limit": 4})
            ).json()
            assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4]
            assert page["events"][0]["data"]["message"] == "line 0"
            # a plain topic has no store: its lost history is reported as lost
            for _ in range(8):
                await http.post("/api/topics/plain/events", json={"type": "x", "data": {}})
            plain = (await http.get("/api/topics/plain/events", params={"since": 0})).json()
            assert plain["complete"] is False
            assert [e["seq"] for e in plain["events"]] == [4, 5, 6, 7, 8]
        async with websockets.connect(running.ws_url) as ws:
            await send(ws, {"type": "subscribe", "topic": "workflow:long", "since": 20})
            subscribed = await recv(ws)
            assert subscribed["data"]["recovered"] is True
            got = [await recv(ws) for _ in range(10)]
            assert [m["seq"] for m in got] == list(range(21, 31))
            assert all(m["type"] == "log" for m in got)  # no snapshot: nothing was lost
    finally:
        await stop_server(running, task)
