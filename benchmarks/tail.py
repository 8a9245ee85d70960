"""Where agentcast's W5 latency tail comes from (paced unicast: 1,000 topics × 1 subscriber,
events round-robin at a fixed rate), and what-if experiments against it.

    .venv/bin/python benchmarks/tail.py                        # 20k and 30k/s, 3 reps (~5 min)
    .venv/bin/python benchmarks/tail.py --rates 30000 --reps 5 --what-if gc-off,sweep-off

Each run starts ``agentcast serve --bench-endpoint`` pinned to the server core inside a
tracing wrapper (the tracer and the experiments patch only that process; src/ is
untouched), and ``wsload --dump`` on the other core, which writes every delivery's event
stamp and latency. The wrapper records, on the same clock (CLOCK_REALTIME, ns):

* every garbage collection (``gc.callbacks``): start, end, generation;
* every ``Gateway._flush`` (start, duration, dirty outboxes) and ``Gateway.sweep``;
* the benchmark publisher (the endpoint's ``_bench_loop``, through its ``on_run``): each
  *run* of events it published without sleeping (start, end, count) and how late the run
  started against the schedule (the loop's lag).

Each delivery slower than ``--slow`` ms is then given one cause, the first that applies:
a gen-2 collection overlapping its time in the server (``gc2``); a gen-0/1 collection of
≥ 0.3 ms (``gc01``); the keepalive sweep (``sweep``); its event published in a catch-up
run of ≥ ``--burst`` events (the publisher was behind and published them back to back: no
flush until the run ends), named after what made the publisher late or the run long
(``burst after gc2`` …: what overlapped its first event's scheduled time → its end); a flush of ≥ 1 ms (``flush``); else ``other`` (the kernel, the client, another
process). The floor (``raw_server.py``) runs in the same rep for reference. Results go to
``benchmarks/results/tail-<stamp>.md`` (and ``.jsonl``).

What-ifs (``--what-if``, comma-separated; ``a+b`` both): see ``WHAT_IF``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import (  # noqa: E402
    PY,
    RESULTS,
    build_wsload,
    cpu_times,
    cpus,
    free_port,
    raise_fd_limit,
    stop_group,
    tree_cpu,
    wait_port,
    wait_quiet,
)
from stalls import load_dump  # noqa: E402

# The server inside the tracer. Trace arrays are int64 (array('q')): nothing the cyclic GC
# tracks is added per event.
TRACER = r"""
import asyncio, gc, json, os, sys, time
from array import array
out = os.environ["TAIL_TRACE"]
gcs, flushes, sweeps, runs = array("q"), array("q"), array("q"), array("q")
_gc0 = [0]
def on_gc(phase, info):
    if phase == "start":
        _gc0[0] = time.time_ns()
    else:
        gcs.extend((_gc0[0], time.time_ns(), info["generation"]))
gc.callbacks.append(on_gc)
for name in filter(None, os.environ.get("WHAT_IF", "").split("+")):
    exec(WHAT_IF[name])
import agentcast.transports.http as http
from agentcast.gateway import Gateway
_flush, _sweep = Gateway._flush, Gateway.sweep
def flush(self):
    t = time.time_ns()
    n = len(self.hub.dirty)
    _flush(self)
    flushes.extend((t, time.time_ns() - t, n))
def sweep(self, now):
    t = time.time_ns()
    _sweep(self, now)
    sweeps.extend((t, time.time_ns() - t))
Gateway._flush, Gateway.sweep = flush, sweep
def census():
    # what the collector walks at the end of the run: tracked objects by type, per generation
    from collections import Counter
    out = {str(g): Counter(type(o).__name__ for o in gc.get_objects(g)).most_common(8)
           for g in range(3)}
    out["sizes"] = [len(gc.get_objects(g)) for g in range(3)]
    return out
_publish_loop = http._bench_loop
async def bench_loop(gateway, names, count, rate):
    # the endpoint's own publisher, reporting each run of events published without sleeping
    import inspect
    if "on_run" in inspect.signature(_publish_loop).parameters:
        await _publish_loop(gateway, names, count, rate, on_run=lambda *run: runs.extend(run))
    else:  # an older checkout's: no runs recorded
        await _publish_loop(gateway, names, count, rate)
    await asyncio.sleep(0.5)
    t = time.perf_counter()
    gc.collect()
    full_ms = 1000 * (time.perf_counter() - t)
    with open(out + ".tmp", "w") as f:
        json.dump({"gc": gcs.tolist(), "flush": flushes.tolist(), "sweep": sweeps.tolist(),
                   "runs": runs.tolist(), "gc_stats": gc.get_stats(),
                   "gc_threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                   "census": census(), "full_gc_end_ms": full_ms}, f)
    os.replace(out + ".tmp", out)
http._bench_loop = bench_loop
from agentcast.cli import main
sys.argv = ["agentcast", *sys.argv[1:]]
main()
"""

# Experiments: each patches the traced server process only.
WHAT_IF = {
    # no cyclic GC at all: the upper bound of keeping the retained history out of it
    "gc-off": "gc.disable()",
    # the automatic collector never reaches generation 2 (gen 0/1 as usual)
    "gc2-off": "gc.set_threshold(700, 10, 1 << 30)",
    # no keepalive sweep (pings, reaping, history trim)
    "sweep-off": "import agentcast.gateway as g; g.Gateway.sweep = lambda self, now: None",
    # a tight producer yields after this many events (publish_batch, default 2048)
    "batch-256": "os.environ['AGENTCAST_PUBLISH_BATCH'] = '256'",
    "batch-64": "os.environ['AGENTCAST_PUBLISH_BATCH'] = '64'",
    # no history retained (max 1 event per topic): nothing accumulates for the collector
    "history-1": "os.environ['AGENTCAST_HISTORY_MAX_EVENTS'] = '1'",
    # gc.freeze() once per sweep tick (the retained history moves to the permanent
    # generation: the collector stops walking it)
    # the outbox keeps its list: drain hands out a copy (no new long-lived list per drain)
    "outbox-keep": """
from agentcast.core.outbox import Outbox
def _drain(self):
    frames = self.frames.copy()
    self.frames.clear()
    self.nbytes = 0
    return frames
Outbox.drain = _drain
""",
    # per loop iteration, each outbox a publication dirties is written at once, up to
    # WRITE_NOW (64) per iteration (in the publish call); the rest coalesce at its end
    "write-now": "os.environ.setdefault('WRITE_GROUP', '1')\n"
    "os.environ.setdefault('WRITE_BUDGET', os.environ.get('WRITE_NOW', '64'))\n"
    "exec(WHAT_IF['write-group'])",
    # a tight producer first yields after 16 events, then after twice as many each time it
    # is still publishing (up to publish_batch); a flush that finds it was not cut resets
    "yield-ramp": """
import asyncio as _aio, time as _time
import agentcast.gateway as g
_FIRST = int(os.environ.get("YIELD_FIRST", "16"))
async def _publish(self, topic, type, data):
    payload = self.check_event(topic, type, data)
    publish_now = self._publish_now
    if publish_now is not None:
        pub = publish_now(topic, type, payload, _time.time())
    else:
        pub = await self.broker.publish(topic, type, payload, _time.time())
    self._events_since_yield += 1
    pushes = self.hub.pushes
    limit = self.__dict__.get("_limit", _FIRST)
    if (
        pushes - self._pushes_at_yield >= g._YIELD_EVERY_PUSHES
        or self._events_since_yield >= limit
    ):
        self._pushes_at_yield = pushes
        self._events_since_yield = 0
        self._limit = min(2 * limit, self._yield_every_events)
        self._cut = True
        await _aio.sleep(0)
    return pub
_flush0 = g.Gateway._flush
def _flush_ramp(self):
    if not self.__dict__.get("_cut"):
        self._limit = _FIRST
        self._events_since_yield = 0
    self._cut = False
    _flush0(self)
g.Gateway.publish, g.Gateway._flush = _publish, _flush_ramp
""",
    # per loop iteration, outboxes are written as soon as WRITE_GROUP (16) are dirty (one
    # group of writes back to back), up to a budget of WRITE_BUDGET (64) per iteration; the
    # rest at its end (the gateway's own group writes, with other constants)
    "write-group": """
import agentcast.gateway as g
if not hasattr(g, "_WRITE_GROUP"):
    raise SystemExit("write-group/write-now: this checkout has no group writes")
g._WRITE_GROUP = int(os.environ.get("WRITE_GROUP", "16"))
g._WRITE_BUDGET = g.Gateway._write_now_left = int(os.environ.get("WRITE_BUDGET", "64"))
""",
    "budget-128": "os.environ['WRITE_BUDGET'] = '128'",
    "group-8": "os.environ['WRITE_GROUP'] = '8'",
    "wn-16": "os.environ['WRITE_NOW'] = '16'",
    "wn-256": "os.environ['WRITE_NOW'] = '256'",
    "freeze-tick": """
import agentcast.gateway as g
_s = g.Gateway.sweep
def _sweep_freeze(self, now):
    _s(self, now)
    gc.freeze()
g.Gateway.sweep = _sweep_freeze
os.environ['AGENTCAST_PING_INTERVAL'] = '1'
""",
}


def start_agentcast(port: int, cwd: Path, trace: Path, what_if: str, cpu: str) -> Any:
    args = f"serve --host 127.0.0.1 --port {port} --bench-endpoint --log-level warning".split()
    code = f"WHAT_IF = {WHAT_IF!r}\n{TRACER}"
    env = {**os.environ, "WHAT_IF": what_if, "TAIL_TRACE": str(trace)}
    return subprocess.Popen(
        ["taskset", "-c", cpu, PY, "-c", code, *args],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_raw(port: int, cpu: str) -> Any:
    return subprocess.Popen(
        ["taskset", "-c", cpu, PY, "raw_server.py", "--port", str(port)],
        cwd=HERE / "peers",
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def one_run(
    variant: str | None,
    rate: float,
    seconds: float,
    conns: int,
    wsload: Path,
    cores: tuple[str, str],
    tmp: Path,
) -> dict[str, Any]:
    """variant None: the floor (raw); else agentcast with these what-ifs ('' = as is)."""
    port, count = free_port(), round(rate * seconds)
    trace, dump = tmp / "trace.json", tmp / "lat.bin"
    for f in (trace, dump):
        f.unlink(missing_ok=True)
    cwd = RESULTS / "agentcast-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    if variant is None:
        server = start_raw(port, cores[0])
        sub, path = '{"action":"subscribe","topic":"{topic}"}', "/publish"
    else:
        server = start_agentcast(port, cwd, trace, variant, cores[0])
        sub, path = '{"type":"subscribe","topic":"{topic}"}', "/_bench/publish"
    try:
        if not wait_port(port, server):
            return {"failed": "server did not start"}
        time.sleep(0.5)
        trigger = f"GET http://127.0.0.1:{port}{path}?topics={conns}&count={count}&rate={rate:g}"
        cmd = [
            "taskset",
            "-c",
            cores[1],
            str(wsload),
            "--port",
            str(port),
            "-n",
            str(conns),
            "--topics",
            str(conns),
            "--sub",
            sub,
            "--ready",
            "subscribed",
            "--trigger",
            trigger,
            "--expect",
            str(count),
            "--timeout",
            str(int(seconds) + 60),
            "--idle-timeout",
            "10",
            "--pid",
            str(server.pid),
            "--dump",
            str(dump),
        ]
        stat0, srv0, t0 = cpu_times(cores), tree_cpu(server.pid), time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90)
        wall, srv1, stat1 = time.monotonic() - t0, tree_cpu(server.pid), cpu_times(cores)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(stat1[c][0] - stat0[c][0] for c in cores) / tick
        result["other_load"] = max(
            0.0, busy - (srv1 - srv0) - result.get("client_cpu_s", 0.0)
        ) / max(wall, 1e-9)
        if variant is not None:
            deadline = time.monotonic() + 5
            while not trace.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            tr = json.loads(trace.read_text()) if trace.exists() else {}
        else:
            tr = {}
        result.update(analyse(dump, tr))
        if KEEP:
            label = (variant or "as-is") if variant is not None else "raw"
            dump.replace(KEEP[0] / f"{label}.{rate:g}.lat")
            if trace.exists():
                trace.replace(KEEP[0] / f"{label}.{rate:g}.trace.json")
        return result
    finally:
        stop_group(server)


def analyse(dump: Path, tr: dict[str, Any]) -> dict[str, Any]:
    """Join the deliveries with the server's trace: causes of the slow ones."""
    ts, lat = load_dump(dump)
    order = sorted(range(len(ts)), key=ts.__getitem__)
    out: dict[str, Any] = {}
    if not tr:
        return out
    gc = tr["gc"]
    gcs = [(gc[i], gc[i + 1], gc[i + 2]) for i in range(0, len(gc), 3)]
    fl = tr["flush"]
    flushes = [(fl[i], fl[i] + fl[i + 1], fl[i + 2]) for i in range(0, len(fl), 3)]
    sw = tr["sweep"]
    sweeps = [(sw[i], sw[i] + sw[i + 1]) for i in range(0, len(sw), 2)]
    rn = tr["runs"]
    runs = [(rn[i], rn[i + 1], rn[i + 2], rn[i + 3]) for i in range(0, len(rn), 4)]
    t_lo = min(ts) if ts else 0
    t_hi = max(t + lat[i] for i, t in enumerate(ts)) if ts else 0

    def within(xs: list[Any]) -> list[Any]:
        return [x for x in xs if x[1] >= t_lo and x[0] <= t_hi]

    gcs, flushes, sweeps = within(gcs), within(flushes), within(sweeps)
    g2 = [g for g in gcs if g[2] == 2]
    g01 = [g for g in gcs if g[2] < 2 and g[1] - g[0] >= 300_000]
    long_flush = [f for f in flushes if f[1] - f[0] >= 1_000_000]
    out["gc_count"] = Counter(str(g[2]) for g in gcs)
    out["gc_ms"] = {
        str(gen): round(sum(g[1] - g[0] for g in gcs if g[2] == gen) / 1e6, 1) for gen in (0, 1, 2)
    }
    out["gc2_at"] = [[round((g[0] - t_lo) / 1e6, 1), round((g[1] - g[0]) / 1e6, 2)] for g in g2]
    out["gc2_max_ms"] = round(max((g[1] - g[0] for g in g2), default=0) / 1e6, 2)
    out["gc01_max_ms"] = round(max((g[1] - g[0] for g in gcs if g[2] < 2), default=0) / 1e6, 2)
    out["sweeps"] = len(sweeps)
    out["sweep_max_ms"] = round(max((s[1] - s[0] for s in sweeps), default=0) / 1e6, 2)
    out["flush_max_ms"] = round(max((f[1] - f[0] for f in flushes), default=0) / 1e6, 2)
    out["flushes"] = len(flushes)
    sizes = sorted(r[2] for r in runs)
    out["run_events_p50"] = sizes[len(sizes) // 2] if sizes else 0
    out["run_events_max"] = sizes[-1] if sizes else 0
    out["lag_max_ms"] = round(max((r[0] - r[3] for r in runs), default=0) / 1e6, 2)

    def overlaps(xs: list[Any], lo: int, hi: int) -> Any:
        for x in xs:
            if x[0] <= hi and x[1] >= lo:
                return x
        return None

    def stall_cause(lo: int, hi: int) -> str:
        if overlaps(g2, lo, hi):
            return "gc2"
        if overlaps(g01, lo, hi):
            return "gc01"
        if overlaps(sweeps, lo, hi):
            return "sweep"
        if overlaps(long_flush, lo, hi):
            return "flush"
        return "other"

    runs.sort()
    starts = [r[0] for r in runs]
    import bisect

    causes: dict[str, Counter[str]] = {"1": Counter(), "5": Counter()}
    worst: list[tuple[int, str]] = []
    p99 = sorted(lat)[int(0.99 * len(lat))] if lat else 0
    slow_p99: Counter[str] = Counter()
    for i in order:
        d = lat[i]
        if d < 1_000_000 and d < p99:
            continue
        lo, hi = ts[i], ts[i] + d
        if overlaps(g2, lo, hi):
            c = "gc2"
        elif overlaps(g01, lo, hi):
            c = "gc01"
        elif overlaps(sweeps, lo, hi):
            c = "sweep"
        else:
            j = bisect.bisect_right(starts, lo) - 1
            r = runs[j] if j >= 0 and runs[j][0] <= lo <= runs[j][1] else None
            if r is not None and r[2] >= BURST[0]:
                c = "burst after " + stall_cause(r[3], r[1])
            elif overlaps(long_flush, lo, hi):
                c = "flush"
            else:
                c = "other"
        if d >= 1_000_000:
            causes["1"][c] += 1
        if d >= 5_000_000:
            causes["5"][c] += 1
        if d >= p99:
            slow_p99[c] += 1
        worst.append((d, c))
    worst.sort(reverse=True)
    out["slow_1ms"] = dict(causes["1"])
    out["slow_5ms"] = dict(causes["5"])
    out["slow_p99"] = dict(slow_p99)
    out["worst"] = [(round(d / 1e6, 2), c) for d, c in worst[:5]]
    out["gc_threshold"] = tr.get("gc_threshold")
    out["census"] = tr.get("census")
    out["full_gc_end_ms"] = tr.get("full_gc_end_ms")
    out["frozen"] = tr.get("frozen")
    return out


BURST = [200]
KEEP: list[Path] = []


def med(rows: list[dict[str, Any]], key: str) -> str:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    if not vals:
        return "–"
    m, lo, hi = statistics.median(vals), min(vals), max(vals)
    f = (lambda x: f"{x:.2f}") if m < 100 else (lambda x: f"{x:,.0f}")
    return f(m) if lo == hi else f"{f(m)} ({f(lo)}–{f(hi)})"


def causes_cell(rows: list[dict[str, Any]], key: str) -> str:
    total: Counter[str] = Counter()
    for r in rows:
        total.update(r.get(key, {}))
    n = sum(total.values())
    if not n:
        return "none"
    return ", ".join(f"{c} {100 * k / n:.0f} %" for c, k in total.most_common())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rates", default="20000,30000", help="events/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=1000, help="topics = subscribers")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--what-if",
        default="",
        help=f"variants besides 'as is', comma-separated, among {', '.join(WHAT_IF)} (a+b: both)",
    )
    ap.add_argument("--no-floor", action="store_true", help="do not run raw_server.py")
    ap.add_argument("--burst", type=int, default=200, help="a catch-up run: this many events")
    ap.add_argument("--patience", type=float, default=30.0, help="wait for quiet cores, s")
    ap.add_argument(
        "--keep", type=Path, help="keep each variant's last latency dump and trace in this folder"
    )
    args = ap.parse_args()
    BURST[0] = args.burst
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        KEEP.append(args.keep)
    variants: list[str | None] = ["", *filter(None, args.what_if.split(","))]
    for v in variants:
        for name in filter(None, (v or "").split("+")):
            if name not in WHAT_IF:
                sys.exit(f"unknown what-if {name!r}; among {', '.join(WHAT_IF)}")
    if not args.no_floor:
        variants.append(None)
    rates = [float(r) for r in args.rates.split(",") if r]
    cores = cpus(argparse.Namespace(server_cpu=None, client_cpu=None))
    raise_fd_limit(args.conns + 1000)
    wsload = build_wsload()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    jpath = RESULTS / f"tail-{stamp}.jsonl"
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as t, jpath.open("w") as jf:
        for rep in range(args.reps):
            for rate in rates:
                for v in variants:
                    if args.patience > 0:
                        wait_quiet(cores, 0.15, args.patience)
                    r = one_run(v, rate, args.seconds, args.conns, wsload, cores, Path(t))
                    r.update(
                        {"variant": "raw (floor)" if v is None else v or "as is", "rate": rate}
                    )
                    r["rep"] = rep
                    rows.append(r)
                    jf.write(json.dumps(r) + "\n")
                    jf.flush()
                    print(
                        f"[{time.monotonic() - t0:5.0f}s] rep {rep} {rate:g}/s {r['variant']:14} "
                        f"p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} max {r.get('max_ms')} ms, "
                        f"{r.get('deliveries')}/{r.get('expected')}, other load "
                        f"{100 * r.get('other_load', 0):.0f} %; gc2 {r.get('gc_count', {}).get('2', 0)}× "
                        f"max {r.get('gc2_max_ms', '–')} ms; worst {r.get('worst', '')}",
                        file=sys.stderr,
                        flush=True,
                    )
    lines = [
        f"## W5 tail: {args.conns:,} topics × 1 subscriber, {args.seconds:g} s per run, "
        f"{args.reps} rep(s) ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python benchmarks/tail.py {' '.join(sys.argv[1:])}`. Medians (min–max). "
        f"Slow deliveries: ≥ 1 ms, ≥ 5 ms and the slowest 1 % (≥ p99), each given one cause "
        f"(a catch-up run: ≥ {args.burst} events published back to back).",
        "",
    ]
    for rate in rates:
        lines += [
            f"### {rate:,.0f} events/s",
            "",
            "| variant | p50 ms | p99 ms | max ms | gen2 GCs | longest gen2 ms | gen0/1 ms total | "
            "largest run of events | loop lag max ms | other load | causes of the slowest 1 % | "
            "causes ≥ 5 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == v and r["rate"] == rate and "p99_ms" in r]
            for r in rs:
                r["gc2"] = r.get("gc_count", {}).get("2", 0)
                r["gc01_total"] = sum(r.get("gc_ms", {}).get(g, 0) for g in ("0", "1"))
                r["other_pct"] = 100 * r.get("other_load", 0)
            traced = v != "raw (floor)"
            lines.append(
                f"| {v} | {med(rs, 'p50_ms')} | {med(rs, 'p99_ms')} | {med(rs, 'max_ms')} | "
                + (
                    f"{med(rs, 'gc2')} | {med(rs, 'gc2_max_ms')} | {med(rs, 'gc01_total')} | "
                    f"{med(rs, 'run_events_max')} | {med(rs, 'lag_max_ms')} | "
                    if traced
                    else "– | – | – | – | – | "
                )
                + f"{med(rs, 'other_pct')} % | "
                + (
                    f"{causes_cell(rs, 'slow_p99')} | {causes_cell(rs, 'slow_5ms')} |"
                    if traced
                    else "– | – |"
                )
            )
        lines.append("")
    text = "\n".join(lines)
    jpath.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"results: {jpath}", file=sys.stderr)


if __name__ == "__main__":
    main()
