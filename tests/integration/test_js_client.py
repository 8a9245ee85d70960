"""The TypeScript client (``clients/js``) from pytest, so that CI runs its checks.

``npm ci`` (when ``node_modules`` is missing or older than ``package-lock.json``), then
``npm run gen:check`` (the generated types and doc examples match ``docs/schemas/`` and the docs), ``npm test`` (tsc, then
vitest against real ``agentcast serve`` processes started with this interpreter and this
checkout's source) and ``npm run build`` (the package's two entry points import by name).
Without node or npm the tests skip, and fail under ``AGENTCAST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import require_service

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
TIMEOUT = 600.0

# npm ci and the vitest suite (a dozen server processes) may take longer than the default timeout
pytestmark = pytest.mark.timeout(900)


def npm_env() -> dict[str, str]:
    """The environment the npm scripts run in: the servers are this interpreter and source."""
    path = os.environ.get("PYTHONPATH")
    src = str(ROOT / "src")
    return {
        **os.environ,
        "AGENTCAST_PYTHON": sys.executable,
        "PYTHONPATH": src if not path else f"{src}{os.pathsep}{path}",
        "CI": os.environ.get("CI", "true"),
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
    }


def npm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``npm <args>`` in clients/js; fail the test with its output when it fails."""
    proc = subprocess.run(
        ["npm", *args],
        cwd=JS,
        env=npm_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"npm {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


@pytest.fixture(scope="module")
def installed() -> None:
    """node ≥ 20 and npm on PATH, and clients/js's dependencies installed (``npm ci``)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        require_service("node and npm are not installed (clients/js needs Node 20+)")
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        require_service(f"node {version} is too old (clients/js needs Node 20+)")
    installed = JS / "node_modules" / ".package-lock.json"  # what npm last installed
    lock = JS / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm("ci", "--no-audit", "--no-fund")  # missing, or older than the lock file


def test_generated_files_are_current(installed: None) -> None:
    out = npm("run", "gen:check").stdout
    assert "are current" in out


def test_npm_test_passes_against_real_servers(installed: None) -> None:
    out = npm("test").stdout
    assert " passed" in out and " failed" not in out, out[-4000:]


def test_the_package_builds_and_imports_by_name(installed: None) -> None:
    npm("run", "build")
    for entry, name in (
        ("@agentcast/client", "AgentcastClient"),
        ("@agentcast/client/react", "useWorkflowRun"),
    ):
        proc = subprocess.run(
            [
                "node",
                "--input-type=module",
                "-e",
                f"const m = await import('{entry}'); console.log(typeof m.{name});",
            ],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.stdout.strip() == "function", proc.stdout + proc.stderr
