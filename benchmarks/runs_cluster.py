"""What runs and tickets across nodes cost on Redis, against a bare ``PING`` on the same
machine in the same run (docs/scaling.md "Runs and tickets across nodes").

    .venv/bin/python benchmarks/runs_cluster.py [--redis redis://127.0.0.1:6379/0] [--n 2000]

* ``ping``: a bare Redis ``PING`` (the floor of one round trip).
* ``ticket issue`` / ``ticket redeem``: ``POST /api/tickets``' ``SET PX`` and a ticket
  handshake's ``GETDEL`` (the cluster ticket store on the cluster state's shared keys).
* ``lease renew``: an explicit renewal's ``SET PX``.
* ``lease read x100``: a lease sweep that finds 100 runs lapsed: one script call.
* ``publish`` / ``conditional publish``: one event on the Redis broker, plain and with
  ``expect_last_seq`` (the seal), one at a time.

Each line: p50 / p99 / max in microseconds over ``--n`` sequential calls. A fresh key
prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

from cluster import View, pct  # the local view and percentile of benchmarks/cluster.py
from redis.asyncio import Redis

from agentcast.brokers.base import Conflict, Draft
from agentcast.brokers.redis import RedisBroker
from agentcast.cluster.redis import RedisClusterState
from agentcast.policy import Principal
from agentcast.security.tickets import ClusterTicketStore


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - t0) * 1e6)
    return {"p50": round(pct(times, 0.5)), "p99": round(pct(times, 0.99)), "max": round(max(times))}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    prefix = f"bench-runs-{uuid.uuid4().hex[:8]}"
    url = f"{args.redis}?prefix={prefix}"
    state = RedisClusterState(url)
    await state.start(View())
    broker = RedisBroker(url)
    await broker.start(lambda pub: None)
    ping = Redis.from_url(args.redis, single_connection_client=True)
    tickets = ClusterTicketStore(state.shared)
    principal = Principal("alice", scopes=frozenset({"publish"}))
    out: dict[str, dict[str, float]] = {}
    try:
        n = args.n
        out["ping"] = await timed(n, lambda i: ping.ping())
        issued: list[str] = []

        async def issue(i: int) -> None:
            issued.append(await tickets.issue(principal))

        out["ticket issue"] = await timed(n, issue)
        out["ticket redeem"] = await timed(n, lambda i: tickets.redeem(issued[i]))
        out["lease renew"] = await timed(
            n, lambda i: state.shared.put(f"lease:w:{i % 100}", b"30.0", 30)
        )
        keys = [f"lease:w:{i}" for i in range(100)]
        out["lease read x100"] = await timed(n // 10, lambda i: state.shared.read(keys))
        out["publish"] = await timed(
            n, lambda i: broker.publish("workflow:bench", "e", b"{}", time.time())
        )
        last = (await broker.history("workflow:bench", 0, limit=0)).last_seq

        async def conditional(i: int) -> None:
            pub = (
                await broker.publish_many(
                    [Draft("workflow:bench2", "e", b"{}", time.time(), expect_last_seq=i)]
                )
            )[0]
            assert not isinstance(pub, Conflict)

        out["conditional publish"] = await timed(n, conditional)
        assert last == n
    finally:
        await broker.stop()
        await state.stop()
        keys_left = [k async for k in ping.scan_iter(match=f"*{prefix}*", count=1000)]
        for start in range(0, len(keys_left), 500):
            await ping.delete(*keys_left[start : start + 500])
        await ping.aclose()
    for name, figures in out.items():
        print(
            f"{name:22} p50 {figures['p50']:>6} µs  p99 {figures['p99']:>6} µs  max {figures['max']:>6} µs"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
