"""Per-event costs of live runs, measured in-process (no sockets): µs per event.

    .venv/bin/python benchmarks/runs_costs.py [--events 100000] [--reps 5] [--json out.json]

What is timed (``time.perf_counter_ns``; median of ``--reps`` with min–max), with the events
of a real run (``runs_common.drive``'s tracker calls, ``"ts"`` included):

* **tracker**: ``WorkflowTracker.node_started`` / ``node_completed`` with a publisher that
  does nothing: the engine-side bookkeeping, for graphs of 10 to 10,000 nodes;
* **publish path**: the same tracker publishing through ``Gateway.publish`` (no store, no
  subscriber) on ``workflow:bench`` (validated, folded) and the same events published on
  ``bench`` (a topic with no vocabulary and no run state): the difference is what a run
  topic costs per event; ``validate_event`` alone;
* **fold** (the snapshot state): ``Runs.observe`` per publication (``orjson.loads``
  of the event's data, ``RunState.apply``, the lease), and ``RunState.apply`` alone;
* **snapshot for a late joiner**: ``Runs.snapshot`` + ``encode_reply`` (the
  ``snapshot`` frame a subscriber gets), against the run's size in nodes;
* **storage**: ``RunRecorder`` into SQLite, the way the server does it (batches of 2,000
  events, the recorder's batch at 10,000 events/s and its 0.2 s interval): wall time per
  event, the event loop thread's CPU per event, and the longest the loop was blocked.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agentcast.app import create_gateway

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runs_common import RUN_ID, TOPIC, StampingPublisher, engine_step, node_name

from agentcast.core.commands import encode_reply
from agentcast.core.envelope import Publication
from agentcast.runs.recorder import RunRecorder
from agentcast.runs.registry import Runs
from agentcast.runs.state import RunState
from agentcast.runs.tracker import WorkflowTracker
from agentcast.runs.vocabulary import validate_event

Stat = tuple[float, float, float]


def stat(values: list[float]) -> Stat:
    return statistics.median(values), min(values), max(values)


async def _noop(topic: str, type: str, data: dict[str, Any]) -> None:
    return None


async def steps(tracker: WorkflowTracker, events: int, nodes: int) -> int:
    """The engine's calls of ``drive`` without the pacing: returns events emitted."""
    names = [node_name(i) for i in range(nodes)]
    sent = step = 0
    while sent < events:
        sent += await engine_step(tracker, names, step)
        step += 1
    return sent


async def timed(make: Callable[[], Coroutine[Any, Any, int]], reps: int) -> Stat:
    """µs per event of ``await make()`` (which returns its event count), ``reps`` times."""
    out = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter_ns()
        n = await make()
        out.append((time.perf_counter_ns() - t0) / 1000 / n)
    return stat(out)


async def tracker_cost(events: int, reps: int, sizes: list[int]) -> dict[str, Stat]:
    res = {}
    for nodes in sizes:
        n = min(events, max(10_000, 10_000_000 // nodes))  # big graphs: fewer events

        async def one(nodes: int = nodes, n: int = n) -> int:
            run = WorkflowTracker(
                StampingPublisher(_noop), RUN_ID, nodes=[node_name(i) for i in range(nodes)]
            )
            await run.start()
            return await steps(run, n, nodes)

        res[str(nodes)] = await timed(one, reps)
    return res


async def collect(events: int, nodes: int) -> list[Publication]:
    """The publications of one run of ``events`` node events over ``nodes`` nodes."""
    from agentcast.settings import Settings

    gateway = create_gateway(Settings(store_url="", log_level="warning"))
    await gateway.start()
    pubs: list[Publication] = []
    gateway.observers.append(pubs.append)
    run = WorkflowTracker(
        StampingPublisher(gateway.publish), RUN_ID, nodes=[node_name(i) for i in range(nodes)]
    )
    await run.start()
    await steps(run, events, nodes)
    await gateway.stop()
    return pubs


async def publish_cost(events: int, reps: int, nodes: int) -> dict[str, Stat]:
    from agentcast.settings import Settings

    res: dict[str, Stat] = {}
    for label, topic in (("run topic", TOPIC), ("plain topic", "bench")):

        async def one(topic: str = topic) -> int:
            gateway = create_gateway(Settings(store_url="", log_level="warning"))
            await gateway.start()
            publish = gateway.publish

            def to(_topic: str, type: str, data: dict[str, Any]) -> Any:
                return publish(topic, type, data)

            run = WorkflowTracker(
                StampingPublisher(to), RUN_ID, nodes=[node_name(i) for i in range(nodes)]
            )
            await run.start()
            try:
                return await steps(run, events, nodes)
            finally:
                await gateway.stop()

        res[label] = await timed(one, reps)
    return res


def validate_cost(pubs: list[Publication], reps: int) -> Stat:
    import orjson

    datas = [(p.type, orjson.loads(p.data)) for p in pubs if p.type in ("node_status", "progress")]
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for type, data in datas:
            validate_event(TOPIC, type, data)
        out.append((time.perf_counter_ns() - t0) / 1000 / len(datas))
    return stat(out)


def fold_cost(pubs: list[Publication], reps: int) -> dict[str, Stat]:
    import orjson

    observe, apply_ = [], []
    decoded = [(p.seq, p.type, orjson.loads(p.data), p.timestamp) for p in pubs]
    for _ in range(reps):
        registry = Runs()
        gc.collect()
        t0 = time.perf_counter_ns()
        for pub in pubs:
            registry.observe(pub)
        observe.append((time.perf_counter_ns() - t0) / 1000 / len(pubs))
        state = RunState(TOPIC)
        t0 = time.perf_counter_ns()
        for seq, type, data, ts in decoded:
            state.apply(seq, type, data, ts)
        apply_.append((time.perf_counter_ns() - t0) / 1000 / len(pubs))
    return {"Runs.observe": stat(observe), "RunState.apply": stat(apply_)}


async def snapshot_cost(reps: int, sizes: list[int]) -> dict[str, dict[str, Any]]:
    res = {}
    for nodes in sizes:
        pubs = await collect(max(3 * nodes, 3000), nodes)
        registry = Runs()
        for pub in pubs:
            registry.observe(pub)
        out, size = [], 0
        for _ in range(max(reps, 20)):
            t0 = time.perf_counter_ns()
            seq, state = registry.snapshot(TOPIC)  # type: ignore[misc]
            frame = encode_reply(
                "snapshot", "2026-01-01T00:00:00.000000Z", state, topic=TOPIC, seq=seq
            )
            out.append((time.perf_counter_ns() - t0) / 1000)
            size = len(frame)
        res[str(nodes)] = {"us": stat(out), "bytes": size}
    return res


async def storage_cost(pubs: list[Publication], reps: int, batch: int) -> dict[str, Any]:
    from agentcast.storage.sql import SqlRunStore

    walls, cpus, blocks, flushes = [], [], [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            store = SqlRunStore(f"sqlite:///{tmp}/runs.db")
            await store.start()
            registry = Runs()
            recorder = RunRecorder(store, registry)
            longest = [0.0]
            stop = asyncio.Event()

            async def ticker(longest: list[float] = longest, stop: asyncio.Event = stop) -> None:
                loop = asyncio.get_running_loop()
                last = loop.time()
                while not stop.is_set():
                    await asyncio.sleep(0.001)
                    now = loop.time()
                    longest[0] = max(longest[0], now - last - 0.001)
                    last = now

            tick = asyncio.get_running_loop().create_task(ticker())
            await asyncio.sleep(0.01)
            longest[0] = 0.0
            wall = cpu = 0.0
            per_flush = []
            for i in range(0, len(pubs), batch):
                for pub in pubs[i : i + batch]:
                    registry.observe(pub)  # the states the recorder summarizes
                    recorder.record(pub)
                c0, t0 = time.thread_time(), time.perf_counter()
                await recorder.flush()
                dt = time.perf_counter() - t0
                wall += dt
                cpu += time.thread_time() - c0
                per_flush.append(dt * 1000)
            stop.set()
            await tick
            await store.stop()
            walls.append(wall * 1e6 / len(pubs))
            cpus.append(cpu * 1e6 / len(pubs))
            blocks.append(longest[0] * 1000)
            flushes.append(statistics.median(per_flush))
    return {
        "wall_us": stat(walls),
        "loop_cpu_us": stat(cpus),
        "max_block_ms": stat(blocks),
        "flush_ms": stat(flushes),
        "batch": batch,
    }


def show(s: Stat, fmt: str = "{:.2f}") -> str:
    m, lo, hi = s
    return (
        fmt.format(m)
        if fmt.format(lo) == fmt.format(hi)
        else f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"
    )


def report(r: dict[str, Any]) -> str:
    lines = [
        f"### Per-event costs (in-process, {r['events']:,} node events per measurement, "
        f"median of {r['reps']} (min–max), graph of {r['nodes']} nodes unless said)",
        "",
        "| cost | µs per event |",
        "|---|---|",
        f"| tracker bookkeeping (`WorkflowTracker`, publisher does nothing), {r['nodes']} nodes | {show(r['tracker'][str(r['nodes'])])} |",
        f"| `Gateway.publish` of the tracker's events on `{TOPIC}` (validate, encode, history, fold), incl. tracker | {show(r['publish']['run topic'])} |",
        f"| the same events on a plain topic (no vocabulary, no run state), incl. tracker | {show(r['publish']['plain topic'])} |",
        f"| → a run topic's extra cost per event | {r['publish']['run topic'][0] - r['publish']['plain topic'][0]:.2f} |",
        f"| `validate_event` (seed 004's pydantic models) | {show(r['validate'])} |",
        f"| fold into run state: `Runs.observe` (`orjson.loads` + `apply` + lease) | {show(r['fold']['Runs.observe'])} |",
        f"| … of which `RunState.apply` | {show(r['fold']['RunState.apply'])} |",
        f"| storage: `RunRecorder` → SQLite, wall time (batches of {r['storage']['batch']:,}) | {show(r['storage']['wall_us'])} |",
        f"| storage: event-loop thread CPU | {show(r['storage']['loop_cpu_us'])} |",
        "",
        f"Storage: one flush of {r['storage']['batch']:,} events takes {show(r['storage']['flush_ms'], '{:.1f}')} ms; "
        f"the event loop was blocked for up to {show(r['storage']['max_block_ms'], '{:.1f}')} ms at a time.",
        "",
        "| graph size (nodes) | tracker µs per event | snapshot frame µs | snapshot bytes |",
        "|---|---|---|---|",
    ]
    for size in r["sizes"]:
        s = r["snapshot"][str(size)]
        lines.append(
            f"| {int(size):,} | {show(r['tracker'][str(size)])} | {show(s['us'], '{:.0f}')} | {s['bytes']:,} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.nodes not in sizes:
        sizes = sorted([*sizes, args.nodes])
    r: dict[str, Any] = {
        "events": args.events,
        "reps": args.reps,
        "nodes": args.nodes,
        "sizes": sizes,
    }
    r["tracker"] = await tracker_cost(args.events, args.reps, sizes)
    r["publish"] = await publish_cost(args.events, args.reps, args.nodes)
    pubs = await collect(args.events, args.nodes)
    r["validate"] = validate_cost(pubs, args.reps)
    r["fold"] = fold_cost(pubs, args.reps)
    r["snapshot"] = await snapshot_cost(args.reps, sizes)
    r["storage"] = await storage_cost(pubs, args.reps, args.batch)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=100, help="graph size of the live run")
    ap.add_argument("--sizes", default="10,100,1000,10000", help="graph sizes for the snapshot")
    ap.add_argument("--batch", type=int, default=2000, help="events per storage flush")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    try:
        import uvloop

        r = uvloop.run(main_async(args))
    except ImportError:
        r = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(r))
    print(report(r))


if __name__ == "__main__":
    main()
