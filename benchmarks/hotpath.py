"""Where agentcast's server time goes in W1 (fan-out) and W3 (unicast), in µs per event
and per delivery.

    .venv/bin/python benchmarks/hotpath.py [--workloads W1,W3]

Needs py-spy (``pip install py-spy``); uses ``perf`` when present. For each workload it
starts a fresh ``agentcast serve --bench-endpoint`` pinned to the server core and runs:

1. a clean run at full size, with the server wrapped to time its garbage collections and,
   if perf is there, ``perf stat`` counting its write syscalls: server CPU per event and
   per delivery, frames per ``write()``, GC time;
2. a run under ``py-spy record --nonblocking`` (W1 with 10× the events, so that the burst
   lasts long enough to sample): the share of samples per hot-path component;
3. a run under ``perf record``: the share of server CPU in the kernel (the write
   syscalls and loopback TCP), in libpython, in uvloop and in libc.

Component cost = its share of samples × the clean run's server CPU ÷ events (or
deliveries). Results go to ``benchmarks/results/hotpath-<stamp>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import BIN, FULL, PY, RESULTS, Workload, build_wsload, free_port, raise_fd_limit, wait_port  # noqa: E402

# The server, with its garbage collections timed (written to $GC_STATS every 0.2 s).
GC_WRAPPER = """
import gc, json, os, sys, threading, time
path, t0 = os.environ["GC_STATS"], [0.0]
stats = {"0": [0, 0.0], "1": [0, 0.0], "2": [0, 0.0], "pauses": []}
def cb(phase, info):
    if phase == "start":
        t0[0] = time.perf_counter()
        return
    d, g = time.perf_counter() - t0[0], str(info["generation"])
    stats[g][0] += 1
    stats[g][1] += d
    if d > 0.001:
        stats["pauses"].append([time.time(), int(g), d])
def dump():
    while True:
        time.sleep(0.2)
        with open(path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(path + ".tmp", path)
gc.callbacks.append(cb)
threading.Thread(target=dump, daemon=True).start()
for name in filter(None, os.environ.get("WHAT_IF", "").split("+")):
    exec(WHAT_IF[name])
from agentcast.cli import main
sys.argv = ["agentcast", *sys.argv[1:]]
main()
"""

# Experiments: server-side changes tried by patching the server process (src/ untouched),
# to put a measured number on each suggestion in docs/performance.md.
WHAT_IF = {
    # upper bound of making retained history invisible to the cyclic GC
    "gc-off": "gc.disable()",
    # the publish_batch setting (events a tight producer publishes between two yields)
    "batch-512": "os.environ['AGENTCAST_PUBLISH_BATCH'] = '512'",
    "batch-4096": "os.environ['AGENTCAST_PUBLISH_BATCH'] = '4096'",
    # a tight producer yields every 65,536 frame pushes instead of 16,384: more frames per write
    "yield-64k": "import agentcast.gateway as g; g._YIELD_EVERY_PUSHES = 65536",
    # the fan-out loop appends to each outbox's list itself instead of calling Outbox.push
    "inline-push": """
from agentcast.core.hub import Hub
_dispatch = Hub.dispatch
def dispatch(self, pub):
    state = self.topics.get(pub.topic)
    if (
        state is None or state.recovering or state.waiting or state.filling is not None
        or pub.seq != state.last_seq + 1 or pub.epoch != state.epoch
    ):
        return _dispatch(self, pub)
    self.published += 1
    state.last_seq = pub.seq
    live = state.live
    if live:
        self.pushes += len(live)
        frame = pub.frame
        n, dirty = len(frame), self.dirty
        for session in live:
            ob = session.outbox
            if ob.overflowed:
                continue
            frames = ob.frames
            frames.append(frame)
            ob.nbytes += n
            if len(frames) == 1:
                dirty.append(session)
            elif ob.nbytes > ob.max_bytes or len(frames) > ob.max_frames:
                ob.overflowed = True
                self.overflowed.append(session)
    return 0
Hub.dispatch = dispatch
""",
    # a burst's frames are gathered per topic and joined once per flush; every live
    # subscriber with an empty outbox gets the same bytes (O(subscribers) per flush instead
    # of O(subscribers × events)); the others get the frames through their outbox as today
    "topic-batch": """
from agentcast.core.hub import Hub
from agentcast.gateway import Gateway
_dispatch, _flush, _after = Hub.dispatch, Gateway._flush, Gateway._after_dispatch
pending, batched = {}, []
def dispatch(self, pub):
    state = self.topics.get(pub.topic)
    if (
        state is None or state.recovering or state.waiting or state.filling is not None
        or pub.seq != state.last_seq + 1 or pub.epoch != state.epoch or len(state.live) < 8
    ):
        return _dispatch(self, pub)
    self.published += 1
    state.last_seq = pub.seq
    self.pushes += len(state.live)
    frames = pending.get(state.name)
    if frames is None:
        frames = pending[state.name] = []
        batched.append(state)
    frames.append(pub.frame)
    return 0
def after_dispatch(self):
    _after(self)
    if batched and self._flush_handle is None:
        self._flush_handle = self.loop.call_soon(self._flush)
def flush(self):
    states = batched[:]
    batched.clear()
    for state in states:
        frames = pending.pop(state.name)
        data = [b"".join(frames)]
        dirty = self.hub.dirty
        for session in state.live:
            if session.closed:
                continue
            if session.paused or session.outbox.frames:
                for frame in frames:
                    if session.outbox.push(frame) == 1:
                        dirty.append(session)
            else:
                session.writer.write_frames(data)
    _flush(self)
Hub.dispatch, Gateway._after_dispatch, Gateway._flush = dispatch, after_dispatch, flush
""",
}

# py-spy function name -> component; a sample goes to the innermost frame that is listed.
COMPONENTS = {
    "NativeWebSocketProtocol.write_frames": "write: b''.join + transport.write (uvloop, kernel)",
    "Gateway._flush": "flush loop: take dirty outboxes, drain, paused/closed checks",
    "Outbox.drain": "flush loop: take dirty outboxes, drain, paused/closed checks",
    "Hub.take_dirty": "flush loop: take dirty outboxes, drain, paused/closed checks",
    "Publication.frame": "envelope: splice + WebSocket framing (once per event)",
    "Publication.payload": "envelope: splice + WebSocket framing (once per event)",
    "frame_text": "envelope: splice + WebSocket framing (once per event)",
    "Outbox.push": "fan-out: Hub.dispatch loop + Outbox.push",
    "Hub.dispatch": "fan-out: Hub.dispatch loop + Outbox.push",
    "Gateway._on_publication": "fan-out: Hub.dispatch loop + Outbox.push",
    "Gateway._after_dispatch": "fan-out: Hub.dispatch loop + Outbox.push",
    "Gateway.check_event": "publish: validate topic/type/data + orjson encode",
    "validate_event": "publish: validate topic/type/data + orjson encode",
    "valid_topic": "publish: validate topic/type/data + orjson encode",
    "encode_json": "publish: validate topic/type/data + orjson encode",
    "MemoryBroker._publish_sync": "broker: seq, Publication, timestamp, history append",
    "MemoryBackend.publish": "broker: seq, Publication, timestamp, history append",
    "format_timestamp": "broker: seq, Publication, timestamp, history append",
    "History.append": "broker: seq, Publication, timestamp, history append",
    "Publication.__init__": "broker: seq, Publication, timestamp, history append",
    "Gateway.publish": "Gateway.publish: yield bookkeeping, await",
    "_bench_loop": "benchmark producer: event dict, time_ns, f-strings",
}
OTHER = "event loop, HTTP, handles, other"
AUTO_WHAT_IF = {
    "W1": "inline-push,topic-batch,yield-64k,topic-batch+yield-64k",
    "W3": "gc-off,batch-512,batch-4096",
}


def start_server(
    port: int, cwd: Path, gc_stats: Path | None = None, what_if: str = ""
) -> subprocess.Popen[bytes]:
    args = [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--bench-endpoint",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "WHAT_IF": what_if}
    if gc_stats is not None:
        cmd = [PY, "-c", f"WHAT_IF = {WHAT_IF!r}\n{GC_WRAPPER}", *args]
        env["GC_STATS"] = str(gc_stats)
    else:
        cmd = [str(BIN / "agentcast"), *args]
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_port(port, proc):
        sys.exit("agentcast did not start")
    time.sleep(0.5)
    return proc


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wsload_args(wsload: Path, port: int, pid: int, wl: Workload, count: int) -> list[str]:
    expect = count * wl.conns // wl.topics
    trigger = f"GET http://127.0.0.1:{port}/_bench/publish?topics={wl.topics}&count={count}&rate=0"
    args = (
        f"taskset -c 1 {wsload} --port {port} -n {wl.conns} --topics {wl.topics} --concurrency 200"
    )
    args += f" --timeout 300 --pid {pid} --ready subscribed --hold 1 --expect {expect}"
    return [*args.split(), "--sub", '{"type":"subscribe","topic":"{topic}"}', "--trigger", trigger]


def run_wsload(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(args, capture_output=True, text=True, timeout=400)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def clean_run(
    wl: Workload, wsload: Path, cwd: Path, tmp: Path, what_if: str = ""
) -> dict[str, Any]:
    port, gc_stats = free_port(), tmp / f"gc-{wl.id}.json"
    proc = start_server(port, cwd, gc_stats, what_if)
    perf = None
    if shutil.which("perf"):
        events = "task-clock,syscalls:sys_enter_write,syscalls:sys_enter_writev"
        stat = f"taskset -c 1 perf stat -x , -e {events} -p {proc.pid} -o {tmp}/stat-{wl.id}.txt"
        perf = subprocess.Popen(stat.split(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    try:
        before, t_start = json.loads(gc_stats.read_text()), time.time()
        result = run_wsload(wsload_args(wsload, port, proc.pid, wl, wl.count))
        time.sleep(0.3)
        after = json.loads(gc_stats.read_text())
    finally:
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(10)
        stop(proc)
    result["gc"] = {g: [after[g][i] - before[g][i] for i in (0, 1)] for g in ("0", "1", "2")}
    result["gc_max_pause"] = max((d for t, _, d in after["pauses"] if t >= t_start), default=0.0)
    if perf is not None:
        for line in (tmp / f"stat-{wl.id}.txt").read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                result[parts[2]] = float(parts[0])
    return result


def pyspy_run(
    wl: Workload, wsload: Path, cwd: Path, tmp: Path, scale: int
) -> tuple[Counter[str], Counter[str]]:
    pyspy = shutil.which("py-spy") or str(BIN / "py-spy")
    port = free_port()
    proc = start_server(port, cwd)
    out = tmp / f"pyspy-{wl.id}.txt"
    record = f"taskset -c 1 {pyspy} record --pid {proc.pid} --rate 1000 --nonblocking --format raw"
    spy = subprocess.Popen(
        [*record.split(), "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        run_wsload(wsload_args(wsload, port, proc.pid, wl, wl.count * scale))
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        stop(proc)
    shares: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        names = [re.sub(r" \(.*\)$", "", f) for f in stack.split(";")]
        if not any(name in ("_bench_loop", "Gateway._flush") for name in names):
            continue  # connection set-up, trigger request, idle loop: not the hot path
        comp = next((COMPONENTS[name] for name in reversed(names) if name in COMPONENTS), OTHER)
        shares[comp] += int(n)
        leaves[re.sub(r":\d+\)$", ")", stack.split(";")[-1])] += int(n)
    return shares, leaves


def perf_run(wl: Workload, wsload: Path, cwd: Path, tmp: Path, scale: int) -> dict[str, float]:
    port = free_port()
    proc = start_server(port, cwd)
    data = tmp / f"perf-{wl.id}.data"
    load = subprocess.Popen(
        wsload_args(wsload, port, proc.pid, wl, wl.count * scale), stdout=subprocess.DEVNULL
    )
    time.sleep(1.6)  # connected and subscribed, burst started
    record = f"taskset -c 1 perf record -F 1999 -p {proc.pid} -o {data} -- sleep 3"
    subprocess.run(record.split(), capture_output=True)
    load.wait(400)
    stop(proc)
    rep = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"],
        capture_output=True,
        text=True,
    ).stdout
    dsos = {}
    for line in rep.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if m:
            dsos[m.group(2)] = float(m.group(1)) / 100
    return dsos


def report(
    wl: Workload,
    clean: dict[str, Any],
    shares: Counter[str],
    leaves: Counter[str],
    dsos: dict[str, float],
) -> str:
    events, deliveries = wl.count, clean["deliveries"]
    cpu = clean["server_cpu_s"]
    per_ev, per_del = 1e6 * cpu / events, 1e6 * cpu / deliveries
    lines = [
        f"### {wl.id} {wl.title}: {wl.conns:,} subscribers, {wl.topics:,} topic(s), {events:,} events "
        f"→ {deliveries:,} deliveries",
        "",
        f"Clean run: {clean['deliveries_per_s'] / 1000:,.0f}k deliveries/s, server CPU {cpu:.2f} s over "
        f"{clean['seconds']:.2f} s: **{per_ev:.2f} µs per event, {per_del:.3f} µs per delivery**.",
    ]
    writes = clean.get("syscalls:sys_enter_write", 0) + clean.get("syscalls:sys_enter_writev", 0)
    if writes:
        lines.append(
            f"write() syscalls: {writes:,.0f} ({deliveries / writes:.1f} frames per write, "
            f"{1e6 * cpu / writes:.2f} µs of server CPU per write)."
        )
    g = clean.get("gc", {})
    if g:
        total = sum(v[1] for v in g.values())
        lines.append(
            f"Garbage collection: {total:.2f} s ({100 * total / cpu:.0f} % of server CPU, "
            f"{1e6 * total / events:.2f} µs per event); gen2 {g['2'][0]:.0f}× taking {g['2'][1]:.2f} s, "
            f"longest pause {1000 * clean['gc_max_pause']:.0f} ms (gen0/1: {g['0'][0] + g['1'][0]:.0f}×, "
            f"{g['0'][1] + g['1'][1]:.2f} s)."
        )
    if dsos:
        lines.append(
            "perf, share of server CPU: "
            + ", ".join(
                f"{name.split('.cpython')[0].replace('[kernel.kallsyms]', 'kernel')} {100 * share:.0f} %"
                for name, share in sorted(dsos.items(), key=lambda kv: -kv[1])
                if share >= 0.01
            )
            + "."
        )
    total = sum(shares.values()) or 1
    lines += [
        "",
        f"py-spy, {total:,} samples on the publish/flush path:",
        "",
        "| component | share | µs per event | µs per delivery |",
        "|---|---|---|---|",
    ]
    for comp, n in shares.most_common():
        share = n / total
        lines.append(
            f"| {comp} | {100 * share:.1f} % | {share * per_ev:.2f} | {share * per_del:.3f} |"
        )
    lines += [
        "",
        "Top functions by own time (C calls included in their Python caller):",
        "",
        "| function | share | µs per event | µs per delivery |",
        "|---|---|---|---|",
    ]
    for leaf, n in leaves.most_common(12):
        share = n / total
        lines.append(
            f"| `{leaf}` | {100 * share:.1f} % | {share * per_ev:.2f} | {share * per_del:.3f} |"
        )
    return "\n".join([*lines, ""])


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median server CPU."""
    return sorted(runs, key=lambda r: r["server_cpu_s"])[len(runs) // 2]


def what_if_table(wl: Workload, runs: dict[str, list[dict[str, Any]]]) -> str:
    if len(runs) < 2:
        return ""
    base = median_run(runs[""])
    lines = [
        "",
        f"What if (server patched in the benchmark process only; median of {len(runs[''])} runs):",
        "",
        "| variant | deliveries/s | server µs/delivery | server CPU (as is = 1) | client CPU | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, rs in runs.items():
        r = median_run(rs)
        us = 1e6 * r["server_cpu_s"] / r["deliveries"]
        rel = r["server_cpu_s"] / base["server_cpu_s"]
        lines.append(
            f"| {v or 'as is'} | {r['deliveries_per_s'] / 1000:,.0f}k | {us:.3f} | "
            f"{rel:.2f} | {100 * r['client_run_cpu_s'] / r['seconds']:.0f} % | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workloads", default="W1,W3")
    ap.add_argument(
        "--what-if",
        default="auto",
        help=f"experiments among {', '.join(WHAT_IF)} (a+b: both); auto: "
        + "; ".join(f"{k}: {v}" for k, v in AUTO_WHAT_IF.items()),
    )
    ap.add_argument("--reps", type=int, default=3, help="clean runs per variant (median)")
    args = ap.parse_args()
    if not (shutil.which("py-spy") or (BIN / "py-spy").exists()):
        sys.exit(f"py-spy is needed: {PY} -m pip install py-spy")
    raise_fd_limit(5000)
    wsload = build_wsload()
    cwd = RESULTS / "agentcast-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    parts = [f"## agentcast hot path ({time.strftime('%Y-%m-%d %H:%M')})", ""]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name in args.workloads.split(","):
            wl = FULL[name]
            scale = 10 if name == "W1" else 1
            what_if = AUTO_WHAT_IF.get(name, "") if args.what_if == "auto" else args.what_if
            variants = ["", *filter(None, what_if.split(","))]
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for _ in range(args.reps):  # interleaved
                for v in variants:
                    runs[v].append(clean_run(wl, wsload, cwd, tmp, v))
            clean = median_run(runs[""])
            shares, leaves = pyspy_run(wl, wsload, cwd, tmp, scale)
            dsos = perf_run(wl, wsload, cwd, tmp, scale) if shutil.which("perf") else {}
            parts.append(report(wl, clean, shares, leaves, dsos) + what_if_table(wl, runs))
            print(parts[-1], flush=True)
    out = RESULTS / f"hotpath-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.write_text("\n".join(parts))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
