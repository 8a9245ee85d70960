"""The LLM queue across nodes: how long a slot released on one node takes to start the
request waiting on another, and the Redis round trips per acquire and release.

    .venv/bin/python benchmarks/queue_handoff.py [--redis redis://127.0.0.1:6379/0] [--n 50]

Two processes (nodes A and B, each its own :class:`RedisClusterState`) share one queue of
limit 1. Each loops ``--n`` times: wait for the slot (user ``A`` or ``B``), hold it 5 ms,
give it back, ask again at once. Round robin between users makes the slot alternate, so
every release is followed by the other node's start: the handoff is that start minus that
release (``time.monotonic()``, one clock for both processes on Linux). It covers the
release script, the pub/sub notification and the waiter's task waking up.

``uncontended`` times one node alone acquiring and releasing (the fast path: one script
each). ``burst``: 400 generations of 50 users asked at once on the two nodes for 4 slots,
each holding 2 ms (the floor is 400 / 4 × 2 ms). A fresh key prefix, deleted afterwards. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import statistics
import time
import uuid
from typing import Any

from cluster import View  # the local view and percentile of benchmarks/cluster.py
from redis.asyncio import Redis

from agentcast.cluster.redis import RedisClusterState

KEY = "http://upstream.bench/v1"


async def _node(url: str, name: str, n: int, barrier: Any, out: Any) -> None:
    state = RedisClusterState(url, heartbeat=1.0, ttl=5.0)
    await state.start(View())
    queue = state.queue(KEY, 1)
    await state.queues.ready()
    await asyncio.to_thread(barrier.wait)
    held: list[tuple[float, float]] = []
    before = state.queues.round_trips
    for _ in range(n):
        async with queue.slot(name):
            start = time.monotonic()
            await asyncio.sleep(0.005)
            held.append((start, time.monotonic()))
    await asyncio.sleep(0.2)  # the last release's call
    trips = state.queues.round_trips - before
    await asyncio.to_thread(barrier.wait)  # the other still needs this node's notifications
    await state.stop()
    out.put({"name": name, "held": held, "round_trips": trips, "errors": state.errors})


def _run_node(url: str, name: str, n: int, barrier: Any, out: Any) -> None:
    asyncio.run(_node(url, name, n, barrier, out))


async def _uncontended(url: str, n: int) -> dict[str, Any]:
    state = RedisClusterState(url, heartbeat=1.0, ttl=5.0)
    await state.start(View())
    queue = state.queues.queue(KEY + "/alone", 1)
    await state.queues.ready()
    times = []
    before = state.queues.round_trips
    for _ in range(n):
        t0 = time.perf_counter()
        handle, _ = await queue.acquire("u")
        assert handle is not None
        queue._held.discard(handle)
        await queue._release([handle])  # awaited here (slot() sends it in the background)
        times.append((time.perf_counter() - t0) * 1000)
    trips = state.queues.round_trips - before
    await state.stop()
    return {
        "acquire_release_ms_p50": round(statistics.median(times), 3),
        "round_trips_per_acquire_release": trips / n,
    }


async def _burst(url: str, n: int, users: int, limit: int) -> dict[str, Any]:
    """``n`` generations asked at once on two nodes (``users`` users), each holding its
    slot 2 ms: the time until all were served, round trips per request, most at once."""
    states = [RedisClusterState(url, heartbeat=1.0, ttl=5.0) for _ in range(2)]
    for state in states:
        await state.start(View())
        await state.queues.ready()
    queues = [state.queue(KEY + "/burst", limit) for state in states]
    held = most = 0

    async def one(i: int) -> None:
        nonlocal held, most
        async with queues[i % 2].slot(f"u{i % users}"):
            held += 1
            most = max(most, held)
            await asyncio.sleep(0.002)
            held -= 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    trips = sum(state.queues.round_trips for state in states)
    errors = sum(state.errors for state in states)
    for state in states:
        await state.stop()
    return {
        "requests": n,
        "limit": limit,
        "seconds": round(elapsed, 3),
        "floor_seconds": round(n / limit * 0.002, 3),
        "round_trips_per_request": round(trips / n, 2),
        "most_at_once": most,
        "errors": errors,
    }


async def _cleanup(redis_url: str, prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match="{" + prefix + "}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    prefix = f"bench-queue-{uuid.uuid4().hex[:8]}"
    url = f"{args.redis}?prefix={prefix}"
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_run_node, args=(url, name, args.n, barrier, out)) for name in "AB"]
    try:
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        slots = sorted((start, end, r["name"]) for r in results for start, end in r["held"])
        handoffs = [
            (nxt[0] - cur[1]) * 1000 for cur, nxt in itertools.pairwise(slots) if cur[2] != nxt[2]
        ]
        overlaps = sum(1 for cur, nxt in itertools.pairwise(slots) if nxt[0] < cur[1])
        alone = asyncio.run(_uncontended(url, 200))
        burst = asyncio.run(_burst(url, 400, 50, 4))
    finally:
        asyncio.run(_cleanup(args.redis, prefix))
    trips = sum(r["round_trips"] for r in results)
    print(
        json.dumps(
            {
                "slots": len(slots),
                "handoffs": len(handoffs),
                "handoff_ms_p50": round(statistics.median(handoffs), 3),
                "handoff_ms_p90": round(statistics.quantiles(handoffs, n=10)[-1], 3),
                "handoff_ms_max": round(max(handoffs), 3),
                "overlapping_slots": overlaps,
                "round_trips_per_slot_contended": round(trips / len(slots), 2),
                "errors": sum(r["errors"] for r in results),
                "uncontended": alone,
                "burst": burst,
            }
        )
    )


if __name__ == "__main__":
    main()
