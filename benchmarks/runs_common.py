"""What the live-runs benchmark's servers share: the run, its pace, the latency stamp.

One engine drives one workflow run through agentcast's real
:class:`~agentcast.runs.tracker.WorkflowTracker`: ``node_started(n)``, then
``node_completed(n, result)`` (which the tracker follows with its ``progress`` event), over
a graph of ``nodes`` nodes executed again and again (an agent loop). So per node there are
three events: ``node_status`` running, ``node_status`` completed, ``progress``; every one of
them counts as a node event and carries ``"ts"``, the wall clock in ns when the engine
emitted it (the load client's latency origin; seed 004's models accept extra fields).
``workflow_start`` and ``workflow_complete`` are not stamped, so not counted.

The pace is the house one (``peers/common.publish_loop``) with a 1 ms floor on sleeps:
uvloop rounds timer delays to whole milliseconds, so a sleep of the 0.1 ms between two
events at 10,000/s would be a 0 ms timer, a busy loop. The engine wakes about every
millisecond and emits every event that is due (≈ 10 at 10,000/s), as an engine this fast
would, in bursts; behind schedule it only yields.

agentcast (``runs_server.py``) and seed 000's manager (``runs_peer.py``) run this same code;
only the publisher differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentcast.runs.tracker import WorkflowTracker

TOPIC = "workflow:bench"
RUN_ID = "bench"
STAMPED = frozenset({"node_status", "progress"})
TICK = 0.001
"""Shortest sleep of the pacer (uvloop's timer resolution)."""

PublishFn = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


def planned(events: int) -> int:
    """Node events actually emitted for a budget of ``events``: a node's completion is two
    events (``node_status`` + ``progress``), so the last step may overshoot by one."""
    pairs, rest = divmod(events, 3)
    return 3 * pairs + (0 if rest == 0 else 1 if rest == 1 else 3)


class StampingPublisher:
    """Adds ``"ts": time.time_ns()`` to node events, then publishes through ``publish``."""

    def __init__(self, publish: PublishFn, renew_lease: Callable[..., Any] | None = None):
        self._publish = publish
        if renew_lease is not None:
            self.renew_lease = renew_lease  # the tracker keeps the run's lease with it
        self.count = 0

    def publish(self, topic: str, type: str, data: dict[str, Any]) -> Awaitable[Any]:
        if type in STAMPED:
            data["ts"] = time.time_ns()
            self.count += 1
        return self._publish(topic, type, data)


def node_name(i: int) -> str:
    return f"node-{i:04d}"


async def engine_step(run: WorkflowTracker, names: list[str], step: int) -> int:
    """The engine's ``step``-th call: node ``step // 2`` (round robin) starts on even steps,
    completes on odd ones. Returns the events it emitted (a completion also emits progress)."""
    node = names[(step >> 1) % len(names)]
    if step & 1:
        await run.node_completed(node, result={"rows": step, "ok": True})
        return 2
    await run.node_started(node)
    return 1


async def drive(
    publisher: StampingPublisher,
    rate: float,
    events: int,
    nodes: int,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One workflow run: ``events`` node events at ``rate``/s (0: unpaced, as fast as the
    publisher lets the engine go) over ``nodes`` nodes.

    Returns what happened: events emitted, seconds, the largest lag behind schedule.
    """
    loop = asyncio.get_running_loop()
    names = [node_name(i) for i in range(nodes)]
    total = planned(events)
    lag = 0.0
    async with WorkflowTracker(publisher, RUN_ID, nodes=names) as run:
        t0 = loop.time()
        sent = step = 0
        while sent < total:
            now = loop.time()
            due = min(total, int((now - t0) * rate) + 1) if rate > 0 else total
            if sent < due and rate > 0:
                lag = max(lag, now - (t0 + sent / rate))
            while sent < due:
                sent += await engine_step(run, names, step)
                step += 1
            if on_progress is not None:
                on_progress(sent)
            delay = t0 + sent / rate - loop.time() if rate > 0 else 0
            await asyncio.sleep(max(delay, TICK) if delay > 0 else 0)
        seconds = loop.time() - t0
    return {
        "events": publisher.count,
        "planned": total,
        "seconds": round(seconds, 4),
        "rate": round(publisher.count / seconds, 1) if seconds else 0.0,
        "max_lag_ms": round(lag * 1000, 2),
        "nodes": nodes,
    }


class Trigger:
    """One run at a time, started by ``GET /_runs/start?rate=R&events=K&nodes=N``."""

    def __init__(self, publisher: StampingPublisher) -> None:
        self.publisher = publisher
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.result: dict[str, Any] | None = None
        self.sent = 0

    def start(self, rate: float, events: int, nodes: int) -> bool:
        if self.task is not None and not self.task.done():
            return False
        self.result = None
        self.sent = 0

        async def go() -> dict[str, Any]:
            result = await drive(self.publisher, rate, events, nodes, on_progress=self._progress)
            self.result = result
            return result

        self.task = asyncio.get_running_loop().create_task(go())
        return True

    def _progress(self, sent: int) -> None:
        self.sent = sent

    def status(self) -> dict[str, Any]:
        return {
            "running": self.task is not None and not self.task.done(),
            "sent": self.sent,
            "result": self.result,
        }


def serve_trigger(app: Any, trigger: Trigger, status: Callable[[], dict[str, Any]]) -> None:
    """Route ``GET /_runs/start`` (202, or 409 while a run is going) and ``GET /_runs/status``
    (``status()``) on the FastAPI ``app``."""
    from fastapi.responses import JSONResponse

    @app.get("/_runs/start", include_in_schema=False)
    async def start(rate: float = 10_000, events: int = 100_000, nodes: int = 100) -> Any:
        ok = trigger.start(rate, events, nodes)
        return JSONResponse({"started": ok}, status_code=202 if ok else 409)

    @app.get("/_runs/status", include_in_schema=False)
    async def _status() -> Any:
        return status()
