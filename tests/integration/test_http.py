"""The HTTP API on a real server (both transports serve the same app)."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets
from fastapi import FastAPI, WebSocket

from agentcast.gateway import Gateway
from agentcast.transports.http import create_app
from tests.conftest import RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, subscribe


async def test_publish_single_and_array(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        one = await http.post("/api/topics/board:9/events", json={"type": "log", "data": {"m": 1}})
        assert one.status_code == 200
        assert one.json()["seqs"] == [1]
        assert one.json()["topic"] == "board:9"
        many = await http.post(
            "/api/topics/board:9/events",
            json=[{"type": "a", "data": {}}, {"type": "b"}, {"type": "c", "data": {"x": [1]}}],
        )
        assert many.json()["seqs"] == [2, 3, 4]
        hist = (await http.get("/api/topics/board:9/events", params={"since": 2})).json()
        assert [e["type"] for e in hist["events"]] == ["b", "c"]
        assert hist["events"][1]["data"] == {"x": [1]}
        assert (hist["first_seq"], hist["last_seq"], hist["complete"]) == (1, 4, True)
        topics = (await http.get("/api/topics")).json()
        assert {"topic": "board:9", "last_seq": 4, "subscribers": 0} in topics


async def test_topic_with_slashes_and_colons(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/api/topics/team/a:b/events", json={"type": "x"})
        assert r.status_code == 200
        assert r.json()["topic"] == "team/a:b"


async def test_bad_publishes_get_400_with_exact_field(server: RunningServer) -> None:
    cases = [
        ({"data": {}}, "invalid_field", "type"),
        ({"type": ""}, "invalid_field", "type"),
        ({"type": "x", "data": [1]}, "invalid_field", "data"),
        ([{"type": "ok"}, {"type": 5}], "invalid_field", "1.type"),
        ([], "invalid_field", "body"),
        ("just a string", "invalid_field", "body"),
    ]
    async with httpx.AsyncClient(base_url=server.url) as http:
        for body, code, field in cases:
            r = await http.post("/api/topics/t/events", json=body)
            assert r.status_code == 400, (body, r.text)
            detail = r.json()["detail"]
            assert (detail["code"], detail["field"]) == (code, field), (body, detail)
        r = await http.post(
            "/api/topics/t/events", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        r = await http.post("/api/topics/bad topic/events", json={"type": "x"})
        assert r.json()["detail"]["code"] == "invalid_topic"
        big = {"type": "x", "data": {"blob": "x" * (server.gateway.settings.max_event_bytes + 1)}}
        r = await http.post("/api/topics/t/events", json=big)
        assert r.status_code == 400
        assert r.json()["detail"]["code"] == "payload_too_large"
        r = await http.get("/api/topics/bad topic/events")
        assert r.status_code == 400
        # nothing was published by any of the bad requests
        assert (await http.get("/api/topics/t/events")).json()["last_seq"] == 0


async def test_healthz_and_openapi(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        health = (await http.get("/healthz")).json()
        assert health["status"] == "ok"
        assert health["mode"] == "open"
        spec = (await http.get("/openapi.json")).json()
        assert "/api/topics/{topic}/events" in spec["paths"]
        post = spec["paths"]["/api/topics/{topic}/events"]["post"]
        assert post["requestBody"]["content"]["application/json"]


async def test_healthz_counts_topics_as_the_topic_list(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).json()["topics"] == 0
        for topic in ("count:a", "count:b"):  # published to, nobody subscribed
            assert (await http.post(f"/api/topics/{topic}/events", json={"type": "t"})).is_success
        async with websockets.connect(server.ws_url) as ws:
            await subscribe(ws, "count:c")  # subscribed to, nothing published
            listed = (await http.get("/api/topics")).json()
            health = (await http.get("/healthz")).json()
        assert health["topics"] == len(listed) == 3
        assert {t["topic"] for t in listed} == {"count:a", "count:b", "count:c"}


async def test_http_publish_reaches_websocket_subscribers(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await subscribe(ws, "team:1")
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post("/api/topics/team:1/events", json=[{"type": "a"}, {"type": "b"}])
        assert [(await recv(ws))["type"] for _ in range(2)] == ["a", "b"]


async def test_native_server_hands_other_websocket_paths_to_the_app() -> None:
    """The native protocol serves /ws; the app's own WebSocket routes keep working."""

    def factory(gateway: Gateway) -> FastAPI:
        app = create_app(gateway)

        @app.websocket("/echo")
        async def echo(ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_text((await ws.receive_text()).upper())
            await ws.close()

        return app

    running, task = await start_server("native", app_factory=factory)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{running.port}/echo") as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 2) == "HELLO"
        async with websockets.connect(running.ws_url) as ws:
            await ws.send("ping")
            assert json.loads(await ws.recv())["type"] == "pong"
    finally:
        await stop_server(running, task)


async def test_mount_in_a_users_fastapi_app() -> None:
    """The ASGI adapter and HTTP router mounted into an existing FastAPI app."""
    from contextlib import asynccontextmanager

    from agentcast.transports.asgi import websocket_route
    from agentcast.transports.http import http_router

    def factory(gateway: Gateway) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
            await gateway.start()
            yield
            await gateway.stop()

        app = FastAPI(lifespan=lifespan)
        app.include_router(http_router(gateway), prefix="/gateway")
        app.add_api_websocket_route("/live", websocket_route(gateway))

        @app.get("/mine")
        async def mine() -> dict[str, str]:
            return {"app": "user"}

        return app

    running, task = await start_server("asgi", app_factory=factory)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{running.port}/live") as ws:
            await subscribe(ws, "t")
            async with httpx.AsyncClient(base_url=running.url) as http:
                assert (await http.get("/mine")).json() == {"app": "user"}
                r = await http.post("/gateway/api/topics/t/events", json={"type": "x"})
                assert r.json()["seqs"] == [1]
            assert (await recv(ws))["type"] == "x"
    finally:
        await stop_server(running, task)


async def test_run_topics_validate_the_seed_vocabularies(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        ok = {
            "type": "node_status",
            "data": {"workflow_id": "1", "execution_id": "e", "node_id": "n", "status": "running"},
        }
        assert (await http.post("/api/topics/workflow:1/events", json=ok)).status_code == 200
        bad = {
            "type": "node_status",
            "data": {"workflow_id": "1", "execution_id": "e", "node_id": "n", "status": "exploded"},
        }
        r = await http.post("/api/topics/workflow:1/events", json=[ok, bad])
        assert r.status_code == 400
        assert r.json()["detail"]["field"] == "1.data.status"
        r = await http.post(
            "/api/topics/execution:1/events",
            json={"type": "status_update", "data": {"status": "exploded"}},
        )
        assert r.json()["detail"]["field"] == "data.status"
        # nothing of the refused array was published
        assert (await http.get("/api/topics/workflow:1/events")).json()["last_seq"] == 1
        # the run's ids default to the topic's (and to the run in progress)
        r = await http.post(
            "/api/topics/execution:1/events",
            json={"type": "status_update", "data": {"status": "running"}},
        )
        assert r.status_code == 200, r.text
        short = {"type": "node_status", "data": {"node_id": "m", "status": "running"}}
        assert (await http.post("/api/topics/workflow:1/events", json=short)).status_code == 200
        stored = (await http.get("/api/topics/execution:1/events")).json()["events"]
        assert stored[-1]["data"]["execution_id"] == "1"
        stored = (await http.get("/api/topics/workflow:1/events")).json()["events"]
        assert stored[-1]["data"] == {
            "workflow_id": "1",
            "execution_id": "e",  # the run in progress on the topic
            "node_id": "m",
            "status": "running",
        }


async def test_http_details(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post(
            "/api/topics/t/events",
            content=b'{"type": "x",',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400
        assert (r.json()["detail"]["code"], r.json()["detail"]["field"]) == ("bad_json", "body")
        r = await http.post("/api/topics/t/events", json={"type": "a\u0000b"})
        assert r.json()["detail"]["field"] == "type"


async def test_array_starting_a_run_fills_its_events_with_the_new_run(
    server: RunningServer,
) -> None:
    """One POST with a run's ``workflow_start`` (execution ``new``) and events that leave
    ``execution_id`` out: they belong to the run the array starts, not to the run that was
    in progress when the request arrived."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        old = {"workflow_id": "b", "execution_id": "old", "node_id": "n", "status": "running"}
        r = await http.post(
            "/api/topics/workflow:b/events", json={"type": "node_status", "data": old}
        )
        assert r.status_code == 200
        start = {
            "workflow_id": "b",
            "execution_id": "new",
            "execution_order": ["n"],
            "total_nodes": 1,
        }
        batch = [
            {"type": "workflow_start", "data": start},
            {"type": "node_status", "data": {"node_id": "n", "status": "running"}},
        ]
        r = await http.post("/api/topics/workflow:b/events", json=batch)
        assert r.status_code == 200, r.text
        stored = (await http.get("/api/topics/workflow:b/events")).json()["events"]
    assert [e["data"]["execution_id"] for e in stored] == ["old", "new", "new"]
