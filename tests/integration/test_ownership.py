"""Authorization and ownership over real sockets and real HTTP, on both transports.

The gateway has an authenticator and no explicit authorizer, so it runs the default one
(:class:`~agentcast.security.ownership.OwnershipPolicy`). The test authenticator reads
``Authorization: Bearer <sub>;<scope,scope>;<pattern,pattern>`` (h-jwt's JWTs carry the
same three things). Every refusal of somebody else's run or conversation is compared with
the answer for one that does not exist: they must be the same but for the name asked for.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from agentcast.runs.registry import Runs
from agentcast.security.ownership import OwnershipPolicy
from tests.conftest import UNIT, RunningServer, eventually, start_server, stop_server
from tests.integration.wsutil import recv, recv_until, send, subscribe

SECURITY_DOC = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
BOB = "bob;control,publish"
ALICE = "alice;control"
ALICE_TEAM = "alice;;workflow:team-42:*"
CAROL = "carol"
PRODUCER = "svc;publish"
ADMIN = "root;admin"


class BearerAuthenticator:
    """``Bearer sub;scopes;topics`` (comma-separated lists) -> a Principal."""

    def authenticate(self, request: ConnectionRequest) -> Principal:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise AuthenticationError("no token")
        sub, _, rest = header.removeprefix("Bearer ").partition(";")
        scopes, _, topics = rest.partition(";")
        return Principal(
            subject=sub,
            scopes=frozenset(s for s in scopes.split(",") if s),
            topics=tuple(t for t in topics.split(",") if t),
        )


async def secured_server(transport: str, db: Path) -> tuple[RunningServer, asyncio.Task[None]]:
    running, task = await start_server(transport, store_url=f"sqlite:///{db}")
    running.gateway.authenticator = BearerAuthenticator()
    return running, task


@pytest.fixture(params=["native", "asgi"])
async def secured(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningServer]:
    running, task = await secured_server(request.param, tmp_path / "runs.db")
    try:
        yield running
    finally:
        await stop_server(running, task)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def connect(running: RunningServer, token: str, path: str = "/ws") -> Any:
    url = f"ws://127.0.0.1:{running.port}{path}"
    return websockets.connect(url, additional_headers=headers(token))


def client(running: RunningServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, headers=headers(token), timeout=5 * UNIT)


def same_answer(a: Any, b: Any, a_name: str, b_name: str) -> None:
    """``a`` (about ``a_name``) and ``b`` (about ``b_name``) are the same answer but for
    the name (and the time stamp of an error frame)."""

    def norm(x: Any, name: str) -> str:
        if isinstance(x, dict):
            x = {k: v for k, v in x.items() if k != "timestamp"}
        return json.dumps(x, sort_keys=True).replace(name, "NAME")

    assert norm(a, a_name) == norm(b, b_name)


async def ask(ws: ClientConnection, command: dict[str, Any]) -> dict[str, Any]:
    """Send one command and read its answer (the first frame with its id)."""
    await send(ws, command)
    async with asyncio.timeout(2 * UNIT):
        while True:
            frame = await recv(ws)
            if frame.get("id") == command.get("id"):
                return frame


async def execute(running: RunningServer, token: str, workflow: str) -> str:
    """Run the sample graph on ``workflow`` as ``token`` until it finished; its topic."""
    async with client(running, token) as http:
        r = await http.post(f"/api/workflows/{workflow}/execute", json={})
        assert r.status_code == 202, r.text
    topic = f"workflow:{workflow}"
    runs = running.gateway.feature(Runs)
    await eventually(lambda: topic in runs.states and runs.states[topic].finished, 20 * UNIT)
    return topic


async def conversation(running: RunningServer, token: str, title: str) -> str:
    async with client(running, token) as http:
        r = await http.post("/api/conversations", json={"title": title})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


async def test_default_authorizer_once_authentication_is_on(secured: RunningServer) -> None:
    assert isinstance(secured.gateway.authorizer, OwnershipPolicy)
    assert not secured.gateway.open_mode


async def test_alice_cannot_reach_bobs_run_or_conversation(secured: RunningServer) -> None:
    bobs = await execute(secured, BOB, "bobflow")
    cid = await conversation(secured, BOB, "bob's secrets")
    missing_run, missing_cid = "workflow:nosuchflow", uuid.uuid4().hex
    async with connect(secured, ALICE) as ws:
        for kind, real, missing in (
            ("subscribe", bobs, missing_run),
            ("subscribe", f"chat:{cid}", f"chat:{missing_cid}"),
            ("replay", bobs, missing_run),
        ):
            got = await ask(ws, {"type": kind, "topic": real, "id": 1, "speed": 0})
            none = await ask(ws, {"type": kind, "topic": missing, "id": 1, "speed": 0})
            assert got["type"] == "error" and got["data"]["code"] == "forbidden"
            same_answer(got, none, real, missing)
        sub = {"type": "subscribe", "topic": bobs, "id": 2, "replay": 0}  # replay, protocol v1
        same_answer(
            await ask(ws, sub), await ask(ws, {**sub, "topic": missing_run}), bobs, missing_run
        )
        hist = {"type": "chat:history", "id": 3, "data": {"conversation_id": cid}}
        got = await ask(ws, hist)
        none = await ask(ws, {**hist, "data": {"conversation_id": missing_cid}})
        assert got["data"]["code"] == "not_found"
        same_answer(got, none, cid, missing_cid)
        send_cmd = {"type": "chat:send", "id": 4, "data": {"conversation_id": cid, "message": "hi"}}
        got = await ask(ws, send_cmd)
        none = await ask(ws, {**send_cmd, "data": {"conversation_id": missing_cid, "message": "x"}})
        same_answer(got, none, cid, missing_cid)
    async with client(secured, ALICE) as http:
        for method, path, body in (
            ("GET", "/api/runs/{}", None),
            ("GET", "/api/runs/{}/events", None),
            ("GET", "/api/topics/{}/events", None),
            ("POST", "/api/runs/{}/control", {"action": "cancel"}),
        ):
            got = await http.request(method, path.format(bobs), json=body)
            none = await http.request(method, path.format(missing_run), json=body)
            assert got.status_code in (403, 404, 409)
            assert got.status_code == none.status_code
            same_answer(got.json(), none.json(), bobs, missing_run)
        assert (await http.get(f"/api/runs/{bobs}")).status_code == 404
        for method, path, body in (
            ("GET", "/api/conversations/{}", None),
            ("GET", "/api/conversations/{}/messages", None),
            ("PATCH", "/api/conversations/{}", {"title": "mine now"}),
            ("DELETE", "/api/conversations/{}", None),
        ):
            got = await http.request(method, path.format(cid), json=body)
            none = await http.request(method, path.format(missing_cid), json=body)
            assert got.status_code == none.status_code == 404
            same_answer(got.json(), none.json(), cid, missing_cid)
        listed = (await http.get("/api/runs")).json()
        assert (listed["total"], listed["runs"]) == (0, [])
        assert (await http.get("/api/conversations")).json()["total"] == 0
        assert (await http.get("/api/topics")).json() == []
    async with client(secured, BOB) as http:  # untouched, and still bob's
        r = await http.get(f"/api/conversations/{cid}")
        assert (r.status_code, r.json()["title"]) == (200, "bob's secrets")
        assert (await http.get(f"/api/runs/{bobs}")).json()["state"]["status"] == "completed"
        assert [r["topic"] for r in (await http.get("/api/runs")).json()["runs"]] == [bobs]
        assert [
            c["id"] for c in (await http.get("/api/conversations")).json()["conversations"]
        ] == [cid]
        assert {t["topic"] for t in (await http.get("/api/topics")).json()} == {bobs}
    async with connect(secured, BOB) as ws:
        assert (await subscribe(ws, bobs))["type"] == "subscribed"
        ok = await ask(ws, {"type": "subscribe", "topic": f"chat:{cid}", "id": 9})
        assert ok["type"] == "subscribed"


async def test_owner_chooses_and_server_runs_belong_to_nobody(secured: RunningServer) -> None:
    """A producer's first event names the owner; without it the producer owns the run; a
    run the server publishes itself (the demo) is nobody's: admin only."""
    async with client(secured, PRODUCER) as http:
        start = {"type": "workflow_start", "data": {"execution_order": ["a"], "total_nodes": 1}}
        handed = {**start, "data": {**start["data"], "owner": "alice"}}
        assert (await http.post("/api/topics/workflow:for-alice/events", json=handed)).is_success
        assert (await http.post("/api/topics/workflow:own/events", json=start)).is_success
        # a later event naming another owner changes nothing
        later = {"type": "log", "data": {"message": "x", "owner": "bob"}}
        assert (await http.post("/api/topics/workflow:for-alice/events", json=later)).is_success
    await secured.gateway.publish("workflow:demo", "workflow_start", start["data"])
    expected = {
        ALICE: {"workflow:for-alice"},
        BOB: set(),
        PRODUCER: {"workflow:own"},
        ADMIN: {"workflow:for-alice", "workflow:own", "workflow:demo"},
    }
    for token, visible in expected.items():
        async with connect(secured, token) as ws:
            for topic in ("workflow:for-alice", "workflow:own", "workflow:demo"):
                got = await ask(ws, {"type": "subscribe", "topic": topic, "id": topic})
                assert (got["type"] == "subscribed") == (topic in visible), (token, topic)
        async with client(secured, token) as http:
            listed = {r["topic"] for r in (await http.get("/api/runs")).json()["runs"]}
            assert listed == visible, token
            assert {t["topic"] for t in (await http.get("/api/topics")).json()} == visible


async def test_forged_publishes_and_control_are_refused(secured: RunningServer) -> None:
    bobs = await execute(secured, BOB, "ctl")
    cid = await conversation(secured, BOB, "c")
    event = {"type": "log", "data": {"message": "forged"}}
    for token in (CAROL, ALICE):  # no publish scope
        async with connect(secured, token) as ws:
            for topic in ("monitoring", "task:1", bobs, "workflow:new", f"chat:{cid}", "news"):
                got = await ask(
                    ws, {"type": "publish", "topic": topic, "event": "log", "data": {}, "id": 1}
                )
                assert got["data"]["code"] == "forbidden", (token, topic)
            got = await ask(ws, {"type": "lease", "topic": bobs, "ttl": 5, "id": 2})
            assert got["data"]["code"] == "forbidden"
        async with client(secured, token) as http:
            for topic in ("monitoring", "task:1", bobs, f"chat:{cid}"):
                r = await http.post(f"/api/topics/{topic}/events", json=event)
                assert (r.status_code, r.json()["detail"]["code"]) == (403, "forbidden")
    async with client(secured, PRODUCER) as http:  # publish, but never on chat topics
        r = await http.post(f"/api/topics/chat:{cid}/events", json=event)
        assert r.status_code == 403
        assert (await http.post("/api/topics/task:1/events", json=event)).status_code == 200
    history = await secured.gateway.history(bobs, 0)
    assert not any(b"forged" in p.data for p in history.publications)
    # control: carol has no control scope
    async with client(secured, CAROL) as http:
        r = await http.post("/api/workflows/carols/execute", json={})
        assert (r.status_code, r.json()["detail"]["code"]) == (403, "forbidden")
    async with connect(secured, ALICE) as ws:  # control, but not bob's run
        got = await ask(ws, {"type": "control", "topic": bobs, "action": "pause", "id": 1})
        none = await ask(
            ws, {"type": "control", "topic": "workflow:none", "action": "pause", "id": 1}
        )
        same_answer(got, none, bobs, "workflow:none")
    async with client(secured, ALICE) as http:  # bob's workflow id is taken, like the demo's
        r = await http.post("/api/workflows/ctl/execute", json={})
        assert (r.status_code, r.json()["detail"]["code"]) == (409, "conflict")
    async with client(secured, BOB) as http:  # bob runs his workflow again
        assert (await http.post("/api/workflows/ctl/execute", json={})).status_code == 202


async def test_control_needs_the_control_scope(secured: RunningServer) -> None:
    """A user who may read a run but lacks ``control`` gets ``forbidden``; its owner
    with ``control`` reaches the producer."""
    async with client(secured, PRODUCER) as http:
        start = {"type": "workflow_start", "data": {"execution_order": ["a"], "total_nodes": 1}}
        await http.post("/api/topics/workflow:team-42:t/events", json=start)
    async with connect(secured, ALICE_TEAM) as ws:  # reads it (topics claim), no control
        got = await ask(
            ws, {"type": "control", "topic": "workflow:team-42:t", "action": "pause", "id": 1}
        )
        assert got["data"]["code"] == "forbidden"
    async with connect(secured, "svc;publish,control") as ws:  # owner, no producer here
        got = await ask(
            ws, {"type": "control", "topic": "workflow:team-42:t", "action": "pause", "id": 1}
        )
        assert got["data"]["code"] == "unavailable"


async def test_topics_claim_grants_exactly_its_patterns(secured: RunningServer) -> None:
    start = {"execution_order": ["a"], "total_nodes": 1}
    topics = [
        "workflow:team-42:a",
        "workflow:team-42:b:c",
        "workflow:team-42",
        "workflow:team-420:a",
        "workflow:TEAM-42:a",
        "execution:team-42:a",
    ]
    for topic in topics:
        if topic.startswith("workflow"):
            await secured.gateway.publish(topic, "workflow_start", start)
        else:
            await secured.gateway.publish(topic, "status_update", {"status": "running"})
    granted = {"workflow:team-42:a", "workflow:team-42:b:c"}
    async with connect(secured, ALICE_TEAM) as ws:
        for topic in topics:
            got = await ask(ws, {"type": "subscribe", "topic": topic, "id": topic})
            assert (got["type"] == "subscribed") == (topic in granted), topic
    async with client(secured, ALICE_TEAM) as http:
        listed = {r["topic"] for r in (await http.get("/api/runs")).json()["runs"]}
        assert listed == granted
        for topic in topics:
            r = await http.get(f"/api/runs/{topic}")
            assert (r.status_code == 200) == (topic in granted), topic


async def test_admin_sees_everything(secured: RunningServer) -> None:
    bobs = await execute(secured, BOB, "adm")
    cid = await conversation(secured, BOB, "c")
    async with connect(secured, ADMIN) as ws:
        assert (await subscribe(ws, bobs))["type"] == "subscribed"
        assert (await ask(ws, {"type": "subscribe", "topic": f"chat:{cid}", "id": 1}))[
            "type"
        ] == "subscribed"
        got = await ask(ws, {"type": "replay", "topic": bobs, "speed": 0, "id": 2})
        assert got["type"] == "replay_started" and got["data"]["events"] > 0
        await send(ws, {"type": "monitoring:subscribe", "id": 3})
        assert (await recv_until(ws, "monitoring:metrics"))["id"] == 3
    async with client(secured, ADMIN) as http:
        assert (await http.get("/api/runs")).json()["total"] == 1
        assert (await http.get(f"/api/runs/{bobs}/events")).json()["events"]
        assert (await http.get("/api/conversations")).json()["total"] == 1
        assert (await http.get(f"/api/conversations/{cid}")).status_code == 200
        for path in ("/api/llm/stats", "/api/llm/health"):
            assert (await http.get(path)).status_code == 200
        health = (await http.get("/healthz")).json()
        assert isinstance(health["connections"], int) and isinstance(health["topics"], int)
        r = await http.patch(f"/api/conversations/{cid}", json={"title": "moderated"})
        assert r.json()["title"] == "moderated"
        assert (await http.delete(f"/api/conversations/{cid}")).status_code == 204


async def test_every_route_is_authorized(secured: RunningServer) -> None:
    await execute(secured, BOB, "routes")
    async with httpx.AsyncClient(base_url=secured.url) as anonymous:
        for path in (
            "/api/agents",
            "/api/llm/stats",
            "/api/llm/health",
            "/api/runs",
            "/api/topics",
            "/api/conversations",
            "/api/runs/workflow:routes",
        ):
            r = await anonymous.get(path)
            assert (r.status_code, r.json()["detail"]["code"]) == (401, "unauthorized"), path
        health = await anonymous.get("/healthz")  # load balancers: no credentials
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["mode"] == "auth"
        assert health.json()["connections"] is None and health.json()["topics"] is None
        assert "routes" not in health.text
    async with client(secured, CAROL) as http:
        assert (await http.get("/api/agents")).status_code == 200
        for path in ("/api/llm/stats", "/api/llm/health"):
            r = await http.get(path)
            assert (r.status_code, r.json()["detail"]["code"]) == (403, "forbidden")
        assert (await http.get("/healthz")).json()["connections"] is None


async def test_no_event_of_bob_reaches_alice(secured: RunningServer) -> None:
    """While bob's run streams (and alice's subscriptions to it are refused), alice's
    connections receive their own topic's events and nothing else."""
    start = {"type": "workflow_start", "data": {"execution_order": ["a"], "total_nodes": 1}}
    async with client(secured, PRODUCER) as http:
        for topic, owner in (("workflow:alice-live", "alice"), ("workflow:bob-live", "bob")):
            body = {**start, "data": {**start["data"], "owner": owner}}
            assert (await http.post(f"/api/topics/{topic}/events", json=body)).is_success
    dave = "dave;;workflow:team-42:*"  # another user, in team 42
    async with connect(secured, ALICE) as alice, connect(secured, dave) as team:
        assert (await subscribe(alice, "workflow:alice-live"))["type"] == "subscribed"
        await recv_until(alice, "snapshot")
        for topic in ("workflow:bob-live", "workflow:team-42:x"):
            got = await ask(alice, {"type": "subscribe", "topic": topic, "id": topic})
            assert got["data"]["code"] == "forbidden"
        await send(team, {"type": "subscribe", "topic": "workflow:team-42:mine", "id": "t"})
        assert (await recv_until(team, "subscribed"))["topic"] == "workflow:team-42:mine"
        for topic in ("workflow:bob-live", "workflow:alice-live"):
            got = await ask(team, {"type": "subscribe", "topic": topic, "id": topic})
            assert got["data"]["code"] == "forbidden"
        gw = secured.gateway
        for i in range(300):
            await gw.publish("workflow:bob-live", "log", {"message": f"bob {i}"})
            await gw.publish("workflow:team-42", "log", {"message": f"bob {i}"})
            if i % 100 == 0:
                await gw.publish("workflow:alice-live", "log", {"message": f"alice {i}"})
                await gw.publish("workflow:team-42:mine", "log", {"message": f"team {i}"})
        await gw.publish("workflow:alice-live", "log", {"message": "end"})
        await gw.publish("workflow:team-42:mine", "log", {"message": "end"})
        for ws, topic in ((alice, "workflow:alice-live"), (team, "workflow:team-42:mine")):
            frames = []
            async with asyncio.timeout(5 * UNIT):
                while not frames or frames[-1].get("data", {}).get("message") != "end":
                    frames.append(await recv(ws))
            assert {f.get("topic") for f in frames} == {topic}
            assert [f["data"]["message"] for f in frames][:-1] == [
                f"{'alice' if 'alice' in topic else 'team'} {i}" for i in (0, 100, 200)
            ]
            assert not any("bob" in json.dumps(f) for f in frames)


async def test_owners_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    running, task = await secured_server("native", db)
    try:
        bobs = await execute(running, BOB, "durable")
    finally:
        await stop_server(running, task)
    running, task = await secured_server("native", db)
    try:
        async with connect(running, ALICE) as ws:
            got = await ask(ws, {"type": "subscribe", "topic": bobs, "id": 1})
            assert got["data"]["code"] == "forbidden"
        async with connect(running, BOB) as ws:
            assert (await subscribe(ws, bobs))["type"] == "subscribed"
        async with client(running, ALICE) as http:
            assert (await http.get(f"/api/runs/{bobs}")).status_code == 404
            r = await http.post("/api/workflows/durable/execute", json={})
            assert r.status_code == 409  # still bob's after the restart
        async with client(running, BOB) as http:
            assert (await http.get(f"/api/runs/{bobs}")).status_code == 200
            assert (await http.get("/api/runs")).json()["total"] == 1
    finally:
        await stop_server(running, task)


async def test_per_run_endpoints_refuse_alike(secured: RunningServer) -> None:
    """Seed 004's and seed 000's per-run sockets: somebody else's run and a missing one
    get the same error frame."""
    bobs = await execute(secured, BOB, "endpoint")
    answers = []
    for run_id in ("endpoint", "no-such-run"):
        async with connect(secured, ALICE, f"/api/ws/workflow/{run_id}") as ws:
            answers.append(await recv(ws))
    assert answers[0]["data"]["code"] == "forbidden"
    same_answer(answers[0], answers[1], bobs, "workflow:no-such-run")
    async with connect(secured, BOB, "/api/ws/workflow/endpoint") as ws:
        assert (await recv(ws))["type"] == "snapshot"


async def test_security_docs_owner_example(secured: RunningServer) -> None:
    """docs/security.md's ``owner`` example, published as written by a producer, makes
    the run alice's."""
    section = SECURITY_DOC.split("## Authorization and ownership", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"\(`(\{\"type\": \"workflow_start\".*?\})`\)", section, flags=re.S)
    assert found is not None
    event = json.loads(found.group(1))
    assert event["data"]["owner"] == "alice"
    async with client(secured, PRODUCER) as http:
        r = await http.post("/api/topics/workflow:docs/events", json=event)
        assert r.status_code == 200
    for token, allowed in ((ALICE, True), (BOB, False)):
        async with client(secured, token) as http:
            assert (await http.get("/api/runs/workflow:docs")).is_success is allowed


async def test_a_forgotten_owner_is_nobody_not_up_for_grabs(tmp_path: Path) -> None:
    """Without a run store, a run whose owner this server no longer remembers (evicted)
    but whose events the broker still holds is nobody's: admin reads it, nobody claims it."""
    running, task = await start_server("native", store_url="")
    running.gateway.authenticator = BearerAuthenticator()
    try:
        bobs = await execute(running, BOB, "forgotten")
        running.gateway.feature(Runs).owners.clear()
        async with client(running, ALICE) as http:
            r = await http.post("/api/workflows/forgotten/execute", json={})
            assert r.status_code == 409
        for token, allowed in ((BOB, False), (ALICE, False), (ADMIN, True)):
            async with connect(running, token) as ws:
                got = await ask(ws, {"type": "subscribe", "topic": bobs, "id": 1})
                assert (got["type"] == "subscribed") is allowed, token
    finally:
        await stop_server(running, task)
