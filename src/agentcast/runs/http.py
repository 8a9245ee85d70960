"""HTTP routes of live runs: execute a workflow with the built-in engine (seed 004)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from agentcast.codes import ErrorCode
from agentcast.core.frames import valid_topic
from agentcast.errors import BrokerError, CommandError
from agentcast.gateway import Gateway
from agentcast.policy import Principal
from agentcast.runs.engine import WorkflowRun
from agentcast.runs.state import run_kind
from agentcast.security.ownership import OwnershipPolicy
from agentcast.storage.base import RunStore, RunVisibility, StoreError
from agentcast.web import http_error, principal_of

if TYPE_CHECKING:
    from agentcast.runs.registry import Runs

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


class RunOut(BaseModel):
    topic: str
    kind: str
    run_id: str
    status: str
    execution_id: str | None
    started_at: str | None
    finished_at: str | None
    last_seq: int
    progress: float | None = Field(
        default=None, description="Percent done (0–100) as the run last reported it."
    )


class RunPage(BaseModel):
    total: int
    limit: int
    offset: int
    runs: list[RunOut]


class RunStateOut(BaseModel):
    topic: str
    seq: int = Field(description="The last event the state reflects.")
    state: dict[str, Any]


class RunEventsOut(BaseModel):
    topic: str
    events: list[dict[str, Any]]


class ExecuteOut(BaseModel):
    workflow_id: str
    execution_id: str
    topic: str
    status: str


def runs_router(gateway: Gateway, runs: Runs) -> APIRouter:
    """The runs HTTP API of ``runs`` on ``gateway``: execute, control, lease, list, read."""
    router = APIRouter(tags=["runs"])

    async def authorize_control(request: Request, topic: str) -> Principal:
        principal = await principal_of(gateway, request)
        try:
            await runs.authorize_control(principal, topic)
        except CommandError as exc:
            status = 409 if exc.code is ErrorCode.UNAVAILABLE else 403
            raise http_error(status, exc.code, exc.message, exc.field) from exc
        return principal

    @router.post("/api/workflows/{workflow_id}/execute", response_model=ExecuteOut, status_code=202)
    async def execute(
        request: Request,
        workflow_id: str = Path(description="The workflow (graph) id."),
        body: ExecuteIn | None = None,
    ) -> ExecuteOut:
        """Run a registered workflow (or the built-in sample graph for an unknown id).

        Answers at once; the run's events stream on ``workflow:<workflow_id>``
        (``/api/ws/workflow/<workflow_id>`` or ``/ws``). One run of a workflow at a time:
        while one is live, another is refused with 409 ``conflict``.
        """
        topic = f"workflow:{workflow_id}"
        if not valid_topic(topic):
            message = f"invalid workflow id {workflow_id!r}"
            raise http_error(400, ErrorCode.INVALID_TOPIC, message, "workflow_id")
        principal = await principal_of(gateway, request)
        if not await gateway.may_control(principal, topic):
            raise http_error(403, ErrorCode.FORBIDDEN, f"may not run {topic!r}: needs control")
        if not await runs.take_ownership(principal, topic):
            # the same answer whoever owns it (another user, the server)
            message = f"workflow id {workflow_id!r} is not available"
            raise http_error(409, ErrorCode.CONFLICT, message, "workflow_id")
        execution_id = str(uuid.uuid4())
        run = WorkflowRun(
            runs.workflows.get(workflow_id), gateway, workflow_id, execution_id=execution_id
        )
        try:
            run.claim()
        except CommandError as exc:
            raise http_error(409, exc.code, exc.message, "workflow_id") from exc
        runs.workflows.runs[execution_id] = run

        async def go() -> None:
            with contextlib.suppress(Exception):  # the run's own events report the failure
                await run.run((body or ExecuteIn()).initial_inputs)

        def ended(_: object) -> None:  # the task's end, also if cancelled before it began
            run.release()
            runs.workflows.runs.pop(execution_id, None)

        task = gateway.add_background(go, once=True)
        if task is None:  # the gateway is not running (served without its lifespan)
            ended(None)
            raise http_error(503, ErrorCode.UNAVAILABLE, "the gateway is not running")
        task.add_done_callback(ended)
        await asyncio.sleep(0)
        return ExecuteOut(
            workflow_id=workflow_id, execution_id=execution_id, topic=topic, status="started"
        )

    @router.post("/api/runs/{topic}/control", response_model=ControlOut)
    async def control(request: Request, topic: str, body: ControlIn) -> ControlOut:
        """Pause, resume or cancel a run through its producer's control handler (needs
        ``control`` and a run the caller may read; any other run, existing or not, gets
        the same 409 as a run without a producer here)."""
        await authorize_control(request, topic)
        try:
            seq = await runs.control(topic, body.action)
        except CommandError as exc:
            status = 409 if exc.code is ErrorCode.UNAVAILABLE else 400
            raise http_error(status, exc.code, exc.message, exc.field) from exc
        return ControlOut(topic=topic, action=body.action, seq=seq)

    @router.put("/api/runs/{topic}/lease", response_model=LeaseOut)
    async def lease(request: Request, topic: str, body: LeaseIn) -> LeaseOut:
        """The producer of ``topic`` is alive: renew its lease for ``ttl`` seconds."""
        if run_kind(topic) is None:
            raise http_error(400, ErrorCode.INVALID_TOPIC, f"{topic!r} is not a run", "topic")
        principal = await principal_of(gateway, request)
        if not await gateway.may_publish(principal, topic):
            raise http_error(403, ErrorCode.FORBIDDEN, f"may not renew the lease of {topic!r}")
        try:
            ttl = await runs.renew_everywhere(topic, body.ttl)
        except BrokerError as exc:
            raise http_error(
                503, ErrorCode.UNAVAILABLE, f"lease renewed on this node only: {exc}"
            ) from exc
        return LeaseOut(topic=topic, ttl=ttl)

    @router.get("/api/runs", response_model=RunPage)
    async def list_runs(
        request: Request,
        kind: Literal["workflow", "execution"] | None = None,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> RunPage:
        """Stored runs the caller may read, most recently updated first, filtered by kind
        and status (with authentication on and the default authorizer: their own and what
        their ``topics`` claim grants, all for ``admin``)."""
        principal = await principal_of(gateway, request)
        store = _store_or_404(runs)
        await _flush(runs)
        if isinstance(gateway.authorizer, OwnershipPolicy) and not principal.admin:
            visibility = RunVisibility(principal.subject, principal.topics)
        else:
            visibility = None
        found, total = await store.list_runs(kind, status, limit, offset, visibility)
        visible = [r for r in found if await gateway.may_subscribe(principal, r.topic)]
        return RunPage(
            total=total,
            limit=limit,
            offset=offset,
            runs=[
                RunOut(
                    topic=r.topic,
                    kind=r.kind,
                    run_id=r.run_id,
                    status=r.status,
                    execution_id=r.execution_id,
                    started_at=r.started_at,
                    finished_at=r.finished_at,
                    last_seq=r.last_seq,
                    progress=_progress_of(r.state),
                )
                for r in visible
            ],
        )

    @router.get("/api/runs/{topic}", response_model=RunStateOut)
    async def get_run(request: Request, topic: str) -> RunStateOut:
        """A run's current (or final) state, as a late joiner's snapshot would carry it."""
        await _readable(gateway, request, topic)
        state = await runs.snapshot_async(topic)
        if state is None:
            raise _no_run(topic)
        return RunStateOut(topic=topic, seq=state[0], state=state[1])

    @router.get("/api/runs/{topic}/events", response_model=RunEventsOut)
    async def run_events(
        request: Request,
        topic: str,
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> RunEventsOut:
        """A run's full event log after ``since`` (from the run store), in seq order."""
        await _readable(gateway, request, topic)
        store = _store_or_404(runs)
        await _flush(runs)
        events = await store.events(topic, since, limit)
        return RunEventsOut(topic=topic, events=[e.to_wire() for e in events])

    return router


def _progress_of(state: dict[str, Any]) -> float | None:
    value = state.get("progress")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _store_or_404(runs: Runs) -> RunStore:
    if runs.store is None:
        raise http_error(404, ErrorCode.UNAVAILABLE, "no run store is configured (store_url)")
    return runs.store


async def _flush(runs: Runs) -> None:
    recorder = runs.recorder
    if recorder is not None:
        try:
            await recorder.flush()
        except StoreError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, f"run store unavailable: {exc}") from exc


def _no_run(topic: str) -> HTTPException:
    return http_error(404, ErrorCode.NOT_FOUND, f"no run {topic!r}", "topic")


async def _readable(gateway: Gateway, request: Request, topic: str) -> None:
    """Raise unless the caller may read the run ``topic``: 404 ``not_found``, the answer
    for a run that does not exist, so that a refusal says nothing about another's run."""
    if run_kind(topic) is None:
        raise http_error(400, ErrorCode.INVALID_TOPIC, f"{topic!r} is not a run", "topic")
    principal = await principal_of(gateway, request)
    if not await gateway.may_subscribe(principal, topic):
        raise _no_run(topic)
