from __future__ import annotations

import asyncio

import pytest

from agentcast.gateway import Gateway
from agentcast.runs.registry import Runs
from agentcast.runs.tracker import ExecutionTracker, WorkflowTracker
from tests.unit.runs.conftest import recorded as events


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_workflow_tracker_success(gateway: Gateway) -> None:
    clock = Clock()
    async with WorkflowTracker(gateway, "wf1", ["a", "b"], execution_id="x", clock=clock) as run:
        await run.node_started("a")
        await run.log("a is running")
        clock.now += 2.5
        await run.node_completed("a", result={"rows": 3})
        await run.edge_flow("a", "b", data={"rows": 3})
        await run.node_started("b")
        await run.node_progress("b", 50)
        await run.node_completed("b")
    got = events(gateway, "workflow:wf1")
    kinds = [k for k, _ in got]
    assert kinds[0] == "workflow_start"
    assert kinds[-1] == "workflow_complete"
    assert got[0][1]["execution_order"] == ["a", "b"]
    progress = [d["progress"] for k, d in got if k == "progress"]
    assert progress == [50.0, 100.0]
    final = got[-1][1]
    assert (final["success"], final["execution_time"], final["errors"]) == (True, 2.5, [])
    snap = gateway.feature(Runs).snapshot("workflow:wf1")
    assert snap is not None
    assert snap[1]["status"] == "completed"
    assert snap[1]["nodes"]["a"]["result"] == {"rows": 3}


async def test_workflow_tracker_reports_failure_of_the_block(gateway: Gateway) -> None:
    with pytest.raises(ValueError, match="bad input"):
        async with WorkflowTracker(gateway, "wf2", ["a"]) as run:
            await run.node_started("a")
            raise ValueError("bad input")
    got = events(gateway, "workflow:wf2")
    assert [k for k, _ in got][-2:] == ["error", "workflow_complete"]
    assert got[-2][1]["error"] == "ValueError: bad input"
    assert got[-2][1]["node_id"] == "a"
    assert got[-1][1]["success"] is False
    snap = gateway.feature(Runs).snapshot("workflow:wf2")
    assert snap is not None and snap[1]["status"] == "failed"


async def test_workflow_tracker_node_failure_and_unknown_nodes(gateway: Gateway) -> None:
    async with WorkflowTracker(gateway, "wf3", ["a"]) as run:
        await run.node_failed("a", "timeout")
        await run.node_started("extra")
        await run.node_completed("extra")
    got = events(gateway, "workflow:wf3")
    assert got[-1][1]["success"] is False
    assert got[-1][1]["errors"] == [{"node_id": "a", "error": "timeout"}]
    assert [d["progress"] for k, d in got if k == "progress"] == [100.0, 100.0]


async def test_workflow_tracker_from_worker_threads(gateway: Gateway) -> None:
    async with WorkflowTracker(gateway, "wf4", [f"n{i}" for i in range(4)]) as run:

        def work(node: str) -> None:  # an engine running nodes in threads
            run.threadsafe(run.node_started(node))
            run.threadsafe(run.node_completed(node, result={"node": node}))

        await asyncio.gather(*(asyncio.to_thread(work, f"n{i}") for i in range(4)))
    snap = gateway.feature(Runs).snapshot("workflow:wf4")
    assert snap is not None
    assert snap[1]["status"] == "completed"
    assert all(n["status"] == "completed" for n in snap[1]["nodes"].values())
    unbound = WorkflowTracker(gateway, "wf5", [])
    with pytest.raises(RuntimeError, match="not bound"):
        unbound.threadsafe(unbound.log("x"))


async def test_execution_tracker_derives_agents_progress_and_eta(gateway: Gateway) -> None:
    clock = Clock()
    async with ExecutionTracker(gateway, "e1", team_id="t1", total_steps=4, clock=clock) as ex:
        await ex.agent_started("agent-1")
        clock.now += 10
        await ex.step_completed("agent-1", result={"summary": "ok"})
        last = events(gateway, "execution:e1")
        eta = next(d for k, d in reversed(last) if k == "progress_update")["estimated_completion"]
        assert eta == "1970-01-01T00:17:20.000000Z"  # 1010 s now + 3 steps × 10 s
        await ex.agent_started("agent-2")
        await ex.agent_failed("agent-2", "boom", {"code": "x"})
    got = events(gateway, "execution:e1")
    statuses = [d for k, d in got if k == "status_update"]
    assert statuses[-1]["status"] == "failed"
    assert statuses[-1]["completed_agents"] == ["agent-1"]
    assert statuses[-1]["failed_agents"] == ["agent-2"]
    snap = gateway.feature(Runs).snapshot("execution:e1")
    assert snap is not None
    assert snap[1]["results"][0]["result"] == {"summary": "ok"}
    assert snap[1]["errors"][0]["error_details"] == {"code": "x"}


async def test_execution_tracker_success_and_cancel(gateway: Gateway) -> None:
    async with ExecutionTracker(gateway, "e2", total_steps=1) as ex:
        await ex.agent_started("a")
        await ex.step_completed("a")
    assert events(gateway, "execution:e2")[-1][1]["status"] == "completed"

    async def cancelled_run() -> None:
        async with ExecutionTracker(gateway, "e3") as ex:
            await ex.agent_started("a")
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled_run())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events(gateway, "execution:e3")[-1][1]["status"] == "cancelled"
