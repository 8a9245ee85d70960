"""agentcast and its peers, side by side, on the same workloads, in one run.

    .venv/bin/python benchmarks/run.py                 # W1–W5, every peer, 1 rep (~8 min)
    .venv/bin/python benchmarks/run.py --reps 3        # medians of 3 fresh-server runs (~17 min)
    .venv/bin/python benchmarks/run.py --quick         # smaller sizes: a smoke run (~1 min)
    .venv/bin/python benchmarks/run.py --workloads W1,W3 --peers agentcast,raw
    .venv/bin/python benchmarks/run.py --workloads W5 --peers agentcast,raw,websockets,seed000-fastapi --reps 5
    .venv/bin/python benchmarks/run.py --report benchmarks/results/<stamp>.jsonl  # tables again

Every run starts a fresh server pinned to one core (taskset) and the C load client
(``wsload.c``, built here with gcc) pinned to the other; reps are interleaved across
peers. Peers: (a) seed 000's connection manager, FastAPI on uvicorn, ``await
ws.send_json`` per subscriber; (b) python-socketio rooms on uvicorn; (c) ``websockets``
with ``broadcast()``; (d) a hand-written asyncio server writing each frame (the floor).
It prints a Markdown table per workload (deliveries/s, latency p50/p99, server and client
CPU, server RSS per connection), agentcast's ratio to each peer and the targets' verdicts,
and writes every run as one JSON line to ``benchmarks/results/<stamp>.jsonl`` (the report
beside it as ``<stamp>.md``).

W5 (paced unicast) runs at each rate of ``--w5-rates`` (default 20,000 and 30,000 events/s,
``--w5-seconds`` 5 s each): workloads ``W5-20k`` and ``W5-30k`` (``--workloads W5`` selects
every rate). Its report gives p50/p99/max latency, the achieved rate and server CPU per
peer, and every peer's p99 and max divided by the floor's (``raw``) of the same rep.

The machine may be shared: before each run the script waits (up to ``--patience`` s) until
the two cores are quiet; a run during which other processes used more than ``--disturbed``
of a core is run again (up to ``--retries`` times; the least disturbed attempt counts, the
others stay in the ``.jsonl`` marked ``superseded``), and the report flags runs above 15 %.
``--compare NAME=SRC`` adds agentcast imported from another checkout's ``src`` (e.g. the
commit before a change) as peer ``agentcast@NAME`` (and ``agentcast-jwt@NAME`` when
``agentcast-jwt`` is among the peers), interleaved: before/after in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"
RESULTS = HERE / "results"
PY = sys.executable
BIN = Path(PY).parent

# -- workloads ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    conns: int
    topics: int
    count: int  # events published
    rate: float  # events/s, 0: as fast as possible
    timeout: int  # wsload hard limit, seconds

    @property
    def expect(self) -> int:
        return self.count * self.conns // self.topics

    @property
    def schedule_s(self) -> float:
        return self.count / self.rate if self.rate else 0.0


FULL = {
    "W1": Workload("W1", "fan-out burst", 1000, 1, 2000, 0, 150),
    "W2": Workload("W2", "paced fan-out", 1000, 1, 1000, 100, 90),
    "W3": Workload("W3", "unicast", 1000, 1000, 500_000, 0, 150),
    "W4": Workload("W4", "idle memory", 10_000, 1, 0, 0, 180),
}
QUICK = {
    "W1": Workload("W1", "fan-out burst", 200, 1, 500, 0, 60),
    "W2": Workload("W2", "paced fan-out", 200, 1, 200, 100, 30),
    "W3": Workload("W3", "unicast", 200, 200, 50_000, 0, 60),
    "W4": Workload("W4", "idle memory", 2000, 1, 0, 0, 60),
}
W5_RATES = (20_000, 30_000)
"""W5, paced unicast: events/s (one workload per rate)."""
W5_SECONDS = 5.0


def w5_id(rate: float) -> str:
    return f"W5-{rate / 1000:g}k"


def add_w5(rates: list[float], seconds: float) -> None:
    """Add the W5 workloads (1,000 topics × 1 subscriber, paced round-robin) to the tables:
    ``W5-20k`` etc., one per rate, ``seconds`` long (quick sizes: 200 topics, 1 s)."""
    for rate in rates:
        wid = w5_id(rate)
        title = f"paced unicast {rate:,.0f}/s"
        FULL[wid] = Workload(wid, title, 1000, 1000, round(rate * seconds), rate, 60)
        QUICK[wid] = Workload(wid, title, 200, 200, round(rate * min(seconds, 1.0)), rate, 30)


add_w5(list(W5_RATES), W5_SECONDS)


def is_w5(wl: str) -> bool:
    return wl.startswith("W5")


# -- peers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    desc: str
    start: str  # command line; {py} {agentcast} {port} are replaced, then split on spaces
    modules: str  # what it imports (checked before the run)
    path: str = "/ws"
    sub: str = '{"action":"subscribe","topic":"{topic}"}'
    trigger: str = "GET http://127.0.0.1:{port}/publish?topics={T}&count={K}&rate={R}"
    extra: str = ""  # more wsload flags
    scratch_cwd: bool = False  # agentcast: its default run store file goes to results/
    pythonpath: str = ""  # prepended to the server's PYTHONPATH (--compare)
    redis_prefix: str = ""  # keys the server leaves in Redis, deleted after each run
    all_cores: bool = False  # the server may use both cores (--workers 2), the client's too


_JWT_SECRET = "bench-jwt-secret-" + "j" * 40
"""The ``agentcast-jwt`` peer's HS256 secret (a benchmark's, never a real one)."""


def _jwt(**claims: Any) -> str:
    """A token for the ``agentcast-jwt`` peer, valid for a day."""
    import jwt  # PyJWT, an agentcast dependency

    now = int(time.time())
    payload = {"sub": "bench", "iat": now, "exp": now + 86_400, **claims}
    return jwt.encode(payload, _JWT_SECRET, algorithm="HS256")


_REDIS_PREFIX = "agentcast-bench"
"""The ``agentcast-redis`` peer's key prefix (its keys are deleted after each run)."""

UVICORN = (
    "{py} -m uvicorn --host 127.0.0.1 --port {port} --loop uvloop --http httptools "
    "--ws websockets-sansio --no-access-log --log-level warning --backlog 4096 --lifespan off"
)
PEERS = {
    p.name: p
    for p in (
        Peer(
            "agentcast",
            "agentcast serve (native ws protocol, in-memory broker), default settings",
            "{agentcast} serve --host 127.0.0.1 --port {port} --bench-endpoint --log-level warning",
            "agentcast uvloop httptools",
            sub='{"type":"subscribe","topic":"{topic}"}',
            trigger="GET http://127.0.0.1:{port}/_bench/publish?topics={T}&count={K}&rate={R}",
            scratch_cwd=True,
        ),
        Peer(
            "agentcast-jwt",
            "agentcast with JWT authentication on (HS256): every handshake verifies a token "
            "(`?token=`, topics claim `t*`), ownership checks every subscribe; all connections "
            "are one user, so its per-user connection and command limits are raised (not lifted: "
            "every connection holds its buckets, as without JWT)",
            f"env AGENTCAST_JWT_SECRET={_JWT_SECRET} AGENTCAST_MAX_CONNECTIONS_PER_USER=1000000 "
            "AGENTCAST_RATE_LIMIT_COMMANDS_PER_MINUTE=100000000 {agentcast} serve --host 127.0.0.1 "
            "--port {port} --bench-endpoint --log-level warning",
            "agentcast uvloop httptools jwt",
            path=f"/ws?token={_jwt(topics=['t*'])}",
            sub='{"type":"subscribe","topic":"{topic}"}',
            trigger="GET http://127.0.0.1:{port}/_bench/publish?topics={T}&count={K}&rate={R}"
            f"&token={_jwt(scope='admin')}",
            scratch_cwd=True,
        ),
        Peer(
            "agentcast-redis",
            "agentcast serve on the Redis broker (redis://127.0.0.1:6379/0, Redis 7 on "
            "loopback, on the client's core): seqs, history and fan-out through Redis",
            f"env AGENTCAST_BROKER_URL=redis://127.0.0.1:6379/0?prefix={_REDIS_PREFIX}&max_connections=20000 "
            "{agentcast} serve --host 127.0.0.1 --port {port} --bench-endpoint --log-level warning",
            "agentcast uvloop httptools redis",
            sub='{"type":"subscribe","topic":"{topic}"}',
            trigger="GET http://127.0.0.1:{port}/_bench/publish?topics={T}&count={K}&rate={R}",
            scratch_cwd=True,
            redis_prefix=_REDIS_PREFIX,
        ),
        Peer(
            "agentcast-redis-w2",
            "agentcast serve --workers 2 on the Redis broker: two worker processes on one port, "
            "NOT pinned (they, wsload and redis-server share the machine's two cores)",
            f"env AGENTCAST_BROKER_URL=redis://127.0.0.1:6379/0?prefix={_REDIS_PREFIX}&max_connections=20000 "
            "{agentcast} serve --host 127.0.0.1 --port {port} --workers 2 --bench-endpoint "
            "--log-level warning",
            "agentcast uvloop httptools redis",
            sub='{"type":"subscribe","topic":"{topic}"}',
            trigger="GET http://127.0.0.1:{port}/_bench/publish?topics={T}&count={K}&rate={R}",
            scratch_cwd=True,
            redis_prefix=_REDIS_PREFIX,
            all_cores=True,
        ),
        Peer(
            "seed000-fastapi",
            "seed 000's manager: FastAPI, `await ws.send_json` per subscriber, uvicorn",
            f"{UVICORN} seed000_fastapi:app",
            "fastapi uvicorn uvloop httptools",
        ),
        Peer(
            "socketio",
            "python-socketio AsyncServer rooms (ASGI) on uvicorn",
            f"{UVICORN} socketio_app:app",
            "socketio starlette uvicorn uvloop httptools",
            path="/socket.io/?EIO=4&transport=websocket",
            sub='42["join","{topic}"]',
            extra="--wait-open --hello 40 --hello-ack 40 --reply-on 2 --reply-with 3",
        ),
        Peer(
            "websockets",
            "websockets serve() + broadcast(), uvloop",
            "{py} websockets_server.py --port {port}",
            "websockets uvloop",
        ),
        Peer(
            "raw",
            "hand-written asyncio + uvloop, one transport.write per frame (the floor)",
            "{py} raw_server.py --port {port}",
            "uvloop",
        ),
    )
}
PIP_NAMES = {"socketio": "python-socketio>=5.11", "uvicorn": "uvicorn[standard]>=0.35"}

# -- set-up -------------------------------------------------------------------------


def check_python_deps(names: list[str], install: bool) -> None:
    missing = sorted(
        {m for n in names for m in PEERS[n].modules.split() if importlib.util.find_spec(m) is None}
    )
    if "agentcast" in missing:
        sys.exit(
            f"agentcast is not importable by {PY}: run this script with the project's venv "
            "(.venv/bin/python benchmarks/run.py) after `pip install -e .`"
        )
    if not missing:
        return
    pkgs = [PIP_NAMES.get(m, m) for m in missing]
    cmd = [PY, "-m", "pip", "install", *pkgs]
    if not install:
        sys.exit(
            f"missing Python packages for the peers: {', '.join(missing)}\n"
            f"install them with:  {' '.join(repr(c) if '[' in c or '>' in c else c for c in cmd)}\n"
            "(or run again with --install)"
        )
    subprocess.run(cmd, check=True)


def build_wsload() -> Path:
    BUILD.mkdir(exist_ok=True)
    exe, src = BUILD / "wsload", HERE / "wsload.c"
    if not exe.exists() or src.stat().st_mtime > exe.stat().st_mtime:
        if shutil.which("gcc") is None:
            sys.exit("gcc is needed to build the load client (e.g. apt-get install gcc)")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(need, min(hard, 65536)) if hard != resource.RLIM_INFINITY else max(need, 65536)
    for limits in (
        (want, max(hard, want)) if hard != resource.RLIM_INFINITY else (want, hard),
        (hard, hard),
    ):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        sys.exit(
            f"open-file limit {soft} is below the {need} this run needs: raise it "
            f"(e.g. `ulimit -n {need}` as root, or nofile in /etc/security/limits.conf)"
        )
    return soft


def cpus(args: argparse.Namespace) -> tuple[str, str]:
    if shutil.which("taskset") is None:
        sys.exit(
            "taskset (util-linux) is needed to pin the server and the client to different cores"
        )
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        sys.exit("need at least 2 cores: one for the server, one for the load client")
    return args.server_cpu or str(avail[0]), args.client_cpu or str(avail[1])


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            from importlib.metadata import version as v

            return v(dist)
        except Exception:
            return "-"

    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = "-"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "agentcast_commit": commit,
        "versions": {
            d: version(d)
            for d in (
                "agentcast",
                "uvicorn",
                "uvloop",
                "websockets",
                "fastapi",
                "starlette",
                "python-socketio",
                "python-engineio",
                "orjson",
            )
        },
        "mem_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
    }


# -- one run ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def cpu_times(ids: tuple[str, str]) -> dict[str, list[int]]:
    """Per-core jiffies from /proc/stat: user+nice+system, and steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name[3:] in ids and name.startswith("cpu"):
                v = [int(x) for x in vals]
                out[name[3:]] = [v[0] + v[1] + v[2], v[7]]
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def wait_quiet(cores: tuple[str, str], limit: float, patience: float) -> float:
    """Wait (up to ``patience`` s) until the two cores are busy less than ``limit`` of a
    core over half a second; returns that share."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + patience
    while True:
        a = cpu_times(cores)
        time.sleep(0.5)
        b = cpu_times(cores)
        busy = sum(b[c][0] - a[c][0] for c in cores) / tick / 0.5
        if busy <= limit or time.monotonic() >= deadline:
            return busy


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop ``proc``'s process group: SIGTERM, then SIGKILL if it is still there after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(
    peer: Peer,
    wl: Workload,
    wsload: Path,
    rep: int,
    cores: tuple[str, str],
    stamp: str,
    dump: bool = False,
) -> dict[str, Any]:
    """One run of ``peer`` on ``wl``: a fresh server, one ``wsload``; returns its figures.
    ``dump``: wsload also writes every delivery (ts, latency) beside the server's log."""
    port = free_port()
    agentcast = BIN / "agentcast"
    cmd = peer.start.format(
        py=PY, port=port, agentcast=agentcast if agentcast.exists() else "agentcast"
    ).split()
    cwd = HERE / "peers"
    if peer.scratch_cwd:  # a fresh run store per run: checkouts of other schema versions
        cwd = RESULTS / "agentcast-cwd" / peer.name  # (--compare) must not share one
        shutil.rmtree(cwd, ignore_errors=True)
        cwd.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    base = {
        "peer": peer.name,
        "workload": wl.id,
        "rep": rep,
        "conns": wl.conns,
        "topics": wl.topics,
        "count": wl.count,
        "rate": wl.rate,
    }
    with (logs / f"{peer.name}.{wl.id}.{rep}.log").open("wb") as log:
        env = dict(os.environ)
        if peer.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [peer.pythonpath, env.get("PYTHONPATH")])
            )
        server = subprocess.Popen(
            ["taskset", "-c", ",".join(cores) if peer.all_cores else cores[0], *cmd],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            if not wait_port(port, server):
                return {**base, "failed": f"server did not start (see {log.name})"}
            time.sleep(0.5)
            args = [
                str(wsload),
                "--port",
                str(port),
                "--path",
                peer.path,
                "-n",
                str(wl.conns),
                "--topics",
                str(wl.topics),
                "--concurrency",
                "200",
                "--timeout",
                str(wl.timeout),
                "--idle-timeout",
                "10",
                "--pid",
                str(server.pid),
                "--sub",
                peer.sub,
                "--ready",
                "subscribed",
                "--label",
                f"{peer.name}.{wl.id}.{rep}",
                *peer.extra.split(),
            ]
            if dump:
                args += ["--dump", str(logs / f"{peer.name}.{wl.id}.{rep}.lat")]
            if wl.count:
                trigger = (
                    peer.trigger.replace("{port}", str(port))
                    .replace("{T}", str(wl.topics))
                    .replace("{K}", str(wl.count))
                    .replace("{R}", f"{wl.rate:g}")
                )
                args += ["--expect", str(wl.expect), "--trigger", trigger]
            else:
                args += ["--hold", "2"]
            redis_pid = redis_server_pid() if peer.redis_prefix else None
            red0 = tree_cpu(redis_pid) if redis_pid else 0.0
            stat0, srv0, t0 = cpu_times(cores), tree_cpu(server.pid), time.monotonic()
            out = subprocess.run(
                ["taskset", "-c", cores[1], *args],
                capture_output=True,
                text=True,
                timeout=wl.timeout + 30,
            )
            wall, srv1, stat1 = time.monotonic() - t0, tree_cpu(server.pid), cpu_times(cores)
            red1 = tree_cpu(redis_pid) if redis_pid else 0.0
            try:
                result = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                return {
                    **base,
                    "failed": f"wsload rc={out.returncode}: {out.stderr.strip()[-300:]}",
                }
            # CPU used on the two cores by anything but this server and this client
            tick = os.sysconf("SC_CLK_TCK")
            busy = sum(stat1[c][0] - stat0[c][0] for c in cores) / tick
            steal = sum(stat1[c][1] - stat0[c][1] for c in cores) / tick
            client = result.get("client_cpu_s", 0.0)
            if redis_pid:  # redis-server's CPU during the run (it serves this server)
                result["redis_cpu_s"] = round(red1 - red0, 3)
            result["other_load"] = round(
                max(0.0, busy - (srv1 - srv0) - (red1 - red0) - client) / wall, 3
            )
            result["steal"] = round(steal / wall, 3)
            return {**base, **result}
        finally:
            stop_group(server)
            if peer.redis_prefix:
                delete_redis_keys(peer.redis_prefix)


def redis_server_pid() -> int | None:
    """The local redis-server's pid (``INFO server``), None when it does not answer."""
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()


def delete_redis_keys(prefix: str) -> None:
    """Delete what a run left in the local Redis under ``prefix`` (never the whole DB)."""
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


# -- report -------------------------------------------------------------------------


def complete(r: dict[str, Any]) -> bool:
    if "failed" in r or r.get("timed_out") or r.get("errors"):
        return False
    if r["workload"] == "W4":
        return r.get("connections") == r.get("conns")
    return r.get("deliveries") == r.get("expected") and r.get("min_conn_deliveries") == r.get(
        "max_conn_deliveries"
    )


def derived(r: dict[str, Any]) -> dict[str, Any]:
    """Per-run figures computed from wsload's output."""
    d = dict(r)
    secs = r.get("seconds") or 0
    if secs > 0 and r.get("deliveries"):
        d["server_util"] = r.get("server_cpu_s", 0) / secs
        d["client_util"] = r.get("client_run_cpu_s", r.get("client_cpu_s", 0)) / secs
        d["server_us_per_delivery"] = 1e6 * r.get("server_cpu_s", 0) / r["deliveries"]
        if "redis_cpu_s" in r:
            d["redis_us_per_delivery"] = 1e6 * r["redis_cpu_s"] / r["deliveries"]
    if r.get("rate"):
        d["lateness_s"] = max(0.0, secs - r["count"] / r["rate"])  # early: on time
    return d


def stat(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def mib(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    s = stat(rows, key)
    return None if s is None else (s[0] / 1024, s[1] / 1024, s[2] / 1024)


def num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def show(s: tuple[float, float, float] | None, kind: str = "") -> str:
    if s is None:
        return "–"
    med, lo, hi = s
    if kind == "k":
        f = lambda x: f"{x / 1000:,.0f}k" if x >= 10_000 else f"{x / 1000:,.1f}k"  # noqa: E731
    elif kind == "%":
        f = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    else:
        f = num
    return f(med) if lo == hi else f"{f(med)} ({f(lo)}–{f(hi)})"


class Report:
    def __init__(self, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        self.meta = meta
        self.rows = [derived(r) for r in results if "peer" in r and not r.get("superseded")]
        self.superseded = sum(1 for r in results if r.get("superseded"))
        self.names = list(dict.fromkeys(r["peer"] for r in self.rows))
        order = ["W1", "W2", "W3", "W4"]
        order += sorted(
            {r["workload"] for r in self.rows if is_w5(r["workload"])},
            key=lambda w: next((r["rate"] for r in self.rows if r["workload"] == w), 0),
        )
        self.wls = [w for w in order if any(r["workload"] == w for r in self.rows)]

    def cell(self, peer: str, wl: str, ok_only: bool = True) -> list[dict[str, Any]]:
        rows = [r for r in self.rows if r["peer"] == peer and r["workload"] == wl]
        return [r for r in rows if complete(r)] if ok_only else rows

    def med(self, peer: str, wl: str, key: str) -> float | None:
        s = stat(self.cell(peer, wl), key)
        return s[0] if s else None

    def ratio(
        self, wl: str, key: str, other: str, peer: str = "agentcast"
    ) -> tuple[float, float, float] | None:
        """peer ÷ other: of the medians, with the range of same-rep ratios."""
        a, b = self.med(peer, wl, key), self.med(other, wl, key)
        if a is None or not b:
            return None
        pairs = []
        for ra in self.cell(peer, wl):
            for rb in self.cell(other, wl):
                if ra["rep"] == rb["rep"] and rb.get(key):
                    pairs.append(ra[key] / rb[key])
        return (a / b, min(pairs, default=a / b), max(pairs, default=a / b))

    def render(self) -> str:
        m = self.meta
        out = [
            f"# agentcast benchmark — {m.get('when', '')}",
            "",
            f"Command: `{m.get('command', '')}`  ",
            f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('mem_mib', 0) // 1024} GiB, "
            f"Linux {m.get('kernel', '?')}, CPython {m.get('python', '?')}; server on CPU "
            f"{m.get('server_cpu', '?')}, wsload on CPU {m.get('client_cpu', '?')}; "
            f"{m.get('reps', '?')} rep(s), {'quick' if m.get('quick') else 'full'} sizes; "
            f"agentcast {m.get('versions', {}).get('agentcast', '?')} at {m.get('agentcast_commit', '?')}",
            "",
            "Cells: median of the reps (min–max when they differ). Each run: a fresh server.",
            "",
            "Peers: "
            + "; ".join(f"`{p.name}`: {p.desc}" for p in PEERS.values() if p.name in self.names),
            "",
        ]
        sizes = QUICK if m.get("quick") else FULL
        out += self.summary(sizes)
        for wl in self.wls:
            out += self.detail(wl, sizes[wl])
        out += self.w5_ratios()
        if "agentcast" in self.names:
            if any(w in self.wls for w in ("W1", "W2", "W3", "W4")):
                out += self.ratios()
            out += self.targets(sizes)
        out += [
            "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
            "",
        ]
        return "\n".join(out)

    def summary(self, sizes: dict[str, Workload]) -> list[str]:
        head, sep = ["peer"], ["---"]
        for wl in self.wls:
            w = sizes[wl]
            if wl == "W4":
                head.append(f"W4 KiB per idle conn ({w.conns:,} conns)")
            elif wl == "W2":
                head.append(f"W2 {w.rate:g} ev/s × {w.conns:,}: achieved/s, p50 / p99 ms")
            elif is_w5(wl):
                head.append(f"W5 {w.rate:,.0f} ev/s: achieved/s, p50 / p99 / max ms")
            else:
                head.append(f"{wl} {w.title} deliveries/s, p50 / p99 ms")
            sep.append("---")
        lines = ["## Summary", "", "| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
        for name in self.names:
            cells = [name]
            for wl in self.wls:
                rows = self.cell(name, wl)
                bad = len(self.cell(name, wl, ok_only=False)) - len(rows)
                warn = f" ⚠{bad} failed" if bad else ""
                if wl == "W4":
                    cells.append(show(stat(rows, "rss_per_conn_kib")) + warn)
                elif is_w5(wl):
                    lat = " / ".join(
                        num(v) if v is not None else "–"
                        for v in (self.med(name, wl, k) for k in ("p50_ms", "p99_ms", "max_ms"))
                    )
                    cells.append(f"{show(stat(rows, 'deliveries_per_s'), 'k')}, {lat}{warn}")
                else:
                    p50, p99 = self.med(name, wl, "p50_ms"), self.med(name, wl, "p99_ms")
                    lat = f"{num(p50)} / {num(p99)}" if p50 is not None and p99 is not None else "–"
                    cells.append(f"{show(stat(rows, 'deliveries_per_s'), 'k')}, {lat}{warn}")
            lines.append("| " + " | ".join(cells) + " |")
        return [*lines, ""]

    def detail(self, wl: str, w: Workload) -> list[str]:
        if wl == "W4":
            lines = [
                f"### W4 idle memory ({w.conns:,} subscribed connections; server RSS incl. children, "
                "2 s after the last subscription)",
                "",
                "| peer | runs ok | connections | RSS before MiB | RSS after MiB | KiB per conn | "
                "connect+subscribe s |",
                "|---|---|---|---|---|---|---|",
            ]
            for name in self.names:
                rows, all_ = self.cell(name, wl), self.cell(name, wl, ok_only=False)
                lines.append(
                    f"| {name} | {len(rows)}/{len(all_)} | {show(stat(rows, 'connections'))} | "
                    f"{show(mib(rows, 'rss_before_kib'))} | {show(mib(rows, 'rss_after_kib'))} | "
                    f"{show(stat(rows, 'rss_per_conn_kib'))} | {show(stat(rows, 'connect_s'))} |"
                )
            return [*lines, ""]
        what = (
            f"{w.conns:,} subscribers, {w.topics:,} topic(s), {w.count:,} events"
            + (f" at {w.rate:g}/s" if w.rate else " as fast as possible")
            + f" → {w.expect:,} deliveries"
        )
        lines = [
            f"### {wl} {w.title} ({what})",
            "",
            "| peer | runs ok | deliveries/s | seconds | p50 ms | p99 ms | max ms | server CPU | "
            "server µs/delivery | client CPU | other load | RSS KiB/conn |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in self.names:
            rows, all_ = self.cell(name, wl), self.cell(name, wl, ok_only=False)
            lines.append(
                f"| {name} | {len(rows)}/{len(all_)} | {show(stat(rows, 'deliveries_per_s'), 'k')} | "
                f"{show(stat(rows, 'seconds'))} | {show(stat(rows, 'p50_ms'))} | {show(stat(rows, 'p99_ms'))} | "
                f"{show(stat(rows, 'max_ms'))} | {show(stat(rows, 'server_util'), '%')} | "
                f"{show(stat(rows, 'server_us_per_delivery'))} | {show(stat(rows, 'client_util'), '%')} | "
                f"{show(stat(rows, 'other_load'), '%')} | {show(stat(rows, 'rss_per_conn_kib'))} |"
            )
            for r in all_:
                if not complete(r):
                    why = r.get("failed") or (
                        f"{r.get('deliveries')}/{r.get('expected')} delivered, "
                        f"timed_out={r.get('timed_out')}, errors={r.get('errors')}"
                    )
                    lines.append(f"|  ⚠ rep {r['rep']} | {why} |||||||||||")
        return [*lines, ""]

    def w5_ratios(self) -> list[str]:
        """W5: every peer's p99 and max latency ÷ the floor's (raw), same rep."""
        w5 = [wl for wl in self.wls if is_w5(wl)]
        if not w5 or "raw" not in self.names:
            return []
        head = ["peer"] + [f"{wl} {k} ÷ raw" for wl in w5 for k in ("p99", "max")]
        lines = [
            "### W5 paced unicast: latency ÷ the floor's (`raw`), same rep",
            "",
            "Lower is better; median ratio (range of same-rep ratios). The floor's own "
            "p99 / max ms: "
            + ", ".join(
                f"{wl} {num(self.med('raw', wl, 'p99_ms') or 0)} / "
                f"{num(self.med('raw', wl, 'max_ms') or 0)}"
                for wl in w5
            )
            + ".",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for name in self.names:
            if name == "raw":
                continue
            cells = [name]
            for wl in w5:
                for key in ("p99_ms", "max_ms"):
                    r = self.ratio(wl, key, "raw", peer=name)
                    cells.append(
                        "–"
                        if r is None
                        else f"{r[0]:.2f}×"
                        if len(self.cell(name, wl)) < 2
                        else f"{r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f})"
                    )
            lines.append("| " + " | ".join(cells) + " |")
        return [*lines, ""]

    def ratios(self) -> list[str]:
        lines = [
            "## agentcast ÷ peer (same run)",
            "",
            "Rates: higher is better. W2 p99, W4 KiB and server µs/delivery: lower is better. "
            "Median ratio (range of same-rep ratios).",
            "",
            "| peer | W1 rate | W1 server µs/delivery | W2 rate | W2 p99 | W3 rate | W4 KiB/conn |",
            "|---|---|---|---|---|---|---|",
        ]

        def r(wl: str, key: str, other: str) -> str:
            if wl not in self.wls:
                return "–"
            s = self.ratio(wl, key, other)
            if s is None:
                return "–"
            f = lambda x: f"{x:.2f}×" if x < 100 else f"{x:.0f}×"  # noqa: E731
            return (
                f(s[0])
                if len(self.cell("agentcast", wl)) < 2
                else f"{f(s[0])} ({f(s[1])}–{f(s[2])})"
            )

        for other in self.names:
            if other != "agentcast":
                lines.append(
                    f"| {other} | {r('W1', 'deliveries_per_s', other)} | "
                    f"{r('W1', 'server_us_per_delivery', other)} | {r('W2', 'deliveries_per_s', other)} | "
                    f"{r('W2', 'p99_ms', other)} | {r('W3', 'deliveries_per_s', other)} | "
                    f"{r('W4', 'rss_per_conn_kib', other)} |"
                )
        return [*lines, ""]

    def targets(self, sizes: dict[str, Workload]) -> list[str]:
        lines = ["## Targets (agentcast, ratios measured in this run)", ""]

        def verdict(label: str, ok: bool | None, detail: str) -> None:
            mark = "not measured" if ok is None else "**met**" if ok else "**NOT met**"
            lines.append(f"- {label}: {mark} — {detail}")

        def ratio_target(wl: str, other: str, need: float, label: str) -> None:
            if wl not in self.wls or other not in self.names:
                verdict(label, None, f"needs {wl} and peer {other}")
                return
            s = self.ratio(wl, "deliveries_per_s", other)
            ok = None if s is None else s[0] >= need
            verdict(
                label,
                ok,
                "–" if s is None else f"{s[0]:.2f}× (same-rep range {s[1]:.2f}–{s[2]:.2f}×)",
            )

        ratio_target("W1", "seed000-fastapi", 10, "W1 ≥ 10× seed 000's FastAPI manager")
        ratio_target("W1", "raw", 5, "W1 ≥ 5× the hand-written one-write-per-frame floor")
        if "W2" in self.wls:
            w = sizes["W2"]
            all_ = self.cell("agentcast", "W2", ok_only=False)
            p99 = stat(self.cell("agentcast", "W2"), "p99_ms")
            late = stat([derived(r) for r in all_], "lateness_s")
            on_time = bool(all_) and all(
                complete(r) and derived(r).get("lateness_s", 1) <= 0.05 for r in all_
            )
            ok = None if not all_ else on_time and p99 is not None and p99[2] < 10
            verdict(
                "W2 every event delivered on time, p99 < 10 ms",
                ok,
                f"{sum(complete(r) for r in all_)}/{len(all_)} runs complete; last delivery "
                f"{show(late)} s after the {w.schedule_s:g} s schedule; p99 {show(p99)} ms",
            )
        ratio_target("W3", "raw", 1.0, "W3 ≥ the hand-written floor")
        if "W4" in self.wls:
            kib = stat(self.cell("agentcast", "W4"), "rss_per_conn_kib")
            verdict(
                "W4 < 8 KiB per idle subscribed connection",
                None if kib is None else kib[2] < 8,
                f"{show(kib)} KiB",
            )
        for wl in (w for w in self.wls if is_w5(w)):
            rate = sizes[wl].rate
            all_ = self.cell("agentcast", wl, ok_only=False)
            done = f"{len(self.cell('agentcast', wl))}/{len(all_)} runs complete"
            if "raw" in self.names:
                s = self.ratio(wl, "p99_ms", "raw")
                verdict(
                    f"W5 {rate:,.0f}/s p99 ≤ 2× the floor's",
                    None if s is None else s[0] <= 2.0,
                    "–"
                    if s is None
                    else f"{s[0]:.2f}× (same-rep range {s[1]:.2f}–{s[2]:.2f}×): agentcast "
                    f"{show(stat(self.cell('agentcast', wl), 'p99_ms'))} ms, floor "
                    f"{show(stat(self.cell('raw', wl), 'p99_ms'))} ms; {done}",
                )
            mx = stat(self.cell("agentcast", wl), "max_ms")
            verdict(
                f"W5 {rate:,.0f}/s max latency < 20 ms",
                None if mx is None else mx[0] < 20,
                f"{show(mx)} ms (median of the reps; range in brackets)",
            )
        hot = [
            f"{r['peer']} {r['workload']} rep {r['rep']} ({100 * r['client_util']:.0f}%)"
            for r in self.rows
            if r.get("client_util", 0) > 0.9
        ]
        busy = [
            f"{r['peer']} {r['workload']} rep {r['rep']} ({100 * r['other_load']:.0f}%)"
            for r in self.rows
            if r.get("other_load", 0) > 0.15
        ]
        lines += [
            "",
            "Client headroom: "
            + (
                "load client above 90 % CPU in " + ", ".join(hot)
                if hot
                else "the load client stayed below 90 % CPU in every run."
            ),
            "Interference: "
            + (
                "other processes used > 15 % of a core in " + ", ".join(busy)
                if busy
                else "other processes used < 15 % of a core in every run."
            )
            + (
                f" {self.superseded} disturbed run(s) (other processes > "
                f"{100 * self.meta.get('disturbed', 0.25):.0f} % of a core) were run again and "
                "left out (they stay in the .jsonl, marked superseded)."
                if self.superseded
                else ""
            ),
        ]
        return lines


# -- main ---------------------------------------------------------------------------


def load(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows, meta = [], {}
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if "meta" in obj:
            meta = obj["meta"]
        else:
            rows.append(obj)
    return rows, meta


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--workloads",
        default="W1,W2,W3,W4,W5",
        help="comma-separated (default: all; W5 = every --w5-rates workload, or W5-20k etc.)",
    )
    ap.add_argument(
        "--w5-rates",
        default=",".join(str(r) for r in W5_RATES),
        help="W5 paced unicast rates, events/s, comma-separated (default: %(default)s)",
    )
    ap.add_argument(
        "--w5-seconds", type=float, default=W5_SECONDS, help="W5 length (default: %(default)s)"
    )
    ap.add_argument(
        "--patience",
        type=float,
        default=30.0,
        help="before each run, wait up to this many s for quiet cores (default: %(default)s; 0: never)",
    )
    ap.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated among {', '.join(PEERS)}"
    )
    ap.add_argument("--reps", type=int, default=1, help="fresh-server runs per cell (interleaved)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a smoke run (~1 min)")
    ap.add_argument("--install", action="store_true", help="pip-install missing peer packages")
    ap.add_argument("--server-cpu", help="core for the servers (default: the first allowed)")
    ap.add_argument("--client-cpu", help="core for wsload (default: the second allowed)")
    ap.add_argument(
        "--report", type=Path, help="only print the tables of an earlier results .jsonl"
    )
    ap.add_argument(
        "--disturbed",
        type=float,
        default=0.25,
        help="a run during which other processes used more than this share of a core is run "
        "again (default: %(default)s)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="runs again of a disturbed run; the least disturbed attempt counts (default: %(default)s)",
    )
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run agentcast imported from SRC (a checkout's src/ folder, e.g. an older "
        "commit's) as peer agentcast@NAME, interleaved with the others (repeatable)",
    )
    ap.add_argument(
        "--dump",
        action="store_true",
        help="keep every delivery's latency (wsload --dump) in results/logs/<stamp>/*.lat",
    )
    args = ap.parse_args()
    if args.report:
        rows, meta = load(args.report)
        add_w5(
            sorted({float(r["rate"]) for r in rows if is_w5(r.get("workload", ""))}),
            float(meta.get("w5_seconds", W5_SECONDS)),
        )
        print(Report(rows, meta).render())
        return
    try:
        rates = [float(r) for r in args.w5_rates.split(",") if r]
    except ValueError:
        sys.exit(f"--w5-rates: comma-separated numbers, not {args.w5_rates!r}")
    if not rates or min(rates) <= 0 or args.w5_seconds <= 0:
        sys.exit("--w5-rates and --w5-seconds must be positive")
    for wid in [w for w in FULL if is_w5(w)]:
        del FULL[wid], QUICK[wid]
    add_w5(rates, args.w5_seconds)
    names = [p for p in args.peers.split(",") if p]
    for spec in args.compare:
        label, _, src = spec.partition("=")
        if not label or not src or not (Path(src) / "agentcast" / "__init__.py").exists():
            sys.exit(f"--compare {spec!r}: NAME=SRC with SRC/agentcast/__init__.py")
        # every agentcast peer asked for (agentcast by default) gets its @NAME twin
        bases = [n for n in names if n.startswith("agentcast") and "@" not in n]
        for base_name in bases or ["agentcast"]:
            base = PEERS[base_name]
            peer = replace(
                base,
                name=f"{base_name}@{label}",
                desc=f"{base.desc}; imported from {src}",
                pythonpath=str(Path(src).resolve()),
            )
            PEERS[peer.name] = peer
            names.insert(names.index(base_name) + 1 if base_name in names else 0, peer.name)
    wls = []
    for w in (w for w in args.workloads.split(",") if w):
        wls += [w5_id(r) for r in rates] if w == "W5" else [w]
    bad = [p for p in names if p not in PEERS] + [w for w in wls if w not in FULL]
    if bad:
        sys.exit(
            f"unknown peers/workloads {bad}; peers: {', '.join(PEERS)}; workloads: W1 W2 W3 W4 "
            f"W5 ({', '.join(w5_id(r) for r in rates)})"
        )
    sizes = QUICK if args.quick else FULL
    check_python_deps(names, args.install)
    cores = cpus(args)
    raise_fd_limit(max(sizes[w].conns for w in wls) + 1000)
    wsload = build_wsload()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {
        **machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "reps": args.reps,
        "server_cpu": cores[0],
        "client_cpu": cores[1],
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "w5_rates": rates,
        "disturbed": args.disturbed,
        "w5_seconds": args.w5_seconds,
    }
    path = RESULTS / f"{stamp}.jsonl"
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with path.open("w") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
        for wl in wls:
            for rep in range(args.reps):
                for name in names:  # interleaved: one rep of every peer, then the next rep
                    attempts = []
                    for attempt in range(args.retries + 1):
                        if args.patience > 0:
                            wait_quiet(cores, 0.15, args.patience)
                        r = run_one(PEERS[name], sizes[wl], wsload, rep, cores, stamp, args.dump)
                        attempts.append(r)
                        if r.get("other_load", 0) <= args.disturbed:
                            break
                        print(
                            f"[{time.monotonic() - t0:5.0f}s] {wl} rep {rep} {name}: other "
                            f"processes used {100 * r['other_load']:.0f} % of a core"
                            + (", run again" if attempt < args.retries else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                    # the least disturbed attempt counts; the others stay in the .jsonl
                    r = min(attempts, key=lambda a: float(a.get("other_load", 0)))
                    for a in attempts:
                        if a is not r:
                            a["superseded"] = True
                        results.append(a)
                        out.write(json.dumps(a) + "\n")
                    out.flush()
                    brief = r.get("failed") or (
                        f"{r.get('rss_per_conn_kib')} KiB/conn"
                        if wl == "W4"
                        else f"{r.get('deliveries_per_s', 0) / 1000:,.0f}k/s p50 {r.get('p50_ms')} p99 "
                        f"{r.get('p99_ms')} max {r.get('max_ms')} ms, {r.get('deliveries')}/"
                        f"{r.get('expected')}, other load {100 * r.get('other_load', 0):.0f} %"
                    )
                    print(
                        f"[{time.monotonic() - t0:5.0f}s] {wl} rep {rep} {name:16} {brief}",
                        file=sys.stderr,
                        flush=True,
                    )
    text = Report(results, meta).render()
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(
        f"\nraw results: {path.relative_to(ROOT)}; report: {path.with_suffix('.md').relative_to(ROOT)}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
