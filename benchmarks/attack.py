"""Legitimate clients' latency while the server is under attack (issue 11).

    .venv/bin/python benchmarks/attack.py --reps 3
    .venv/bin/python benchmarks/attack.py --attacks bad-tokens,oversized --reps 1

Each run starts a fresh ``agentcast serve`` with JWT authentication (HS256) and default
limits, pinned to one core. An attacker process (this script, ``--attacker KIND``, at
``nice`` 10 on the other core) starts its attack; once it is in full swing, ``wsload``
(on that core too) opens ``--legit`` connections of the legitimate user ``alice`` (a
token in the ``Authorization`` header), subscribes them to one topic and receives a paced
stream (``--rate`` events/s for ``--seconds``), measuring every delivery's latency. The
attacks, one per run:

=============  ==========================================================================
baseline       no attacker
bad-tokens     handshakes with forged tokens (wrong key), as fast as it can: HTTP 401
slowloris      ``--slow`` connections that send an HTTP upgrade request one header line
               every 2 s and never finish it (held by the server until its header timeout)
oversized      connections without credentials (the first-message path) sending a 1 MiB
               frame, then flooding: close 1009
rate-limits    ``mallory`` (a valid token) floods pings and publishes on 20 connections:
               ``rate_limited`` error frames, close 4530, reconnect
conn-limit     ``mallory`` opens connections without end: 100 held, then HTTP 429
garbage        ``mallory`` sends random frames (invalid JSON, invalid UTF-8, binary,
               unknown commands, bad opcodes): error frames, closes 1002/1007/4530
=============  ==========================================================================

Reported per attack, medians over reps, and as ratios against the baseline of the same
rep: the legitimate deliveries' p50, p99 and max latency, the time to open and subscribe
the legitimate connections during the attack, deliveries received out of expected, the
server's CPU over the stream and its RSS at the end, and what the attacker got back
(HTTP statuses and close codes, counted). The machine's other load is measured as in
``run.py`` (``other_load``: CPU used by other processes, in cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import (  # noqa: E402
    build_wsload,
    cpu_times,
    free_port,
    raise_fd_limit,
    stop_group,
    tree_cpu,
    wait_port,
    wait_quiet,
)

SECRET = "bench-attack-secret-" + "a" * 40
"""The server's HS256 secret (a benchmark's, never a real one)."""
ATTACKS = [
    "baseline",
    "bad-tokens",
    "slowloris",
    "oversized",
    "rate-limits",
    "conn-limit",
    "garbage",
]
RESULTS = HERE / "results"


def token(sub: str, secret: str = SECRET, **claims: Any) -> str:
    import jwt  # PyJWT, an agentcast dependency

    payload = {"sub": sub, "exp": int(time.time()) + 86400, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


# -- the attacker (a separate process: --attacker KIND) -------------------------------


class Tally:
    """What the attacker got back, by kind (``http 401``, ``close 1009``, …)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.attempts = 0

    def add(self, what: str) -> None:
        self.counts[what] += 1


def upgrade_request(port: int, path: str = "/ws", headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None) -> bytes:
    """A masked client frame; ``length`` announces another length than the payload's."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def open_ws(
    port: int, headers: dict[str, str] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A raw WebSocket connection: reader, writer and the handshake's HTTP status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port, headers=headers))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return reader, writer, status


async def read_close(reader: asyncio.StreamReader, tally: Tally) -> None:
    """Read frames until the server's close frame (tallied by code) or the end."""
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                tally.add(f"close {int.from_bytes(payload[:2], 'big') if n >= 2 else 1005}")
                return
            if opcode == 0x1 and b'"error"' in payload[:40]:
                tally.add("error frames")
    except (asyncio.IncompleteReadError, ConnectionError):
        tally.add("no close frame")


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def worker_bad_tokens(port: int, tally: Tally) -> None:
    forged = [token("alice", "w" * 40, jti=str(i)) for i in range(256)]
    while True:
        tally.attempts += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            bearer = {"Authorization": f"Bearer {random.choice(forged)}"}
            writer.write(upgrade_request(port, headers=bearer))
            head = await reader.readuntil(b"\r\n\r\n")
            tally.add(f"http {int(head.split(b' ', 2)[1])}")
        except (asyncio.IncompleteReadError, ConnectionError):
            tally.add("reset")
        finally:
            await close_quietly(writer)


async def worker_slowloris(port: int, tally: Tally, held: list[int]) -> None:
    while True:
        tally.attempts += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally.add("connect refused")
            await asyncio.sleep(0.5)
            continue
        request_line = upgrade_request(port).split(b"\r\n")[0] + b"\r\n"
        held[0] += 1
        answer = asyncio.ensure_future(reader.read(1024))
        try:
            writer.write(request_line)  # then one header line every 2 s, never the end
            while not answer.done():
                await asyncio.wait([answer], timeout=2.0)
                if not answer.done():
                    writer.write(f"X-Slow-{random.randrange(1 << 30)}: 1\r\n".encode())
            data = answer.result()
            status = data.split(b" ", 2)[1].decode(errors="replace") if data else "eof"
            tally.add(f"closed by the server ({status})")
        except (ConnectionError, asyncio.IncompleteReadError):
            tally.add("reset by the server")
        finally:
            answer.cancel()
            held[0] -= 1
            await close_quietly(writer)


async def worker_oversized(port: int, tally: Tally) -> None:
    big = frame(0x1, b"x" * (1 << 20))
    filler = frame(0x1, b'{"type":"ping"}') * 64
    while True:
        tally.attempts += 1
        try:
            reader, writer, status = await open_ws(port)
        except (OSError, asyncio.IncompleteReadError):
            tally.add("handshake failed")
            continue
        if status != 101:
            tally.add(f"http {status}")
            await close_quietly(writer)
            continue
        stop = asyncio.Event()

        async def flood(writer: asyncio.StreamWriter = writer, stop: asyncio.Event = stop) -> None:
            try:
                writer.write(big)
                while not stop.is_set():
                    writer.write(filler)
                    await writer.drain()
                    await asyncio.sleep(0)  # drain() does not yield while the socket takes it all
            except (ConnectionError, RuntimeError):
                pass

        sender = asyncio.create_task(flood())
        try:
            await asyncio.wait_for(read_close(reader, tally), 30)
        except TimeoutError:
            tally.add("no close in 30 s")
        stop.set()
        await asyncio.gather(sender, return_exceptions=True)
        await close_quietly(writer)


async def worker_flood(port: int, tally: Tally, frames: list[bytes], bearer: str) -> None:
    """Authenticated connections sending ``frames`` in a loop until closed (rate limits)."""
    while True:
        tally.attempts += 1
        try:
            reader, writer, status = await open_ws(port, {"Authorization": f"Bearer {bearer}"})
        except (OSError, asyncio.IncompleteReadError):
            tally.add("handshake failed")
            continue
        if status != 101:
            tally.add(f"http {status}")
            await close_quietly(writer)
            await asyncio.sleep(0.05)
            continue
        stop = asyncio.Event()

        async def flood(writer: asyncio.StreamWriter = writer, stop: asyncio.Event = stop) -> None:
            try:
                while not stop.is_set():
                    writer.write(b"".join(random.choice(frames) for _ in range(32)))
                    await writer.drain()
                    await asyncio.sleep(0)  # drain() does not yield while the socket takes it all
            except (ConnectionError, RuntimeError):
                pass

        sender = asyncio.create_task(flood())
        try:
            await asyncio.wait_for(read_close(reader, tally), 60)
        except TimeoutError:
            tally.add("no close in 60 s")
        stop.set()
        await asyncio.gather(sender, return_exceptions=True)
        await close_quietly(writer)


async def worker_conn_limit(port: int, tally: Tally, bearer: str, held: list[int]) -> None:
    while True:
        tally.attempts += 1
        try:
            reader, writer, status = await open_ws(port, {"Authorization": f"Bearer {bearer}"})
        except (OSError, asyncio.IncompleteReadError):
            tally.add("handshake failed")
            continue
        tally.add(f"http {status}")
        if status == 101:  # held open, never used
            held[0] += 1
            try:
                await read_close(reader, tally)
            finally:
                held[0] -= 1
        await close_quietly(writer)


def garbage_frames() -> list[bytes]:
    rng = random.Random(7)
    out = [
        frame(0x1, b"not json"),
        frame(0x1, b'{"type": "subscribe"'),
        frame(0x1, b'{"type": "nope", "id": 1}'),
        frame(0x1, b'{"type": "subscribe", "topic": "' + b"x" * 300 + b'"}'),
        frame(0x1, b'{"type": "publish", "topic": "monitoring", "event": {}}'),
        frame(0x2, os.urandom(64)),
        frame(0x1, b"\xff\xfe\xfd"),  # invalid UTF-8: 1007
        frame(0x1, b"[" * 5000),
    ]
    out += [
        frame(0x1, bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200))))
        for _ in range(8)
    ]
    return out


def protocol_errors() -> list[bytes]:
    """Frames that break the protocol (the connection ends with 1002)."""
    return [frame(0x3, b"x"), frame(0x9, b"p" * 200), frame(0x0, b"orphan continuation")]


async def attack(kind: str, port: int) -> None:
    """Run attack ``kind`` against ``port`` until SIGTERM, then print the tally as JSON."""
    tally = Tally()
    held = [0]
    mallory = token("mallory", scope="publish")
    workers: list[Any] = []
    if kind == "bad-tokens":
        workers = [worker_bad_tokens(port, tally) for _ in range(32)]
    elif kind == "slowloris":
        workers = [worker_slowloris(port, tally, held) for _ in range(ARGS_SLOW[0])]
    elif kind == "oversized":
        workers = [worker_oversized(port, tally) for _ in range(8)]
    elif kind == "rate-limits":
        pub = b'{"type":"publish","topic":"t-mallory","event":{"type":"x","data":{}}}'
        frames = [frame(0x1, b'{"type":"ping"}'), frame(0x1, pub)]
        workers = [worker_flood(port, tally, frames, mallory) for _ in range(20)]
    elif kind == "conn-limit":
        workers = [worker_conn_limit(port, tally, mallory, held) for _ in range(150)]
    elif kind == "garbage":
        frames = garbage_frames()
        workers = [worker_flood(port, tally, frames, mallory) for _ in range(16)]
        workers += [worker_flood(port, tally, protocol_errors(), mallory) for _ in range(4)]
    else:
        raise SystemExit(f"unknown attack {kind!r}")
    tasks = [asyncio.ensure_future(w) for w in workers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.sleep(3.0)  # in full swing
    print(json.dumps({"ready": True, "held": held[0]}), flush=True)
    await stop.wait()
    held_at_end = held[0]
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=5)  # a worker stuck in a handshake is left behind
    print(
        json.dumps(
            {"attempts": tally.attempts, "answers": dict(tally.counts), "held": held_at_end}
        ),
        flush=True,
    )


ARGS_SLOW = [1000]


def run_attacker(kind: str, port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    raise_fd_limit(ARGS_SLOW[0] + 500)
    asyncio.run(attack(kind, port))


# -- the runner -----------------------------------------------------------------------


def run_one(
    kind: str, args: argparse.Namespace, wsload: Path, cores: tuple[str, str]
) -> dict[str, Any]:
    """One fresh server, attack ``kind`` (or none), the legitimate clients' figures."""
    port = free_port()
    env = {
        **os.environ,
        "AGENTCAST_JWT_SECRET": SECRET,
        "AGENTCAST_STORE_URL": "",
        "AGENTCAST_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            cores[0],
            sys.executable,
            "-m",
            "agentcast.cli",
            "serve",
            "--port",
            str(port),
            "--bench-endpoint",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    attacker: subprocess.Popen[str] | None = None
    try:
        if not wait_port(port, server):
            raise RuntimeError(
                f"server did not start: {server.stderr.read().decode() if server.stderr else ''}"
            )
        wait_quiet(cores, 0.3, 5)
        if kind != "baseline":
            attacker = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    cores[1],
                    "nice",
                    "-n",
                    "10",
                    sys.executable,
                    __file__,
                    "--attacker",
                    kind,
                    "--port",
                    str(port),
                    "--slow",
                    str(args.slow),
                ],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            assert attacker.stdout is not None
            ready = json.loads(attacker.stdout.readline() or "{}")
            if not ready.get("ready"):
                raise RuntimeError(f"attacker {kind} did not start")
        count = int(args.rate * args.seconds)
        admin = token("bench-admin", scope="admin")
        alice = token("alice", topics=["t*"])
        cmd = [
            "taskset",
            "-c",
            cores[1],
            str(wsload),
            "--port",
            str(port),
            "-n",
            str(args.legit),
            "--header",
            f"Authorization: Bearer {alice}",
            "--sub",
            '{"type":"subscribe","topic":"t0"}',
            "--ready",
            "subscribed",
            "--trigger",
            f"GET http://127.0.0.1:{port}/_bench/publish?topics=1&count={count}"
            f"&rate={args.rate}&prefix=t&token={admin}",
            "--expect",
            str(count * args.legit),
            "--timeout",
            str(args.seconds + 60),
            "--idle-timeout",
            "10",
            "--pid",
            str(server.pid),
            "--concurrency",
            "50",
        ]
        stat0, srv0, t0 = cpu_times(cores), tree_cpu(server.pid), time.monotonic()
        att0 = tree_cpu(attacker.pid) if attacker is not None else 0.0
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120)
        wall, srv1, stat1 = time.monotonic() - t0, tree_cpu(server.pid), cpu_times(cores)
        att1 = tree_cpu(attacker.pid) if attacker is not None else 0.0
        lines = out.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"wsload printed nothing: {out.stderr[-500:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(stat1[c][0] - stat0[c][0] for c in cores) / tick
        client = float(result.get("client_cpu_s", 0.0))
        result["other_load"] = round(
            max(0.0, busy - (srv1 - srv0) - client - (att1 - att0)) / wall, 3
        )
        result["attacker_cpu_s"] = round(att1 - att0, 2)
        result["server_alive"] = server.poll() is None
        if attacker is not None:
            attacker.send_signal(signal.SIGTERM)
            try:
                tail, _ = attacker.communicate(timeout=30)
                result["attacker"] = json.loads(tail.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                result["attacker"] = {"error": "no tally"}
        result["attack"] = kind
        return result
    finally:
        if attacker is not None and attacker.poll() is None:
            stop_group(attacker)
        stop_group(server)


def med(rows: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def report(rows: list[dict[str, Any]], attacks: list[str], args: argparse.Namespace) -> str:
    by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        by[r["attack"]].append(r)
    base_by_rep = {r["rep"]: r for r in by.get("baseline", [])}

    def ratio(kind: str, key: str) -> str:
        rs = [
            float(r[key]) / float(base_by_rep[r["rep"]][key])
            for r in by[kind]
            if r["rep"] in base_by_rep
            and float(base_by_rep[r["rep"]][key]) > 0
            and float(r[key]) >= 0  # -1: no delivery at all
        ]
        return f"{statistics.median(rs):.2f}×" if rs else "–"

    out = [
        f"{args.legit} legitimate subscribers, {args.rate:g} events/s for {args.seconds:g} s "
        f"({int(args.rate * args.seconds) * args.legit:,} deliveries), medians of "
        f"{len(by.get('baseline', []))} reps; ratios: against the baseline of the same rep.",
        "",
        "| attack | p50 ms | p99 ms | max ms | p50 / p99 / max vs baseline | time to open "
        "the legit connections | delivered | server CPU | server RSS | other load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in attacks:
        rs = by.get(kind, [])
        if not rs:
            continue
        delivered = sum(int(r["deliveries"]) for r in rs)
        expected = sum(int(r["expected"]) for r in rs)
        vs = (
            "–"
            if kind == "baseline"
            else (f"{ratio(kind, 'p50_ms')} / {ratio(kind, 'p99_ms')} / {ratio(kind, 'max_ms')}")
        )
        out.append(
            f"| {kind} | {med(rs, 'p50_ms'):.2f} | {med(rs, 'p99_ms'):.2f} | "
            f"{med(rs, 'max_ms'):.1f} | {vs} | {med(rs, 'connect_s'):.3f} s | "
            f"{delivered:,} / {expected:,} | {med(rs, 'server_cpu_s'):.2f} s | "
            f"{med(rs, 'rss_after_kib') / 1024:.0f} MiB | {med(rs, 'other_load'):.2f} |"
        )
    out += ["", "What the attackers got back (all reps; attacker CPU: median seconds):", ""]
    out += [
        "| attack | attempts | answers | held open at the end (median) | attacker CPU |",
        "|---|---|---|---|---|",
    ]
    for kind in attacks:
        rs = [r for r in by.get(kind, []) if "attacker" in r]
        if not rs:
            continue
        answers: collections.Counter[str] = collections.Counter()
        attempts = 0
        for r in rs:
            answers.update(r["attacker"].get("answers", {}))
            attempts += int(r["attacker"].get("attempts", 0))
        shown = ", ".join(f"{k}: {v:,}" for k, v in answers.most_common())
        held = statistics.median(int(r["attacker"].get("held", 0)) for r in rs)
        out.append(
            f"| {kind} | {attempts:,} | {shown} | {held:g} | {med(rs, 'attacker_cpu_s'):.1f} s |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--attacks", default=",".join(ATTACKS[1:]), help="comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--legit", type=int, default=50, help="legitimate subscribers")
    ap.add_argument("--rate", type=float, default=200.0, help="events/s of the stream")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the stream")
    ap.add_argument("--slow", type=int, default=1000, help="slowloris connections")
    ap.add_argument("--attacker", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    ARGS_SLOW[0] = args.slow
    if args.attacker:
        run_attacker(args.attacker, args.port)
        return
    attacks = ["baseline"] + [a for a in args.attacks.split(",") if a and a != "baseline"]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        sys.exit(f"unknown attacks {sorted(unknown)}; attacks: {', '.join(ATTACKS[1:])}")
    raise_fd_limit(args.slow + 1000)
    wsload = build_wsload()
    allowed = sorted(os.sched_getaffinity(0))
    cores = (str(allowed[0]), str(allowed[1 % len(allowed)]))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"attack-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    rows = []
    with path.open("w") as f:
        for rep in range(args.reps):
            for kind in attacks:
                r = run_one(kind, args, wsload, cores)
                r["rep"] = rep
                rows.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                print(
                    f"rep {rep} {kind}: p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max "
                    f"{r['max_ms']:.1f} ms, {r['deliveries']}/{r['expected']}, connect "
                    f"{r['connect_s']:.3f} s, other load {r['other_load']:.2f}, attacker "
                    f"{r.get('attacker', {})}",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"\n{path}\n")
    print(report(rows, attacks, args))


if __name__ == "__main__":
    main()
