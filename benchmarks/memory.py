"""Where agentcast's memory per idle subscribed connection goes (the W4 figure, explained).

    .venv/bin/python benchmarks/memory.py [-n 10000]

Runs agentcast's server (``build_server``, as ``agentcast serve`` does) in this process
and opens N subscribed connections with ``wsload``, three times:

1. plain: server RSS before and after, per connection (what W4 measures);
2. under ``tracemalloc``: the allocations that appeared, grouped by the source line that
   made them, per connection (Python objects and anything allocated through PyMem, which
   includes uvloop's libuv handles);
3. the objects reachable from one connection's protocol object but not from another's
   (``gc.get_referents`` walk, ``sys.getsizeof`` per object), grouped by type.
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
from types import FunctionType, ModuleType
from typing import Any

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

    from agentcast.gateway import Gateway
    from agentcast.settings import Settings
    from agentcast.transports.server import build_server

    port = free_port()
    gateway = Gateway(Settings(port=port, log_level="warning", store_url=""))
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


def trace_pass(n: int, top: int) -> tuple[float, list[tuple[str, float, float]]]:
    def inspect_now(before: Any, gateway: Any, server: Any) -> Any:
        if before is None:
            tracemalloc.start(1)
            return tracemalloc.take_snapshot()
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        return snap.compare_to(before, "lineno")

    diff = run(n, 1.0, inspect_now)
    total = sum(d.size_diff for d in diff) / n
    rows = []
    for d in diff[:top]:
        frame = d.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        rows.append((f"`{where}` {code}", d.size_diff / n, d.count_diff / n))
    return total, rows


def _short(path: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# -- 3. objects of one connection ------------------------------------------------------------


def objects_pass(n: int) -> list[tuple[str, int, int]]:
    def inspect_now(before: Any, gateway: Any, server: Any) -> Any:
        if before is None:
            return True
        conns = [c for c in server.server_state.connections if getattr(c, "session", None)]
        a, b = conns[len(conns) // 2], conns[len(conns) // 2 + 1]
        shared = {
            id(x)
            for x in (
                gateway,
                server,
                server.server_state,
                server.config,
                gateway.loop,
                gateway.settings,
                gateway.hub,
                a.app_state,
            )
        }
        mine, theirs = reach(a, shared), reach(b, shared)
        unique = [o for i, o in mine.items() if i not in theirs]
        sizes: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for o in unique:
            name = type(o).__module__ + "." + type(o).__qualname__
            sizes[name] += sys.getsizeof(o)
            counts[name] += 1
        # the connection's entries in shared containers (amortized hash-table slots)
        slots = [
            ("hub: TopicState.live dict entry", 16 * 3 // 2),
            ("gateway.sessions dict entry", 24 * 3 // 2),
            ("server_state.connections set entry", 16 * 5 // 3),
        ]
        rows = [(name, size, counts[name]) for name, size in sizes.most_common()]
        rows += [(name, size, 1) for name, size in slots]
        return rows

    return list(run(n, 1.0, inspect_now))


def reach(root: Any, shared: set[int]) -> dict[int, Any]:
    """Objects reachable from ``root`` without crossing shared or global objects."""
    seen: dict[int, Any] = {}
    todo = [root]
    while todo:
        o = todo.pop()
        if id(o) in seen or id(o) in shared:
            continue
        if isinstance(o, type | ModuleType | FunctionType) or type(o).__name__ in (
            "Loop",
            "Server",
            "method",
            "builtin_function_or_method",
            "cell",
            "code",
        ):
            continue
        seen[id(o)] = o
        todo.extend(gc.get_referents(o))
    return seen


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
    traced, sites = trace_pass(n, args.top)
    objects = objects_pass(n)
    print(f"## agentcast memory per idle subscribed connection ({n:,} connections, topic t0)\n")
    print(f"RSS growth: **{rss:.2f} KiB per connection** (plain run, no tracing).  ")
    print(
        f"tracemalloc: {traced * 1024 / 1024:.0f} B per connection in Python-visible allocations; "
        f"the rest of RSS ({max(0.0, rss * 1024 - traced):.0f} B) is allocator overhead and memory "
        "outside PyMem.\n"
    )
    print("### Allocation sites (tracemalloc, new since before the connections, per connection)\n")
    print("| site | bytes/conn | blocks/conn |\n|---|---|---|")
    for where, size, count in sites:
        print(f"| {where} | {size:.0f} | {count:.2f} |")
    print(
        "\n### Objects of one connection (reachable from its protocol object, not from another's)\n"
    )
    print("| object type | bytes | objects |\n|---|---|---|")
    total = 0
    for name, size, count in objects:
        total += size
        print(f"| {name} | {size} | {count} |")
    print(f"| **total** | **{total}** | |")


if __name__ == "__main__":
    main()
