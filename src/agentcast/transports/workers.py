"""``agentcast serve --workers N``: N server processes accepting on one port.

The supervisor (the process the user started) binds the listening socket once and starts
N workers, each ``agentcast serve`` with the same arguments, inheriting the socket
(``AGENTCAST_LISTEN_FD``): the kernel hands each new connection to whichever worker
accepts first, and connections queued while a worker restarts wait in the one backlog
instead of being reset. Every worker is a whole gateway on the shared broker (Redis):
a client of any worker sees the same topics, seqs and history.

The supervisor refuses the in-memory broker (each worker would have its own numbering
and history: a client reconnecting to another worker would resume in another world), runs
the store's migrations once before the workers start (two processes migrating one fresh
SQLite or PostgreSQL database at once would collide), forwards SIGTERM and SIGINT to
every worker (as one SIGTERM: the workers run in sessions of their own, so a terminal's
Ctrl-C does not reach them twice) and waits for their graceful shutdown, and restarts a
worker that dies — unless it died during its first seconds (a configuration or broker problem that a
restart would repeat): then it stops the others and exits with status 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from agentcast.errors import ConfigError
from agentcast.settings import Settings

__all__ = ["LISTEN_FD", "WORKER", "bind_socket", "check_workers", "supervise"]

LISTEN_FD = "AGENTCAST_LISTEN_FD"
"""Environment variable: the listening socket a worker inherited from its supervisor."""
WORKER = "AGENTCAST_WORKER"
"""Environment variable: the worker's number (1..N), for its log lines."""

STARTUP_GRACE = 10.0
"""A worker exiting sooner than this after it started is not restarted (see module doc)."""


def check_workers(settings: Settings) -> None:
    """Raise :class:`ConfigError` when ``settings.workers`` > 1 cannot work."""
    if settings.workers > 1 and settings.broker_url.split("://", 1)[0] == "memory":
        raise ConfigError(
            f"--workers {settings.workers} needs a shared broker (--broker redis://host:6379/0): "
            "with the in-memory broker every process would number and keep its own history, "
            "and a client reconnecting to another process would miss events or see others"
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (``SO_REUSEADDR``, inheritable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _detach() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def inherited_socket() -> socket.socket | None:
    """In a worker: the supervisor's listening socket; else None."""
    fd = os.environ.get(LISTEN_FD)
    if not fd:
        return None
    return socket.socket(fileno=int(fd))


def supervise(
    workers: int,
    sock: socket.socket,
    argv: Sequence[str],
    log: Callable[[str], None],
    shutdown_timeout: float,
    startup_grace: float = STARTUP_GRACE,
) -> int:
    """Run ``workers`` copies of ``argv`` (an ``agentcast serve`` command line) on
    ``sock`` until SIGTERM/SIGINT; returns the exit status for the supervisor. A worker
    that exits later than ``startup_grace`` seconds after it started is restarted."""
    stopping = threading.Event()
    procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}

    def spawn(index: int) -> None:
        env = {**os.environ, LISTEN_FD: str(sock.fileno()), WORKER: str(index)}
        # a session of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # forwards one SIGTERM (a worker given SIGINT and SIGTERM would stop at once,
        # without its graceful drain); and the worker is told SIGTERM if the supervisor
        # dies without stopping it (Linux)
        proc = subprocess.Popen(list(argv), env=env, pass_fds=(sock.fileno(),), preexec_fn=_detach)
        procs[index] = (proc, time.monotonic())

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for index in range(1, workers + 1):
            spawn(index)
        while not stopping.is_set():
            for index, (proc, started) in list(procs.items()):
                code = proc.poll()
                if code is None or stopping.is_set():
                    continue
                if time.monotonic() - started < startup_grace:
                    log(f"worker {index} exited with status {code} while starting: stopping")
                    status = 1
                    stop(signal.SIGTERM, None)
                    break
                log(f"worker {index} (pid {proc.pid}) exited with status {code}: restarting")
                spawn(index)
            stopping.wait(0.2)
        deadline = time.monotonic() + shutdown_timeout + 5
        for proc, _ in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    return status
