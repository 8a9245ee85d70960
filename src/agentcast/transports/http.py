"""The HTTP API: publish for producers in any language, history, topics, health.

Every error body is ``{"detail": {"code": …, "message": …, "field": …}}`` with a code
from :mod:`agentcast.codes`; request validation errors are answered 400 with the exact
field. Requests from another origin than the server's own and the ``origins`` setting's
are refused with 403, and CORS headers follow that list (:mod:`agentcast.security.origin`).
The OpenAPI document is served at ``/openapi.json`` (docs at ``/docs`` and
``/redoc``, working offline: :mod:`agentcast.transports.docs`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator
from starlette.middleware.cors import CORSMiddleware

from agentcast.__about__ import __version__
from agentcast.brokers.base import Duplicate
from agentcast.codes import ErrorCode
from agentcast.core.frames import PresenceData, valid_topic
from agentcast.errors import BrokerError, ProtocolError, PublishOutcomeUnknownError
from agentcast.gateway import Gateway, presence_data
from agentcast.security.origin import OriginMiddleware, OriginPolicy
from agentcast.transports.asgi import websocket_not_found, websocket_route
from agentcast.transports.bodylimit import BodyLimit
from agentcast.transports.docs import install_offline_docs
from agentcast.web import admin_of, http_error, principal_of

__all__ = ["create_app", "http_router"]


class EventIn(BaseModel):
    """One event to publish."""

    type: str = Field(min_length=1, max_length=100, examples=["node_status"])
    data: dict[str, Any] = Field(default_factory=dict, examples=[{"node_id": "n1"}])

    @field_validator("type")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("event type must be printable text")
        return value


_EVENT = TypeAdapter(EventIn)
_EVENTS = TypeAdapter(list[EventIn])


class PublishResult(BaseModel):
    topic: str
    seqs: list[int] = Field(description="Assigned sequence numbers, in the order given.")
    timestamp: str
    duplicates: int = Field(
        0,
        description="With `Producer-Id`/`Producer-Seq`: how many of the events were "
        "retries of events already published (not published again; their `seqs` are the "
        "original ones, 0 for a retry older than the broker's window).",
    )


class HistoryOut(BaseModel):
    topic: str
    first_seq: int
    last_seq: int
    complete: bool = Field(description="False when history no longer reaches since+1.")
    events: list[dict[str, Any]]


class TopicOut(BaseModel):
    topic: str
    last_seq: int
    subscribers: int


class PresenceOut(PresenceData):
    """Body of ``GET /api/topics/{topic}/presence``: the ``presence`` reply's ``data``
    and the topic."""

    topic: str


class Health(BaseModel):
    status: str
    version: str
    mode: str
    connections: int | None = Field(
        description="Open connections; with authentication on, shown to admin only."
    )
    topics: int | None = Field(
        description="Topics the broker knows; with authentication on, shown to admin only."
    )
    uptime_s: float
    node: str = Field(description="This process's id in the cluster (hostname:pid:random).")
    cluster: dict[str, float] | None = Field(
        None,
        description="The cluster state: live nodes at the last heartbeat (1 in-process), "
        "backend errors, users counted here, rate tokens charged from other nodes; with "
        "authentication on, shown to admin only.",
    )
    history: dict[str, int] | None = Field(
        None,
        description="The in-process history and its budget (memory broker): bytes, "
        "budget, topics, evicted_topics.",
    )


def http_router(gateway: Gateway) -> APIRouter:
    """The HTTP API routes bound to ``gateway``."""
    router = APIRouter()
    started = time.monotonic()

    @router.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz(request: Request) -> Health:
        """Liveness and a few counters; ``topics`` counts the topics the broker knows,
        published to or subscribed (what ``/api/topics`` lists in open mode).

        Needs no credentials (load balancers), and never names a topic; with
        authentication on, the counters are for ``admin`` only (``null`` otherwise)."""
        counters = gateway.open_mode or await _is_admin(gateway, request)
        return Health(
            status="ok" if gateway.started else "starting",
            version=__version__,
            mode="open" if gateway.open_mode else "auth",
            connections=len(gateway.sessions) if counters else None,
            topics=len(gateway.broker.topics()) if counters else None,
            uptime_s=round(time.monotonic() - started, 3),
            node=gateway.cluster.node,
            cluster=gateway.cluster.stats() if counters else None,
            history=gateway.broker.history_usage(),
        )

    @router.get(
        "/readyz",
        tags=["ops"],
        responses={
            200: {"description": "Ready: every check answered `ok`."},
            503: {"description": "Not ready: the checks that are not `ok` say why."},
        },
    )
    async def readyz() -> JSONResponse:
        """Readiness (for a load balancer or Kubernetes): 200 when the gateway runs and the
        broker and the store answer within ``readyz_timeout``; 503 while starting, while
        draining (shutdown) and when a check fails, with ``not_ready`` naming them.

        Needs no credentials and tells no detail (an exception's type at most; its message
        goes to the log)."""
        checks = await gateway.readiness()
        not_ready = sorted(name for name, state in checks.items() if state != "ok")
        body: dict[str, Any] = {"status": "not ready" if not_ready else "ready", "checks": checks}
        if not_ready:
            body["not_ready"] = not_ready
        return JSONResponse(body, status_code=503 if not_ready else 200)

    @router.post(
        "/api/topics/{topic:path}/events",
        response_model=PublishResult,
        tags=["events"],
        responses={400: {"description": "Invalid event"}, 403: {"description": "Forbidden"}},
    )
    async def publish(
        request: Request,
        topic: Annotated[str, Path(description="Topic name, e.g. `workflow:123`.")],
        body: Annotated[
            Any,
            Body(
                description="One event object, or a JSON array of them.",
                examples=[{"type": "node_status", "data": {"node_id": "n1", "status": "running"}}],
            ),
        ],
        producer_id: Annotated[
            str | None,
            Header(
                alias="Producer-Id",
                description="An idempotent producer's id (with `Producer-Seq`).",
            ),
        ] = None,
        producer_seq: Annotated[
            str | None,
            Header(
                alias="Producer-Seq",
                description="The producer's number of the body's first event; the i-th "
                "event of an array gets `Producer-Seq + i`.",
            ),
        ] = None,
    ) -> PublishResult:
        """Publish one event or a JSON array of events to ``topic``.

        All events are validated before any is published; the answer lists the assigned
        sequence numbers in order. With the headers ``Producer-Id`` and ``Producer-Seq``
        the publish is idempotent: sending the same request again (after a timeout or a
        503 ``outcome_unknown``, through any node) publishes nothing twice and answers the
        original seqs, with ``duplicates`` counting the events already published.
        """
        principal = await principal_of(gateway, request)
        if not await gateway.may_publish(principal, topic):
            raise http_error(403, ErrorCode.FORBIDDEN, f"may not publish to {topic!r}")
        if wait := gateway.rate_limit_user(principal, "publish"):
            detail = {
                "code": ErrorCode.RATE_LIMITED.value,
                "message": "rate limit of publish exceeded; retry later",
                "retry_after": round(wait, 3),
            }
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            raise HTTPException(status_code=429, detail=detail, headers=headers)
        pseq: int | None = None
        if producer_seq is not None:
            try:
                pseq = int(producer_seq)
            except ValueError:
                raise http_error(
                    400, ErrorCode.INVALID_FIELD, "Producer-Seq: an integer", "Producer-Seq"
                ) from None
        try:
            gateway.check_producer(producer_id, pseq)
        except ProtocolError as exc:
            field = {"producer_id": "Producer-Id", "producer_seq": "Producer-Seq"}.get(
                exc.field or "", exc.field
            )
            message = exc.message.replace("producer_id", "Producer-Id").replace(
                "producer_seq", "Producer-Seq"
            )
            raise http_error(400, exc.code, message, field) from exc
        try:
            events = (
                _EVENTS.validate_python(body)
                if isinstance(body, list)
                else [_EVENT.validate_python(body)]
            )
        except ValidationError as exc:
            e = exc.errors()[0]
            field = ".".join(str(p) for p in e["loc"]) or "body"
            raise http_error(400, ErrorCode.INVALID_FIELD, f"{field}: {e['msg']}", field) from None
        if not events:
            raise http_error(
                400, ErrorCode.INVALID_FIELD, "empty array: nothing to publish", "body"
            )
        encoded = []
        for i, event in enumerate(events):
            try:
                # in order: defaults follow the earlier events of the array (the run a
                # workflow_start in it begins, for the events after it)
                encoded.append((event.type, gateway.check_event(topic, event.type, event.data)))
            except ProtocolError as exc:
                where = exc.field if not isinstance(body, list) else f"{i}.{exc.field}"
                raise http_error(400, exc.code, exc.message, where) from exc
        seqs = []
        # queued in one loop iteration: one broker batch (one round trip) for the body
        if pseq is not None and pseq + len(encoded) - 1 > 1 << 53:
            raise http_error(
                400, ErrorCode.INVALID_FIELD, "Producer-Seq: too large", "Producer-Seq"
            )
        futures = [
            gateway.publish_nowait(
                topic,
                kind,
                data,
                producer=producer_id,
                producer_seq=None if pseq is None else pseq + i,
            )
            for i, (kind, data) in enumerate(encoded)
        ]
        duplicates = 0
        try:
            for future in futures:
                pub = await future
                seqs.append(pub.seq)
                duplicates += type(pub) is Duplicate
        except PublishOutcomeUnknownError as exc:
            raise http_error(
                503,
                ErrorCode.OUTCOME_UNKNOWN,
                f"published {len(seqs)}; the broker's answer for the next "
                f"{len(futures) - len(seqs)} was lost: they may have been published (read "
                f"the topic's history before publishing them again): {exc}",
            ) from exc
        except BrokerError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, f"published {len(seqs)}: {exc}") from exc
        finally:
            for future in futures:  # a batch fails as a whole: its errors are reported
                if future.done() and not future.cancelled():
                    future.exception()
        return PublishResult(
            topic=topic, seqs=seqs, timestamp=gateway.now_iso(), duplicates=duplicates
        )

    @router.get("/api/topics/{topic:path}/events", response_model=HistoryOut, tags=["events"])
    async def history(
        request: Request,
        topic: Annotated[str, Path(description="Topic name.")],
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> HistoryOut:
        """Retained events of ``topic`` with seq > ``since``, oldest first."""
        if not valid_topic(topic):
            raise http_error(400, ErrorCode.INVALID_TOPIC, f"invalid topic {topic!r}", "topic")
        principal = await principal_of(gateway, request)
        if not await gateway.may_subscribe(principal, topic):
            raise http_error(403, ErrorCode.FORBIDDEN, f"may not read {topic!r}")
        page = await gateway.history(topic, since, limit)
        return HistoryOut(
            topic=topic,
            first_seq=page.first_seq,
            last_seq=page.last_seq,
            complete=page.complete,
            events=[pub.to_dict() for pub in page.publications],
        )

    @router.get(
        "/api/topics/{topic:path}/presence",
        response_model=PresenceOut,
        tags=["events"],
        responses={403: {"description": "Forbidden"}, 503: {"description": "Unavailable"}},
    )
    async def presence(
        request: Request, topic: Annotated[str, Path(description="Topic name.")]
    ) -> PresenceOut:
        """Who is subscribed to ``topic`` on every live node (users and their connections,
        anonymous connections); 403, as for reading it, where the caller may not
        subscribe (whether or not anyone is there)."""
        if not valid_topic(topic):
            raise http_error(400, ErrorCode.INVALID_TOPIC, f"invalid topic {topic!r}", "topic")
        principal = await principal_of(gateway, request)
        if not await gateway.may_subscribe(principal, topic):
            raise http_error(403, ErrorCode.FORBIDDEN, f"may not read {topic!r}")
        try:
            found = await gateway.presence(topic)
        except BrokerError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, f"presence unavailable: {exc}") from exc
        return PresenceOut(topic=topic, **presence_data(found))

    @router.get("/api/topics", response_model=list[TopicOut], tags=["events"])
    async def topics(request: Request) -> list[TopicOut]:
        """Known topics the caller may read, with their last seq and subscribers here."""
        principal = await principal_of(gateway, request)
        visible = []
        for name, seq in sorted(gateway.broker.topics().items()):
            if await gateway.may_subscribe(principal, name):
                visible.append(
                    TopicOut(topic=name, last_seq=seq, subscribers=gateway.hub.presence(name))
                )
        return visible

    if gateway.settings.bench_endpoint:

        @router.get("/_bench/publish", status_code=202, include_in_schema=False)
        async def bench_publish(
            request: Request,
            topics: int = 1,
            count: int = 1000,
            rate: float = 0.0,
            prefix: str = "t",
        ) -> dict[str, str]:
            """Benchmark trigger: publish ``count`` events round-robin over ``topics``
            (``admin`` only once authentication is on)."""
            await admin_of(gateway, request)
            asyncio.get_running_loop().create_task(
                _bench_loop(gateway, [f"{prefix}{i}" for i in range(topics)], count, rate)
            )
            return {"status": "publishing"}

    return router


async def _is_admin(gateway: Gateway, request: Request) -> bool:
    """Whether ``request`` comes from an ``admin``; False for a request without valid
    credentials (never an error: /healthz answers everybody)."""
    try:
        principal = await principal_of(gateway, request, count=False)
    except HTTPException:
        return False
    return principal.admin


async def _bench_loop(
    gateway: Gateway,
    names: list[str],
    count: int,
    rate: float,
    on_run: Callable[[int, int, int, int], None] | None = None,
) -> None:
    """The benchmark's publisher: ~200-byte node_status events stamped with ``ts`` (ns),
    round-robin over ``names``, ``rate`` per second (0: as fast as possible).

    ``on_run(start_ns, end_ns, events, due_ns)``, if given, is told of each run of events
    published back to back between two sleeps of a paced loop, and when its first event was
    due (``benchmarks/tail.py`` traces the publisher's catch-up runs with it).
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    due0 = time.time_ns()
    n = len(names)
    start, k0 = due0, 0
    for k in range(count):
        if rate > 0:
            delay = t0 + k / rate - loop.time()
            if delay > 0:
                if on_run is not None and k > k0:
                    on_run(start, time.time_ns(), k - k0, due0 + int(1e9 * k0 / rate))
                await asyncio.sleep(delay)
                k0, start = k, time.time_ns()
        topic = names[k % n]
        await gateway.publish(
            topic,
            "node_status",
            {
                "workflow_id": f"wf-{topic}",
                "execution_id": f"exec-{k:08d}",
                "node_id": "node7",
                "status": "running",
                "progress": 42.0,
                "ts": time.time_ns(),
            },
        )
    if on_run is not None and rate > 0 and count > k0:
        on_run(start, time.time_ns(), count - k0, due0 + int(1e9 * k0 / rate))


def create_app(gateway: Gateway | None = None) -> FastAPI:
    """The FastAPI app of ``gateway`` (default: :func:`agentcast.app.create_gateway`):
    the HTTP API, every feature's routes and WebSocket endpoints, ``/ws`` through the
    ASGI adapter, and the gateway's start and stop in the lifespan.

    Under :func:`agentcast.transports.server.build_server` the native protocol intercepts
    ``/ws`` and the features' socket endpoints before the app sees them; under any other
    ASGI server the adapter serves them.
    """
    if gateway is None:
        from agentcast.app import create_gateway

        gateway = create_gateway()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="agentcast",
        version=__version__,
        summary="Real-time WebSocket gateway for AI-agent and workflow platforms.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(BodyLimit, max_bytes=gateway.settings.max_http_body_bytes)
    install_offline_docs(app)  # /docs and /redoc from local files, not a CDN

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            message = f"body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
            detail = {"code": ErrorCode.BAD_JSON.value, "message": message, "field": "body"}
            return JSONResponse(status_code=400, content={"detail": detail})
        loc = [str(p) for p in err["loc"] if p != "body"]
        field = ".".join(loc) or "body"
        code = ErrorCode.INVALID_TOPIC if field == "topic" else ErrorCode.INVALID_FIELD
        return JSONResponse(
            status_code=400,
            content={
                "detail": {"code": code.value, "message": f"{field}: {err['msg']}", "field": field}
            },
        )

    # outermost last: CORS answers preflights and adds its headers to every answer, the
    # Origin check refuses requests from other origins (agentcast.security.origin)
    policy = OriginPolicy(gateway.settings.origins)
    app.add_middleware(OriginMiddleware, policy=policy)
    if policy.allowed:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(policy.allowed),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.include_router(http_router(gateway))
    for router in gateway.routers:
        app.include_router(router)
    app.router.default = websocket_not_found(app.router.default)
    app.add_api_websocket_route("/ws", websocket_route(gateway))
    for endpoint in gateway.socket_endpoints:
        app.add_api_websocket_route(endpoint.path, websocket_route(gateway, endpoint))
    return app
