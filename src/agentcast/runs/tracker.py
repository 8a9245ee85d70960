"""Run trackers: instrument an engine in a few lines, the gateway derives the rest.

A tracker publishes one run's events in the seeds' vocabularies and computes what an
engine should not have to: progress %, current step, active/completed/failed agents,
estimated completion from the observed pace, execution time, the error list.

::

    async with WorkflowTracker(gateway, "123", nodes=["fetch", "analyze"]) as run:
        await run.node_started("fetch")
        await run.node_completed("fetch", result={"rows": 10})
        await run.edge_flow("fetch", "analyze")
        ...
    # workflow_complete (success, execution_time, errors) is published on exit; if the
    # block raises, the error is published and the run completes with success=False.

Trackers publish through any :class:`Publisher` (a :class:`~agentcast.Gateway`, or an
HTTP publisher for engines in other processes). From a worker thread, wrap the tracker's
calls with :meth:`Tracker.threadsafe` (or use :class:`ThreadPublisher`).
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

from agentcast.core.envelope import format_timestamp

__all__ = ["ExecutionTracker", "Publisher", "Tracker", "WorkflowTracker"]

T = TypeVar("T")


class Publisher(Protocol):
    """Anything that publishes an event to a topic (``Gateway.publish`` fits)."""

    def publish(self, topic: str, type: str, data: dict[str, Any]) -> Awaitable[Any]: ...


class Tracker:
    """Shared plumbing: topic, clock, publishing, context-manager failure handling."""

    kind = ""

    def __init__(
        self, publisher: Publisher, run_id: str, *, clock: Callable[[], float] = time.time
    ):
        self.publisher = publisher
        self.run_id = run_id
        self.topic = f"{self.kind}:{run_id}"
        self.clock = clock
        self.started_at: float | None = None
        self.finished = False
        self.errors: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._release: Callable[[], None] | None = None

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        """Publish one event of this run."""
        await self.publisher.publish(self.topic, type, data)

    def threadsafe(self, call: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run a tracker coroutine from a worker thread; blocks until it is published.

        ``tracker.threadsafe(tracker.node_started("n1"))``. The tracker must have been
        entered (or :meth:`bind` called) on the event loop first.
        """
        if self._loop is None:
            call.close()
            raise RuntimeError("tracker not bound to an event loop: enter it or call bind()")
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout)

    def bind(self) -> None:
        """Remember the running loop (for :meth:`threadsafe`)."""
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        raise NotImplementedError

    async def complete(self) -> None:
        raise NotImplementedError

    async def fail(self, error: str, **details: Any) -> None:
        raise NotImplementedError

    async def __aenter__(self: Any) -> Any:
        self.bind()
        self._claim()
        try:
            await self.start()
        except BaseException:
            self._unclaim()
            raise
        renew = self._lease_renewer()
        if renew is not None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew(renew))
        return self

    def _runs(self) -> Any:
        """The runs feature of a gateway publisher, or None."""
        from agentcast.gateway import Gateway
        from agentcast.runs.registry import Runs

        publisher = self.publisher
        if not isinstance(publisher, Gateway):
            return None
        try:
            return publisher.feature(Runs)
        except LookupError:
            return None

    def _claim(self) -> None:
        """Hold the run topic while the block runs (one run at a time on a topic: another
        live run's topic raises :class:`~agentcast.errors.CommandError` ``conflict``)."""
        runs = self._runs()
        if runs is not None and self._release is None:
            self._release = runs.claim(self.topic, self)

    def _unclaim(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    def _lease_renewer(self) -> Callable[[str], Any] | None:
        """What keeps the run's lease: the runs feature of a gateway publisher, or a
        publisher's own ``renew_lease(topic)`` (an HTTP publisher in another process)."""
        runs = self._runs()
        if runs is not None:
            renewer: Callable[[str], Any] = runs.tracker_renewer
            return renewer
        renew: Callable[[str], Any] | None = getattr(self.publisher, "renew_lease", None)
        return renew

    async def _renew(self, renew: Callable[[str], Any]) -> None:
        """Keep the run's lease while the block runs, even through long quiet nodes."""
        while True:
            ttl = renew(self.topic)
            if isinstance(ttl, Awaitable):
                ttl = await ttl
            await asyncio.sleep(max(0.01, float(ttl) / 3))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        try:
            if self.finished:
                return
            if exc is None:
                await self.complete()
            elif isinstance(exc, asyncio.CancelledError):
                await self.fail("cancelled", cancelled=True)
            else:
                stack = "".join(traceback.format_exception(exc_type, exc, tb))[-4000:]
                await self.fail(f"{type(exc).__name__}: {exc}", stack_trace=stack)
        finally:
            self._unclaim()

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else max(0.0, self.clock() - self.started_at)


class WorkflowTracker(Tracker):
    """A workflow graph run (seed 004's vocabulary on ``workflow:<id>``)."""

    kind = "workflow"

    def __init__(
        self,
        publisher: Publisher,
        workflow_id: str,
        nodes: Sequence[str],
        *,
        execution_id: str | None = None,
        edges: Sequence[tuple[str, str]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(publisher, workflow_id, clock=clock)
        self.workflow_id = workflow_id
        self.execution_id = execution_id or str(uuid.uuid4())
        self.nodes = list(nodes)
        self.edges = [(str(s), str(t)) for s, t in edges]
        self.status: dict[str, str] = dict.fromkeys(self.nodes, "pending")
        self.current_node: str | None = None

    def _base(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, "execution_id": self.execution_id}

    @property
    def done_count(self) -> int:
        return sum(1 for s in self.status.values() if s in ("completed", "error", "skipped"))

    @property
    def progress(self) -> float:
        return round(100.0 * self.done_count / len(self.nodes), 2) if self.nodes else 100.0

    async def start(self) -> None:
        """Publish ``workflow_start`` with the execution order (and ``edges``, the graph's
        ``{source, target}`` pairs, when the tracker was given them)."""
        self.started_at = self.clock()
        data: dict[str, Any] = {
            **self._base(),
            "execution_order": self.nodes,
            "total_nodes": len(self.nodes),
        }
        if self.edges:
            data["edges"] = [{"source": s, "target": t} for s, t in self.edges]
        await self.emit("workflow_start", data)

    async def node_started(self, node_id: str) -> None:
        self._know(node_id)
        self.status[node_id] = "running"
        self.current_node = node_id
        await self.emit("node_status", {**self._base(), "node_id": node_id, "status": "running"})

    async def node_progress(self, node_id: str, progress: float) -> None:
        """A running node's own progress (0–100)."""
        self._know(node_id)
        await self.emit(
            "node_status",
            {**self._base(), "node_id": node_id, "status": "running", "progress": progress},
        )

    async def node_completed(self, node_id: str, result: Any = None) -> None:
        self._know(node_id)
        self.status[node_id] = "completed"
        await self.emit(
            "node_status",
            {
                **self._base(),
                "node_id": node_id,
                "status": "completed",
                "result": result,
                "progress": 100.0,
            },
        )
        await self._progress(node_id)

    async def node_failed(self, node_id: str, error: str) -> None:
        self._know(node_id)
        self.status[node_id] = "error"
        self.errors.append({"node_id": node_id, "error": error})
        await self.emit(
            "node_status", {**self._base(), "node_id": node_id, "status": "error", "error": error}
        )
        await self.emit("error", {**self._base(), "error": error, "node_id": node_id})
        await self._progress(node_id)

    async def edge_flow(
        self, source: str, target: str, data: Any = None, edge_id: str | None = None
    ) -> None:
        await self.emit(
            "edge_flow",
            {
                **self._base(),
                "source_node_id": source,
                "target_node_id": target,
                "edge_id": edge_id,
                "data": data,
            },
        )

    async def log(self, message: str, level: str = "info") -> None:
        await self.emit("log", {**self._base(), "level": level, "message": message})

    async def complete(self) -> None:
        """Publish ``workflow_complete``: success unless a node failed."""
        await self._finish(success=not self.errors)

    async def fail(self, error: str, **details: Any) -> None:
        """The run failed outside any node: ``error``, then ``workflow_complete(False)``."""
        self.errors.append({"error": error, **({"details": details} if details else {})})
        await self.emit("error", {**self._base(), "error": error, "node_id": self.current_node})
        await self._finish(success=False)

    async def _finish(self, success: bool) -> None:
        self.finished = True
        await self.emit(
            "workflow_complete",
            {
                **self._base(),
                "success": success,
                "execution_time": round(self.elapsed(), 6),
                "errors": self.errors,
            },
        )

    async def _progress(self, node_id: str) -> None:
        await self.emit(
            "progress",
            {
                **self._base(),
                "current_step": self.done_count,
                "total_steps": len(self.nodes),
                "progress": self.progress,
                "current_node_id": node_id,
            },
        )

    def _know(self, node_id: str) -> None:
        if node_id not in self.status:
            self.nodes.append(node_id)
            self.status[node_id] = "pending"


class ExecutionTracker(Tracker):
    """An agent-team execution (seed 000's vocabulary on ``execution:<id>``)."""

    kind = "execution"

    def __init__(
        self,
        publisher: Publisher,
        execution_id: str,
        *,
        team_id: str | None = None,
        total_steps: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(publisher, execution_id, clock=clock)
        self.execution_id = execution_id
        self.team_id = team_id
        self.total_steps = total_steps
        self.current_step = 0
        self.agents: dict[str, str] = {}
        self.status = "pending"

    def agents_in(self, *statuses: str) -> list[str]:
        return [a for a, s in self.agents.items() if s in statuses]

    @property
    def progress(self) -> float:
        if not self.total_steps:
            return 0.0
        return round(min(100.0, 100.0 * self.current_step / self.total_steps), 2)

    def estimated_completion(self) -> str | None:
        """ISO time at which the run should end, from the pace of the steps so far."""
        if not self.total_steps or not self.current_step or self.started_at is None:
            return None
        per_step = self.elapsed() / self.current_step
        remaining = max(0, self.total_steps - self.current_step)
        return format_timestamp(self.clock() + per_step * remaining)

    async def start(self) -> None:
        self.started_at = self.clock()
        await self._status("running")

    async def agent_started(self, agent_id: str, step: int | None = None) -> None:
        self.agents[agent_id] = "running"
        await self.emit(
            "agent_status_update",
            {
                "execution_id": self.execution_id,
                "agent_id": agent_id,
                "status": "running",
                "step_order": step if step is not None else self.current_step + 1,
            },
        )
        await self._status(self.status)

    async def step_completed(self, agent_id: str, result: dict[str, Any] | None = None) -> None:
        """The agent finished its step: status, result, then progress with the new ETA."""
        self.agents[agent_id] = "completed"
        self.current_step += 1
        await self.emit(
            "agent_status_update",
            {
                "execution_id": self.execution_id,
                "agent_id": agent_id,
                "status": "completed",
                "step_order": self.current_step,
            },
        )
        if result is not None:
            await self.result(agent_id, result)
        await self.emit(
            "progress_update",
            {
                "execution_id": self.execution_id,
                "progress": self.progress,
                "current_step": self.current_step,
                "total_steps": self.total_steps,
                "estimated_completion": self.estimated_completion(),
            },
        )
        await self._status(self.status)

    async def result(self, agent_id: str | None, result: dict[str, Any]) -> None:
        await self.emit(
            "result_update",
            {"execution_id": self.execution_id, "agent_id": agent_id, "result": result},
        )

    async def agent_failed(
        self, agent_id: str, error_message: str, details: dict[str, Any] | None = None
    ) -> None:
        self.agents[agent_id] = "failed"
        self.errors.append({"agent_id": agent_id, "error_message": error_message})
        await self.emit(
            "agent_status_update",
            {"execution_id": self.execution_id, "agent_id": agent_id, "status": "failed"},
        )
        await self.emit(
            "error_update",
            {
                "execution_id": self.execution_id,
                "agent_id": agent_id,
                "error_message": error_message,
                "error_details": details or {},
            },
        )
        await self._status(self.status)

    async def complete(self) -> None:
        self.finished = True
        if self.total_steps:
            self.current_step = max(self.current_step, self.total_steps)
        await self._status("failed" if self.agents_in("failed") else "completed")

    async def fail(self, error: str, **details: Any) -> None:
        self.finished = True
        self.errors.append({"error_message": error})
        await self.emit(
            "error_update",
            {
                "execution_id": self.execution_id,
                "agent_id": None,
                "error_message": error,
                "error_details": details,
            },
        )
        await self._status("cancelled" if details.get("cancelled") else "failed")

    async def _status(self, status: str) -> None:
        self.status = status
        await self.emit(
            "status_update",
            {
                "execution_id": self.execution_id,
                "team_id": self.team_id,
                "status": status,
                "progress": self.progress,
                "current_step": self.current_step,
                "total_steps": self.total_steps,
                "active_agents": self.agents_in("running"),
                "completed_agents": self.agents_in("completed"),
                "failed_agents": self.agents_in("failed"),
            },
        )
