"""What every peer server shares: the event, the subscribe frame, the trigger, the publisher.

The contract (the same for agentcast, through its ``--bench-endpoint``):

* a client text frame ``{"action":"subscribe","topic":"t0"}`` subscribes the connection
  and is answered with a frame containing ``subscribed``;
* ``GET /publish?topics=T&count=K&rate=R`` answers 202 at once, then publishes K events
  round-robin over topics ``t0 … t{T-1}``, as fast as possible (``rate=0``) or R per second;
* each event is serialized once and the same text goes to every subscriber; it carries
  ``"ts"``, CLOCK_REALTIME in ns taken when the event is made (the client's latency origin).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

YIELD_EVERY_WRITES = 1000
"""A publishing burst yields to the event loop after about this many frame writes."""


def event(topic: str, k: int) -> dict[str, Any]:
    """The same envelope agentcast sends (~200 bytes as JSON)."""
    ns = time.time_ns()
    return {
        "type": "node_status",
        "topic": topic,
        "seq": k + 1,
        "timestamp": datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds"),
        "data": {
            "workflow_id": f"wf-{topic}",
            "execution_id": f"exec-{k:08d}",
            "node_id": "node7",
            "status": "running",
            "progress": 42.0,
            "ts": ns,
        },
    }


def event_text(topic: str, k: int) -> str:
    return json.dumps(event(topic, k))


def subscribed(topic: str) -> str:
    return json.dumps({"type": "subscribed", "topic": topic})


def parse_subscribe(text: str | bytes) -> str | None:
    """The topic of a subscribe frame, or None."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if isinstance(msg, dict) and msg.get("action") == "subscribe":
        topic = msg.get("topic")
        return topic if isinstance(topic, str) else None
    return None


def parse_publish(target: str) -> tuple[list[str], int, float]:
    """``/publish?topics=T&count=K&rate=R`` -> (topic names, count, rate)."""
    q = parse_qs(urlsplit(target).query)
    topics = int(q.get("topics", ["1"])[0])
    return (
        [f"t{i}" for i in range(topics)],
        int(q.get("count", ["1000"])[0]),
        float(q.get("rate", ["0"])[0]),
    )


async def publish_loop(
    names: list[str],
    count: int,
    rate: float,
    send: Callable[[str, Any], Awaitable[Any] | None],
    fanout: Callable[[str], int],
    make: Callable[[str, int], Any] = event_text,
    drained: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Publish ``count`` events round-robin over ``names`` (``rate`` <= 0: a burst).

    ``send(topic, event)`` delivers one event to every subscriber (it may return an
    awaitable); ``fanout(topic)`` counts them, to yield every ~1,000 writes; ``drained``,
    if given, is awaited at each yield (the raw peer's back-pressure).
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writes = 0
    for k in range(count):
        topic = names[k % len(names)]
        if rate > 0:
            delay = t0 + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                writes = 0
        pending = send(topic, make(topic, k))
        if pending is not None:
            await pending
        writes += fanout(topic) or 1
        if writes >= YIELD_EVERY_WRITES:
            writes = 0
            await asyncio.sleep(0)
            if drained is not None:
                await drained()


_tasks: set[asyncio.Task[None]] = set()


def spawn(coro: Awaitable[None]) -> None:
    """Run a publisher in the background (keeping a reference to its task)."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
