"""agentcast and its peers, side by side, on the same workloads, in one run.

    python benchmarks/run.py                      # W1–W4, every peer, 1 rep (~8 min)
    python benchmarks/run.py --reps 3             # medians of 3 fresh-server runs per cell
    python benchmarks/run.py --quick              # smaller sizes, a smoke run (~1 min)
    python benchmarks/run.py --workloads W1,W3 --peers agentcast,raw

Each run starts a fresh server pinned to CPU 0 (taskset) and the C load client
(``wsload.c``, built here with gcc) pinned to CPU 1; reps are interleaved across peers.
Peers: (a) seed 000's FastAPI connection manager (``send_json`` per subscriber) on uvicorn,
(b) python-socketio rooms on uvicorn, (c) ``websockets`` with ``broadcast()``, (d) a
hand-written asyncio server writing each frame (the floor). It prints one table per
workload (deliveries/s, latency p50/p99, server and client CPU, RSS per connection), the
ratios of agentcast to each peer and the targets; raw results go to
``benchmarks/results/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"
RESULTS = HERE / "results"
PY = sys.executable
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Peer:
    name: str
    desc: str
    start: list[str]
    path: str = "/ws"
    sub: str = '{"action":"subscribe","topic":"{topic}"}'
    ready: str = "subscribed"
    trigger: str = "GET http://127.0.0.1:{port}/publish?topics={T}&count={K}&rate={R}"
    extra: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def peers() -> dict[str, Peer]:
    uvicorn = [
        str(BIN / "uvicorn"),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        "4096",
        "--lifespan",
        "off",
    ]
    return {
        "agentcast": Peer(
            "agentcast",
            "agentcast serve (native uvicorn ws protocol, in-memory broker)",
            [
                str(BIN / "agentcast"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--bench-endpoint",
                "--log-level",
                "warning",
            ],
            sub='{"type":"subscribe","topic":"{topic}"}',
            trigger="GET http://127.0.0.1:{port}/_bench/publish?topics={T}&count={K}&rate={R}",
            env=(("AGENTCAST_STORE_URL", ""),),
        ),
        "seed000-fastapi": Peer(
            "seed000-fastapi",
            "seed 000's manager: FastAPI, await ws.send_json per subscriber, uvicorn",
            [*uvicorn, "--ws", "websockets-sansio", "seed000_fastapi:app"],
        ),
        "socketio": Peer(
            "socketio",
            "python-socketio AsyncServer rooms (ASGI) on uvicorn",
            [*uvicorn, "--ws", "websockets-sansio", "socketio_app:app"],
            path="/socket.io/?EIO=4&transport=websocket",
            sub='42["join","{topic}"]',
            extra=(
                "--wait-open",
                "--hello",
                "40",
                "--hello-ack",
                "40",
                "--reply-on",
                "2",
                "--reply-with",
                "3",
            ),
        ),
        "websockets": Peer(
            "websockets",
            "websockets serve() + broadcast()",
            [PY, "websockets_server.py", "--port", "{port}"],
        ),
        "raw": Peer(
            "raw",
            "hand-written asyncio+uvloop, one transport.write per frame (the floor)",
            [PY, "raw_server.py", "--port", "{port}"],
        ),
    }


WORKLOADS = {  # connections, topics, messages, rate (0: burst), expected deliveries, timeout
    "W1": (1000, 1, 2000, 0, 2_000_000, 120),
    "W2": (1000, 1, 1000, 100, 1_000_000, 60),
    "W3": (1000, 1000, 500_000, 0, 500_000, 120),
    "W4": (10_000, 1, 0, 0, 0, 180),
}
QUICK = {
    "W1": (200, 1, 500, 0, 100_000, 60),
    "W2": (200, 1, 200, 100, 40_000, 30),
    "W3": (200, 200, 50_000, 0, 50_000, 60),
    "W4": (2000, 1, 0, 0, 0, 60),
}


def build_wsload() -> Path:
    BUILD.mkdir(exist_ok=True)
    exe = BUILD / "wsload"
    src = HERE / "wsload.c"
    if not exe.exists() or src.stat().st_mtime > exe.stat().st_mtime:
        if shutil.which("gcc") is None:
            sys.exit("gcc is needed to build the load client (apt-get install gcc)")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def run_one(
    peer: Peer, wl: str, sizes: tuple[int, ...], wsload: Path, rep: int
) -> dict[str, object]:
    n, topics, count, rate, expect, timeout = sizes
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in peer.start]
    log = (RESULTS / "logs" / f"{peer.name}.{wl}.{rep}.log").open("wb")
    env = {**os.environ, **dict(peer.env)}
    server = subprocess.Popen(
        ["taskset", "-c", "0", *cmd],
        cwd=HERE / "peers",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    try:
        if not wait_port(port, server):
            return {"peer": peer.name, "workload": wl, "rep": rep, "failed": "server did not start"}
        time.sleep(0.3)
        args = [
            str(wsload),
            "--port",
            str(port),
            "--path",
            peer.path,
            "-n",
            str(n),
            "--topics",
            str(topics),
            "--concurrency",
            "200",
            "--timeout",
            str(timeout),
            "--idle-timeout",
            "5" if rate else "10",
            "--pid",
            str(server.pid),
            "--sub",
            peer.sub,
            "--ready",
            peer.ready,
            *peer.extra,
        ]
        if wl == "W4":
            args += ["--hold", "2"]
        else:
            trigger = peer.trigger.replace("{port}", str(port)).replace("{T}", str(topics))
            trigger = trigger.replace("{K}", str(count)).replace("{R}", str(rate))
            args += ["--expect", str(expect), "--trigger", trigger]
        out = subprocess.run(
            ["taskset", "-c", "1", *args], capture_output=True, text=True, timeout=timeout + 30
        )
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"failed": f"wsload rc={out.returncode}: {out.stderr.strip()[-300:]}"}
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    return {"peer": peer.name, "workload": wl, "rep": rep, **result}


def med(rows: list[dict[str, object]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]  # type: ignore[arg-type]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "k":
        return f"{value / 1000:,.0f}k"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def report(results: list[dict[str, object]], names: list[str], wls: list[str]) -> str:
    lines: list[str] = []
    cell: dict[tuple[str, str], dict[str, float | None]] = {}
    for wl in wls:
        lines += [
            f"### {wl}",
            "",
            "| peer | runs ok | deliveries/s | p50 ms | p99 ms | server CPU | client CPU | KiB/conn |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in names:
            rows = [r for r in results if r["peer"] == name and r["workload"] == wl]
            ok = [
                r
                for r in rows
                if "failed" not in r
                and not r.get("timed_out")
                and (wl == "W4" or r.get("deliveries") == r.get("expected"))
            ]
            util_s = [
                float(r["server_cpu_s"]) / float(r["seconds"])
                for r in ok  # type: ignore[arg-type]
                if r.get("seconds")
            ]
            util_c = [
                float(r["client_cpu_s"]) / float(r["seconds"])
                for r in ok  # type: ignore[arg-type]
                if r.get("seconds")
            ]
            stats = {
                "rate": med(ok, "deliveries_per_s"),
                "p50": med(ok, "p50_ms"),
                "p99": med(ok, "p99_ms"),
                "kib": med(ok, "rss_per_conn_kib"),
                "srv": statistics.median(util_s) if util_s else None,
                "cli": statistics.median(util_c) if util_c else None,
            }
            cell[(name, wl)] = stats
            w4 = wl == "W4"
            srv = "–" if w4 or stats["srv"] is None else f"{100 * stats['srv']:.0f}%"
            cli = "–" if w4 or stats["cli"] is None else f"{100 * stats['cli']:.0f}%"
            lines.append(
                f"| {name} | {len(ok)}/{len(rows)} | {'–' if w4 else fmt(stats['rate'], 'k')} | "
                f"{'–' if w4 else fmt(stats['p50'])} | {'–' if w4 else fmt(stats['p99'])} | "
                f"{srv} | {cli} | "
                f"{fmt(stats['kib']) if w4 else '–'} |"
            )
        lines.append("")
    if "agentcast" in names:
        lines += [
            "### agentcast / peer (rates: higher is better; W2 p99 and W4 KiB: lower is better)",
            "",
            "| peer | W1 rate | W2 rate | W2 p99 | W3 rate | W4 KiB |",
            "|---|---|---|---|---|---|",
        ]

        def ratio(wl: str, key: str, other: str) -> str:
            a, b = cell.get(("agentcast", wl), {}).get(key), cell.get((other, wl), {}).get(key)
            return f"{a / b:.2f}×" if a is not None and b else "–"

        for other in names:
            if other != "agentcast":
                lines.append(
                    f"| {other} | {ratio('W1', 'rate', other)} | {ratio('W2', 'rate', other)} | "
                    f"{ratio('W2', 'p99', other)} | {ratio('W3', 'rate', other)} | "
                    f"{ratio('W4', 'kib', other)} |"
                )
        lines += ["", "### Targets", ""]
        a = {wl: cell.get(("agentcast", wl), {}) for wl in wls}

        def check(label: str, ok: bool | None) -> None:
            lines.append(
                f"- {label}: {'met' if ok else 'NOT met' if ok is not None else 'not measured'}"
            )

        def rel(wl: str, key: str, other: str) -> float | None:
            x, y = a.get(wl, {}).get(key), cell.get((other, wl), {}).get(key)
            return x / y if x is not None and y else None

        r = rel("W1", "rate", "seed000-fastapi")
        check(f"W1 ≥ 10× seed 000's FastAPI manager ({fmt(r)}×)", None if r is None else r >= 10)
        r = rel("W1", "rate", "raw")
        check(f"W1 ≥ 5× the one-write-per-frame floor ({fmt(r)}×)", None if r is None else r >= 5)
        w2 = [x for x in results if x["peer"] == "agentcast" and x["workload"] == "W2"]
        on_time = bool(w2) and all(
            x.get("deliveries") == x.get("expected")
            and not x.get("timed_out")
            and float(x.get("seconds", 99)) < 11.0
            for x in w2
        )  # type: ignore[arg-type]
        p99 = a.get("W2", {}).get("p99")
        check(
            f"W2 all delivered on time, p99 < 10 ms (p99 {fmt(p99)} ms)",
            None if p99 is None else on_time and p99 < 10,
        )
        r = rel("W3", "rate", "raw")
        check(f"W3 ≥ the hand-written floor ({fmt(r)}×)", None if r is None else r >= 1)
        kib = a.get("W4", {}).get("kib")
        check(
            f"W4 < 8 KiB per idle subscribed connection ({fmt(kib)} KiB)",
            None if kib is None else kib < 8,
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workloads", default="W1,W2,W3,W4")
    ap.add_argument("--peers", default=",".join(peers()))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is needed to pin server and client to different cores")
    known = peers()
    names = [p for p in args.peers.split(",") if p]
    unknown = [p for p in names if p not in known]
    if unknown:
        sys.exit(f"unknown peers {unknown}; known: {', '.join(known)}")
    wls = [w for w in args.workloads.split(",") if w]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wsload = build_wsload()
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else WORKLOADS
    results = []
    with (RESULTS / "runs.jsonl").open("a") as out:
        for wl in wls:
            for rep in range(args.reps):
                for name in names:  # interleaved: one rep of every peer, then the next rep
                    result = run_one(known[name], wl, sizes[wl], wsload, rep)
                    results.append(result)
                    out.write(json.dumps(result) + "\n")
                    out.flush()
                    brief = {
                        k: result.get(k)
                        for k in ("deliveries_per_s", "p99_ms", "rss_per_conn_kib", "failed")
                    }
                    print(f"{name:16} {wl} rep {rep}: {brief}", file=sys.stderr, flush=True)
    print(
        f"# agentcast benchmark ({'quick' if args.quick else 'full'} sizes, {args.reps} rep(s), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, server on CPU 0, wsload on CPU 1)\n"
    )
    print(report(results, names, wls))


if __name__ == "__main__":
    main()
