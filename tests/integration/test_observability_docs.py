"""docs/observability.md against the real thing: its metric table is exactly what
``/metrics`` exposes (names, types, labels), its ``sh`` example runs against a server,
its scrape configuration and JSON examples have the shapes the server really uses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agentcast.brokers.memory import MemoryBroker
from agentcast.logs import JsonFormatter
from tests.conftest import UNIT, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S)
SECRET = "obs-docs-secret-" + "o" * 32


class CountingMemoryBroker(MemoryBroker):
    """The in-memory broker with the counters a broker with a server keeps (so that the
    broker rows of the table are exposed too)."""

    def metrics(self) -> dict[str, int]:
        return {"round_trips": 5, "errors": 1, "reconnects": 2}


def documented() -> dict[str, tuple[str, set[str]]]:
    """The table: metric -> (type, labels)."""
    rows = re.findall(r"^\| `(agentcast_[a-z_]+)` \| (\w+) \|([^|]*)\|", DOC, flags=re.M)
    assert len(rows) > 20
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def exposed(text: str) -> dict[str, tuple[str, set[str] | None]]:
    """What an exposition holds: metric -> (type, labels; None when it has no sample)."""
    types = dict(re.findall(r"^# TYPE (agentcast_\w+) (\w+)$", text, flags=re.M))
    labels: dict[str, set[str] | None] = dict.fromkeys(types)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = next((n for n in types if sample.name.startswith(n)), None)
            if name is None:
                continue
            seen = labels[name] or set()
            labels[name] = seen | (set(sample.labels) - {"le"})
    return {name: (kind, labels[name]) for name, kind in types.items()}


def test_the_doc_has_the_examples_this_test_checks() -> None:
    assert [kind for kind, _ in BLOCKS] == ["sh", "yaml", "json", "json"]


async def test_the_metric_table_is_what_metrics_exposes() -> None:
    running, task = await start_server("native", broker=CountingMemoryBroker())
    try:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{running.url}/metrics", timeout=UNIT)).text
    finally:
        await stop_server(running, task)
    table, found = documented(), exposed(text)
    assert sorted(found) == sorted(table), "docs/observability.md's table drifted"
    for name, (kind, labels) in table.items():
        assert found[name][0] == kind, name
        if found[name][1] is not None:  # families with samples show their labels
            assert found[name][1] == labels, name
    assert all(n in text for n in ("process_cpu_seconds_total", "process_resident_memory"))


async def test_the_curl_example_runs() -> None:
    running, task = await start_server("native", jwt_secret=SECRET)
    try:
        (script,) = [body for kind, body in BLOCKS if kind == "sh"]
        script = script.replace("127.0.0.1:8000", f"127.0.0.1:{running.port}")
        agentcast = f"{sys.executable} -m agentcast.cli"
        script = script.replace("$(agentcast ", f"$({agentcast} ")
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=30 * UNIT,
            env={**os.environ, "AGENTCAST_JWT_SECRET": SECRET},
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert 'agentcast_connections{transport="native"} 0.0' in lines, lines
    finally:
        await stop_server(running, task)


def test_the_scrape_config_sends_a_bearer_token_to_metrics() -> None:
    (body,) = [b for kind, b in BLOCKS if kind == "yaml"]
    job = yaml.safe_load(body)["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"


async def test_the_readyz_example_has_the_real_shape(tmp_path: Path) -> None:
    (example,) = [json.loads(b) for kind, b in BLOCKS if kind == "json" and "checks" in b]
    running, task = await start_server("native", store_url=f"sqlite:///{tmp_path / 'r.db'}")
    try:
        async with httpx.AsyncClient() as client:
            real = (await client.get(f"{running.url}/readyz", timeout=5 * UNIT)).json()
    finally:
        await stop_server(running, task)
    assert set(example["checks"]) == set(real["checks"])
    assert set(example) == {*real, "not_ready"}
    assert example["not_ready"] == [k for k, v in example["checks"].items() if v != "ok"]


def test_the_log_line_example_is_what_the_formatter_writes() -> None:
    (example,) = [json.loads(b) for kind, b in BLOCKS if kind == "json" and "logger" in b]
    record = logging.LogRecord(
        "agentcast", logging.DEBUG, __file__, 1, "connection %d opened", (1,), None
    )
    record.connection = 1
    record.user = "alice"
    real: dict[str, Any] = json.loads(JsonFormatter().format(record))
    assert set(real) == set(example)
    assert {k: real[k] for k in ("level", "logger", "message", "connection", "user")} == {
        k: example[k] for k in ("level", "logger", "message", "connection", "user")
    }
