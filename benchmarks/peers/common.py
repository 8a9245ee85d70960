"""Shared helpers for the Python peer servers (event shape, trigger parsing, publish loop).

Every peer implements the same contract (see ../README.md):
  * WebSocket endpoint; a client text frame {"action":"subscribe","topic":"t0"} subscribes
    the connection to topic t0 and is answered with {"type":"subscribed","topic":"t0"}.
  * GET (or POST) /publish?topics=T&count=K&rate=R[&prefix=t] answers 2xx at once and then
    publishes K events round-robin over topics t0..t{T-1}, as fast as possible (rate=0) or
    at R events/s. Each event is serialized once and the same text goes to every subscriber.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Yield to the event loop after roughly this many frame writes, so the loop can flush
# buffers and read control frames while a burst is being published.
YIELD_EVERY_WRITES = 1000


def event_dict(topic: str, seq: int) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "type": "node_status",
        "timestamp": datetime.fromtimestamp(now / 1e9, UTC).isoformat(timespec="microseconds"),
        "data": {
            "workflow_id": f"wf-{topic}",
            "execution_id": f"exec-{seq:08d}",
            "node_id": "node7",
            "status": "running",
            "progress": 42.0,
        },
        "ts": now,
    }


def event_text(topic: str, seq: int) -> str:
    """One ~200-byte JSON workflow event; "ts" is CLOCK_REALTIME ns at publish time."""
    return json.dumps(event_dict(topic, seq))


def subscribed_text(topic: str) -> str:
    return json.dumps({"type": "subscribed", "topic": topic})


def parse_subscribe(payload: str | bytes) -> str | None:
    """Topic of a subscribe command, or None."""
    try:
        msg = json.loads(payload)
    except ValueError:
        return None
    if (
        isinstance(msg, dict)
        and msg.get("action") == "subscribe"
        and isinstance(msg.get("topic"), str)
    ):
        return msg["topic"]
    return None


def parse_publish_command(payload: str | bytes) -> tuple[list[str], int, float] | None:
    """Optional WS trigger: {"action":"publish","topics":T,"count":K,"rate":R[,"prefix":"t"]}."""
    try:
        msg = json.loads(payload)
    except ValueError:
        return None
    if not (isinstance(msg, dict) and msg.get("action") == "publish"):
        return None
    prefix = str(msg.get("prefix", "t"))
    names = [f"{prefix}{i}" for i in range(int(msg.get("topics", 1)))]
    return names, int(msg.get("count", 1000)), float(msg.get("rate", 0))


def parse_publish(target: str) -> tuple[list[str], int, float]:
    """'/publish?topics=T&count=K&rate=R&prefix=t' -> (topic names, count, rate)."""
    q = parse_qs(urlsplit(target).query)
    n_topics = int(q.get("topics", ["1"])[0])
    count = int(q.get("count", ["1000"])[0])
    rate = float(q.get("rate", ["0"])[0])
    prefix = q.get("prefix", ["t"])[0]
    return [f"{prefix}{i}" for i in range(n_topics)], count, rate


async def publish_loop(
    topics: list[str],
    count: int,
    rate: float,
    send: Callable[[str, Any], Awaitable[Any] | None],
    fanout: Callable[[str], int],
    make: Callable[[str, int], Any] = event_text,
    wait_writable: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Publish `count` events round-robin over `topics`; rate<=0 means as fast as possible.

    send(topic, event) delivers one serialized event to every subscriber of topic (it may
    return an awaitable). fanout(topic) is the subscriber count, used only to decide when
    to yield to the loop. wait_writable, if given, is awaited at each yield point (the raw
    peer uses it to respect transport back-pressure).
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n_topics = len(topics)
    writes = 0
    for k in range(count):
        topic = topics[k % n_topics]
        if rate > 0:
            delay = t0 + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                writes = 0
        r = send(topic, make(topic, k))
        if r is not None:
            await r
        writes += fanout(topic) or 1
        if writes >= YIELD_EVERY_WRITES:
            writes = 0
            await asyncio.sleep(0)
            if wait_writable is not None:
                await wait_writable()


_tasks: set[asyncio.Task[Any]] = set()


def spawn(coro: Awaitable[Any]) -> None:
    """Run a publish in the background, keeping a reference so it is not GC'd."""
    t = asyncio.ensure_future(coro)
    _tasks.add(t)
    t.add_done_callback(_tasks.discard)
