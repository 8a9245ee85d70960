"""HTTP routes of live runs: execute a workflow with the built-in engine (seed 004)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from agentcast.codes import ErrorCode
from agentcast.core.frames import valid_topic
from agentcast.gateway import Gateway
from agentcast.runs.engine import WorkflowRun
from agentcast.transports.errors import http_error

__all__ = ["runs_router"]


class ExecuteIn(BaseModel):
    initial_inputs: dict[str, Any] = Field(default_factory=dict)


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

        async def go() -> None:
            try:
                await run.run((body or ExecuteIn()).initial_inputs)
            except Exception:  # the run's own events report the failure
                pass
            finally:
                gateway.workflows.runs.pop(execution_id, None)

        gateway.add_background(go, once=True)
        await asyncio.sleep(0)
        return ExecuteOut(
            workflow_id=workflow_id, execution_id=execution_id, topic=topic, status="started"
        )

    return router
