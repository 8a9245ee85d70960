"""HTTP routes of live runs: execute a workflow with the built-in engine (seed 004)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from agentcast.codes import ErrorCode
from agentcast.core.frames import valid_topic
from agentcast.errors import CommandError
from agentcast.gateway import Gateway
from agentcast.runs.engine import WorkflowRun
from agentcast.runs.state import run_kind
from agentcast.transports.errors import http_error

__all__ = ["runs_router"]


class ExecuteIn(BaseModel):
    initial_inputs: dict[str, Any] = Field(default_factory=dict)


class ControlIn(BaseModel):
    action: Literal["pause", "resume", "cancel"]


class ControlOut(BaseModel):
    topic: str
    action: str
    seq: int = Field(description="Seq of the run_paused / run_resumed / run_cancelled event.")


class LeaseIn(BaseModel):
    ttl: float = Field(gt=0, le=86400, description="Seconds the producer promises to live.")


class LeaseOut(BaseModel):
    topic: str
    ttl: float


class ExecuteOut(BaseModel):
    workflow_id: str
    execution_id: str
    topic: str
    status: str


def runs_router(gateway: Gateway, authorize: Any) -> APIRouter:
    """``POST /api/workflows/{workflow_id}/execute``.

    ``authorize(request, topic)`` raises the HTTP error when the caller may not run it.
    """
    router = APIRouter(tags=["runs"])

    @router.post("/api/workflows/{workflow_id}/execute", response_model=ExecuteOut, status_code=202)
    async def execute(
        request: Request,
        workflow_id: str = Path(description="The workflow (graph) id."),
        body: ExecuteIn | None = None,
    ) -> ExecuteOut:
        """Run a registered workflow (or the built-in sample graph for an unknown id).

        Answers at once; the run's events stream on ``workflow:<workflow_id>``
        (``/api/ws/workflow/<workflow_id>`` or ``/ws``).
        """
        topic = f"workflow:{workflow_id}"
        if not valid_topic(topic):
            message = f"invalid workflow id {workflow_id!r}"
            raise http_error(400, ErrorCode.INVALID_TOPIC, message, "workflow_id")
        await authorize(request, topic)
        execution_id = str(uuid.uuid4())
        run = WorkflowRun(
            gateway.workflows.get(workflow_id), gateway, workflow_id, execution_id=execution_id
        )
        gateway.workflows.runs[execution_id] = run
        unregister = gateway.runs.on_control(topic, run.control)

        async def go() -> None:
            try:
                await run.run((body or ExecuteIn()).initial_inputs)
            except Exception:  # the run's own events report the failure
                pass
            finally:
                unregister()
                gateway.workflows.runs.pop(execution_id, None)

        gateway.add_background(go, once=True)
        await asyncio.sleep(0)
        return ExecuteOut(
            workflow_id=workflow_id, execution_id=execution_id, topic=topic, status="started"
        )

    @router.post("/api/runs/{topic}/control", response_model=ControlOut)
    async def control(request: Request, topic: str, body: ControlIn) -> ControlOut:
        """Pause, resume or cancel a run through its producer's control handler."""
        await authorize(request, topic)
        try:
            seq = await gateway.runs.control(topic, body.action)
        except CommandError as exc:
            status = 409 if exc.code is ErrorCode.UNAVAILABLE else 400
            raise http_error(status, exc.code, exc.message, exc.field) from exc
        return ControlOut(topic=topic, action=body.action, seq=seq)

    @router.put("/api/runs/{topic}/lease", response_model=LeaseOut)
    async def lease(request: Request, topic: str, body: LeaseIn) -> LeaseOut:
        """The producer of ``topic`` is alive: renew its lease for ``ttl`` seconds."""
        if run_kind(topic) is None:
            raise http_error(400, ErrorCode.INVALID_TOPIC, f"{topic!r} is not a run", "topic")
        await authorize(request, topic)
        return LeaseOut(topic=topic, ttl=gateway.renew_lease(topic, body.ttl))

    return router
