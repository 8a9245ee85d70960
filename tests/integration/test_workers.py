"""The ``--workers`` supervisor (``agentcast.transports.workers``) with stand-in workers:
a worker that dies is restarted, one that dies while starting stops everything (status
1), SIGTERM reaches every worker once and the supervisor waits for them."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentcast.errors import ConfigError
from agentcast.settings import Settings
from agentcast.transports.workers import check_workers
from tests.conftest import UNIT


def supervisor(tmp_path: Path, worker: str, grace: float) -> subprocess.Popen[str]:
    """A supervisor of 2 stand-in workers running ``worker`` (Python source)."""
    (tmp_path / "worker.py").write_text(textwrap.dedent(worker))
    source = f"""
        import sys
        from agentcast.transports.workers import bind_socket, supervise
        sock = bind_socket("127.0.0.1", 0)
        argv = [sys.executable, {str(tmp_path / "worker.py")!r}]
        sys.exit(supervise(2, sock, argv, lambda line: print(line, flush=True), 2.0, {grace}))
    """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source)], stdout=subprocess.PIPE, text=True
    )


def wait_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10 * UNIT
    while time.monotonic() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise TimeoutError(f"{path}: fewer than {count} lines")


def test_a_dead_worker_is_restarted_and_sigterm_stops_all(tmp_path: Path) -> None:
    log = tmp_path / "log"
    worker = f"""
        import os, signal, sys, time
        from pathlib import Path
        log = Path({str(log)!r})
        with log.open("a") as f:
            f.write(f"start:{{os.environ['AGENTCAST_WORKER']}} ")
        def bye(*_):
            with log.open("a") as f:
                f.write(f"term:{{os.environ['AGENTCAST_WORKER']}} ")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        if os.environ["AGENTCAST_WORKER"] == "1" and log.read_text().count("start:1") == 1:
            time.sleep(0.3)
            sys.exit(3)  # dies once, after its start-up
        while True:
            time.sleep(1)
    """
    proc = supervisor(tmp_path, worker, grace=0.1)
    try:
        lines = wait_lines(log, 3)  # worker 1 twice, worker 2 once
        assert sorted(lines) == ["start:1", "start:1", "start:2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10 * UNIT) == 0
        lines = log.read_text().split()
        assert sorted(line for line in lines if line.startswith("term:")) == ["term:1", "term:2"]
        out, _ = proc.communicate()
        assert "worker 1 (pid" in out and "exited with status 3: restarting" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_worker_dying_while_starting_stops_the_others(tmp_path: Path) -> None:
    log = tmp_path / "log"
    worker = f"""
        import os, signal, sys, time
        from pathlib import Path
        def bye(*_):
            with Path({str(log)!r}).open("a") as f:
                f.write(f"term:{{os.environ['AGENTCAST_WORKER']}} ")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        if os.environ["AGENTCAST_WORKER"] == "2":
            sys.exit(4)  # bad settings, say
        with Path({str(log)!r}).open("a") as f:
            f.write("ready:1 ")
        while True:
            time.sleep(1)
    """
    proc = supervisor(tmp_path, worker, grace=30)
    try:
        out, _ = proc.communicate(timeout=10 * UNIT)
        assert proc.returncode == 1
        assert "worker 2 exited with status 4 while starting: stopping" in out
        lines = wait_lines(log, 1)
        if "ready:1" in lines:  # worker 1 had started: it was stopped
            assert "term:1" in wait_lines(log, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_several_workers_need_a_shared_broker() -> None:
    with pytest.raises(ConfigError, match="needs a shared broker"):
        check_workers(Settings(workers=2))
    check_workers(Settings(workers=1))
    check_workers(Settings(workers=4, broker_url="redis://127.0.0.1:6379/0"))
