"""The run registry: current state of every run topic this node sees, for snapshots.

:class:`RunRegistry` listens to every ``execution:`` and ``workflow:`` topic, folds each
publication into a :class:`~agentcast.runs.state.RunState`, and answers the gateway's
snapshot requests with ``(seq, state)``. It keeps at most ``max_runs`` states: finished
runs are forgotten first, oldest first (a later issue persists them in the run store).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from agentcast.core.envelope import Publication
from agentcast.runs.state import RunState, run_kind

if TYPE_CHECKING:
    from agentcast.gateway import Gateway

__all__ = ["RUN_PREFIXES", "RunRegistry"]

RUN_PREFIXES = ("execution:", "workflow:")


class RunRegistry:
    """Folded run states, fed by the gateway's observers."""

    def __init__(self, max_runs: int = 10_000, max_logs: int = 100) -> None:
        self.max_runs = max_runs
        self.max_logs = max_logs
        self.states: OrderedDict[str, RunState] = OrderedDict()

    def install(self, gateway: Gateway) -> None:
        """Observe ``gateway``'s publications and serve its snapshots."""
        gateway.observers.append(self.observe)
        gateway.snapshots = self.snapshot

        async def listen() -> None:
            for prefix in RUN_PREFIXES:
                await gateway.broker.listen_prefix(prefix)

        gateway.add_startup(listen)

    def observe(self, pub: Publication) -> None:
        """Fold one publication (ignores topics that are not runs)."""
        topic = pub.topic
        if not topic.startswith(RUN_PREFIXES) or run_kind(topic) is None:
            return
        state = self.states.get(topic)
        if state is None:
            state = self.states[topic] = RunState(topic, self.max_logs)
            self._evict()
        else:
            self.states.move_to_end(topic)
        state.apply(pub.seq, pub.type, orjson.loads(pub.data), pub.timestamp)

    def snapshot(self, topic: str) -> tuple[int, dict[str, Any]] | None:
        """``(seq, state)`` of a run topic this registry knows, else None."""
        state = self.states.get(topic)
        if state is None:
            return None
        return state.seq, state.snapshot()

    def _evict(self) -> None:
        if len(self.states) <= self.max_runs:
            return
        for topic, state in self.states.items():
            if state.finished:
                del self.states[topic]
                return
        self.states.popitem(last=False)
