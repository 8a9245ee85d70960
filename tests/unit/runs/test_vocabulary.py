from __future__ import annotations

from typing import Any

import pytest

from agentcast.codes import ErrorCode
from agentcast.errors import ProtocolError
from agentcast.runs.vocabulary import validate_event, vocabulary_for

E = "00000000-0000-0000-0000-000000000003"

# the seeds' own example payloads, verbatim
SEED_000 = {
    "status_update": {
        "execution_id": E,
        "team_id": "00000000-0000-0000-0000-000000000001",
        "status": "running",
        "progress": 50.0,
        "current_step": 2,
        "total_steps": 3,
        "active_agents": ["agent-456"],
        "completed_agents": ["agent-123"],
        "failed_agents": [],
    },
    "agent_status_update": {"agent_id": "agent-456", "status": "running", "step_order": 2},
    "progress_update": {
        "execution_id": E,
        "progress": 75.0,
        "current_step": 3,
        "total_steps": 4,
        "estimated_completion": "2023-01-01T00:05:00Z",
    },
    "result_update": {
        "execution_id": E,
        "agent_id": "agent-456",
        "result": {"summary": "Análise de dados concluída", "details": "..."},
    },
    "error_update": {
        "execution_id": E,
        "agent_id": "agent-789",
        "error_message": "Falha ao processar dados",
        "error_details": {"code": "data_processing_error", "stack_trace": "..."},
    },
}
W = {"workflow_id": "123", "execution_id": "uuid-string"}
SEED_004 = {
    "workflow_start": {**W, "execution_order": ["node1", "node2", "node3"], "total_nodes": 3},
    "workflow_complete": {**W, "success": True, "execution_time": 5.23, "errors": []},
    "node_status": {
        **W,
        "node_id": "node1",
        "status": "running",
        "result": None,
        "error": None,
        "progress": None,
    },
    "edge_flow": {
        **W,
        "source_node_id": "node1",
        "target_node_id": "node2",
        "edge_id": None,
        "data": None,
    },
    "progress": {
        **W,
        "current_step": 2,
        "total_steps": 5,
        "progress": 40.0,
        "current_node_id": "node2",
    },
    "log": {**W, "level": "info", "message": "로그 메시지"},
    "error": {**W, "error": "에러 메시지", "node_id": "node1"},
}


@pytest.mark.parametrize(("kind", "data"), list(SEED_000.items()))
def test_seed_000_examples_validate(kind: str, data: dict[str, Any]) -> None:
    validate_event(f"execution:{E}", kind, data)


@pytest.mark.parametrize(("kind", "data"), list(SEED_004.items()))
def test_seed_004_examples_validate(kind: str, data: dict[str, Any]) -> None:
    validate_event("workflow:123", kind, data)


@pytest.mark.parametrize(
    ("topic", "kind", "data", "field"),
    [
        ("workflow:1", "node_status", {**W, "node_id": "n", "status": "exploded"}, "data.status"),
        ("workflow:1", "node_status", {**W, "status": "running"}, "data.node_id"),
        (
            "workflow:1",
            "progress",
            {**W, "current_step": 1, "total_steps": 2, "progress": 140},
            "data.progress",
        ),
        ("workflow:1", "log", {**W, "level": "debug", "message": "x"}, "data.level"),
        ("workflow:1", "teleport", {}, "type"),
        (
            "execution:1",
            "status_update",
            {"execution_id": "1", "status": "running", "active_agents": "a"},
            "data.active_agents",
        ),
        (
            "execution:1",
            "result_update",
            {"execution_id": "1", "result": "not an object"},
            "data.result",
        ),
    ],
)
def test_bad_events_name_the_field(topic: str, kind: str, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_event(topic, kind, data)
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.field == field
    assert field in info.value.message


def test_other_topics_and_gateway_events_pass() -> None:
    validate_event("chat:1", "anything", {"x": 1})
    validate_event("workflow:1", "publisher_lost", {})
    assert vocabulary_for("task:1") is None
    assert vocabulary_for("execution:1") is not None
    validate_event(
        "workflow:1", "node_status", {**W, "node_id": "n", "status": "completed", "custom": 1}
    )
