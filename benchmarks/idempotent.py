"""What idempotent publishing costs the broker: ``publish_many`` of a batch of drafts
without a producer vs the same batch with one (each draft its own producer seq), on the
memory broker and on Redis (``--redis URL``), in alternating rounds of one process.

    python benchmarks/idempotent.py [--redis redis://127.0.0.1:6379/0] [--rounds 400] [--plain]

Prints per batch p50, p99 and max (µs) of each mode and the ratio of their p50s. Run
with ``PYTHONPATH`` at another checkout to time its ``plain`` mode (the producer mode
needs ``Draft.producer``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from agentcast.brokers.base import Broker, Draft
from agentcast.brokers.memory import MemoryBroker
from agentcast.core.history import HistoryLimits


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(broker: Broker, rounds: int, batch: int, producers: bool) -> dict[str, list[float]]:
    await broker.start(lambda pub: None)
    modes = ["plain", "producer"] if producers else ["plain"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    pid = uuid.uuid4().hex
    pseq = 0
    data = b'{"token":"hello","i":1}'
    try:
        for r in range(rounds + 20):
            for mode in modes if r % 2 else reversed(modes):
                if mode == "plain":
                    drafts = [Draft("bench:plain", "tok", data, time.time()) for _ in range(batch)]
                else:
                    drafts = []
                    for _ in range(batch):
                        pseq += 1
                        drafts.append(Draft("bench:prod", "tok", data, time.time(), pid, pseq))
                t0 = time.perf_counter()
                await broker.publish_many(drafts)
                if r >= 20:  # warm-up rounds are not counted
                    times[mode].append((time.perf_counter() - t0) * 1e6)
    finally:
        await broker.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", help="also on this Redis (a key prefix of its own)")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--plain", action="store_true", help="only the plain mode")
    args = parser.parse_args()
    producers = "producer" in Draft._fields and not args.plain
    limits = HistoryLimits(max_events=1000)
    brokers: list[tuple[str, Broker]] = [("memory", MemoryBroker(limits))]
    if args.redis:
        from agentcast.brokers.redis import RedisBroker

        prefix = f"bench-idem-{uuid.uuid4().hex[:8]}"
        brokers.append(("redis", RedisBroker(f"{args.redis}?prefix={prefix}", limits)))
    for name, broker in brokers:
        times = asyncio.run(bench(broker, args.rounds, args.batch, producers))
        for mode, values in times.items():
            print(
                f"{name:7} {mode:9} batch of {args.batch}: p50 {statistics.median(values):8.1f}"
                f"  p99 {_pct(values, 0.99):8.1f}  max {max(values):8.1f} µs"
            )
        if producers:
            ratio = statistics.median(times["producer"]) / statistics.median(times["plain"])
            print(f"{name:7} producer/plain p50: {ratio:.2f}x")
    if args.redis:
        import redis

        r = redis.Redis.from_url(args.redis)
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
        r.close()


if __name__ == "__main__":
    main()
