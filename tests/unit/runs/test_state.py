from __future__ import annotations

import pytest

from agentcast.runs.state import RunState, run_kind
from tests.unit.runs.test_vocabulary import SEED_000, SEED_004, W


def fold(topic: str, events: list[tuple[str, dict]]) -> RunState:  # type: ignore[type-arg]
    state = RunState(topic)
    for seq, (kind, data) in enumerate(events, start=1):
        state.apply(seq, kind, data, f"t{seq}")
    return state


def test_run_kind() -> None:
    assert run_kind("workflow:1") == "workflow"
    assert run_kind("execution:a:b") == "execution"
    assert run_kind("chat:1") is None
    assert run_kind("workflow") is None
    with pytest.raises(ValueError, match="not a run topic"):
        RunState("task:1")


def test_workflow_run_folds_nodes_progress_logs_and_completion() -> None:
    n = {**W}
    state = fold(
        "workflow:123",
        [
            ("workflow_start", SEED_004["workflow_start"]),
            ("node_status", {**n, "node_id": "node1", "status": "running"}),
            ("log", SEED_004["log"]),
            ("node_status", {**n, "node_id": "node1", "status": "completed", "result": {"v": 1}}),
            ("edge_flow", SEED_004["edge_flow"]),
            ("progress", SEED_004["progress"]),
            ("node_status", {**n, "node_id": "node2", "status": "error", "error": "boom"}),
        ],
    )
    snap = state.snapshot()
    assert snap["status"] == "running"
    assert snap["seq"] == 7
    assert snap["nodes"]["node1"]["status"] == "completed"
    assert snap["nodes"]["node1"]["result"] == {"v": 1}
    assert snap["nodes"]["node2"]["error"] == "boom"
    assert snap["nodes"]["node3"] == {"status": "pending"}
    assert snap["progress"] == 40.0
    assert snap["current_node_id"] == "node2"
    assert [e["error"] for e in snap["errors"]] == ["boom"]
    assert snap["logs"][0]["message"] == "로그 메시지"
    assert snap["logs"][0]["seq"] == 3  # the log event's own seq: clients dedupe by it
    assert snap["graph_edges"] == []  # seed 004's workflow_start names no edges
    assert snap["edges"][0]["source_node_id"] == "node1"
    state.apply(
        8,
        "workflow_complete",
        {**n, "success": False, "execution_time": 1.0, "errors": ["x"]},
        "t8",
    )
    assert state.finished
    assert state.snapshot()["status"] == "failed"
    assert state.snapshot()["finished_at"] == "t8"
    state.apply(8, "log", SEED_004["log"], "t8")  # a duplicate seq changes nothing
    assert len(state.snapshot()["logs"]) == 1


def test_new_workflow_start_resets_the_previous_execution() -> None:
    state = fold(
        "workflow:123",
        [
            ("workflow_start", SEED_004["workflow_start"]),
            ("node_status", {**W, "node_id": "node1", "status": "error", "error": "e"}),
            ("workflow_complete", {**W, "success": False, "execution_time": 1, "errors": []}),
            (
                "workflow_start",
                {**W, "execution_id": "second", "execution_order": ["a"], "total_nodes": 1},
            ),
        ],
    )
    snap = state.snapshot()
    assert (snap["execution_id"], snap["status"], snap["nodes"], snap["errors"]) == (
        "second",
        "running",
        {"a": {"status": "pending"}},
        [],
    )


def test_execution_run_folds_agents_results_and_errors() -> None:
    state = fold("execution:x", [(k, v) for k, v in SEED_000.items()])
    snap = state.snapshot()
    assert snap["team_id"] == "00000000-0000-0000-0000-000000000001"
    assert snap["progress"] == 75.0
    assert snap["estimated_completion"] == "2023-01-01T00:05:00Z"
    assert snap["active_agents"] == ["agent-456"]
    assert snap["completed_agents"] == ["agent-123"]
    assert snap["failed_agents"] == ["agent-789"]
    assert snap["results"][0]["result"]["summary"] == "Análise de dados concluída"
    assert snap["errors"][0]["error_details"]["code"] == "data_processing_error"
    state.apply(9, "status_update", {**SEED_000["status_update"], "status": "cancelled"}, "t9")
    assert state.snapshot()["status"] == "cancelled"
    assert state.agents["agent-456"]["status"] == "cancelled"


def test_control_and_publisher_lost() -> None:
    state = fold("execution:y", [("agent_status_update", SEED_000["agent_status_update"])])
    assert state.status == "running"
    state.apply(2, "run_paused", {}, "t2")
    assert state.status == "paused"
    state.apply(3, "run_resumed", {}, "t3")
    assert state.status == "running"
    state.apply(4, "publisher_lost", {"lease_s": 5}, "t4")
    assert state.status == "lost"
    assert state.errors[-1]["error"] == "publisher_lost"
    state.apply(5, "run_resumed", {}, "t5")
    assert state.status == "lost"
    state.apply(6, "unknown_kind", {}, "t6")
    assert state.seq == 6


def test_a_new_run_on_the_same_topic_starts_over() -> None:
    """Demo-style repeated runs on one id: each run's state is its own (no growth)."""
    state = RunState("execution:demo")
    seq = 0
    for run in range(3):
        for kind, data in (
            ("status_update", {"execution_id": "demo", "status": "running"}),
            ("result_update", {"execution_id": "demo", "result": {"run": run}}),
            ("status_update", {"execution_id": "demo", "status": "completed"}),
        ):
            seq += 1
            state.apply(seq, kind, data, f"t{seq}")
    snap = state.snapshot()
    assert [r["result"] for r in snap["results"]] == [{"run": 2}]
    assert snap["status"] == "completed"
    assert snap["started_at"] == "t7"
    assert snap["seq"] == 9
    # another execution id on the topic is another run too
    state.apply(10, "agent_status_update", {"agent_id": "a", "status": "running"}, "t10")
    state.apply(11, "progress_update", {"execution_id": "other", "progress": 5}, "t11")
    assert state.execution_id == "other"
    assert state.snapshot()["agents"] == {}

    wf = RunState("workflow:w")
    start = {"workflow_id": "w", "execution_id": "e1", "execution_order": ["a"], "total_nodes": 1}
    wf.apply(1, "workflow_start", start, "t1")
    wf.apply(2, "log", {"workflow_id": "w", "execution_id": "e1", "message": "one"}, "t2")
    wf.apply(3, "workflow_start", {**start, "execution_id": "e2"}, "t3")
    assert wf.execution_id == "e2"
    assert wf.snapshot()["logs"] == []
