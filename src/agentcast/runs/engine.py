"""A small, real DAG executor that reports through a :class:`WorkflowTracker`.

A :class:`Workflow` is a set of async node callables and the edges between them. Running
it starts every node whose predecessors have completed, concurrently, in topological
order; a node receives the results of its predecessors (and the initial inputs). A node
that raises fails, its descendants are skipped, independent branches go on, and the run
completes with ``success: false``. A run can be paused (no new node starts), resumed and
cancelled (running nodes are cancelled). Everything shows in the run's events.

::

    async def fetch(ctx: NodeContext) -> dict: ...
    wf = Workflow({"fetch": fetch, "report": report}, edges=[("fetch", "report")])
    run = WorkflowRun(wf, gateway, workflow_id="123")
    results = await run.run({"url": "..."})
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentcast.errors import AgentcastError
from agentcast.runs.tracker import Publisher, WorkflowTracker

__all__ = [
    "NodeContext",
    "Workflow",
    "WorkflowError",
    "WorkflowRegistry",
    "WorkflowRun",
    "sample_workflow",
]

NodeFn = Callable[["NodeContext"], Awaitable[Any]]


class WorkflowError(AgentcastError, ValueError):
    """The graph is not a DAG, or names unknown nodes."""


@dataclass(frozen=True)
class NodeContext:
    """What a node callable receives."""

    node_id: str
    inputs: Mapping[str, Any]
    """Results of the node's predecessors, by node id."""
    initial_inputs: Mapping[str, Any]
    run: WorkflowRun

    async def log(self, message: str, level: str = "info") -> None:
        await self.run.tracker.log(f"{self.node_id}: {message}", level)

    async def progress(self, progress: float) -> None:
        await self.run.tracker.node_progress(self.node_id, progress)


@dataclass
class Workflow:
    """Async node callables and the edges ``(source, target)`` between them."""

    nodes: dict[str, NodeFn]
    edges: Sequence[tuple[str, str]] = ()
    name: str = ""
    predecessors: dict[str, list[str]] = field(init=False)
    successors: dict[str, list[str]] = field(init=False)
    order: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.predecessors = {n: [] for n in self.nodes}
        self.successors = {n: [] for n in self.nodes}
        for source, target in self.edges:
            if source not in self.nodes or target not in self.nodes:
                raise WorkflowError(f"edge {source!r} -> {target!r} names an unknown node")
            self.predecessors[target].append(source)
            self.successors[source].append(target)
        self.order = self._topological_order()

    def _topological_order(self) -> list[str]:
        indegree = {n: len(p) for n, p in self.predecessors.items()}
        ready = [n for n in self.nodes if indegree[n] == 0]
        order: list[str] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for nxt in self.successors[node]:
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
        if len(order) != len(self.nodes):
            stuck = sorted(n for n, d in indegree.items() if d > 0)
            raise WorkflowError(f"the graph has a cycle through {', '.join(stuck)}")
        return order


class WorkflowRun:
    """One execution of a workflow, with pause, resume and cancel."""

    def __init__(
        self,
        workflow: Workflow,
        publisher: Publisher,
        workflow_id: str,
        *,
        execution_id: str | None = None,
    ) -> None:
        self.workflow = workflow
        self.tracker = WorkflowTracker(
            publisher, workflow_id, workflow.order, execution_id=execution_id, edges=workflow.edges
        )
        self.results: dict[str, Any] = {}
        self._gate = asyncio.Event()
        self._gate.set()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled = False
        self._release: Callable[[], None] | None = None

    def claim(self) -> None:
        """Hold the run topic and take its control commands, when the publisher is a
        gateway with the runs feature (``run`` does it; call it earlier to be refused at
        once). Raises :class:`~agentcast.errors.CommandError` ``conflict`` while another
        run holds the topic."""
        if self._release is not None:
            return
        from agentcast.gateway import Gateway
        from agentcast.runs.registry import Runs

        publisher = self.tracker.publisher
        if not isinstance(publisher, Gateway):
            return
        try:
            runs = publisher.feature(Runs)
        except LookupError:
            return
        # the tracker is the producer: its own claim when the run enters it is the same
        self._release = runs.claim(self.tracker.topic, self.tracker, self.control)

    def release(self) -> None:
        """Give the run topic back (``run`` does it when the run ends)."""
        if self._release is not None:
            self._release()
            self._release = None

    @property
    def paused(self) -> bool:
        return not self._gate.is_set()

    async def pause(self) -> None:
        """Start no new node until :meth:`resume` (running nodes finish)."""
        if not self.paused:
            self._gate.clear()
            await self.tracker.log("run paused", "warning")

    async def resume(self) -> None:
        if self.paused:
            self._gate.set()
            await self.tracker.log("run resumed")

    async def cancel(self) -> None:
        """Cancel running nodes and end the run (``workflow_complete`` with success false)."""
        self._cancelled = True
        self._gate.set()
        for task in self._tasks.values():
            task.cancel()

    async def control(self, action: str) -> None:
        """A control handler for :meth:`RunRegistry.on_control`: pause, resume or cancel."""
        if action == "pause":
            await self.pause()
        elif action == "resume":
            await self.resume()
        elif action == "cancel":
            await self.cancel()
        else:
            raise ValueError(f"unknown control action {action!r}")

    async def run(self, initial_inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Execute the graph; returns the results of the completed nodes."""
        self.claim()
        try:
            return await self._run(initial_inputs)
        finally:
            self.release()

    async def _run(self, initial_inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        inputs = dict(initial_inputs or {})
        wf = self.workflow
        tracker = self.tracker
        async with tracker:
            remaining = dict.fromkeys(wf.order)
            done: set[str] = set()
            skipped: set[str] = set()
            while remaining and not self._cancelled:
                for node in list(remaining):
                    if node in self._tasks:
                        continue
                    preds = wf.predecessors[node]
                    if any(p in skipped for p in preds):
                        skipped.add(node)
                        del remaining[node]
                        await tracker.log(f"{node} skipped: an upstream node failed", "warning")
                        continue
                    if all(p in done for p in preds):
                        await self._gate.wait()
                        if self._cancelled:
                            break
                        self._tasks[node] = asyncio.create_task(self._run_node(node, inputs))
                if not self._tasks:
                    break
                finished, _ = await asyncio.wait(
                    self._tasks.values(), return_when=asyncio.FIRST_COMPLETED
                )
                for node, task in list(self._tasks.items()):
                    if task not in finished:
                        continue
                    del self._tasks[node]
                    remaining.pop(node, None)
                    if task.cancelled() or task.exception() is not None:
                        skipped.add(node)
                    else:
                        done.add(node)
            if self._cancelled:
                for task in self._tasks.values():
                    task.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                await tracker.fail("cancelled")
        return self.results

    async def _run_node(self, node: str, initial_inputs: dict[str, Any]) -> Any:
        wf = self.workflow
        tracker = self.tracker
        await tracker.node_started(node)
        ctx = NodeContext(
            node_id=node,
            inputs={p: self.results.get(p) for p in wf.predecessors[node]},
            initial_inputs=initial_inputs,
            run=self,
        )
        try:
            result = await wf.nodes[node](ctx)
        except asyncio.CancelledError:
            # no shield: whoever cancels us awaits us, so this is published before it goes on
            await tracker.node_failed(node, "cancelled")
            raise
        except Exception as exc:
            await tracker.node_failed(node, f"{type(exc).__name__}: {exc}")
            raise
        self.results[node] = result
        await tracker.node_completed(node, result=_jsonable(result))
        for target in wf.successors[node]:
            await tracker.edge_flow(node, target, data=_jsonable(result))
        return result


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return repr(value)


class WorkflowRegistry:
    """Workflows by id, for ``POST /api/workflows/{id}/execute``."""

    def __init__(self) -> None:
        self.workflows: dict[str, Workflow] = {}
        self.runs: dict[str, WorkflowRun] = {}

    def register(self, workflow_id: str, workflow: Workflow) -> None:
        self.workflows[workflow_id] = workflow

    def get(self, workflow_id: str) -> Workflow:
        """The registered workflow, or the built-in sample graph for an unknown id."""
        return self.workflows.get(workflow_id) or sample_workflow()


def sample_workflow(pace: float = 0.05, seed: int | None = None) -> Workflow:
    """fetch → {analyze, summarize} → report: the built-in sample graph."""
    rng = random.Random(seed)

    def step(name: str) -> NodeFn:
        async def node(ctx: NodeContext) -> dict[str, Any]:
            await ctx.log("started")
            await asyncio.sleep(pace * rng.uniform(0.5, 1.5))
            upstream = sum(r.get("items", 0) for r in ctx.inputs.values() if isinstance(r, dict))
            items = upstream or int(ctx.initial_inputs.get("items", rng.randint(10, 100)))
            return {"node": name, "items": items, "score": round(rng.random(), 3)}

        return node

    names = ["fetch", "analyze", "summarize", "report"]
    return Workflow(
        {name: step(name) for name in names},
        edges=[
            ("fetch", "analyze"),
            ("fetch", "summarize"),
            ("analyze", "report"),
            ("summarize", "report"),
        ],
        name="sample",
    )
