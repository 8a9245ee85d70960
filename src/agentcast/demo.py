"""Demo data for ``agentcast serve --demo``: runs that never stop.

* ``workflow:demo``: the built-in engine runs the sample graph (fetch → {analyze,
  summarize} → report) again and again, with seed 004's events.
* ``execution:demo``: a three-agent team execution with seed 000's events.

A newcomer can ``agentcast tail workflow:demo`` (or open the seeds' endpoints) and see it live.
"""

from __future__ import annotations

import asyncio
import itertools
import random

from agentcast.codes import ErrorCode
from agentcast.errors import CommandError
from agentcast.gateway import Gateway
from agentcast.runs.engine import WorkflowRun, sample_workflow
from agentcast.runs.tracker import ExecutionTracker

__all__ = ["run_demo", "run_execution_demo"]


async def run_demo(gateway: Gateway, workflow_id: str = "demo", pace: float = 0.4) -> None:
    """Run the sample workflow on ``workflow:<workflow_id>`` until cancelled."""
    for run in itertools.count(1):
        engine = WorkflowRun(sample_workflow(pace, seed=run), gateway, workflow_id)
        try:
            await engine.run({"run": run})
        except CommandError as exc:
            if exc.code is not ErrorCode.CONFLICT:
                raise
            # somebody executed this workflow by hand (POST .../execute): its run goes
            # first, the demo takes its next turn after it
        await asyncio.sleep(pace * 2)


async def run_execution_demo(
    gateway: Gateway, execution_id: str = "demo", pace: float = 0.6
) -> None:
    """A team of three agents working through three steps, again and again."""
    rng = random.Random(11)
    agents = ["researcher", "analyst", "writer"]
    while True:
        async with ExecutionTracker(
            gateway, execution_id, team_id="demo-team", total_steps=len(agents)
        ) as execution:
            for step, agent in enumerate(agents, start=1):
                await execution.agent_started(agent, step)
                await asyncio.sleep(pace * rng.uniform(0.5, 1.5))
                await execution.step_completed(agent, {"summary": f"{agent} finished step {step}"})
        await asyncio.sleep(pace * 2)
