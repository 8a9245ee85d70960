"""Demo data for ``agentcast serve --demo``: workflow runs that never stop.

Every few seconds a small workflow graph (fetch → {analyze, summarize} → report) runs on
topic ``workflow:demo``: ``workflow_start``, ``node_status`` (running → completed),
``edge_flow``, ``progress`` and ``log`` events, then ``workflow_complete``, with the
seed 004 field names. A newcomer can ``agentcast tail workflow:demo`` and see it live.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid

from agentcast.gateway import Gateway

__all__ = ["run_demo"]

GRAPH: dict[str, list[str]] = {
    "fetch": ["analyze", "summarize"],
    "analyze": ["report"],
    "summarize": ["report"],
    "report": [],
}
ORDER = ["fetch", "analyze", "summarize", "report"]


async def run_demo(gateway: Gateway, topic: str = "workflow:demo", pace: float = 0.4) -> None:
    """Publish demo workflow runs on ``topic`` until cancelled; ``pace`` is seconds per step."""
    rng = random.Random(7)
    for run in itertools.count(1):
        execution_id = str(uuid.uuid4())
        base = {"workflow_id": "demo", "execution_id": execution_id}
        await gateway.publish(
            topic,
            "workflow_start",
            {**base, "execution_order": ORDER, "total_nodes": len(ORDER)},
        )
        errors: list[str] = []
        for step, node in enumerate(ORDER, start=1):
            await gateway.publish(
                topic,
                "node_status",
                {**base, "node_id": node, "status": "running", "progress": None},
            )
            await gateway.publish(
                topic, "log", {**base, "level": "info", "message": f"run {run}: {node} started"}
            )
            await asyncio.sleep(pace * rng.uniform(0.5, 1.5))
            result = {"items": rng.randint(1, 100), "score": round(rng.random(), 3)}
            await gateway.publish(
                topic,
                "node_status",
                {
                    **base,
                    "node_id": node,
                    "status": "completed",
                    "result": result,
                    "progress": 100.0,
                },
            )
            for target in GRAPH[node]:
                await gateway.publish(
                    topic,
                    "edge_flow",
                    {
                        **base,
                        "source_node_id": node,
                        "target_node_id": target,
                        "edge_id": None,
                        "data": result,
                    },
                )
            await gateway.publish(
                topic,
                "progress",
                {
                    **base,
                    "current_step": step,
                    "total_steps": len(ORDER),
                    "progress": round(100.0 * step / len(ORDER), 1),
                    "current_node_id": node,
                },
            )
        await gateway.publish(
            topic,
            "workflow_complete",
            {
                **base,
                "success": not errors,
                "execution_time": round(pace * len(ORDER), 2),
                "errors": errors,
            },
        )
        await asyncio.sleep(pace * 2)
