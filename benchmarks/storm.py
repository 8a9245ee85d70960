"""Reconnect storm: N clients on node A of two nodes on one Redis, A killed (SIGKILL).

    flock /tmp/agentcast-bench.lock .venv/bin/python benchmarks/storm.py               # 5,000
    flock /tmp/agentcast-bench.lock .venv/bin/python benchmarks/storm.py --clients 1000 --procs 2

Two ``agentcast serve`` processes (A and B) on the local Redis (a key prefix of their
own, deleted afterwards). ``--clients`` WebSocket clients (Python ``websockets``, spread
over ``--procs`` client processes) connect to A and subscribe to ``storm`` (a slow stream,
``--storm-rate`` events/s); ``--own`` clients of B subscribe to ``paced`` (``--rate``
events/s, every event carrying its publish time). Both streams are published through B
over HTTP. After ``--before`` s, A is killed with SIGKILL; each of A's clients reconnects
at once (after a random delay up to ``--jitter`` ms) to B and resubscribes with ``since``
its last seq. Reported:

* the time from the kill until every one of A's clients has resumed on B (its
  ``subscribed`` reply with ``recovered: true``), with p50/p99 of the per-client times;
* lost and duplicated seqs of ``storm`` over all of A's clients (counted to the last
  seq published; must be 0 / 0), and subscribes refused (``error`` frames) and retried;
* B's own clients' publish-to-delivery latency p50/p99/max before the kill and during the
  storm (from the kill until every client resumed);
* CPU of B and of redis-server during the storm (``/proc``), and the other load on the
  machine meanwhile (it may be shared).

The result is printed as one JSON object (and a short text summary on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REDIS = "redis://127.0.0.1:6379/0"
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import free_port, redis_server_pid, tree_cpu  # noqa: E402  (the harness's own)


def machine_busy() -> float:
    """CPU seconds the whole machine has used (all cores, ``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return -1.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- A's clients (in worker processes) ----------------------------------------------------


def storm_worker(
    index: int, count: int, url_a: str, url_b: str, jitter_ms: float, ready: Any, out: Any
) -> None:
    """``count`` clients of A: subscribe to ``storm``; on losing A, reconnect to B and
    resume with ``since``; stop at the ``end`` event. Puts one result dict on ``out``."""
    import uvloop

    try:
        uvloop.run(_storm_clients(index, count, url_a, url_b, jitter_ms, ready, out))
    except BaseException as exc:  # the coordinator must not wait for a dead worker
        ready.put(f"worker {index} failed: {exc!r}")
        out.put({"error": repr(exc)})
        raise


async def _storm_clients(
    index: int, count: int, url_a: str, url_b: str, jitter_ms: float, ready: Any, out: Any
) -> None:
    import websockets

    seqs: list[list[int]] = [[] for _ in range(count)]
    resumed: list[float | None] = [None] * count
    refused = [0]
    failures = [0]
    end = [0]
    subscribed = [0]
    all_subscribed = asyncio.Event()

    async def one(i: int) -> None:
        url, since, lost_a, on_a = url_a, 0, False, False
        while True:
            try:
                async with websockets.connect(url, max_queue=None, open_timeout=60) as ws:
                    await ws.send(
                        json.dumps({"type": "subscribe", "topic": "storm", "since": since})
                    )
                    async for raw in ws:
                        frame = json.loads(raw)
                        kind = frame.get("type")
                        if kind == "subscribed":
                            if lost_a:
                                if resumed[i] is None:
                                    resumed[i] = time.time()
                            elif not on_a:
                                on_a = True
                                subscribed[0] += 1
                                if subscribed[0] == count:
                                    all_subscribed.set()
                        elif kind == "error":
                            refused[0] += 1
                            break  # retry the subscription on a new connection
                        elif kind == "tick":
                            seqs[i].append(frame["seq"])
                            since = frame["seq"]
                        elif kind == "end":
                            end[0] = frame["seq"]
                            seqs[i].append(frame["seq"])
                            return
            except Exception:  # refused, reset, timed out, or websockets'
                failures[0] += 1  # own assertion in a handshake whose connection died: retry
            if not lost_a and on_a:  # A is gone: to B (a failure before that: A again)
                lost_a, url = True, url_b
            await asyncio.sleep(random.uniform(0, jitter_ms) / 1000 if jitter_ms else 0.05)

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await all_subscribed.wait()
    ready.put(index)
    await asyncio.gather(*tasks)
    last = end[0]
    lost = sum(len(set(range(1, last + 1)) - set(s)) for s in seqs)
    dup = sum(len(s) - len(set(s)) for s in seqs)
    out.put(
        {
            "resumed": resumed,
            "lost": lost,
            "duplicated": dup,
            "refused": refused[0],
            "failures": failures[0],
            "last": last,
            "out_of_order": sum(1 for s in seqs if s != sorted(s)),
        }
    )


# -- the coordinator ----------------------------------------------------------------------


class Node:
    def __init__(self, broker: str, log: Path) -> None:
        self.port = free_port()
        self.log = log.open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentcast.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--broker",
                broker,
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"node exited, see {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        sys.exit("node did not become healthy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


async def coordinate(args: argparse.Namespace, a: Node, b: Node) -> dict[str, Any]:
    import httpx
    import websockets

    url_a, url_b = f"ws://127.0.0.1:{a.port}/ws", f"ws://127.0.0.1:{b.port}/ws"
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    share = [
        args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)
    ]
    workers = [
        ctx.Process(
            target=storm_worker,
            args=(i, n, url_a, url_b, args.jitter, ready, out),
            daemon=True,  # ended with this process, whatever happens
        )
        for i, n in enumerate(share)
    ]
    t_connect = time.monotonic()
    for w in workers:
        w.start()
    for _ in workers:
        got = await asyncio.to_thread(ready.get, True, 600)
        if isinstance(got, str):
            raise RuntimeError(got)
    connect_s = time.monotonic() - t_connect

    latencies: list[tuple[float, float]] = []  # (receive time, latency s)
    own_done = asyncio.Event()

    async def own_client() -> None:
        async with websockets.connect(url_b, max_queue=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "paced"}))
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "p":
                    now = time.time()
                    latencies.append((now, now - frame["data"]["t"]))
                elif frame.get("type") == "stop":
                    return

    owners = [asyncio.create_task(own_client()) for _ in range(args.own)]
    await asyncio.sleep(0.5)  # let the own clients subscribe (they are not counted before)

    stop = asyncio.Event()
    errors: list[str] = []
    slow_topics = [0]

    async def pace(http: httpx.AsyncClient, topic: str, kind: str, rate: float) -> None:
        interval, nxt = 1.0 / rate, time.monotonic()
        while not stop.is_set():
            body = {"type": kind, "data": {"t": time.time()}}
            try:
                r = await http.post(f"/api/topics/{topic}/events", json=body)
                if r.status_code != 200:
                    errors.append(f"{topic} {r.status_code} {r.text[:100]}")
            except httpx.HTTPError as exc:
                errors.append(f"{topic} {exc!r}")
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{b.port}", limits=limits, timeout=60
    ) as http:
        producers = [
            asyncio.create_task(pace(http, "paced", "p", args.rate)),
            asyncio.create_task(pace(http, "storm", "tick", args.storm_rate)),
        ]
        await asyncio.sleep(args.before)
        rpid = redis_server_pid()
        cpu_b0, cpu_r0, busy0 = (
            tree_cpu(b.proc.pid),
            tree_cpu(rpid) if rpid else 0.0,
            machine_busy(),
        )
        t_kill = time.time()
        a.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(a.proc.wait, 10)
        # the workers report only at the end: wait for B to count every client resubscribed
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:  # B may take seconds to answer during the storm
                r = await http.get("/api/topics", timeout=60)
            except httpx.TimeoutException:
                slow_topics[0] += 1
                continue
            subs = {t["topic"]: t["subscribers"] for t in r.json()}
            if subs.get("storm", 0) >= args.clients:
                break
            await asyncio.sleep(0.05)
        t_all = time.time()
        cpu_b1, cpu_r1, busy1 = (
            tree_cpu(b.proc.pid),
            tree_cpu(rpid) if rpid else 0.0,
            machine_busy(),
        )
        await asyncio.sleep(args.after)
        stop.set()
        await asyncio.gather(*producers)
        r = await http.post("/api/topics/storm/events", json={"type": "end", "data": {}})
        r2 = await http.post("/api/topics/paced/events", json={"type": "stop", "data": {}})
        if r.status_code != 200 or r2.status_code != 200:
            raise RuntimeError(f"final publishes failed: {r.text} {r2.text}")
        async with asyncio.timeout(120):
            await asyncio.gather(*owners)
        own_done.set()
    results = [await asyncio.to_thread(out.get, True, 300) for _ in workers]
    for w in workers:
        w.join(30)
    resumed = [t for res in results for t in res["resumed"]]
    times = [t - t_kill for t in resumed if t is not None]
    storm_s = t_all - t_kill
    before = [lat * 1000 for ts, lat in latencies if ts < t_kill]
    during = [lat * 1000 for ts, lat in latencies if t_kill <= ts <= t_all + 0.2]
    wall = t_all - t_kill
    srv = cpu_b1 - cpu_b0
    red = cpu_r1 - cpu_r0

    def lat(v: list[float]) -> dict[str, float]:
        return {
            "n": len(v),
            "p50_ms": round(pct(v, 0.5), 2),
            "p99_ms": round(pct(v, 0.99), 2),
            "max_ms": round(max(v), 2) if v else -1,
        }

    return {
        "clients": args.clients,
        "procs": args.procs,
        "own": args.own,
        "rate": args.rate,
        "jitter_ms": args.jitter,
        "connect_s": round(connect_s, 2),
        "storm_s": round(storm_s, 3),
        "resumed": len(times),
        "resume_p50_s": round(pct(times, 0.5), 3),
        "resume_p99_s": round(pct(times, 0.99), 3),
        "resume_max_s": round(max(times), 3) if times else -1,
        "lost": sum(res["lost"] for res in results),
        "duplicated": sum(res["duplicated"] for res in results),
        "out_of_order": sum(res["out_of_order"] for res in results),
        "refused_subscribes": sum(res["refused"] for res in results),
        "failed_connections": sum(res["failures"] for res in results),
        "last_seq": max(res["last"] for res in results),
        "own_before": lat(before),
        "own_during": lat(during),
        "b_cpu_s": round(srv, 2),
        "b_cpu_per_resume_ms": round(1000 * srv / max(1, len(times)), 3),
        "redis_cpu_s": round(red, 2),
        "other_load": round(max(0.0, (busy1 - busy0) - srv - red) / wall, 2) if wall else 0,
        "publish_errors": errors[:5],
        "publish_error_count": len(errors),
        "topics_timeouts": slow_topics[0],
    }


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(143)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=5000, help="A's clients (default 5,000)")
    ap.add_argument("--procs", type=int, default=2, help="client processes for A's clients")
    ap.add_argument("--own", type=int, default=100, help="B's own clients (paced stream)")
    ap.add_argument("--rate", type=float, default=100, help="B's paced stream, events/s")
    ap.add_argument("--storm-rate", type=float, default=5, help="A's stream, events/s")
    ap.add_argument("--before", type=float, default=5, help="seconds of stream before the kill")
    ap.add_argument("--after", type=float, default=2, help="seconds of stream after the storm")
    ap.add_argument("--jitter", type=float, default=0, help="reconnect delay up to this, ms")
    ap.add_argument("--timeout", type=float, default=300, help="longest storm waited for, s")
    ap.add_argument(
        "--broker-query",
        default="max_connections=20000",
        help="added to the Redis URL (redis-py's pool: its default of 100 connections "
        "refuses concurrent reads beyond it; '' to keep it)",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stop the nodes on `timeout` too
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    prefix = f"agentcast-storm-{secrets.token_hex(4)}"
    broker = f"{REDIS}?prefix={prefix}" + (f"&{args.broker_query}" if args.broker_query else "")
    logs = ROOT / "benchmarks" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    a = Node(broker, logs / f"storm-{prefix}-a.log")
    b = Node(broker, logs / f"storm-{prefix}-b.log")
    try:
        a.wait_healthy()
        b.wait_healthy()
        import uvloop

        result = uvloop.run(coordinate(args, a, b))
        result["broker_query"] = args.broker_query
        result["command"] = " ".join(["python", "benchmarks/storm.py", *sys.argv[1:]])
    finally:
        a.stop()
        b.stop()
        import redis

        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()
    print(json.dumps(result))
    print(
        f"storm: {result['resumed']}/{args.clients} resumed in {result['storm_s']} s "
        f"(p50 {result['resume_p50_s']} p99 {result['resume_p99_s']}), lost/dup "
        f"{result['lost']}/{result['duplicated']}, refused {result['refused_subscribes']}; "
        f"B's own p99 {result['own_before']['p99_ms']} -> {result['own_during']['p99_ms']} ms "
        f"(max {result['own_before']['max_ms']} -> {result['own_during']['max_ms']}); "
        f"B cpu {result['b_cpu_s']} s, redis {result['redis_cpu_s']} s, other load "
        f"{result['other_load']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
