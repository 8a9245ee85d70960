"""Chat benchmark: N concurrent conversations streaming tokens from a fake upstream.

Each of ``--conns`` WebSocket connections sends one ``chat:send``; the fake
OpenAI-compatible upstream (``chat_upstream.c``, the C twin of ``chat_upstream.py``: half
its CPU per token, so that the core it shares with ``wsload`` is not saturated at 50,000
tokens/s; ``--upstream py`` runs the Python one) holds every stream until all are
accepted, then paces ``--tokens`` tokens per answer at ``--rate`` tokens/s per stream,
spread evenly. Every token's text is ``ts=<ns>``, its write time at the upstream, so
``wsload`` measures the delay a gateway adds per token: upstream socket → gateway →
client. Reported per peer: tokens/s delivered, how long delivery took against the
schedule (the longest answer is 1.2 × ``--tokens`` at ``--rate``: a gateway that keeps up
takes just that long; one that falls behind takes longer), the delay
p50/p99/max, and the server's CPU. The server runs on CPU 0; the upstream and wsload
share CPU 1.

    .venv/bin/python benchmarks/chat.py                    # 1,000 × 50 tok/s, 3 reps
    .venv/bin/python benchmarks/chat.py --quick            # 200 conversations, 1 rep

Peers: ``agentcast`` (``serve --llm-url``: fair queue, user message and answer stored in
SQLite, every token an event of ``chat:<id>`` with seq and history), ``agentcast-nostore``
(the same without a store), ``fastapi-httpx`` (``peers/chat_fastapi.py``: the FastAPI +
httpx + ``send_json`` loop a team writes, no storage, no resume), ``relay``
(``peers/chat_relay.py``, the floor: a hand-written relay, upstream socket → one client
write per token, nothing else).

Each run also records ``other_load``: CPU used on the two cores by anything but the
server, the upstream and the client (the machine may be shared); a run above
``--disturbed`` of a core is run again (``--retries``), the least disturbed attempt counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from chat_upstream import answer_tokens  # noqa: E402
from run import cpu_times, wait_quiet  # noqa: E402
from stalls import TRACER, summary  # noqa: E402

ROOT = HERE.parent
PY = sys.executable
AGENTCAST = str(Path(PY).with_name("agentcast"))


@dataclass(frozen=True)
class Peer:
    name: str
    desc: str
    start: list[str]
    env: dict[str, str]
    # what marks a token frame: the final message, which holds the whole answer (and so
    # every token's "ts="), must not count as a delivery of its first token
    token_frame: str = '"chunk":"ts='


REDIS_PREFIX = "agentcast-bench-chat"
"""The ``agentcast-redis`` peer's key prefix (its keys are deleted after the run)."""

COMPARE: dict[str, str] = {}
"""--compare: peer name -> the ``src`` folder its agentcast is imported from."""


def peers(upstream: str, scratch: Path) -> dict[str, Peer]:
    common = {
        "AGENTCAST_LLM_CONCURRENCY": "100000",
        "AGENTCAST_LOG_LEVEL": "warning",
        "AGENTCAST_MAX_SUBSCRIPTIONS": "10",
    }
    serve = [
        AGENTCAST,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--llm-url",
        upstream,
        "--model",
        "bench",
    ]
    table = {
        "agentcast": Peer(
            "agentcast",
            "agentcast serve --llm-url (SQLite store: messages and answers persisted)",
            serve,
            {**common, "AGENTCAST_STORE_URL": f"sqlite:///{scratch / 'bench-chat.db'}"},
        ),
        "agentcast-redis": Peer(
            "agentcast-redis",
            "agentcast serve --llm-url on the Redis broker (local Redis 7; SQLite store as "
            "`agentcast`): every token's seq, history and fan-out through Redis",
            serve,
            {
                **common,
                "AGENTCAST_STORE_URL": f"sqlite:///{scratch / 'bench-chat-redis.db'}",
                "AGENTCAST_BROKER_URL": f"redis://127.0.0.1:6379/0?prefix={REDIS_PREFIX}"
                "&max_connections=20000",
            },
        ),
        "agentcast-nostore": Peer(
            "agentcast-nostore",
            "agentcast serve --llm-url, no store (conversations in memory)",
            serve,
            {**common, "AGENTCAST_STORE_URL": ""},
        ),
        "relay": Peer(
            "relay",
            "the floor: hand-written asyncio + uvloop relay, upstream event stream → one "
            "client write per token (no store, no seq, no history)",
            [PY, str(HERE / "peers" / "chat_relay.py"), "--port", "{port}", "--upstream", upstream],
            {},
        ),
        "fastapi-httpx": Peer(
            "fastapi-httpx",
            "FastAPI + shared httpx client + `await ws.send_json` per token (no storage)",
            [
                PY,
                "-m",
                "uvicorn",
                "chat_fastapi:app",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--ws",
                "websockets-sansio",
                "--no-access-log",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
            ],
            {"CHAT_UPSTREAM": upstream, "PYTHONPATH": str(HERE / "peers")},
        ),
    }
    for name, src in COMPARE.items():
        base = table["agentcast"]
        table[name] = Peer(
            name, f"{base.desc}, imported from {src}", base.start, {**base.env, "PYTHONPATH": src}
        )
    return table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def build_wsload() -> Path:
    out = Path(tempfile.gettempdir()) / "agentcast-wsload"
    src = HERE / "wsload.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def build_upstream(kind: str) -> list[str]:
    """The fake upstream's command (without its flags): the C one, built once, or Python."""
    if kind == "py":
        return [PY, str(HERE / "chat_upstream.py")]
    out = Path(tempfile.gettempdir()) / "agentcast-chat-upstream"
    src = HERE / "chat_upstream.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return [str(out)]


def per_token(r: dict[str, Any], key: str) -> float:
    return 1e6 * float(r.get(key, 0.0)) / max(1, int(r.get("deliveries", 0)))


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` and its threads so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def run_one(peer: Peer, args: argparse.Namespace, wsload: Path, scratch: Path) -> dict[str, Any]:
    up_port, port = free_port(), free_port()
    upstream = subprocess.Popen(
        pinned(
            args.load_cpu,
            [
                *args.upstream_cmd,
                "--port",
                str(up_port),
                "--rate",
                str(args.rate),
                "--tokens",
                str(args.tokens),
                "--streams",
                str(args.conns),
            ],
        ),
        stdout=subprocess.DEVNULL,
    )
    server = spy = None
    trace: Path | None = None
    result: dict[str, Any] = {}
    try:
        wait_port(up_port, upstream)
        peer = peers(f"http://127.0.0.1:{up_port}/v1", scratch)[peer.name]
        if "AGENTCAST_BROKER_URL" in peer.env:  # what a killed run left behind, too
            from run import delete_redis_keys

            delete_redis_keys(REDIS_PREFIX)
        for f in scratch.glob("bench-chat.db*"):
            f.unlink()
        argv = [a.replace("{port}", str(port)) for a in peer.start]
        env = {**os.environ, **peer.env}
        if args.trace and argv[0] == AGENTCAST:  # GC pauses and loop stalls, traced
            args.trace.mkdir(parents=True, exist_ok=True)
            n = len(list(args.trace.glob(f"{peer.name}.{args.conns}.*.lat")))
            trace = args.trace / f"{peer.name}.{args.conns}.{n}"
            argv = [PY, "-c", TRACER, *argv[1:]]
            env["STALLS_OUT"] = f"{trace}.json"
        server = subprocess.Popen(
            pinned(args.server_cpu, argv),
            env=env,
            cwd=scratch,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_port(port, server)
        except (TimeoutError, RuntimeError) as exc:  # say why: the server's own words
            server.kill()
            _, err = server.communicate(timeout=10)
            raise RuntimeError(
                f"{peer.name}: {exc}\n{err.decode(errors='replace')[-3000:]}"
            ) from exc
        spy = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                pinned(
                    args.load_cpu,
                    [
                        str(Path(PY).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(server.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--output",
                        str(args.profile / f"{peer.name}.txt"),
                    ],
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        expect = sum(answer_tokens(args.tokens, i, args.conns) for i in range(args.conns))
        cmd = pinned(
            args.load_cpu,
            [
                str(wsload),
                "--port",
                str(port),
                "-n",
                str(args.conns),
                "--sub",
                '{"type":"chat:send","id":{i},"data":{"message":"question number {i}"}}',
                "--ready",
                "chat:accepted",
                "--trigger",
                f"GET http://127.0.0.1:{up_port}/go",
                "--expect",
                str(expect),
                "--count-match",
                peer.token_frame,
                "--ts-key",
                "ts=",
                "--timeout",
                str(args.tokens / args.rate + 60),
                "--idle-timeout",
                "10",
                "--pid",
                str(server.pid),
                "--label",
                peer.name,
                *(["--dump", f"{trace}.lat"] if trace else []),
            ],
        )
        user0, sys0 = proc_cpu(server.pid)
        up0 = sum(proc_cpu(upstream.pid))
        cores = (args.server_cpu, args.load_cpu)
        stat0, t0 = cpu_times(cores), time.monotonic()
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.tokens / args.rate + 120
        )
        wall, stat1 = time.monotonic() - t0, cpu_times(cores)
        user1, sys1 = proc_cpu(server.pid)
        result_upstream_cpu = sum(proc_cpu(upstream.pid)) - up0
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
        result.update(json.loads(line))
        # connections, questions and answers: the server's user and system CPU
        result["server_user_s"], result["server_sys_s"] = user1 - user0, sys1 - sys0
        # the load core's other tenant: when it and wsload fill that core, delays are the client's
        result["upstream_cpu_s"] = result_upstream_cpu
        # the delivery window: first to last token (the trigger waits for every stream)
        active = float(result.get("seconds", 0)) - float(result.get("first_delivery_s", 0))
        result["tokens_per_s"] = result.get("deliveries", 0) / active if active > 0 else 0.0
        result["ideal_window_s"] = 1.2 * args.tokens / args.rate
        result["window_s"] = active
        result["offered_per_s"] = args.conns * args.rate
        busy = sum(stat1[c][0] - stat0[c][0] for c in cores) / os.sysconf("SC_CLK_TCK")
        ours = (user1 - user0) + (sys1 - sys0) + result_upstream_cpu
        ours += float(result.get("client_cpu_s", 0.0))
        result["other_load"] = round(max(0.0, busy - ours) / max(wall, 1e-9), 3)
        return result
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for proc in (server, upstream):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if trace is not None and Path(f"{trace}.json").exists():
            result["trace"] = summary(Path(f"{trace}.lat"), Path(f"{trace}.json"))
        if "AGENTCAST_BROKER_URL" in peer.env:
            from run import delete_redis_keys

            delete_redis_keys(REDIS_PREFIX)


def med(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    values = [float(r[key]) for r in rows if key in r]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def show(stat: tuple[float, float, float] | None, fmt: str = "{:,.0f}") -> str:
    if stat is None:
        return "–"
    m, lo, hi = stat
    return fmt.format(m) if lo == hi else f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50.0, help="tokens/s per conversation")
    ap.add_argument("--tokens", type=int, default=250, help="tokens per answer")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peers", default="agentcast,agentcast-nostore,relay,fastapi-httpx")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument(
        "--upstream", choices=["c", "py"], default="c", help="the fake upstream: C or Python"
    )
    ap.add_argument("--load-cpu", default="1")
    ap.add_argument("--quick", action="store_true", help="200 conversations, 100 tokens, 1 rep")
    ap.add_argument(
        "--profile", type=Path, help="record the server with py-spy (collapsed stacks) into DIR"
    )
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument(
        "--disturbed",
        type=float,
        default=0.25,
        help="run again when other processes used more than this share of a core",
    )
    ap.add_argument("--retries", type=int, default=2, help="runs again of a disturbed run")
    ap.add_argument("--patience", type=float, default=30.0, help="wait for quiet cores, s")
    ap.add_argument(
        "--trace",
        type=Path,
        metavar="DIR",
        help="run agentcast under benchmarks/stalls.py's tracer: GC pauses, loop stalls and "
        "what ran during them, joined with every token's delay (files in DIR)",
    )
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run agentcast imported from SRC (another checkout's src/) as peer "
        "agentcast@NAME, interleaved (repeatable)",
    )
    args = ap.parse_args()
    for spec in args.compare:
        label, _, src = spec.partition("=")
        if not label or not (Path(src) / "agentcast" / "__init__.py").exists():
            sys.exit(f"--compare {spec!r}: NAME=SRC with SRC/agentcast/__init__.py")
        COMPARE[f"agentcast@{label}"] = str(Path(src).resolve())
    if args.quick:
        args.conns, args.tokens, args.reps = 200, 100, 1
    wsload = build_wsload()
    args.upstream_cmd = build_upstream(args.upstream)
    names = [n for n in args.peers.split(",") if n]
    names[names.index("agentcast") + 1 if "agentcast" in names else 0 : 0] = list(COMPARE)
    scratch = Path(tempfile.mkdtemp(prefix="agentcast-chat-bench-"))
    table = peers("", scratch)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names:
            attempts = []
            for _ in range(args.retries + 1):
                if args.patience > 0:
                    wait_quiet((args.server_cpu, args.load_cpu), 0.15, args.patience)
                attempts.append(run_one(table[name], args, wsload, scratch))
                if attempts[-1].get("other_load", 0) <= args.disturbed:
                    break
                print(
                    f"rep {rep + 1} {name}: other processes used "
                    f"{100 * attempts[-1]['other_load']:.0f} % of a core",
                    file=sys.stderr,
                    flush=True,
                )
            r = min(attempts, key=lambda a: float(a.get("other_load", 0)))
            r["rep"] = rep
            r["attempts"] = len(attempts)
            results[name].append(r)
            print(
                f"rep {rep + 1} {name}: {r.get('deliveries', 0):,} tokens, "
                f"{r.get('tokens_per_s', 0):,.0f}/s over {r.get('window_s', 0):.2f} s "
                f"(ideal {r.get('ideal_window_s', 0):.2f}), p99 {r.get('p99_ms', -1):.2f} ms, "
                f"server CPU {r.get('server_cpu_s', 0):.1f} s; per token "
                f"{per_token(r, 'server_user_s'):.1f} µs user + "
                f"{per_token(r, 'server_sys_s'):.1f} µs system (connections included); "
                f"load core: upstream {r.get('upstream_cpu_s', 0):.1f} s + "
                f"client {r.get('client_run_cpu_s', 0):.1f} s CPU; other load "
                f"{100 * r.get('other_load', 0):.0f} %"
                + (f"\n  trace: {json.dumps(r['trace'])}" if "trace" in r else ""),
                file=sys.stderr,
                flush=True,
            )
    offered = args.conns * args.rate
    print(
        f"\n### Chat: {args.conns:,} conversations × {args.rate:g} tokens/s "
        f"({offered:,.0f} tokens/s offered, {args.tokens} tokens each), {args.reps} rep(s)\n"
    )
    ideal = 1.2 * args.tokens / args.rate
    print(
        f"| peer | tokens/s delivered | delivery window s (schedule: {ideal:.2f}) | "
        "added delay p50 ms | p99 ms | max ms | server CPU s | other load | complete |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = results[name]
        rate = med(rows, "tokens_per_s")
        complete = sum(1 for r in rows if r.get("deliveries", 0) >= r.get("expected", 1))
        print(
            f"| {name} | {show(rate)} | {show(med(rows, 'window_s'), '{:.2f}')} | "
            f"{show(med(rows, 'p50_ms'), '{:.2f}')} | {show(med(rows, 'p99_ms'), '{:.2f}')} | "
            f"{show(med(rows, 'max_ms'), '{:.1f}')} | {show(med(rows, 'server_cpu_s'), '{:.1f}')} | "
            f"{show(med(rows, 'other_load'), '{:.0%}')} | {complete}/{len(rows)} |"
            if rate
            else f"| {name} | – | – | – | – | – | – | – | 0/{len(rows)} |"
        )
    print()
    for name in names:
        print(f"* `{name}`: {table[name].desc}")
    if "agentcast" in names:
        base = med(results["agentcast"], "p99_ms")
        for other in names:
            if other == "agentcast":
                continue
            o = med(results[other], "p99_ms")
            a_rate = med(results["agentcast"], "tokens_per_s")
            o_rate = med(results[other], "tokens_per_s")
            if base and o and a_rate and o_rate and o_rate[0] > 0 and o[0] > 0:
                pairs = [
                    a["p99_ms"] / b["p99_ms"]
                    for a, b in zip(results["agentcast"], results[other], strict=False)
                    if a.get("p99_ms") and b.get("p99_ms")
                ]
                spread = f" (same-rep {min(pairs):.2f}–{max(pairs):.2f})" if len(pairs) > 1 else ""
                print(
                    f"* agentcast vs {other}: tokens/s ×{a_rate[0] / o_rate[0]:.2f}, "
                    f"p99 delay ×{base[0] / o[0]:.2f}{spread} (lower is better)"
                )
                if other == "relay":
                    verdict = "met" if base[0] <= 2 * o[0] else "NOT met"
                    print(
                        f"* target p99 added delay ≤ 2× the relay's (the floor): {verdict} "
                        f"({base[0]:.2f} vs {o[0]:.2f} ms)"
                    )
        if base:
            verdict = "met" if base[0] < 5.0 else "NOT met"
            print(f"* target p99 added delay < 5 ms: {verdict} ({base[0]:.2f} ms)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
