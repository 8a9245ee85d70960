"""Where agentcast's server time goes in the live-runs workload (py-spy), µs per node event.

    .venv/bin/python benchmarks/runs_profile.py [--configs agentcast,agentcast-sqlite]

One run per config of ``runs.py``'s workload (10,000 node events/s to 100 dashboards,
10 s) with ``py-spy record --nonblocking --rate 1000`` attached to the server from the
load core. Each sample goes to the innermost listed function of its stack (``PARTS``);
component cost = its share of the samples × the run's server CPU per node event. py-spy
cannot see C frames: kernel and uvloop time is charged to the Python function that called
them, the collector's time to the line that allocated. Needs py-spy in the venv.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BIN, RESULTS, build_wsload, cpus  # noqa: E402
from runs import CONFIGS, derived, run_one  # noqa: E402

WRITE = "write: `write_frames` (join + uvloop `transport.write`, the syscall)"
FLUSH = "flush loop: dirty outboxes, drain"
FANOUT = "fan-out: `Hub.dispatch` + `Outbox.push` per dashboard"
ENVELOPE = "envelope splice + WebSocket framing (once per event)"
FOLD = "fold into run state (`Runs.observe`: `orjson.loads`, `apply`, lease)"
RECORD = "`RunRecorder.record` (append to the batch)"
STORE = "storage on the loop thread (`RunRecorder.flush`, SQLAlchemy)"
THREAD = "storage in aiosqlite's thread (SQLite)"
VALIDATE = "validation (`validate_event`, seed 004's models)"
CHECK = "publish checks + `orjson` encode"
BROKER = "broker: seq, `Publication`, timestamp, history"
PUBLISH = "`Gateway.publish` bookkeeping"
TRACKER = "engine: `WorkflowTracker` + the benchmark's pacing and stamping"
OTHER = "event loop, timers, HTTP, other"

PARTS = {
    "NativeWebSocketProtocol.write_frames": WRITE,
    "Gateway._flush": FLUSH,
    "Outbox.drain": FLUSH,
    "Hub.take_dirty": FLUSH,
    "main.<locals>.counting_flush": FLUSH,
    "Publication.frame": ENVELOPE,
    "Publication.payload": ENVELOPE,
    "frame_text": ENVELOPE,
    "Outbox.push": FANOUT,
    "Hub.dispatch": FANOUT,
    "Gateway._on_publication": FANOUT,
    "Gateway._after_dispatch": FANOUT,
    "Runs.observe": FOLD,
    "RunState.apply": FOLD,
    "RunRecorder.record": RECORD,
    "RunRecorder.flush": STORE,
    "RunRecorder.run": STORE,
    "validate_event": VALIDATE,
    "Gateway.check_event": CHECK,
    "encode_json": CHECK,
    "valid_topic": CHECK,
    "MemoryBroker._publish_sync": BROKER,
    "MemoryBackend.publish": BROKER,
    "format_timestamp": BROKER,
    "History.append": BROKER,
    "Publication.__init__": BROKER,
    "Gateway.publish": PUBLISH,
    "drive": TRACKER,
    "StampingPublisher.publish": TRACKER,
    "Tracker.emit": TRACKER,
    "WorkflowTracker.node_started": TRACKER,
    "WorkflowTracker.node_completed": TRACKER,
    "WorkflowTracker._progress": TRACKER,
    "WorkflowTracker.done_count": TRACKER,
    "WorkflowTracker.progress": TRACKER,
    "WorkflowTracker._base": TRACKER,
    "WorkflowTracker._know": TRACKER,
}


def classify(path: Path) -> tuple[Counter[str], Counter[str]]:
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        names = [re.sub(r" \(.*\)$", "", f) for f in frames]
        if any("aiosqlite" in f for f in frames) and "_bootstrap" in names[0]:
            part = THREAD
        elif any("sqlalchemy/" in f or "aiosqlite/" in f for f in frames):
            part = STORE  # SQLAlchemy's async layer runs in greenlets: not under flush()
        else:
            part = next((PARTS[name] for name in reversed(names) if name in PARTS), OTHER)
        parts[part] += int(n)
        leaves[re.sub(r":\d+\)$", ")", frames[-1])] += int(n)
    return parts, leaves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="agentcast,agentcast-sqlite")
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--server-cpu")
    ap.add_argument("--client-cpu")
    args = ap.parse_args()
    args.events, args.grace, args.late_joiners = int(args.rate * args.seconds), 5.0, False
    pyspy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(pyspy).exists() and shutil.which("py-spy") is None:
        sys.exit("py-spy is needed: .venv/bin/pip install py-spy")
    cores = cpus(args)
    wsload = build_wsload()
    tmp = Path(tempfile.mkdtemp(prefix="agentcast-runs-profile-"))
    logs = RESULTS / "logs" / f"runs-profile-{time.strftime('%Y%m%d-%H%M%S')}"
    logs.mkdir(parents=True, exist_ok=True)
    for name in [c for c in args.configs.split(",") if c]:
        out = tmp / f"{name}.txt"

        def attach(pid: int, out: Path = out) -> Callable[[], None]:
            cmd = ["taskset", "-c", cores[1], pyspy, "record", "--pid", str(pid)]
            cmd += ["--rate", "1000", "--nonblocking", "--format", "raw", "--output", str(out)]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)

            def detach() -> None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)

            return detach

        r = derived(run_one(CONFIGS[name], args, wsload, 0, cores, logs, attach))
        if "failed" in r or not out.exists():
            print(f"{name}: {r.get('failed', 'no profile')}")
            continue
        parts, leaves = classify(out)
        total = sum(parts.values())
        us = r.get("server_us_per_event", 0.0)
        print(
            f"\n### {name} under py-spy: {r.get('deliveries_per_s', 0) / 1000:,.0f}k deliveries/s, "
            f"p99 {r.get('p99_ms')} ms, server CPU {100 * r.get('server_util', 0):.0f} %, "
            f"{us:.1f} µs per node event, {r.get('frames_per_write', 0):.1f} frames per write; "
            f"{total:,} samples\n"
        )
        print("| component | share | µs per node event |\n|---|---|---|")
        for part, n in parts.most_common():
            print(f"| {part} | {100 * n / total:.1f} % | {us * n / total:.2f} |")
        print(
            "\nTop leaf functions: "
            + "; ".join(f"{leaf} {100 * n / total:.1f} %" for leaf, n in leaves.most_common(8))
        )


if __name__ == "__main__":
    main()
