"""The HTTP-client floor under the chat benchmark: what reading N paced token streams
costs with no gateway at all, per token, for each way of reading them.

Starts ``chat_upstream.py`` on CPU 1, reads ``--conns`` streams on CPU 0 with (a) raw
httpx lines (``aiter_lines``, what a hand-written loop does), (b) agentcast's upstream
client pushing deltas to a callback (``stream_to``, native transport: what the gateway
uses), (c) the same pulled as an async iterator (``stream``), (d) ``stream`` on the httpx
transport (httpx + httpx-sse), and prints CPU µs per token. Whatever a gateway adds comes
on top of (b).

    .venv/bin/python benchmarks/chat_floor.py --conns 200 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from agentcast.chat.llm import OpenAIUpstream, UpstreamConfig  # noqa: E402
from agentcast.chat.text import Turn  # noqa: E402


async def measure(kind: str, url: str, n: int) -> tuple[int, float]:
    count = 0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    session = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0, pool=None))
    transport = kind.rsplit("-", 1)[1] if kind.startswith("upstream-") else "native"
    upstream = OpenAIUpstream(UpstreamConfig(url + "/v1", "bench", transport=transport))  # type: ignore[arg-type]

    async def raw() -> None:
        nonlocal count
        body = {"model": "bench", "stream": True, "messages": []}
        async with session.stream("POST", url + "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and orjson.loads(line[6:])["choices"][0]["delta"].get(
                    "content"
                ):
                    count += 1

    async def ours(i: int) -> None:
        nonlocal count
        async for _ in upstream.stream([Turn("user", f"q{i}")]):
            count += 1

    def on_delta(_delta: str) -> None:
        nonlocal count
        count += 1

    async def pushed(i: int) -> None:
        await upstream.stream_to([Turn("user", f"q{i}")], on_delta)

    def reader(i: int) -> Any:
        if kind == "raw-httpx":
            return raw()
        return pushed(i) if kind == "push-native" else ours(i)

    tasks = [asyncio.create_task(reader(i)) for i in range(n)]
    async with httpx.AsyncClient() as client:
        await client.get(url + "/go", timeout=120)  # returns once every stream is held
    before = resource.getrusage(resource.RUSAGE_SELF)
    seen = count
    await asyncio.gather(*tasks)
    after = resource.getrusage(resource.RUSAGE_SELF)
    await session.aclose()
    await upstream.aclose()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return count - seen, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=100)
    args = ap.parse_args()
    import uvloop

    print(f"{args.conns} streams × {args.rate:g} tokens/s, {args.tokens} tokens each")
    for kind in (
        "raw-httpx",
        "push-native",
        "upstream-native",
        "upstream-httpx",
    ):
        port = 9190
        up = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                str(HERE / "chat_upstream.py"),
                "--port",
                str(port),
                "--rate",
                str(args.rate),
                "--tokens",
                str(args.tokens),
                "--streams",
                str(args.conns),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            import os

            os.sched_setaffinity(0, {0})
            tokens, cpu = uvloop.run(measure(kind, f"http://127.0.0.1:{port}", args.conns))
            print(
                f"  {kind:17s} {tokens:>8,} tokens  {cpu:6.2f} s CPU  {cpu / tokens * 1e6:6.1f} µs/token"
            )
        finally:
            up.terminate()
            up.wait(10)


if __name__ == "__main__":
    main()
