"""Handshake cost of JWT authentication: the time to open (and subscribe) N connections,
and the server's CPU time for them, with authentication off (open dev mode) and with an
HS256 or RS256 token in the ``Authorization`` header (every handshake verifies it).

    .venv/bin/python benchmarks/auth.py --conns 2000 --reps 3 [--redis redis://127.0.0.1:6379/0]

With ``--redis``, a fourth mode: HS256 with the cluster state on Redis
(``AGENTCAST_CLUSTER_URL``, a fresh key prefix, deleted afterwards): every handshake also
reserves its slot with one Lua script on Redis (connections per user across nodes).

A fresh ``agentcast serve`` per run, pinned to one core, ``wsload`` (built from
``wsload.c``) pinned to the other; modes interleaved across reps; medians printed.
Authentication runs once per connection, never per event: the event path is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import build_wsload, raise_fd_limit  # noqa: E402

SECRET = "bench-secret-" + "b" * 40
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rsa_setup(tmp: Path) -> tuple[str, dict[str, str]]:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp / "public.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    token = jwt.encode(
        {"sub": "bench", "exp": int(time.time()) + 3600, "topics": ["t"]}, key, algorithm="RS256"
    )
    return token, {
        "AGENTCAST_JWT_PUBLIC_KEY_FILE": str(pem),
        "AGENTCAST_JWT_ALGORITHMS": '["RS256"]',
    }


def hs_setup() -> tuple[str, dict[str, str]]:
    import jwt

    token = jwt.encode(
        {"sub": "bench", "exp": int(time.time()) + 3600, "topics": ["t"]}, SECRET, algorithm="HS256"
    )
    return token, {"AGENTCAST_JWT_SECRET": SECRET}


def run_one(
    wsload: Path, conns: int, env: dict[str, str], token: str | None, cores: list[int]
) -> dict[str, float]:
    port = free_port()
    server_env = {
        **os.environ,
        "AGENTCAST_STORE_URL": "",
        "AGENTCAST_LOG_LEVEL": "warning",
        "AGENTCAST_MAX_CONNECTIONS_PER_USER": str(conns + 1),  # one user: "bench"
        **env,
    }
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(cores[0]),
            sys.executable,
            "-m",
            "agentcast.cli",
            "serve",
            "--port",
            str(port),
        ],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        cpu0 = cpu_seconds(server.pid)
        cmd = [
            "taskset",
            "-c",
            str(cores[1]),
            str(wsload),
            "--port",
            str(port),
            "-n",
            str(conns),
            "--sub",
            '{"type":"subscribe","topic":"t","id":1}',
            "--ready",
            "subscribed",
            "--concurrency",
            "200",
            "--timeout",
            "120",
        ]
        if token is not None:
            cmd += ["--header", f"Authorization: Bearer {token}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        cpu1 = cpu_seconds(server.pid)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        assert figures["ready"] == conns, figures
        return {"connect_s": figures["connect_s"], "server_cpu_s": cpu1 - cpu0}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--redis", default="", help="also measure HS256 with a Redis cluster state")
    args = ap.parse_args()
    prefix = f"bench-auth-{os.getpid()}"
    raise_fd_limit(args.conns + 100)
    wsload = build_wsload()
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        cores = cores * 2
    with tempfile.TemporaryDirectory() as tmp:
        hs_token, hs_env = hs_setup()
        rs_token, rs_env = rsa_setup(Path(tmp))
        modes = {
            "off": ({}, None),
            "jwt-hs256": (hs_env, hs_token),
            "jwt-rs256": (rs_env, rs_token),
        }
        if args.redis:
            cluster = {**hs_env, "AGENTCAST_CLUSTER_URL": f"{args.redis}?prefix={prefix}"}
            modes["jwt-hs256-redis"] = (cluster, hs_token)
        results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for rep in range(args.reps):
            for mode, (env, token) in modes.items():
                results[mode].append(run_one(wsload, args.conns, env, token, cores))
                print(f"rep {rep + 1} {mode}: {results[mode][-1]}", file=sys.stderr)
    if args.redis:
        import redis

        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match="{" + prefix + "}*"))
        if keys:
            client.delete(*keys)
    base = statistics.median(r["server_cpu_s"] for r in results["off"])
    print(f"\n{args.conns} connections opened and subscribed, median of {args.reps}:\n")
    print("| mode | time to open | server CPU | server CPU per handshake | vs off |")
    print("|---|---|---|---|---|")
    for mode, runs in results.items():
        connect = statistics.median(r["connect_s"] for r in runs)
        cpu = statistics.median(r["server_cpu_s"] for r in runs)
        per = cpu / args.conns * 1e6
        extra = (cpu - base) / args.conns * 1e6
        print(f"| {mode} | {connect:.3f} s | {cpu:.2f} s | {per:.0f} µs | +{extra:.0f} µs |")


if __name__ == "__main__":
    main()
