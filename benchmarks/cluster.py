"""Cost of the Redis cluster state per handshake: one reservation (the Lua script that
checks and records a user's connections across nodes) against its floor, a bare Redis
``PING`` on the same kind of connection, in the same run.

    .venv/bin/python benchmarks/cluster.py [--redis redis://127.0.0.1:6379/0] [--n 5000]

* ``sequential``: one reservation at a time (a quiet cluster): latency p50 / p99 / max.
* ``storm``: ``--n`` reservations asked at once (a reconnect storm after a node died):
  the time until all are answered, and the number of script calls (batches) it took.

Two nodes run on one Redis (the other holds one connection per user, so every
reservation reads a live node's hash). A fresh key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Iterable

from redis.asyncio import Redis

from agentcast.cluster.redis import RedisClusterState


class View:
    def local_presence(self, topic: str) -> tuple[dict[str, int], int]:
        return {}, 0

    def local_topics(self) -> Iterable[str]:
        return ()

    def take_drawn(self) -> dict[str, dict[str, float]]:
        return {}

    def charge(self, subject: str, kind: str, tokens: float) -> None:
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    prefix = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    url = f"{args.redis}?prefix={prefix}"
    here, other = RedisClusterState(url), RedisClusterState(url)
    await here.start(View())
    await other.start(View())
    ping = Redis.from_url(args.redis, single_connection_client=True)
    try:
        for i in range(args.n):  # the other node holds one connection of each user
            assert await other.reserve(f"user{i}", 1000) is None
        lat: dict[str, list[float]] = {"ping": [], "reserve": []}
        for i in range(2000):
            t0 = time.perf_counter()
            await ping.ping()
            lat["ping"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert await here.reserve(f"user{i % args.n}", 1000) is None
            lat["reserve"].append(time.perf_counter() - t0)
            here.release(f"user{i % args.n}")
        calls: list[int] = []
        original = here._reserve

        async def counted(*a: object, **k: object) -> object:
            calls.append(1)
            return await original(*a, **k)

        here._reserve = counted  # type: ignore[method-assign]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(here.reserve(f"user{i}", 1000) for i in range(args.n)))
        storm = time.perf_counter() - t0
        assert all(r is None for r in results)
        t0 = time.perf_counter()
        await asyncio.gather(*(ping.ping() for _ in range(args.n)))
        ping_storm = time.perf_counter() - t0
    finally:
        await here.stop()
        await other.stop()
        keys = [k async for k in ping.scan_iter(match="{" + prefix + "}*")]
        if keys:
            await ping.delete(*keys)
        await ping.aclose()
    out = {}
    for name, values in lat.items():
        out[name] = {
            "p50_us": round(statistics.median(values) * 1e6, 1),
            "p99_us": round(pct(values, 0.99) * 1e6, 1),
            "max_us": round(max(values) * 1e6, 1),
        }
    ratio = out["reserve"]["p50_us"] / out["ping"]["p50_us"]
    print(json.dumps(out))
    print(f"\nsequential, 2000 each: reserve/ping p50 = {ratio:.2f}x")
    print("| call | p50 | p99 | max |\n|---|---|---|---|")
    for name, row in out.items():
        print(f"| {name} | {row['p50_us']} µs | {row['p99_us']} µs | {row['max_us']} µs |")
    print(
        f"\nstorm: {args.n} reservations at once answered in {storm * 1e3:.1f} ms "
        f"({len(calls)} script calls); {args.n} PINGs on one connection: "
        f"{ping_storm * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
