"""``GET /metrics``: Prometheus metrics of this node, read at scrape time.

The :class:`Metrics` feature registers one custom collector (:class:`GatewayCollector`)
in a registry of its own and serves it at ``/metrics``. Nothing on the hot path touches
prometheus-client: the collector reads, when scraped, the plain counters the gateway
already keeps (:class:`agentcast.gateway.Stats`, the hub's counts, the sessions), the
broker's (:meth:`agentcast.brokers.base.Broker.metrics`) and the chat feature's
(:mod:`agentcast.chat.stats`, :class:`agentcast.chat.queue.FairQueue`). So there is no
metric object per connection and no ``Counter.inc()`` per delivered event; a scrape costs
one pass over the open connections (to count them by transport and sum their
subscriptions).

Who may read it: anyone in open dev mode; once authentication is on, a principal with
the ``admin`` scope (``Authorization: Bearer <token>``, what Prometheus'
``authorization`` scrape setting sends), or anyone when ``metrics_public`` is set (a
scrape network). Every metric is listed in ``docs/observability.md`` (a test compares
that table with what this endpoint really exposes).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator
from operator import attrgetter
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agentcast.__about__ import __version__
from agentcast.codes import CloseCode
from agentcast.core.histogram import Histogram
from agentcast.plugin import GatewayFeature
from agentcast.security.secrets import redact_url
from agentcast.web import admin_of

if TYPE_CHECKING:
    from agentcast.gateway import Gateway

__all__ = ["GatewayCollector", "Metrics", "node_id"]

_BROKER_DOCS = {
    "round_trips": "Requests the broker sent to its server and got an answer to.",
    "errors": "Broker requests that failed (a lost connection, a timeout, an error reply).",
    "reconnects": "Times the broker connected to its server again after losing it.",
}


_writer = attrgetter("writer")


def node_id() -> str:
    """This process, as ``hostname:pid`` (the ``node`` of ``agentcast_node_info``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: Histogram
) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), float(n))
        for bound, n in histogram.cumulative()
    ]
    family.add_metric(labels, buckets, histogram.sum)
    return family


class GatewayCollector(Collector):
    """Every ``agentcast_*`` metric of one gateway, computed when collected."""

    def __init__(self, gateway: Gateway, node: str) -> None:
        self.gateway = gateway
        self.node = node

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        stats = gw.stats
        hub = gw.hub

        info = InfoMetricFamily("agentcast_node", "This node: one series, value 1.")
        scheme = gw.settings.broker_url.partition("://")[0] or "memory"
        info.add_metric(
            [],
            {
                "node": self.node,
                "hostname": self.node.rpartition(":")[0],
                "pid": str(os.getpid()),
                "version": __version__,
                "broker": scheme,
                "mode": "open" if gw.open_mode else "auth",
            },
        )
        yield info

        # -- connections ---------------------------------------------------------------
        by_transport: dict[str, int] = {"native": 0, "asgi": 0}
        writers = Counter(map(type, map(_writer, gw.sessions.values())))  # one C-level pass
        for cls, n in writers.items():
            kind = getattr(cls, "transport_kind", "other")
            by_transport[kind] = by_transport.get(kind, 0) + n
        # per topic, not per connection: the hub's subscriber sets
        subscriptions = sum(map(len, hub.topics.values()))
        # sockets counted per user that are not sessions: seed 003's chat endpoint
        by_transport["seed003"] = max(0, sum(gw.user_connections.values()) - len(gw.sessions))
        connections = GaugeMetricFamily(
            "agentcast_connections",
            "Open WebSocket connections, by transport.",
            labels=["transport"],
        )
        for kind, n in sorted(by_transport.items()):
            connections.add_metric([kind], n)
        yield connections
        yield CounterMetricFamily(
            "agentcast_connections_opened",
            "WebSocket connections accepted on /ws and the per-run endpoints since start.",
            value=stats.connections_total,
        )
        yield GaugeMetricFamily(
            "agentcast_handshakes_pending",
            "WebSocket handshakes whose (asynchronous) authentication is under way.",
            value=gw.handshakes_pending,
        )
        yield GaugeMetricFamily(
            "agentcast_subscriptions", "Subscriptions of the open connections.", value=subscriptions
        )
        yield GaugeMetricFamily(
            "agentcast_topics",
            "Topics with at least one subscriber on this node.",
            value=len(hub.topics),
        )
        closes = CounterMetricFamily(
            "agentcast_closes",
            "Connections the server closed, by close code (docs/codes.md).",
            labels=["code", "name"],
        )
        for code, n in sorted(stats.closes.items()):
            name = code.name.lower() if isinstance(code, CloseCode) else ""
            closes.add_metric([str(int(code)), name], n)
        yield closes
        yield CounterMetricFamily(
            "agentcast_slow_consumer_closes",
            "Connections closed because their outbox overflowed (4001).",
            value=stats.slow_consumers,
        )

        # -- events ------------------------------------------------------------------
        yield CounterMetricFamily(
            "agentcast_events_published",
            "Events this node published (the broker assigned their seq).",
            value=stats.published,
        )
        yield CounterMetricFamily(
            "agentcast_events_dispatched",
            "Publications this node fanned out (published here or, with a shared broker, "
            "on another node, to a topic listened to here).",
            value=hub.published,
        )
        yield CounterMetricFamily(
            "agentcast_events_delivered",
            "Event frames queued to live subscribers (one per event and subscriber).",
            value=hub.pushes,
        )
        yield CounterMetricFamily(
            "agentcast_frames_written",
            "Frames written to connections: events, history replays, replies, errors.",
            value=stats.frames_written,
        )
        yield CounterMetricFamily(
            "agentcast_bytes_written",
            "Bytes of those frames (WebSocket framing included).",
            value=stats.bytes_written,
        )
        yield CounterMetricFamily(
            "agentcast_flushes",
            "Flushes (one per event-loop iteration with frames to write).",
            value=stats.flushes,
        )
        yield CounterMetricFamily(
            "agentcast_commands", "Client frames received on /ws connections.", value=stats.commands
        )
        yield _histogram(
            HistogramMetricFamily(
                "agentcast_publish_delivery_seconds",
                "Per flushed batch: from the publish time of its oldest event to its write "
                "to the sockets (one observation per batch, not per event).",
            ),
            [],
            stats.latency,
        )

        # -- security ----------------------------------------------------------------
        refusals = CounterMetricFamily(
            "agentcast_auth_refusals",
            "Refused authentications, by reason (unauthorized, forbidden, origin, "
            "auth_timeout, expired).",
            labels=["reason"],
        )
        for reason, n in sorted(stats.auth_refusals.items()):
            refusals.add_metric([reason], n)
        yield refusals
        limited = CounterMetricFamily(
            "agentcast_rate_limited",
            "Commands, requests and handshakes refused by a rate or connection limit, by kind.",
            labels=["kind"],
        )
        for kind, n in sorted(stats.rate_limited.items()):
            limited.add_metric([kind], n)
        yield limited

        # -- broker ------------------------------------------------------------------
        for key, value in sorted(gw.broker.metrics().items()):
            yield CounterMetricFamily(
                f"agentcast_broker_{key}",
                _BROKER_DOCS.get(key, f"The broker's {key.replace('_', ' ')} counter."),
                value=value,
            )
        usage = gw.broker.history_usage()
        if usage is not None:
            yield GaugeMetricFamily(
                "agentcast_history_bytes",
                "Bytes of history held in this process (in-memory broker).",
                value=usage.get("bytes", 0),
            )
            yield GaugeMetricFamily(
                "agentcast_history_budget_bytes",
                "The in-process history's budget (history_max_total_bytes).",
                value=usage.get("budget", 0),
            )

        yield from self._runs()

        # -- chat / LLM --------------------------------------------------------------
        yield from self._llm()

    def _runs(self) -> Iterator[Metric]:
        counters = getattr(self.gateway.features.get("runs"), "counters", None)
        if not isinstance(counters, dict):
            return
        events = CounterMetricFamily(
            "agentcast_run_events_stored",
            "Run events this node wrote to the run store: `recorded` (published here), "
            "`filled` (missing after a run ended, from the broker's history).",
            labels=["source"],
        )
        events.add_metric(["recorded"], counters.get("recorded", 0))
        events.add_metric(["filled"], counters.get("filled", 0))
        yield events
        seals = CounterMetricFamily(
            "agentcast_run_seals",
            "publisher_lost seals of lapsed runs tried here: `sealed`, or `conflict` "
            "(another node sealed it, or its producer published meanwhile).",
            labels=["outcome"],
        )
        seals.add_metric(["sealed"], counters.get("seals", 0))
        seals.add_metric(["conflict"], counters.get("seal_conflicts", 0))
        yield seals

    def _llm(self) -> Iterator[Metric]:
        chat = self.gateway.features.get("chat")
        queues = getattr(chat, "queues", None)
        agent_stats = getattr(chat, "stats", None)
        if not isinstance(queues, dict) or not isinstance(agent_stats, dict):
            return
        waiting = GaugeMetricFamily(
            "agentcast_llm_queue_waiting",
            "Generations waiting for a slot of their upstream (the fair queue's depth).",
            labels=["upstream"],
        )
        active = GaugeMetricFamily(
            "agentcast_llm_queue_active",
            "Generations holding a slot, by upstream.",
            labels=["upstream"],
        )
        for key, queue in sorted(queues.items()):
            upstream = redact_url(str(key))
            waiting.add_metric([upstream], queue.waiting)
            active.add_metric([upstream], queue.active)
        yield waiting
        yield active
        generations = CounterMetricFamily(
            "agentcast_llm_generations",
            "Generations that ended, by upstream, model and status (complete, cancelled, error).",
            labels=["upstream", "model", "status"],
        )
        tokens = CounterMetricFamily(
            "agentcast_llm_tokens",
            "Streamed chunks (tokens) of the generations that ended.",
            labels=["upstream", "model"],
        )
        ttft = HistogramMetricFamily(
            "agentcast_llm_time_to_first_token_seconds",
            "Time from a generation's start (after the queue) to its first token.",
            labels=["upstream", "model"],
        )
        for (key, model), st in sorted(agent_stats.items()):
            labels = [redact_url(str(key)), str(model)]
            generations.add_metric([*labels, "complete"], st.completed)
            generations.add_metric([*labels, "cancelled"], st.cancelled)
            generations.add_metric([*labels, "error"], st.errors)
            tokens.add_metric(labels, st.tokens)
            _histogram(ttft, labels, st.ttft)
        yield generations
        yield tokens
        yield ttft


class Metrics(GatewayFeature):
    """The ``/metrics`` route and its registry (one per gateway: tests and embedders may
    run several gateways in one process)."""

    name = "metrics"

    def __init__(self, *, process: bool = True) -> None:
        self.node = node_id()
        self.registry = CollectorRegistry(auto_describe=False)
        if process:  # process_* (CPU, RSS, open fds) from /proc, read at scrape time
            ProcessCollector(registry=self.registry)

    def install(self, gateway: Gateway) -> None:
        super().install(gateway)
        self.registry.register(GatewayCollector(gateway, self.node))
        router = APIRouter()

        @router.get("/metrics", tags=["ops"], response_class=Response)
        async def metrics(request: Request) -> Response:
            """Prometheus metrics of this node (text format 0.0.4). With authentication on,
            for the ``admin`` scope (401 without credentials, 403 without the scope) unless
            ``metrics_public`` is set; open in open dev mode."""
            if not gateway.settings.metrics_public:
                await admin_of(gateway, request)
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        gateway.add_router(router)

    def scrape(self) -> bytes:
        """What ``/metrics`` answers, without HTTP (tests, an embedding application)."""
        return generate_latest(self.registry)
