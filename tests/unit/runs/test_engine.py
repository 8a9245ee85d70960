from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentcast.gateway import Gateway
from agentcast.runs.engine import NodeContext, Workflow, WorkflowError, WorkflowRun, sample_workflow
from agentcast.runs.registry import Runs
from tests.unit.runs.conftest import recorded as kinds


def test_graph_validation() -> None:
    async def n(ctx: NodeContext) -> None: ...

    assert Workflow({"a": n, "b": n, "c": n}, [("a", "c"), ("b", "c")]).order == ["a", "b", "c"]
    with pytest.raises(WorkflowError, match="cycle through a, b"):
        Workflow({"a": n, "b": n}, [("a", "b"), ("b", "a")])
    with pytest.raises(WorkflowError, match="unknown node"):
        Workflow({"a": n}, [("a", "z")])


async def test_parallel_branches_and_data_flow(gateway: Gateway) -> None:
    both_running = asyncio.Event()
    running: set[str] = set()

    def branch(name: str) -> Any:
        async def node(ctx: NodeContext) -> dict[str, Any]:
            running.add(name)
            if running >= {"left", "right"}:
                both_running.set()
            await asyncio.wait_for(both_running.wait(), 2)  # only passes if run concurrently
            return {"from": name, "x": ctx.inputs["root"]["x"] * 2}

        return node

    async def root(ctx: NodeContext) -> dict[str, Any]:
        return {"x": ctx.initial_inputs["x"]}

    async def join(ctx: NodeContext) -> int:
        return sum(r["x"] for r in ctx.inputs.values())

    wf = Workflow(
        {"root": root, "left": branch("left"), "right": branch("right"), "join": join},
        [("root", "left"), ("root", "right"), ("left", "join"), ("right", "join")],
    )
    results = await WorkflowRun(wf, gateway, "par").run({"x": 5})
    assert results["join"] == 20
    got = kinds(gateway, "workflow:par")
    assert got[-1][0] == "workflow_complete"
    assert got[-1][1]["success"] is True
    flows = [(d["source_node_id"], d["target_node_id"]) for k, d in got if k == "edge_flow"]
    assert sorted(flows) == [
        ("left", "join"),
        ("right", "join"),
        ("root", "left"),
        ("root", "right"),
    ]
    # the graph itself, for a dashboard: in workflow_start and in the run's snapshot
    start = got[0][1]
    graph = [("root", "left"), ("root", "right"), ("left", "join"), ("right", "join")]
    assert [(e["source"], e["target"]) for e in start["edges"]] == graph
    snapshot = gateway.feature(Runs).snapshot("workflow:par")
    assert snapshot is not None
    assert [(e["source"], e["target"]) for e in snapshot[1]["graph_edges"]] == graph


async def test_node_failure_skips_descendants_and_keeps_independent_branches(
    gateway: Gateway,
) -> None:
    async def ok(ctx: NodeContext) -> str:
        return ctx.node_id

    async def bad(ctx: NodeContext) -> None:
        raise RuntimeError("disk full")

    wf = Workflow({"a": bad, "b": ok, "c": ok, "d": ok}, [("a", "b"), ("c", "d")])
    results = await WorkflowRun(wf, gateway, "fail").run()
    assert results == {"c": "c", "d": "d"}
    snap = gateway.feature(Runs).snapshot("workflow:fail")
    assert snap is not None
    state = snap[1]
    assert state["status"] == "failed"
    assert state["nodes"]["a"]["error"] == "RuntimeError: disk full"
    assert state["nodes"]["b"] == {"status": "pending"}
    assert any("b skipped" in line["message"] for line in state["logs"])


async def test_pause_resume_and_cancel(gateway: Gateway) -> None:
    started: list[str] = []
    release = asyncio.Event()
    first_started = asyncio.Event()

    b_started = asyncio.Event()

    async def slow(ctx: NodeContext) -> None:
        started.append(ctx.node_id)
        first_started.set()
        if ctx.node_id == "b":
            b_started.set()
        await release.wait()

    wf = Workflow({"a": slow, "b": slow, "c": slow}, [("a", "b"), ("b", "c")])
    run = WorkflowRun(wf, gateway, "ctl")
    task = asyncio.create_task(run.run())
    await asyncio.wait_for(first_started.wait(), 2)
    await run.pause()
    assert run.paused
    release.set()  # a finishes, but b must not start while paused
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == ["a"]
    release.clear()
    await run.resume()
    await asyncio.wait_for(b_started.wait(), 2)
    assert started == ["a", "b"]
    await run.cancel()
    await asyncio.wait_for(task, 2)
    got = kinds(gateway, "workflow:ctl")
    messages = [d["message"] for k, d in got if k == "log"]
    assert "run paused" in messages
    assert "run resumed" in messages
    assert got[-1][0] == "workflow_complete"
    assert got[-1][1]["success"] is False
    snap = gateway.feature(Runs).snapshot("workflow:ctl")
    assert snap is not None
    assert snap[1]["nodes"]["b"]["error"] == "cancelled"
    assert snap[1]["nodes"]["c"] == {"status": "pending"}


async def test_sample_workflow_runs(gateway: Gateway) -> None:
    results = await WorkflowRun(sample_workflow(pace=0.001, seed=1), gateway, "s").run({"items": 7})
    assert results["fetch"]["items"] == 7
    assert results["report"]["items"] == 14
    assert gateway.feature(Runs).workflows.get("never-registered").name == "sample"
    gateway.feature(Runs).workflows.register("mine", Workflow({}, [], name="mine"))
    assert gateway.feature(Runs).workflows.get("mine").name == "mine"
