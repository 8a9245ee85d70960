"""Cross-node publish-to-delivery latency on Redis, and what an event costs.

    flock /tmp/agentcast-bench.lock .venv/bin/python benchmarks/crossnode.py --reps 3

``--subs`` subscribers (the C load client ``wsload``, one topic) on node A; ``--rate``
events/s for ``--seconds`` s published by node B's bench endpoint (``/_bench/publish``,
each event stamped with its publish time), so every delivery crossed Redis from B to A.
Peers in the same run, interleaved per rep: ``redis-cross`` (producer on B, subscribers
on A), ``redis-same`` (producer and subscribers on A, on Redis), ``memory`` (one process,
in-memory broker). Reported per peer: deliveries, p50/p99/max latency, and per published
event: Redis round trips of each node (``agentcast_broker_round_trips_total`` of
``/metrics``), CPU µs of node A, node B and redis-server (``/proc``), and the other load
on the machine (it may be shared). Node A and wsload are not pinned (the machine's two
cores are shared with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import build_wsload, free_port, redis_server_pid, tree_cpu, wait_port  # noqa: E402
from storm import _exit_on_sigterm, machine_busy  # noqa: E402

REDIS = "redis://127.0.0.1:6379/0"


def start(
    broker: str | None, log: Path, extra_path: str = "", src: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    """``agentcast serve --bench-endpoint`` on a free port (``src``: another checkout's
    source; ``extra_path``: appended to its PYTHONPATH), its output in ``log``."""
    port = free_port()
    path = (src or str(HERE.parent / "src")) + (os.pathsep + extra_path if extra_path else "")
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "agentcast.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--bench-endpoint", "--log-level", "warning"]
    if broker:
        cmd += ["--broker", broker]
    proc = subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=log.parent
    )
    if not wait_port(port, proc):
        sys.exit(f"server did not start, see {log}")
    return proc, port


def round_trips(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("agentcast_broker_round_trips_total"):
            return float(line.split()[-1])
    return 0.0


def one(peer: str, args: argparse.Namespace, wsload: Path, logs: Path) -> dict[str, Any]:
    prefix = f"agentcast-xnode-{secrets.token_hex(4)}"
    broker = None if peer == "memory" else f"{REDIS}?prefix={prefix}&max_connections=5000"
    a, pa = start(broker, logs / f"{peer}-{prefix}-a.log")
    b, pb = (a, pa)
    if peer == "redis-cross":
        b, pb = start(broker, logs / f"{peer}-{prefix}-b.log")
    try:
        time.sleep(0.5)
        count = int(args.rate * args.seconds)
        trigger = (
            f"GET http://127.0.0.1:{pb}/_bench/publish?topics=1&count={count}&rate={args.rate:g}"
        )
        cmd = [str(wsload), "--port", str(pa), "--path", "/ws", "-n", str(args.subs)]
        cmd += ["--topics", "1", "--concurrency", "200", "--timeout", str(int(args.seconds) + 60)]
        cmd += ["--idle-timeout", "10", "--pid", str(a.pid), "--sub"]
        cmd += ['{"type":"subscribe","topic":"{topic}"}', "--ready", "subscribed"]
        cmd += ["--label", peer, "--expect", str(count * args.subs), "--trigger", trigger]
        rpid = redis_server_pid() if broker else None
        rt0 = (round_trips(pa), round_trips(pb)) if broker else (0.0, 0.0)
        cpu0 = (tree_cpu(a.pid), tree_cpu(b.pid) if b is not a else 0.0)
        red0, busy0, t0 = tree_cpu(rpid) if rpid else 0.0, machine_busy(), time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120)
        wall = time.monotonic() - t0
        cpu1 = (tree_cpu(a.pid), tree_cpu(b.pid) if b is not a else 0.0)
        red1, busy1 = tree_cpu(rpid) if rpid else 0.0, machine_busy()
        rt1 = (round_trips(pa), round_trips(pb)) if broker else (0.0, 0.0)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        client = float(r.get("client_cpu_s", 0.0))
        node_a, node_b, red = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], red1 - red0
        return {
            "peer": peer,
            "deliveries": r["deliveries"],
            "expected": r["expected"],
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "max_ms": r["max_ms"],
            "events": count,
            "round_trips_per_event_a": round((rt1[0] - rt0[0]) / count, 3),
            "round_trips_per_event_b": round((rt1[1] - rt0[1]) / count, 3) if b is not a else 0,
            "a_cpu_us_per_event": round(1e6 * node_a / count, 1),
            "b_cpu_us_per_event": round(1e6 * node_b / count, 1),
            "redis_cpu_us_per_event": round(1e6 * red / count, 1),
            "a_cpu_us_per_delivery": round(1e6 * node_a / max(1, r["deliveries"]), 2),
            "other_load": round(max(0.0, busy1 - busy0 - node_a - node_b - red - client) / wall, 2),
        }
    finally:
        for p in {a, b}:
            p.terminate()
            p.wait(20)
        if broker:
            import redis

            c = redis.Redis.from_url(REDIS)
            keys = list(c.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                c.delete(*keys)
            c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--peers", default="redis-cross,redis-same,memory")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stop the nodes on `timeout` too
    wsload = build_wsload()
    logs = HERE / "results" / "logs" / "crossnode"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for peer in args.peers.split(","):
            row = {**one(peer, args, wsload, logs), "rep": rep}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| peer | deliveries | p50 ms | p99 ms | max ms | RT/event A, B | CPU µs/event A, B, redis |"
    )
    print("|---|---|---|---|---|---|---|")
    for peer in args.peers.split(","):
        mine = [r for r in rows if r["peer"] == peer]

        def med(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return float(statistics.median(r[key] for r in rows))

        print(
            f"| {peer} | {med('deliveries'):,.0f}/{mine[0]['expected']:,} | {med('p50_ms'):.2f} | "
            f"{med('p99_ms'):.2f} | {med('max_ms'):.2f} | {med('round_trips_per_event_a'):g}, "
            f"{med('round_trips_per_event_b'):g} | {med('a_cpu_us_per_event'):,.0f}, "
            f"{med('b_cpu_us_per_event'):,.0f}, {med('redis_cpu_us_per_event'):,.0f} |"
        )
    print(f"\nother load (cores): {[r['other_load'] for r in rows]}")
    print(f"command: python benchmarks/crossnode.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
