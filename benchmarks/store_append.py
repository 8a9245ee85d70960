"""CPU per recorded chat token in the run store's append (SQLite), in process.

    PYTHONPATH=src .venv/bin/python benchmarks/store_append.py [--topics 400 --per-batch 10]
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/store_append.py   # another checkout

What the chat recorder writes at 400 conversations × 50 tokens/s: one batch per 0.2 s
holding 10 ``chat:streaming`` events of each topic, interleaved as they were published.
Each rep appends ``--batches`` such batches to a fresh SQLite file (WAL, as the server
opens it) and reports the process's CPU (every thread: the driver writes in its own) and
the event-loop thread's, per event; medians (min–max) over ``--reps``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

from agentcast.core.envelope import Publication, format_timestamp
from agentcast.storage.sql import SqlRunStore


def batch(seqs: dict[str, int], topics: int, per_topic: int) -> list[Publication]:
    pubs = []
    for _ in range(per_topic):
        for c in range(topics):
            topic = f"chat:conv{c:05d}"
            seq = seqs[topic] = seqs.get(topic, 0) + 1
            now = time.time()
            data = (
                b'{"conversation_id":"conv%05d","reply_to":12,"index":%d,"chunk":" tok","done":false}'
                % (c, seq)
            )
            pubs.append(Publication(topic, seq, "chat:streaming", data, format_timestamp(now), now))
    return pubs


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def rep(topics: int, per_topic: int, batches: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlRunStore(f"sqlite:///{Path(tmp) / 'store.db'}")
        await store.start()
        try:
            seqs: dict[str, int] = {}
            await store.append(batch(seqs, topics, per_topic))  # warm up
            process = loop_thread = 0.0
            n = 0
            for _ in range(batches):
                pubs = batch(seqs, topics, per_topic)
                c0, t0 = cpu(), time.thread_time()
                await store.append(pubs)
                process += cpu() - c0
                loop_thread += time.thread_time() - t0
                n += len(pubs)
        finally:
            await store.stop()
    return process / n * 1e6, loop_thread / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=400)
    ap.add_argument("--per-batch", type=int, default=10, help="events of each topic per batch")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    runs = [asyncio.run(rep(args.topics, args.per_batch, args.batches)) for _ in range(args.reps)]
    for label, values in (("process", [r[0] for r in runs]), ("loop thread", [r[1] for r in runs])):
        print(
            f"{label}: {statistics.median(values):.2f} us per event "
            f"({min(values):.2f}-{max(values):.2f}), {args.topics} topics x {args.per_batch}"
            f" events per batch, {args.reps} reps"
        )


if __name__ == "__main__":
    main()
