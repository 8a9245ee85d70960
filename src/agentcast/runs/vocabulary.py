"""The seeds' event vocabularies, exactly as they document them.

Agent-team executions (seed 000, topic ``execution:<id>``): ``status_update``,
``agent_status_update``, ``progress_update``, ``result_update``, ``error_update``.
Workflow graph runs (seed 004, topic ``workflow:<id>``): ``workflow_start``,
``workflow_complete``, ``node_status``, ``edge_flow``, ``progress``, ``log``, ``error``.

Field names are the seeds'. Every model accepts extra fields (producers may add their own)
but validates the documented ones. :func:`validate_event` checks one event of a run topic.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentcast.codes import ErrorCode
from agentcast.errors import ProtocolError

__all__ = [
    "EXECUTION_EVENTS",
    "WORKFLOW_EVENTS",
    "AgentStatusUpdate",
    "EdgeFlow",
    "ErrorEvent",
    "ErrorUpdate",
    "LogEvent",
    "NodeStatus",
    "ProgressEvent",
    "ProgressUpdate",
    "ResultUpdate",
    "StatusUpdate",
    "WorkflowComplete",
    "WorkflowStart",
    "validate_event",
    "vocabulary_for",
]

RunStatus = Literal["pending", "queued", "running", "paused", "completed", "failed", "cancelled"]
AgentStatus = Literal["pending", "idle", "running", "completed", "failed", "error", "cancelled"]
NodeState = Literal["pending", "running", "completed", "error", "skipped", "cancelled"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- seed 000: agent-team executions ---------------------------------------------------


class StatusUpdate(_Event):
    """``status_update``: the execution's overall status."""

    execution_id: str
    team_id: str | None = None
    status: RunStatus
    progress: float | None = Field(default=None, ge=0, le=100)
    current_step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=0)
    active_agents: list[str] = Field(default_factory=list)
    completed_agents: list[str] = Field(default_factory=list)
    failed_agents: list[str] = Field(default_factory=list)


class AgentStatusUpdate(_Event):
    """``agent_status_update``: one agent's status at a step."""

    agent_id: str
    status: AgentStatus
    step_order: int | None = Field(default=None, ge=0)
    execution_id: str | None = None


class ProgressUpdate(_Event):
    """``progress_update``: progress, step and the estimated completion time."""

    execution_id: str
    progress: float = Field(ge=0, le=100)
    current_step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=0)
    estimated_completion: str | None = Field(default=None, description="ISO-8601 UTC.")


class ResultUpdate(_Event):
    """``result_update``: an agent's result."""

    execution_id: str
    agent_id: str | None = None
    result: dict[str, Any]


class ErrorUpdate(_Event):
    """``error_update``: an agent's (or the execution's) error."""

    execution_id: str
    agent_id: str | None = None
    error_message: str
    error_details: dict[str, Any] = Field(default_factory=dict)


EXECUTION_EVENTS: dict[str, type[_Event]] = {
    "status_update": StatusUpdate,
    "agent_status_update": AgentStatusUpdate,
    "progress_update": ProgressUpdate,
    "result_update": ResultUpdate,
    "error_update": ErrorUpdate,
}

# -- seed 004: workflow graph runs -----------------------------------------------------


class _WorkflowEvent(_Event):
    workflow_id: str
    execution_id: str


class GraphEdge(BaseModel):
    """One edge of a workflow's graph."""

    source: str
    target: str


class WorkflowStart(_WorkflowEvent):
    """``workflow_start``: the run began; nodes in execution order, and the graph's edges
    when the producer knows them (the built-in engine sends them; seed 004 did not)."""

    execution_order: list[str]
    total_nodes: int = Field(ge=0)
    edges: list[GraphEdge] | None = None


class WorkflowComplete(_WorkflowEvent):
    """``workflow_complete``: the run ended."""

    success: bool
    execution_time: float = Field(ge=0, description="Seconds.")
    errors: list[Any] = Field(default_factory=list)


class NodeStatus(_WorkflowEvent):
    """``node_status``: a node changed state (``result`` when completed, ``error`` on error)."""

    node_id: str
    status: NodeState
    result: Any = None
    error: str | None = None
    progress: float | None = Field(default=None, ge=0, le=100)


class EdgeFlow(_WorkflowEvent):
    """``edge_flow``: data flowed from one node to the next."""

    source_node_id: str
    target_node_id: str
    edge_id: str | None = None
    data: Any = None


class ProgressEvent(_WorkflowEvent):
    """``progress``: overall workflow progress."""

    current_step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    progress: float = Field(ge=0, le=100)
    current_node_id: str | None = None


class LogEvent(_WorkflowEvent):
    """``log``: a log line of the run."""

    level: Literal["info", "warning", "error"] = "info"
    message: str


class ErrorEvent(_WorkflowEvent):
    """``error``: an error during the run (``node_id`` when a node caused it)."""

    error: str
    node_id: str | None = None


WORKFLOW_EVENTS: dict[str, type[_Event]] = {
    "workflow_start": WorkflowStart,
    "workflow_complete": WorkflowComplete,
    "node_status": NodeStatus,
    "edge_flow": EdgeFlow,
    "progress": ProgressEvent,
    "log": LogEvent,
    "error": ErrorEvent,
}


def vocabulary_for(topic: str) -> dict[str, type[_Event]] | None:
    """The vocabulary that applies to ``topic`` (by its prefix), or None."""
    if topic.startswith("execution:"):
        return EXECUTION_EVENTS
    if topic.startswith("workflow:"):
        return WORKFLOW_EVENTS
    return None


def validate_event(topic: str, type: str, data: dict[str, Any]) -> None:
    """Check ``data`` against the vocabulary of ``topic``; raise :class:`ProtocolError`.

    Topics without a vocabulary accept anything. Run topics accept the vocabulary's types
    and also the gateway's own run events (``snapshot`` is never published; ``publisher_lost``
    and control events are added by the gateway itself). The error names the exact field,
    e.g. ``data.status``.
    """
    vocabulary = vocabulary_for(topic)
    if vocabulary is None:
        return
    model = vocabulary.get(type)
    if model is None:
        if type in _GATEWAY_RUN_EVENTS:
            return
        known = ", ".join(sorted(vocabulary))
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"unknown event type {type!r} for {topic.split(':', 1)[0]} topics (known: {known})",
            field="type",
        )
    try:
        model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(["data", *(str(p) for p in err["loc"])])
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"{field}: {err['msg']}", field=field
        ) from None


_GATEWAY_RUN_EVENTS = frozenset({"publisher_lost", "run_paused", "run_resumed", "run_cancelled"})
