"""The dashboard in a real browser against real servers (headless Chromium).

1. ``serve --demo``: the workflow's nodes change colour on screen, edges flow, a node's
   result shows on click; the runs list, execution and monitoring views are live.
2. A server restart mid-run (SQLite store): the page resumes with the right state and no
   log line twice.
3. A chat answer streams and is stopped; older history pages in.
4. JWT authentication: without a token, the sign-in prompt; a user without rights sees
   nothing of another user's run, its owner does.

Screenshots of every view: ``tmp/artifacts/dashboard/`` (see conftest).
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

from tests.e2e.conftest import WAIT_MS, Server, shoot

# the stroke of a node's box, per status (dashboard/src/styles.css: seed 004's colours)
COLOURS = {
    "pending": "rgb(156, 163, 175)",
    "running": "rgb(234, 179, 8)",
    "completed": "rgb(34, 197, 94)",
    "error": "rgb(239, 68, 68)",
}


async def node_colour(page: Any, node: str) -> str:
    return str(
        await page.eval_on_selector(
            f'[data-node="{node}"] .node-box', "el => getComputedStyle(el).stroke"
        )
    )


YELLOW_OR_DONE = """([node, yellow]) => {
    const g = document.querySelector(`[data-node="${node}"]`);
    if (!g) return false;
    if (getComputedStyle(g.querySelector('.node-box')).stroke === yellow) return 'yellow';
    return g.dataset.status === 'completed' ? 'done' : false;
}"""


async def wait_colour(page: Any, node: str, colour: str) -> None:
    """Until the node's box is drawn in ``colour`` (after its transition)."""
    await page.wait_for_function(
        """([node, colour]) => {
            const box = document.querySelector(`[data-node="${node}"] .node-box`);
            return !!box && getComputedStyle(box).stroke === colour;
        }""",
        arg=[node, colour],
        timeout=WAIT_MS,
    )


async def test_a_demo_workflow_runs_on_screen(page: Any, demo_server: Server) -> None:
    server = demo_server
    await page.goto(f"{server.url}/#/runs/workflow%3Ademo")
    await page.wait_for_selector('[data-testid="connection"]:has-text("live")', timeout=WAIT_MS)
    # every node turns running (yellow: seen unless it completes within the colour's
    # 0.15 s transition), then completed (green)
    seen_yellow = []
    for node in ("fetch", "analyze", "report"):
        await page.wait_for_selector(
            f'[data-node="{node}"][data-status="running"]', timeout=WAIT_MS
        )
        handle = await page.wait_for_function(
            YELLOW_OR_DONE, arg=[node, COLOURS["running"]], timeout=WAIT_MS
        )
        seen_yellow.append(await handle.json_value() == "yellow")
        await wait_colour(page, node, COLOURS["completed"])
    assert any(seen_yellow), seen_yellow
    await page.wait_for_selector('[data-edge][data-flowing="true"]', timeout=WAIT_MS)
    # the next run begins: report is pending (grey) again while fetch runs
    await page.wait_for_selector('[data-node="report"][data-status="pending"]', timeout=WAIT_MS)
    await wait_colour(page, "report", COLOURS["pending"])
    assert await page.locator(".log-line").count() >= 1
    await page.click('[data-node="fetch"]')
    await page.wait_for_selector('[data-testid="node-detail"] pre', timeout=WAIT_MS)
    assert '"node": "fetch"' in await page.inner_text('[data-testid="node-detail"] pre')
    await shoot(page, "workflow")

    # pause while fetch runs (no node starts until resumed), then resume
    await page.wait_for_selector('[data-node="fetch"][data-status="running"]', timeout=WAIT_MS)
    await page.click('[data-testid="pause"]')
    await page.wait_for_selector('[data-run-status="paused"]', timeout=WAIT_MS)
    await page.wait_for_selector('.log-line.lvl-warning:has-text("run paused")', timeout=WAIT_MS)
    # the nodes that were running finish; the pending ones stay pending
    await page.wait_for_function(
        "() => !document.querySelector('[data-node][data-status=running]')", timeout=WAIT_MS
    )
    waiting = await page.eval_on_selector_all(
        '[data-node][data-status="pending"]', "els => els.map(e => e.dataset.node)"
    )
    assert waiting, "a node must still wait while the run is paused"
    assert await page.get_attribute("[data-run-status]", "data-run-status") == "paused"
    await page.click('[data-testid="resume"]')
    await page.wait_for_selector(
        f'[data-node="{waiting[0]}"]:not([data-status="pending"])', timeout=WAIT_MS
    )

    await page.goto(f"{server.url}/#/")
    await page.wait_for_selector('tr[data-topic="workflow:demo"]', timeout=WAIT_MS)
    await page.wait_for_selector('tr[data-topic="execution:demo"]', timeout=WAIT_MS)
    # the list is live: the demo workflow's progress moves without a reload
    cell = 'tr[data-topic="workflow:demo"] .progress-cell .num'
    before = await page.inner_text(cell)
    await page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent !== text",
        arg=[cell, before],
        timeout=WAIT_MS,
    )
    await shoot(page, "runs")
    await page.select_option('[data-testid="filter-kind"]', "execution")
    await page.wait_for_selector(
        'tr[data-topic="workflow:demo"]', state="detached", timeout=WAIT_MS
    )
    assert await page.locator('tr[data-topic="execution:demo"]').count() == 1

    await page.goto(f"{server.url}/#/runs/execution%3Ademo")
    await page.wait_for_selector('[data-agent][data-status="running"]', timeout=WAIT_MS)
    await page.wait_for_selector('[data-testid="results"] .feed-item', timeout=WAIT_MS)
    await shoot(page, "execution")

    # results and errors as they arrive: a team execution fed over HTTP
    team = "execution:e2e-team"
    await page.goto(f"{server.url}/#/runs/{team.replace(':', '%3A')}")
    await page.wait_for_selector('[data-testid="connection"]:has-text("live")', timeout=WAIT_MS)
    ex = {"execution_id": "e2e-team"}
    await server.publish(
        team, "status_update", {**ex, "status": "running", "team_id": "red", "total_steps": 2}
    )
    await server.publish(
        team,
        "agent_status_update",
        {**ex, "agent_id": "scout", "status": "running", "step_order": 1},
    )
    await page.wait_for_selector('[data-agent="scout"][data-status="running"]', timeout=WAIT_MS)
    await server.publish(
        team, "result_update", {**ex, "agent_id": "scout", "result": {"summary": "found 3 leads"}}
    )
    await server.publish(
        team,
        "agent_status_update",
        {**ex, "agent_id": "scout", "status": "completed", "step_order": 1},
    )
    await server.publish(
        team,
        "agent_status_update",
        {**ex, "agent_id": "closer", "status": "running", "step_order": 2},
    )
    await server.publish(
        team, "error_update", {**ex, "agent_id": "closer", "error_message": "CRM timed out"}
    )
    await page.wait_for_selector('.feed-item.error:has-text("CRM timed out")', timeout=WAIT_MS)
    await page.wait_for_selector('.feed-item.result:has-text("found 3 leads")', timeout=WAIT_MS)
    await page.wait_for_selector('[data-agent="closer"][data-status="failed"]', timeout=WAIT_MS)
    assert await page.get_attribute('[data-agent="scout"]', "data-status") == "completed"
    await shoot(page, "execution-errors")

    await page.goto(f"{server.url}/#/monitoring")
    charts = page.locator('[data-testid="charts"] .chart-value')
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.stat-value')].every(e => e.textContent !== '—')",
        timeout=WAIT_MS,
    )
    assert await charts.count() == 4
    await page.wait_for_timeout(1200)  # a few more samples on the charts
    await shoot(page, "monitoring")


def _workflow(run: str, execution: str, **data: Any) -> dict[str, Any]:
    return {"workflow_id": run, "execution_id": execution, **data}


async def test_the_page_resumes_across_a_server_restart(page: Any, tmp_path: Path) -> None:
    """An external producer publishes over HTTP; the server restarts (SIGTERM) between two
    of its events; the page reconnects, resumes by seq and epoch, and shows every log line
    once and every node as it ended."""
    run, ex = "restart-e2e", str(uuid.uuid4())
    topic = f"workflow:{run}"
    nodes = ["fetch", "analyze", "report"]
    edges = [{"source": "fetch", "target": "analyze"}, {"source": "analyze", "target": "report"}]
    server = Server(tmp_path)
    async with server:
        pub = server.publish
        await pub(
            topic,
            "workflow_start",
            _workflow(run, ex, execution_order=nodes, total_nodes=3, edges=edges),
        )
        await pub(topic, "node_status", _workflow(run, ex, node_id="fetch", status="running"))
        await pub(topic, "log", _workflow(run, ex, message="line 1: fetching"))
        await pub(
            topic,
            "node_status",
            _workflow(run, ex, node_id="fetch", status="completed", result={"rows": 3}),
        )
        await pub(
            topic, "edge_flow", _workflow(run, ex, source_node_id="fetch", target_node_id="analyze")
        )
        await pub(topic, "log", _workflow(run, ex, message="line 2: fetched"))
        await page.goto(f"{server.url}/#/runs/{topic.replace(':', '%3A')}")
        await page.wait_for_selector(
            '[data-node="fetch"][data-status="completed"]', timeout=WAIT_MS
        )
        await page.wait_for_selector('.log-line:has-text("line 2: fetched")', timeout=WAIT_MS)
        await page.wait_for_selector('[data-testid="connection"]:has-text("live")', timeout=WAIT_MS)
        await server.stop_async(signal.SIGTERM)
        await page.wait_for_selector(
            '[data-testid="connection"]:not(:has-text("live"))', timeout=WAIT_MS
        )

    again = Server(tmp_path, port=server.port)
    async with again:
        pub = again.publish
        await pub(topic, "node_status", _workflow(run, ex, node_id="analyze", status="running"))
        await pub(
            topic, "log", _workflow(run, ex, level="warning", message="line 3: slow analysis")
        )
        await pub(
            topic,
            "node_status",
            _workflow(run, ex, node_id="analyze", status="error", error="ValueError: bad row"),
        )
        await pub(topic, "log", _workflow(run, ex, level="error", message="line 4: analyze failed"))
        await pub(topic, "workflow_complete", _workflow(run, ex, success=False, execution_time=1.5))
        await page.wait_for_selector('[data-testid="connection"]:has-text("live")', timeout=WAIT_MS)
        await page.wait_for_selector('[data-run-status="failed"]', timeout=WAIT_MS)
        await wait_colour(page, "fetch", COLOURS["completed"])
        await wait_colour(page, "analyze", COLOURS["error"])
        assert await node_colour(page, "report") == COLOURS["pending"]
        lines = await page.locator(".log-line .log-msg").all_inner_texts()
        assert lines == [
            "line 1: fetching",
            "line 2: fetched",
            "line 3: slow analysis",
            "line 4: analyze failed",
        ]
        seqs = await page.eval_on_selector_all(".log-line", "els => els.map(e => e.dataset.seq)")
        assert len(set(seqs)) == len(seqs) == 4
        await page.click('[data-level="error"]')
        assert await page.locator(".log-line .log-msg").all_inner_texts() == [
            "line 4: analyze failed"
        ]
        await page.click('[data-node="analyze"]')
        await page.wait_for_selector(
            '[data-testid="node-detail"] pre.error:has-text("bad row")', timeout=WAIT_MS
        )
        await shoot(page, "workflow-after-restart")


async def test_a_chat_answer_streams_stops_and_pages_history(
    page: Any, demo_server: Server
) -> None:
    """The built-in offline agent at 12 words/s; the snapshot of a conversation holds one
    message (``chat_history_limit``), so the question is older history."""
    server = demo_server
    await page.goto(f"{server.url}/#/chat")
    await page.fill('[data-testid="composer"]', "What is agentcast?")
    await page.click('[data-testid="send"]')
    await page.wait_for_selector(
        '[data-role="user"]:has-text("What is agentcast?")', timeout=WAIT_MS
    )
    # the answer grows on screen, word by word
    words = "n => (document.querySelector('[data-testid=streaming] .bubble')?.innerText || '').trim().split(/\\s+/).length >= n"
    await page.wait_for_function(words, arg=3, timeout=WAIT_MS)
    first = (await page.inner_text('[data-testid="streaming"] .bubble')).strip()
    await page.wait_for_function(words, arg=len(first.split()) + 2, timeout=WAIT_MS)
    await shoot(page, "chat")
    await page.click('[data-testid="stop"]')
    stopped = page.locator('[data-role="assistant"][data-status="cancelled"]')
    await stopped.wait_for(timeout=WAIT_MS)
    text = await stopped.inner_text()
    assert text.startswith(first) and "stopped" in text.lower()
    assert await page.locator('[data-testid="streaming"]').count() == 0
    assert await page.locator('[data-testid="send"]').count() == 1

    # a new page gets the last message, and pages the older one in
    await page.reload()
    await page.wait_for_selector('[data-testid="older"]', timeout=WAIT_MS)
    assert await page.locator(".msg").count() == 1
    await page.click('[data-testid="older"]')
    await page.wait_for_selector(
        '[data-role="user"]:has-text("What is agentcast?")', timeout=WAIT_MS
    )
    assert await page.locator(".msg").count() == 2
    ids = await page.eval_on_selector_all(".msg", "els => els.map(e => Number(e.dataset.id))")
    assert ids == sorted(ids)
    assert await page.locator('[data-testid="older"]').count() == 0
    await shoot(page, "chat-history")


SECRET = "e2e-secret-" + "x" * 32


def _token(sub: str, scope: str = "") -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_with_auth_a_user_sees_nothing_of_anothers_runs(page: Any, tmp_path: Path) -> None:
    alice, bob = _token("alice", "publish control"), _token("bob")
    run, ex = "alice-secret-run", str(uuid.uuid4())
    topic = f"workflow:{run}"
    async with Server(tmp_path, AGENTCAST_JWT_SECRET=SECRET) as server:
        await server.publish(
            topic,
            "workflow_start",
            _workflow(run, ex, execution_order=["only"], total_nodes=1),
            token=alice,
        )
        await server.publish(
            topic, "log", _workflow(run, ex, message="alice's private line"), token=alice
        )

        await page.goto(f"{server.url}/#/")
        await page.wait_for_selector('[data-testid="signin"]', timeout=WAIT_MS)
        assert await page.locator("[data-testid=runs-table]").count() == 0
        await shoot(page, "signin")

        await page.fill("#token", bob)
        await page.click('[data-testid="signin"] button[type="submit"]')
        await page.wait_for_selector("[data-testid=runs-table] td.empty", timeout=WAIT_MS)
        await page.wait_for_selector('[data-testid="connection"]:has-text("live")', timeout=WAIT_MS)
        assert run not in await page.content()
        await page.goto(f"{server.url}/#/runs/{topic.replace(':', '%3A')}")
        await page.wait_for_selector("text=Run not available", timeout=WAIT_MS)
        assert "private line" not in await page.content()
        assert await page.locator('[data-testid="pause"]').count() == 0  # bob has no control

        # the owner sees it, with the controls her token allows
        await page.goto(f"{server.url}/#/")
        await page.click("text=Sign out")
        await page.fill("#token", alice)
        await page.click('[data-testid="signin"] button[type="submit"]')
        await page.wait_for_selector(f'tr[data-topic="{topic}"]', timeout=WAIT_MS)
        await page.click(f'tr[data-topic="{topic}"]')
        await page.wait_for_selector('.log-line:has-text("alice\'s private line")', timeout=WAIT_MS)
        assert await page.locator('[data-testid="pause"]').count() == 1
