"""A run's current state, folded from its events (no I/O).

:class:`RunState` applies the events of one ``execution:<id>`` or ``workflow:<id>`` topic
in seq order and answers :meth:`RunState.snapshot`: what a dashboard that joins late needs
to draw the run as it is (node statuses, progress, agents, results, errors, the last log
lines), tagged with the seq it reflects so the live events that follow continue from
``seq + 1`` without gap or duplicate.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["TERMINAL_STATUSES", "RunState", "run_kind"]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "lost"})
_MAX_EDGES = 50


def run_kind(topic: str) -> str | None:
    """``"workflow"``, ``"execution"`` or None for a topic name."""
    prefix = topic.split(":", 1)[0]
    return prefix if prefix in ("workflow", "execution") and ":" in topic else None


class RunState:
    """The folded state of one run topic."""

    __slots__ = (
        "agents",
        "edges",
        "errors",
        "execution_id",
        "fields",
        "finished_at",
        "kind",
        "logs",
        "max_logs",
        "nodes",
        "results",
        "run_id",
        "seq",
        "started_at",
        "status",
        "topic",
    )

    def __init__(self, topic: str, max_logs: int = 100) -> None:
        kind = run_kind(topic)
        if kind is None:
            raise ValueError(f"{topic!r} is not a run topic")
        self.topic = topic
        self.kind = kind
        self.run_id = topic.split(":", 1)[1]
        self.seq = 0
        self.max_logs = max_logs
        self._begin()

    def _begin(self) -> None:
        """Empty state: a run that has not started (also when a new run reuses the topic)."""
        max_logs = self.max_logs
        self.status = "pending"
        self.execution_id: str | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.fields: dict[str, Any] = {}
        """Latest scalar fields (progress, current_step, total_steps, team_id, …)."""
        self.nodes: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.edges: deque[dict[str, Any]] = deque(maxlen=_MAX_EDGES)
        self.logs: deque[dict[str, Any]] = deque(maxlen=max_logs)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def apply(self, seq: int, type: str, data: dict[str, Any], timestamp: str) -> None:
        """Fold one event. Events at or below the current seq are ignored (idempotent)."""
        if seq <= self.seq:
            return
        self.seq = seq
        if self._starts_new_run(type, data):
            self._begin()  # a run's state is its own run's, also when runs share a topic
        if self.started_at is None:
            self.started_at = timestamp
        if self.execution_id is None and isinstance(data.get("execution_id"), str):
            self.execution_id = data["execution_id"]
        handler = _HANDLERS.get(type)
        if handler is not None:
            handler(self, data, timestamp)

    def _starts_new_run(self, type: str, data: dict[str, Any]) -> bool:
        """Does this event begin another run on the topic? ``workflow_start`` after any
        event does; on an execution topic, a ``status_update`` with a non-terminal status
        after the run ended, or an event naming another ``execution_id``."""
        if self.started_at is None:
            return False
        if type == "workflow_start":
            return True
        if self.kind != "execution":
            return False
        execution_id = data.get("execution_id")
        if execution_id is not None and self.execution_id not in (None, execution_id):
            return True
        return (
            type == "status_update"
            and self.finished
            and data.get("status") not in TERMINAL_STATUSES
        )

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (the ``data`` of a ``snapshot`` frame)."""
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "execution_id": self.execution_id,
            "status": self.status,
            "seq": self.seq,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            **self.fields,
            "nodes": self.nodes,
            "agents": self.agents,
            "active_agents": self._agents_in("running"),
            "completed_agents": self._agents_in("completed"),
            "failed_agents": self._agents_in("failed", "error"),
            "results": self.results,
            "errors": self.errors,
            "edges": list(self.edges),
            "logs": list(self.logs),
        }

    def _agents_in(self, *statuses: str) -> list[str]:
        return [a for a, info in self.agents.items() if info.get("status") in statuses]

    def _finish(self, status: str, timestamp: str) -> None:
        self.status = status
        self.finished_at = timestamp
        for agent in self.agents.values():
            if agent.get("status") == "running" and status != "completed":
                agent["status"] = "cancelled" if status == "cancelled" else "failed"


def _copy_fields(state: RunState, data: dict[str, Any], *names: str) -> None:
    for name in names:
        if data.get(name) is not None:
            state.fields[name] = data[name]


# -- execution vocabulary (seed 000) ---------------------------------------------------


def _status_update(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.execution_id = data.get("execution_id", state.execution_id)
    _copy_fields(state, data, "team_id", "progress", "current_step", "total_steps")
    for key, status in (
        ("active_agents", "running"),
        ("completed_agents", "completed"),
        ("failed_agents", "failed"),
    ):
        for agent in data.get(key) or ():
            state.agents.setdefault(agent, {})["status"] = status
    status = data.get("status", state.status)
    if status in TERMINAL_STATUSES:
        state._finish(status, ts)
    else:
        state.status = status


def _agent_status(state: RunState, data: dict[str, Any], ts: str) -> None:
    agent = state.agents.setdefault(data["agent_id"], {})
    agent["status"] = data.get("status")
    if data.get("step_order") is not None:
        agent["step_order"] = data["step_order"]
    agent["updated_at"] = ts
    if state.status == "pending":
        state.status = "running"


def _progress_update(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.execution_id = data.get("execution_id", state.execution_id)
    _copy_fields(state, data, "progress", "current_step", "total_steps", "estimated_completion")


def _result_update(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.results.append(
        {"agent_id": data.get("agent_id"), "result": data.get("result"), "timestamp": ts}
    )


def _error_update(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.errors.append(
        {
            "agent_id": data.get("agent_id"),
            "error_message": data.get("error_message"),
            "error_details": data.get("error_details") or {},
            "timestamp": ts,
        }
    )
    if data.get("agent_id"):
        state.agents.setdefault(data["agent_id"], {})["status"] = "failed"


# -- workflow vocabulary (seed 004) ----------------------------------------------------


def _workflow_start(state: RunState, data: dict[str, Any], ts: str) -> None:
    # a new execution of the workflow: the previous one's state is replaced
    state.execution_id = data.get("execution_id")
    state.status = "running"
    state.started_at = ts
    state.finished_at = None
    state.nodes = {node: {"status": "pending"} for node in data.get("execution_order") or ()}
    state.fields = {
        "execution_order": list(data.get("execution_order") or ()),
        "total_nodes": data.get("total_nodes"),
        "progress": 0.0,
        # the graph, for a dashboard that joins late: [{source, target}], [] when unknown
        "graph_edges": list(data.get("edges") or ()),
    }
    state.errors = []
    state.results = []
    state.edges.clear()


def _node_status(state: RunState, data: dict[str, Any], ts: str) -> None:
    node = state.nodes.setdefault(data["node_id"], {})
    node["status"] = data.get("status")
    for key in ("result", "error", "progress"):
        if data.get(key) is not None:
            node[key] = data[key]
    node["updated_at"] = ts
    if data.get("status") == "error":
        state.errors.append(
            {"node_id": data["node_id"], "error": data.get("error"), "timestamp": ts}
        )


def _edge_flow(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.edges.append(
        {
            "source_node_id": data.get("source_node_id"),
            "target_node_id": data.get("target_node_id"),
            "edge_id": data.get("edge_id"),
            "timestamp": ts,
        }
    )


def _progress(state: RunState, data: dict[str, Any], ts: str) -> None:
    _copy_fields(state, data, "progress", "current_step", "total_steps", "current_node_id")


def _log(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.logs.append(
        {
            "level": data.get("level", "info"),
            "message": data.get("message"),
            "timestamp": ts,
            "seq": state.seq,  # the log event's own seq: a client merging live lines dedupes by it
        }
    )


def _workflow_error(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.errors.append(
        {"node_id": data.get("node_id"), "error": data.get("error"), "timestamp": ts}
    )


def _workflow_complete(state: RunState, data: dict[str, Any], ts: str) -> None:
    _copy_fields(state, data, "success", "execution_time")
    if data.get("success"):
        state.fields["progress"] = 100.0
    state._finish("completed" if data.get("success") else "failed", ts)


# -- the gateway's own run events --------------------------------------------------------


def _publisher_lost(state: RunState, data: dict[str, Any], ts: str) -> None:
    state.errors.append({"error": "publisher_lost", "details": data, "timestamp": ts})
    state._finish("lost", ts)


def _control(status: str) -> Any:
    def apply(state: RunState, data: dict[str, Any], ts: str) -> None:
        if status == "cancelled":
            state._finish("cancelled", ts)
        elif not state.finished:
            state.status = status

    return apply


_HANDLERS = {
    "status_update": _status_update,
    "agent_status_update": _agent_status,
    "progress_update": _progress_update,
    "result_update": _result_update,
    "error_update": _error_update,
    "workflow_start": _workflow_start,
    "node_status": _node_status,
    "edge_flow": _edge_flow,
    "progress": _progress,
    "log": _log,
    "error": _workflow_error,
    "workflow_complete": _workflow_complete,
    "publisher_lost": _publisher_lost,
    "run_paused": _control("paused"),
    "run_resumed": _control("running"),
    "run_cancelled": _control("cancelled"),
}
