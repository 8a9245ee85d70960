"""What an event costs agentcast on the Redis broker: CPU µs per event and per delivery,
Redis round trips per event, for a W3-like unicast and a W1-like fan-out.

    flock /tmp/agentcast-bench.lock .venv/bin/python benchmarks/redis_costs.py [--cases w3,w1,cross]
    ... --profile      # also a py-spy record of the gateway (an SVG per case in results/)

Each case starts fresh ``agentcast serve --bench-endpoint`` processes (the source of this
checkout: ``PYTHONPATH=src``) on the shared Redis (``redis://127.0.0.1:6379/0``, a unique
key prefix deleted afterwards) and the C load client ``wsload``:

``w3``
    ``--subs`` subscribers on as many topics (one each), ``--w3-events`` events published
    round-robin over them by the bench endpoint (``/_bench/publish``: one ``await
    gateway.publish`` per event, as W3 of ``benchmarks/run.py``).
``w1``
    ``--subs`` subscribers on one topic, ``--w1-events`` events as fast as possible.
``cross``
    ``w1``'s subscribers on node A, the events published by node B at ``--rate``/s: every
    delivery crosses Redis.

Per case: deliveries, CPU of the gateway process tree (``/proc``, so user + system time of
every thread) per event and per delivery, redis-server's CPU per event, and each node's
``agentcast_broker_round_trips_total`` (``/metrics``) per event. CPU time is far less
sensitive to a shared machine than latency; still read one rep as an order of magnitude.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from crossnode import round_trips, start  # noqa: E402
from run import build_wsload, redis_server_pid, tree_cpu  # noqa: E402
from storm import _exit_on_sigterm  # noqa: E402

REDIS = "redis://127.0.0.1:6379/0"


def trigger_proxy(target: str, at_trigger: Callable[[], None]) -> tuple[ThreadingHTTPServer, int]:
    """An HTTP server that, when wsload fires its trigger (every subscriber is ready),
    takes the counters' starting values, then forwards the request to ``target``: the
    figures cover publishing and delivery only, not the connections and subscriptions."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            at_trigger()
            status = httpx.get(target, timeout=10).status_code
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def one(case: str, args: argparse.Namespace, wsload: Path, logs: Path) -> dict[str, Any]:
    prefix = f"agentcast-costs-{secrets.token_hex(4)}"
    broker = f"{REDIS}?prefix={prefix}&max_connections=5000"
    a, pa = start(broker, logs / f"{case}-{prefix}-a.log", args.extra_path, args.src)
    b, pb = (a, pa)
    if case == "cross":
        b, pb = start(broker, logs / f"{case}-{prefix}-b.log", args.extra_path, args.src)
    spy: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(0.5)
        topics = args.subs if case == "w3" else 1
        count = args.w3_events if case == "w3" else args.w1_events
        rate = args.rate if case == "cross" else 0
        target = f"http://127.0.0.1:{pb}/_bench/publish?topics={topics}&count={count}&rate={rate:g}"
        rpid = redis_server_pid()
        start_values: dict[str, Any] = {}

        def at_trigger() -> None:
            start_values["rt"] = (round_trips(pa), round_trips(pb))
            start_values["cpu"] = (tree_cpu(a.pid), tree_cpu(b.pid) if b is not a else 0.0)
            start_values["redis"] = tree_cpu(rpid) if rpid else 0.0

        proxy, proxy_port = trigger_proxy(target, at_trigger)
        trigger = f"GET http://127.0.0.1:{proxy_port}/trigger"
        cmd = [str(wsload), "--port", str(pa), "--path", "/ws", "-n", str(args.subs)]
        cmd += ["--topics", str(topics), "--concurrency", "200", "--timeout", "150"]
        cmd += ["--idle-timeout", "10", "--pid", str(a.pid), "--sub"]
        cmd += ['{"type":"subscribe","topic":"{topic}"}', "--ready", "subscribed"]
        expect = count * (1 if case == "w3" else args.subs)
        cmd += ["--label", case, "--expect", str(expect), "--trigger", trigger]
        if args.profile and shutil.which("py-spy", path=str(Path(sys.executable).parent)):
            svg = HERE / "results" / f"redis-costs-{case}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
            spy_bin = str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [
                    spy_bin,
                    "record",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "-r",
                    "200",
                    "-o",
                    str(svg),
                    "-p",
                    str(a.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        proxy.shutdown()
        rt0, cpu0, red0 = start_values["rt"], start_values["cpu"], start_values["redis"]
        cpu1 = (tree_cpu(a.pid), tree_cpu(b.pid) if b is not a else 0.0)
        red1 = tree_cpu(rpid) if rpid else 0.0
        rt1 = (round_trips(pa), round_trips(pb))
        r = json.loads(out.stdout.strip().splitlines()[-1])
        node_a, node_b = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        both = node_a + node_b
        return {
            "case": case,
            "deliveries": r["deliveries"],
            "expected": r["expected"],
            "events": count,
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "rt_per_event_a": round((rt1[0] - rt0[0]) / count, 3),
            "rt_per_event_b": round((rt1[1] - rt0[1]) / count, 3) if b is not a else None,
            "cpu_us_per_event": round(1e6 * both / count, 1),
            "a_cpu_us_per_event": round(1e6 * node_a / count, 1),
            "b_cpu_us_per_event": round(1e6 * node_b / count, 1) if b is not a else None,
            "cpu_us_per_delivery": round(1e6 * both / max(1, r["deliveries"]), 2),
            "redis_cpu_us_per_event": round(1e6 * (red1 - red0) / count, 1),
        }
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for p in {a, b}:
            p.terminate()
            p.wait(20)
        import redis

        c = redis.Redis.from_url(REDIS)
        keys = list(c.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            c.delete(*keys[i : i + 1000])
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default="w3,w1,cross")
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--w3-events", type=int, default=20_000)
    ap.add_argument("--w1-events", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--profile", action="store_true", help="py-spy record node A (an SVG)")
    ap.add_argument("--extra-path", default="", help="more PYTHONPATH for the servers")
    ap.add_argument(
        "--src", default="", help="the agentcast source the servers run (default: ../src)"
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    wsload = build_wsload()
    logs = HERE / "results" / "logs" / "redis_costs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases.split(","):
        row = one(case, args, wsload, logs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| case | delivered | CPU µs/event (A, B) | CPU µs/delivery | RT/event (A, B) | redis µs/event |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['deliveries']:,}/{r['expected']:,} | {r['cpu_us_per_event']:,} "
            f"({r['a_cpu_us_per_event']:,}, {r['b_cpu_us_per_event']}) | {r['cpu_us_per_delivery']} | "
            f"{r['rt_per_event_a']}, {r['rt_per_event_b']} | {r['redis_cpu_us_per_event']} |"
        )
    print(f"\ncommand: python benchmarks/redis_costs.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
