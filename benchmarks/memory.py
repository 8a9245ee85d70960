"""Where agentcast's memory per idle subscribed connection goes (the W4 figure, explained).

    .venv/bin/python benchmarks/memory.py [-n 10000]

Runs agentcast's server (``build_server``, as ``agentcast serve`` does) in this process
and opens N subscribed connections with ``wsload``, three times:

1. plain: server RSS before and after, per connection (what W4 measures);
2. under ``tracemalloc``: the allocations that appeared, grouped by the source line that
   made them, per connection (Python objects and anything allocated through PyMem, which
   includes uvloop's libuv handles);
3. a census of the new objects the garbage collector tracks, by type (``sys.getsizeof``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import os
import socket
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from agentcast.app import create_gateway

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import build_wsload, raise_fd_limit  # noqa: E402


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_and_connect(n: int, hold: float, inspect_now: Any) -> Any:
    import uvloop  # noqa: F401  (uvicorn picks it, as agentcast serve does)

    from agentcast.settings import Settings
    from agentcast.transports.server import build_server

    port = free_port()
    gateway = create_gateway(Settings(port=port, log_level="warning", store_url=""))
    server = build_server(gateway)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    wsload = build_wsload()
    args = [
        str(wsload),
        "--port",
        str(port),
        "-n",
        str(n),
        "--concurrency",
        "200",
        "--sub",
        '{"type":"subscribe","topic":"t0"}',
        "--ready",
        "subscribed",
        "--hold",
        str(hold),
        "--timeout",
        str(hold + 120),
    ]
    gc.collect()
    before = inspect_now(None, gateway, server)
    proc = await asyncio.create_subprocess_exec("taskset", "-c", "1", *args, stdout=subprocess.PIPE)
    while gateway.hub.presence("t0") < n:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    gc.collect()
    result = inspect_now(before, gateway, server)
    await proc.communicate()
    server.should_exit = True
    await task
    return result


def run(n: int, hold: float, inspect_now: Any) -> Any:
    import uvloop

    return uvloop.run(serve_and_connect(n, hold, inspect_now))


# -- 1. RSS ---------------------------------------------------------------------------


def rss_pass(n: int) -> float:
    def inspect_now(before: Any, gateway: Any, server: Any) -> Any:
        return rss_kib() if before is None else (rss_kib() - before) / n

    return float(run(n, 1.0, inspect_now))


# -- 2. tracemalloc ---------------------------------------------------------------------


def owner(path: str) -> str:
    """Who allocated: the package of the allocating frame (uvloop's C code runs under
    asyncio's ``run_until_complete``, so its allocations carry that frame)."""
    short = _short(path)
    if short == "stdlib/asyncio/runners.py":
        return "uvloop (C: transport, libuv handle)"
    if short == "stdlib/weakref.py":
        return "uvloop (its transports registry, a WeakValueDictionary)"
    if short == "uvicorn/protocols/utils.py":
        return "uvloop PseudoSocket + cached peer/sock names (asked for by uvicorn's HTTP protocol)"
    if short == "uvicorn/protocols/http/httptools_impl.py":
        return "agentcast (its protocol object, created by uvicorn's HTTP protocol)"
    return short.split("/", 1)[0]


def trace_pass(n: int, top: int) -> tuple[float, list[tuple[str, float, float]], Counter[str]]:
    def inspect_now(before: Any, gateway: Any, server: Any) -> Any:
        if before is None:
            tracemalloc.start(1)
            return tracemalloc.take_snapshot()
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        return snap.compare_to(before, "lineno")

    diff = run(n, 1.0, inspect_now)
    total = sum(d.size_diff for d in diff) / n
    owners: Counter[str] = Counter()
    for d in diff:
        owners[owner(d.traceback[0].filename)] += d.size_diff / n
    rows = []
    for d in diff[:top]:
        frame = d.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        rows.append((f"`{where}` {code}", d.size_diff / n, d.count_diff / n))
    return total, rows, owners


def _short(path: str) -> str:
    for marker in ("site-packages/", "src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python3" in path:
        return "stdlib/" + path.rsplit("/lib/python3", 1)[1].split("/", 1)[1]
    return path


# -- 3. objects by type ------------------------------------------------------------------


def census() -> tuple[Counter[str], Counter[str]]:
    """Count and ``sys.getsizeof`` of every object the cyclic GC tracks, by type."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for o in gc.get_objects():
        t = type(o)
        name = (
            f"{t.__module__}.{t.__qualname__}" if isinstance(t.__module__, str) else t.__qualname__
        )
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
    return counts, sizes


def objects_pass(n: int) -> list[tuple[str, float, float]]:
    def inspect_now(before: Any, gateway: Any, server: Any) -> Any:
        if before is None:
            return census()
        (c0, s0), (c1, s1) = before, census()
        rows = [(name, (c1[name] - c0[name]) / n, (s1[name] - s0[name]) / n) for name in c1]
        return sorted((r for r in rows if r[1] >= 0.5), key=lambda r: -r[2])

    return list(run(n, 1.0, inspect_now))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=10_000, help="subscribed connections (default 10,000)")
    ap.add_argument("--top", type=int, default=15, help="allocation sites shown")
    args = ap.parse_args()
    raise_fd_limit(args.n + 1000)
    os.sched_setaffinity(0, {0})
    n = args.n
    rss = rss_pass(n)
    traced, sites, owners = trace_pass(n, args.top)
    objects = objects_pass(n)
    print(f"## agentcast memory per idle subscribed connection ({n:,} connections, topic t0)\n")
    print(f"RSS growth: **{rss:.2f} KiB per connection** (plain run, no tracing).  ")
    print(
        f"tracemalloc: {traced:.0f} B per connection allocated through Python's allocators; "
        f"the rest of the RSS growth ({max(0.0, rss * 1024 - traced):.0f} B) is allocator "
        "overhead and memory outside them.\n"
    )
    print("### By owner (tracemalloc, per connection)\n")
    print("| allocated by | bytes/conn |\n|---|---|")
    for name, size in owners.most_common():
        if abs(size) >= 1:
            print(f"| {name} | {size:.0f} |")
    print("\n### Allocation sites (tracemalloc, per connection)\n")
    print("| site | bytes/conn | blocks/conn |\n|---|---|---|")
    for where, size, count in sites:
        print(f"| {where} | {size:.0f} | {count:.2f} |")
    print(
        "\n### GC-tracked objects by type (per connection; `sys.getsizeof`, without the "
        "attribute values of plain instances)\n"
    )
    print("| type | objects/conn | bytes/conn |\n|---|---|---|")
    for name, count, size in objects:
        print(f"| {name} | {count:.2f} | {size:.0f} |")


if __name__ == "__main__":
    main()
