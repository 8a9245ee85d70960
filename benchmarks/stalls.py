"""Event-loop stalls of a server under load, and which deliveries they delayed.

``TRACER`` is the source of a wrapper around ``agentcast`` (``python -c TRACER serve …``):
it records, on CLOCK_REALTIME (ns, the clock of the benchmarks' ``ts`` stamps),

* every garbage collection (``gc.callbacks``): start, end, generation;
* every stall of the event loop: a 1 ms timer chain whose lateness over ``STALL_MS``
  (2 ms) is a stall, from when the timer was due until it ran;
* what a full collection walks (the tracked objects by type, at the start of the first three
  after the gateway started, so after its ``gc_freeze``);
* what the loop was running during stalls: a sampler thread (``sys._current_frames``,
  every ms while the timer is overdue; the switch interval is lowered to 1 ms so that it
  gets the GIL) counts the main thread's innermost frame and its nearest agentcast callers;

and writes them as JSON to ``$STALLS_OUT`` when the gateway stops (SIGTERM). With a
``wsload --dump`` of the same run, :func:`summary` says what the slow deliveries
overlapped. Used by ``chat.py --trace``.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

TRACER = r"""
import asyncio, atexit, gc, json, os, signal, sys, threading, time
from array import array
from collections import Counter
out = os.environ["STALLS_OUT"]
STALL_NS = int(float(os.environ.get("STALL_MS", "2")) * 1e6)
gcs, stalls, due = array("q"), array("q"), [0]
where = Counter()
_g0 = [0]
census = []
serving = [False]  # the census counts the collections after start-up (after gc_freeze)
def on_gc(phase, info):
    if phase == "start":
        if info["generation"] == 2 and serving[0] and len(census) < 3:  # what it walks
            objs = gc.get_objects(2) + gc.get_objects(1) + gc.get_objects(0)
            census.append([len(objs), Counter(type(o).__name__ for o in objs).most_common(12)])
            del objs
        _g0[0] = time.time_ns()
    else:
        gcs.extend((_g0[0], time.time_ns(), info["generation"]))
gc.callbacks.append(on_gc)
main_id = threading.get_ident()
def sampler():
    while True:
        time.sleep(0.001)
        d = due[0]
        if d and time.time_ns() - d > STALL_NS:
            f = sys._current_frames().get(main_id)
            names = []
            if f is not None:  # the innermost frame, wherever it is
                names.append(f"{os.path.basename(f.f_code.co_filename)}:{f.f_code.co_qualname}")
                f = f.f_back
            while f is not None and len(names) < 4:
                if "agentcast" in f.f_code.co_filename or "benchmarks" in f.f_code.co_filename:
                    names.append(f.f_code.co_qualname)
                f = f.f_back
            where[" < ".join(names)] += 1
def probe():
    loop = asyncio.get_running_loop()
    def tick():
        now = time.time_ns()
        late = now - due[0]
        if late > STALL_NS:
            stalls.extend((due[0], now))
        due[0] = time.time_ns() + 1_000_000
        loop.call_later(0.001, tick)
    due[0] = time.time_ns() + 1_000_000
    loop.call_later(0.001, tick)
def dump():
    with open(out, "w") as f:
        json.dump({"gc": gcs.tolist(), "stalls": stalls.tolist(), "where": where.most_common(30),
                   "gc2_census": census}, f)
atexit.register(dump)
sys.setswitchinterval(0.001)
threading.Thread(target=sampler, daemon=True).start()
from agentcast.gateway import Gateway
_start = Gateway.start
async def start(self):
    await _start(self)
    serving[0] = True
    probe()
_stop = Gateway.stop
async def stop(self, *a, **k):
    dump()  # uvicorn re-raises SIGTERM after its shutdown: atexit would not run
    await _stop(self, *a, **k)
Gateway.start, Gateway.stop = start, stop
from agentcast.cli import main
sys.argv = ["agentcast", *sys.argv[1:]]
main()
"""


def load_dump(path: Path) -> tuple[array[int], array[int]]:
    """A ``wsload --dump`` file: (ts ns, latency ns) per delivery."""
    recs = array("Q")
    recs.frombytes(path.read_bytes())
    ts = array("q", recs[0::2])
    lat = array("q", [(v & 0xFFFFFFFF) * 1000 for v in recs[1::2]])
    return ts, lat


def summary(dump: Path, trace: Path) -> dict[str, Any]:
    """GC pauses, loop stalls, and the causes of the slowest 1 % of deliveries."""
    ts, lat = load_dump(dump)
    tr = json.loads(trace.read_text())
    g = tr["gc"]
    gcs = [(g[i], g[i + 1], g[i + 2]) for i in range(0, len(g), 3)]
    s = tr["stalls"]
    stalls = [(s[i], s[i + 1]) for i in range(0, len(s), 2)]
    lo, hi = (min(ts), max(t + d for t, d in zip(ts, lat, strict=True))) if ts else (0, 0)
    gcs = [x for x in gcs if x[1] >= lo and x[0] <= hi]
    stalls = [x for x in stalls if x[1] >= lo and x[0] <= hi]
    p99 = sorted(lat)[int(0.99 * len(lat))] if lat else 0
    causes: Counter[str] = Counter()
    for t, d in zip(ts, lat, strict=True):
        if d < p99:
            continue
        end = t + d
        if any(x[2] == 2 and x[0] <= end and x[1] >= t for x in gcs):
            causes["gc2"] += 1
        elif any(x[2] < 2 and x[1] - x[0] > 300_000 and x[0] <= end and x[1] >= t for x in gcs):
            causes["gc01"] += 1
        elif any(x[0] <= end and x[1] >= t for x in stalls):
            causes["loop stall"] += 1
        else:
            causes["other"] += 1
    total = sum(causes.values()) or 1
    return {
        "gc2": sum(1 for x in gcs if x[2] == 2),
        "gc2_max_ms": round(max((x[1] - x[0] for x in gcs if x[2] == 2), default=0) / 1e6, 1),
        "gc_ms": round(sum(x[1] - x[0] for x in gcs) / 1e6, 1),
        "stalls": len(stalls),
        "stall_ms": round(sum(x[1] - x[0] for x in stalls) / 1e6, 1),
        "stall_max_ms": round(max((x[1] - x[0] for x in stalls), default=0) / 1e6, 1),
        "slowest_1pct": {k: f"{100 * v / total:.0f} %" for k, v in causes.most_common()},
        "where": tr["where"][:8],
        "gc2_census": tr.get("gc2_census", []),
    }
