"""Live runs (issue 4): one engine emitting 10,000 node events/s to 100 dashboards.

    .venv/bin/python benchmarks/runs.py                 # 3 reps of every config + per-event costs (~6 min)
    .venv/bin/python benchmarks/runs.py --quick         # 1 rep, 3 s runs, fewer cost events (~1 min)
    .venv/bin/python benchmarks/runs.py --configs agentcast,seed000-fastapi --reps 5
    .venv/bin/python benchmarks/runs.py --report benchmarks/results/runs-<stamp>.jsonl

One workflow run, driven by agentcast's real ``WorkflowTracker`` (``runs_common.drive``:
``node_started`` / ``node_completed`` over a graph of ``--nodes`` nodes, 3 events per node,
each stamped with ``"ts"``), paced at ``--rate`` node events/s for ``--seconds``, fanned out
to ``--conns`` dashboards subscribed to ``workflow:bench``. Offered: rate × conns
deliveries/s (1,000,000/s by default). Configurations, side by side, reps interleaved, a
fresh server per run pinned to one core and ``wsload`` (the C load client) to the other:

* ``agentcast``: ``runs_server.py`` (``agentcast serve``'s assembly + the engine), no store;
* ``agentcast-sqlite``: the same with the SQLite run store (every event recorded);
* ``seed000-fastapi``: ``runs_peer.py``, seed 000's FastAPI manager fed by the same engine
  (``await ws.send_json`` per dashboard; no validation, state, snapshot or storage);
* ``agentcast-1000n``: agentcast, no store, a graph of 1,000 nodes instead of ``--nodes``;
* ``agentcast-max``: agentcast, no store, the engine unpaced: the capacity of the path.

The machine is shared: each run waits (up to ``--patience`` s) until the two cores are
quiet, and a run during which other processes used more than ``--disturbed`` of a core is
run again, up to ``--retries`` times; the disturbed ones stay in the ``.jsonl`` and are
named in the report.

During agentcast's paced runs a late dashboard subscribes at 25, 50 and 75 % of the run
(a Python client on the load core): the time from its ``subscribe`` to the ``snapshot``
frame, the frame's size, and the time to its first live event. Then ``runs_costs.py``
measures the per-event costs in-process on the server core (tracker, publish path,
validation, fold, snapshot frame vs run size, SQLite storage). Every run is one JSON line
in ``benchmarks/results/runs-<stamp>.jsonl``, the report beside it as ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
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
    machine,
    num,
    show,
    stop_group,
    tree_cpu,
    wait_port,
)
from runs_common import TOPIC, planned  # noqa: E402

Stat = tuple[float, float, float]


@dataclass(frozen=True)
class Config:
    name: str
    desc: str
    script: str
    env: dict[str, str] = field(default_factory=dict)
    sub: str = '{"type":"subscribe","topic":"' + TOPIC + '"}'
    paced: bool = True
    store: bool = False
    joins: bool = True  # late joiners get a snapshot
    nodes: int | None = None  # graph size (default: --nodes)


CONFIGS = {
    c.name: c
    for c in (
        Config(
            "agentcast",
            "agentcast serve assembly, no store (AGENTCAST_STORE_URL=)",
            "runs_server.py",
            {"AGENTCAST_STORE_URL": ""},
        ),
        Config(
            "agentcast-sqlite",
            "the same with the SQLite run store: every event recorded",
            "runs_server.py",
            {"AGENTCAST_STORE_URL": "sqlite:///{scratch}/runs.db"},
            store=True,
        ),
        Config(
            "seed000-fastapi",
            "seed 000's FastAPI manager (`await ws.send_json` per dashboard), same engine",
            "runs_peer.py",
            sub='{"action":"subscribe","topic":"' + TOPIC + '"}',
            joins=False,
        ),
        Config(
            "agentcast-1000n",
            "agentcast, no store, a 1,000-node graph (the tracker's and the snapshot's cost "
            "grow with it)",
            "runs_server.py",
            {"AGENTCAST_STORE_URL": ""},
            nodes=1000,
        ),
        Config(
            "agentcast-max",
            "agentcast, no store, engine unpaced (as fast as it can): the path's capacity",
            "runs_server.py",
            {"AGENTCAST_STORE_URL": ""},
            paced=False,
            joins=False,
        ),
    )
}


def get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def late_joiner(
    port: int, events: int, fractions: list[float], out: list[dict[str, Any]], stop: threading.Event
) -> None:
    """Subscribe a fresh dashboard when the engine has sent each fraction of its events:
    time to the ``snapshot`` frame and to the first live event after it."""
    from websockets.sync.client import connect

    status = f"http://127.0.0.1:{port}/_runs/status"
    sub = json.dumps({"type": "subscribe", "topic": TOPIC, "id": 1})
    for f in fractions:
        while not stop.is_set():
            try:
                st = get_json(status)
            except OSError:
                st = {}
            if st.get("result") or st.get("sent", 0) >= f * events:
                break
            time.sleep(0.05)
        if stop.is_set() or st.get("result"):
            return
        try:
            with connect(
                f"ws://127.0.0.1:{port}/ws", max_size=None, compression=None, close_timeout=0.2
            ) as ws:
                t0 = time.perf_counter()
                ws.send(sub)
                got: dict[str, Any] = {"at": f}
                while True:
                    msg = ws.recv(timeout=5)
                    now = time.perf_counter()
                    if isinstance(msg, bytes):
                        continue
                    if msg.startswith('{"type":"subscribed"'):
                        got["subscribed_ms"] = round(1000 * (now - t0), 3)
                    elif msg.startswith('{"type":"snapshot"'):
                        snap = json.loads(msg)
                        got["snapshot_ms"] = round(1000 * (now - t0), 3)
                        got["snapshot_bytes"] = len(msg.encode())
                        got["snapshot_kib"] = round(len(msg.encode()) / 1024, 1)
                        got["snapshot_seq"] = snap["seq"]
                        got["snapshot_nodes"] = len(snap["data"].get("nodes", {}))
                    elif '"seq":' in msg and "snapshot_ms" in got:
                        got["first_event_ms"] = round(1000 * (now - t0), 3)
                        got["first_event_seq"] = json.loads(msg)["seq"]
                        break
                out.append(got)
        except Exception as exc:  # report, do not break the run
            out.append({"at": f, "error": repr(exc)[:200]})


def wait_quiet(cores: tuple[str, str], limit: float, patience: float) -> float:
    """Wait (up to ``patience`` s) until the two cores are busy less than ``limit`` of a
    core over one second; returns that share."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + patience
    while True:
        a = cpu_times(cores)
        time.sleep(1.0)
        b = cpu_times(cores)
        busy = sum(b[c][0] - a[c][0] for c in cores) / tick
        if busy <= limit or time.monotonic() >= deadline:
            return busy


def run_one(
    cfg: Config,
    args: argparse.Namespace,
    wsload: Path,
    rep: int,
    cores: tuple[str, str],
    logs: Path,
    attach: Callable[[int], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """One run of ``cfg``; ``attach(server_pid)``, if given, is called once the server
    listens and returns what to call when the load is over (a profiler)."""
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="agentcast-runs-"))
    env = {**os.environ, **{k: v.format(scratch=scratch) for k, v in cfg.env.items()}}
    events = planned(args.events)
    rate = args.rate if cfg.paced else 0
    nodes = cfg.nodes or args.nodes
    base: dict[str, Any] = {
        "config": cfg.name,
        "rep": rep,
        "conns": args.conns,
        "rate": args.rate if cfg.paced else 0,
        "events": events,
        "nodes": nodes,
        "schedule_s": events / args.rate if cfg.paced else 0,
    }
    log = (logs / f"{cfg.name}.{rep}.log").open("wb")
    server = subprocess.Popen(
        ["taskset", "-c", cores[0], PY, str(HERE / cfg.script), "--port", str(port)],
        cwd=scratch,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    joins: list[dict[str, Any]] = []
    stop = threading.Event()
    joiner = None
    detach = None
    try:
        if not wait_port(port, server):
            return {**base, "failed": f"server did not start (see {log.name})"}
        if attach is not None:
            detach = attach(server.pid)
        time.sleep(0.5)
        timeout = (events / args.rate if cfg.paced else 30) + args.grace
        trigger = (
            f"GET http://127.0.0.1:{port}/_runs/start?rate={rate:g}&events={args.events}"
            f"&nodes={nodes}"
        )
        cmd = [
            str(wsload),
            "--port", str(port),
            "-n", str(args.conns),
            "--sub", cfg.sub,
            "--ready", "subscribed",
            "--trigger", trigger,
            "--expect", str(events * args.conns),
            "--timeout", f"{timeout:g}",
            "--idle-timeout", "5",
            "--pid", str(server.pid),
            "--label", f"{cfg.name}.{rep}",
        ]  # fmt: skip
        if cfg.joins and args.late_joiners:
            joiner = threading.Thread(
                target=late_joiner, args=(port, events, [0.25, 0.5, 0.75], joins, stop)
            )
            joiner.start()
        stat0, srv0, t0 = cpu_times(cores), tree_cpu(server.pid), time.monotonic()
        out = subprocess.run(
            ["taskset", "-c", cores[1], *cmd], capture_output=True, text=True, timeout=timeout + 60
        )
        wall, srv1, stat1 = time.monotonic() - t0, tree_cpu(server.pid), cpu_times(cores)
        stop.set()
        if detach is not None:
            detach()
            detach = None
        if joiner is not None:
            joiner.join(10)
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {**base, "failed": f"wsload rc={out.returncode}: {out.stderr.strip()[-300:]}"}
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(stat1[c][0] - stat0[c][0] for c in cores) / tick
        client = result.get("client_cpu_s", 0.0)
        other = busy - (srv1 - srv0) - client  # includes this process (the late joiners)
        result["other_load"] = round(max(0.0, other) / wall, 3)
        try:
            st = get_json(f"http://127.0.0.1:{port}/_runs/status")
            if cfg.store:  # give the recorder its last flush
                deadline = time.monotonic() + 5
                while st.get("pending") and time.monotonic() < deadline:
                    time.sleep(0.2)
                    st = get_json(f"http://127.0.0.1:{port}/_runs/status")
            result["engine"] = st.get("result")
            result["engine_sent"] = st.get("sent")
            for key in ("flushes", "frames", "writes"):
                if key in st:
                    result[key] = st[key]
            result["recorded"] = st.get("recorded")
            result["pending"] = st.get("pending")
        except OSError as exc:  # the peer may still be busy broadcasting
            result["engine_error"] = repr(exc)[:200]
        result["joins"] = joins
        return {**base, **result}
    finally:
        stop.set()
        if detach is not None:
            detach()
        stop_group(server)
        log.close()
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()


# -- report -------------------------------------------------------------------------


def complete(r: dict[str, Any]) -> bool:
    return (
        "failed" not in r
        and not r.get("timed_out")
        and not r.get("errors")
        and r.get("deliveries") == r.get("expected")
        and r.get("min_conn_deliveries") == r.get("max_conn_deliveries")
    )


def derived(r: dict[str, Any]) -> dict[str, Any]:
    d = dict(r)
    secs, n = r.get("seconds") or 0, r.get("deliveries") or 0
    if secs > 0 and n:
        d["offered_per_s"] = r["rate"] * r["conns"] if r.get("rate") else None
        d["of_offered"] = n / secs / d["offered_per_s"] if d["offered_per_s"] else None
        d["events_per_s"] = n / r["conns"] / secs
        d["server_util"] = r.get("server_cpu_s", 0) / secs
        d["client_util"] = r.get("client_run_cpu_s", r.get("client_cpu_s", 0)) / secs
        d["server_us_per_event"] = 1e6 * r.get("server_cpu_s", 0) / (n / r["conns"])
        d["server_us_per_delivery"] = 1e6 * r.get("server_cpu_s", 0) / n
        d["delivered"] = n / r["expected"] if r.get("expected") else None
        if r.get("schedule_s") and complete(r):
            d["late_s"] = secs - r["schedule_s"]
    if r.get("writes"):
        d["frames_per_write"] = r["frames"] / r["writes"]
    engine = r.get("engine") or {}
    if engine:
        d["engine_lag_ms"] = engine.get("max_lag_ms")
    joins = [j for j in r.get("joins", []) if "snapshot_ms" in j]
    if joins:
        d["snapshot_ms"] = statistics.median(j["snapshot_ms"] for j in joins)
        d["snapshot_kib"] = statistics.median(j["snapshot_bytes"] for j in joins) / 1024
        d["first_event_ms"] = statistics.median(j.get("first_event_ms", 0) for j in joins)
    return d


def stat(rows: list[dict[str, Any]], key: str) -> Stat | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def render(rows: list[dict[str, Any]], meta: dict[str, Any], costs: dict[str, Any] | None) -> str:
    disturbed = [r for r in rows if r.get("disturbed")]
    rows = [derived(r) for r in rows if not r.get("disturbed")]
    names = [c for c in dict.fromkeys(r["config"] for r in rows)]
    m = meta

    def cell(name: str, ok_only: bool = False) -> list[dict[str, Any]]:
        got = [r for r in rows if r["config"] == name]
        return [r for r in got if complete(r)] if ok_only else got

    def med(name: str, key: str) -> float | None:
        s = stat(cell(name), key)
        return s[0] if s else None

    offered = m["rate"] * m["conns"]
    out = [
        f"# Live runs — {m.get('when', '')}",
        "",
        f"Command: `{m.get('command', '')}`  ",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('mem_mib', 0) // 1024} GiB, "
        f"Linux {m.get('kernel', '?')}, CPython {m.get('python', '?')}; servers on CPU "
        f"{m.get('server_cpu', '?')}, wsload on CPU {m.get('client_cpu', '?')}; {m.get('reps', '?')} rep(s); "
        f"agentcast {m.get('versions', {}).get('agentcast', '?')} at {m.get('agentcast_commit', '?')}",
        "",
        f"Workload: one workflow run, {m['events']:,} node events ({m['nodes']} nodes, each "
        f"`node_started` + `node_completed` → node_status running, node_status completed, "
        f"progress) at {m['rate']:,.0f}/s ({m['events'] / m['rate']:g} s) to {m['conns']} dashboards on "
        f"`{TOPIC}`: {offered:,.0f} deliveries/s offered. Cells: median of the reps (min–max).",
        "",
        "| config | complete | deliveries/s | of offered | node events/s | p50 ms | p99 ms | max ms "
        "| last delivery after schedule s | engine max lag ms | server CPU | server µs/event "
        "| frames/write | client CPU | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rs = cell(name)
        ok = len(cell(name, True))
        out.append(
            f"| {name} | {ok}/{len(rs)} | {show(stat(rs, 'deliveries_per_s'), 'k')} | "
            f"{show(stat(rs, 'of_offered'), '%')} | {show(stat(rs, 'events_per_s'), 'k')} | "
            f"{show(stat(rs, 'p50_ms'))} | {show(stat(rs, 'p99_ms'))} | {show(stat(rs, 'max_ms'))} | "
            f"{show(stat(rs, 'late_s'))} | {show(stat(rs, 'engine_lag_ms'))} | "
            f"{show(stat(rs, 'server_util'), '%')} | {show(stat(rs, 'server_us_per_event'))} | "
            f"{show(stat(rs, 'frames_per_write'))} | "
            f"{show(stat(rs, 'client_util'), '%')} | {show(stat(rs, 'other_load'), '%')} |"
        )
    out.append("")
    for name in names:
        for r in cell(name):
            if not complete(r):
                why = r.get("failed") or (
                    f"{r.get('deliveries', 0):,}/{r.get('expected', 0):,} delivered "
                    f"({100 * (r.get('delivered') or 0):.1f} %) when wsload stopped after "
                    f"{r.get('seconds', 0):.1f} s (timed_out={r.get('timed_out')}, errors={r.get('errors')})"
                )
                out.append(f"* ⚠ {name} rep {r['rep']}: {why}")
    if disturbed:
        out.append(
            "* Disturbed, left out of the tables (other processes used more than "
            f"{100 * m.get('disturbed', 0.25):.0f} % of a core; each was run again): "
            + ", ".join(
                f"{r['config']} rep {r['rep']} ({100 * r.get('other_load', 0):.0f} %)"
                for r in disturbed
            )
        )
    stores = [r for r in cell("agentcast-sqlite")]
    if stores:
        out.append(
            "* agentcast-sqlite: events in the SQLite store at the end of each run: "
            + ", ".join(f"{r.get('recorded')}/{r['events'] + 2}" for r in stores)
            + " (node events + workflow_start + workflow_complete)"
        )
    joined = [j for r in rows for j in r.get("joins", [])]
    if joined:
        ok = [j for j in joined if "snapshot_ms" in j]
        bad = [j for j in joined if "snapshot_ms" not in j]
        out += [
            "",
            f"Late joiners (a dashboard subscribing at 25/50/75 % of the run, {len(ok)} joins"
            + (f", {len(bad)} failed: {bad[0].get('error', '?')}" if bad else "")
            + "):",
            "",
            "| config | subscribe → snapshot ms | snapshot KiB | nodes in it | subscribe → first live event ms |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            js = [j for r in cell(name) for j in r.get("joins", []) if "snapshot_ms" in j]
            if js:
                out.append(
                    f"| {name} | {show(stat(js, 'snapshot_ms'))} | "
                    f"{show(stat(js, 'snapshot_kib'))} | "
                    f"{show(stat(js, 'snapshot_nodes'))} | {show(stat(js, 'first_event_ms'))} |"
                )
    # ratios, same rep
    if "agentcast" in names:
        out += ["", "Ratios (same rep pairs; median (min–max)):", ""]

        def ratio(a: str, b: str, key: str) -> str:
            pairs = []
            for ra in cell(a):
                for rb in cell(b):
                    if ra["rep"] == rb["rep"] and ra.get(key) and rb.get(key):
                        pairs.append(ra[key] / rb[key])
            if not pairs:
                return "–"
            return show((statistics.median(pairs), min(pairs), max(pairs))) + "×"

        for other in names:
            if other == "agentcast":
                continue
            both = all(complete(r) for r in cell("agentcast") + cell(other))
            out.append(
                f"* agentcast ÷ {other}: deliveries/s {ratio('agentcast', other, 'deliveries_per_s')}, "
                f"server µs per delivery {ratio('agentcast', other, 'server_us_per_delivery')}"
                + (f", p99 {ratio('agentcast', other, 'p99_ms')}" if both else "")
            )
    a = cell("agentcast")
    if a:
        done = all(complete(r) for r in a)
        late = stat(a, "late_s")
        p99 = stat(a, "p99_ms")
        rate = stat(a, "of_offered")
        on_time = done and late is not None and late[2] <= 0.1
        out += [
            "",
            f"**Target {m['rate']:,.0f} node events/s × {m['conns']} dashboards "
            f"({offered:,.0f} deliveries/s), agentcast without store: "
            + ("met" if on_time else "NOT met")
            + f"** — {sum(complete(r) for r in a)}/{len(a)} runs delivered every event to every "
            f"dashboard; {show(rate, '%')} of the offered rate; last delivery {show(late)} s after the "
            f"schedule (the criterion: ≤ 0.1 s); p99 {show(p99)} ms"
            + (
                f" ({'under' if p99[0] < 10 else 'over'} W2's 10 ms target, for reference)."
                if p99
                else "."
            ),
        ]
        s = cell("agentcast-sqlite")
        if s:
            late = stat(s, "late_s")
            ok = all(complete(r) for r in s) and late is not None and late[2] <= 0.1
            out.append(
                f"With the SQLite store: {'met' if ok else 'NOT met'} — {sum(complete(r) for r in s)}/{len(s)} "
                f"complete, last delivery {show(late)} s after the schedule, p99 {show(stat(s, 'p99_ms'))} ms, "
                f"max {show(stat(s, 'max_ms'))} ms."
            )
    if costs:
        from runs_costs import report as costs_report

        out += ["", costs_report(costs)]
        us = med("agentcast", "server_us_per_event")
        s_us = med("agentcast-sqlite", "server_us_per_event")
        if us is not None and s_us is not None:
            out += [
                "",
                f"In the live runs agentcast's server CPU per node event is {num(us)} µs without a store "
                f"and {num(s_us)} µs with SQLite (aiosqlite's thread included). Not a measure of "
                "storage: a busier loop flushes more frames per write, so per-event CPU adapts to "
                "the load; the in-process figures above are.",
            ]
    out += [
        "",
        "Configs: " + "; ".join(f"`{c}`: {CONFIGS[c].desc}" for c in names if c in CONFIGS),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        "",
    ]
    return "\n".join(out)


def load(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    rows, meta, costs = [], {}, None
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if "meta" in obj:
            meta = obj["meta"]
        elif "costs" in obj:
            costs = obj["costs"]
        else:
            rows.append(obj)
    return rows, meta, costs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"among {', '.join(CONFIGS)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=10_000, help="node events/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the paced run")
    ap.add_argument("--conns", type=int, default=100, help="dashboards")
    ap.add_argument("--nodes", type=int, default=100, help="nodes in the workflow graph")
    ap.add_argument(
        "--grace", type=float, default=5.0, help="wsload stops this long after the schedule"
    )
    ap.add_argument(
        "--disturbed",
        type=float,
        default=0.25,
        help="a run where other processes used more than this share of a core is run again",
    )
    ap.add_argument("--retries", type=int, default=2, help="runs again of a disturbed run")
    ap.add_argument(
        "--patience",
        type=float,
        default=60,
        help="before each run, wait up to this long for the cores to be quiet",
    )
    ap.add_argument("--no-late-joiners", dest="late_joiners", action="store_false")
    ap.add_argument("--no-costs", dest="costs", action="store_false")
    ap.add_argument("--cost-events", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="1 rep, 3 s runs, 20,000 cost events")
    ap.add_argument("--server-cpu")
    ap.add_argument("--client-cpu")
    ap.add_argument("--report", type=Path, help="only print the report of an earlier .jsonl")
    args = ap.parse_args()
    if args.report:
        print(render(*load(args.report)))
        return
    if args.quick:
        args.reps, args.seconds, args.cost_events = 1, 3.0, 20_000
    args.events = int(args.rate * args.seconds)
    names = [c for c in args.configs.split(",") if c]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        sys.exit(f"unknown configs {bad}; known: {', '.join(CONFIGS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    cores = cpus(args)
    os.sched_setaffinity(0, {int(cores[1])})  # this process (late joiners) on the load core
    wsload = build_wsload()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / "logs" / f"runs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    meta = {
        **machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "reps": args.reps,
        "rate": args.rate,
        "events": planned(args.events),
        "nodes": args.nodes,
        "conns": args.conns,
        "server_cpu": cores[0],
        "client_cpu": cores[1],
        "disturbed": args.disturbed,
        "command": " ".join(["python", "benchmarks/runs.py", *sys.argv[1:]]),
    }
    path = RESULTS / f"runs-{stamp}.jsonl"
    rows: list[dict[str, Any]] = []
    costs = None
    t0 = time.monotonic()
    with path.open("w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for rep in range(args.reps):
            for name in names:
                for attempt in range(args.retries + 1):
                    wait_quiet(cores, args.disturbed, args.patience)
                    r = run_one(CONFIGS[name], args, wsload, rep, cores, logs)
                    if r.get("other_load", 0) > args.disturbed:
                        r["disturbed"] = True  # kept in the .jsonl, left out of the tables
                    rows.append(r)
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                    if not r.get("disturbed"):
                        break
                    print(
                        f"[{time.monotonic() - t0:5.0f}s] rep {rep} {name}: other processes used "
                        f"{100 * r['other_load']:.0f} % of a core"
                        + (", run again" if attempt < args.retries else ", left out"),
                        file=sys.stderr,
                        flush=True,
                    )
                d = derived(r)
                brief = r.get("failed") or (
                    f"{d.get('deliveries_per_s', 0) / 1000:,.0f}k/s ({100 * (d.get('of_offered') or 0):.0f} %), "
                    f"p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} max {r.get('max_ms')} ms, "
                    f"{r.get('deliveries', 0):,}/{r.get('expected', 0):,}, server "
                    f"{100 * d.get('server_util', 0):.0f} %, snapshot {d.get('snapshot_ms', '–')} ms"
                )
                print(
                    f"[{time.monotonic() - t0:5.0f}s] rep {rep} {name:17} {brief}",
                    file=sys.stderr,
                    flush=True,
                )
        if args.costs:
            print(f"[{time.monotonic() - t0:5.0f}s] per-event costs …", file=sys.stderr, flush=True)
            out = Path(tempfile.mkdtemp()) / "costs.json"
            subprocess.run(
                [
                    "taskset", "-c", cores[0], PY, str(HERE / "runs_costs.py"),
                    "--events", str(args.cost_events), "--nodes", str(args.nodes),
                    "--json", str(out),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            costs = json.loads(out.read_text())
            f.write(json.dumps({"costs": costs}) + "\n")
    text = render(rows, meta, costs)
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(
        f"\n[{time.monotonic() - t0:.0f}s] raw results: {path.relative_to(HERE.parent)}; "
        f"report: {path.with_suffix('.md').relative_to(HERE.parent)}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
