"""The import contract: the core does no I/O and knows no framework.

Checks every module under agentcast/core statically: no forbidden imports, no
``async def``, no clock reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agentcast.core

CORE = Path(agentcast.core.__file__).parent
FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "threading",
    "time",
    "uvicorn",
    "starlette",
    "fastapi",
    "websockets",
    "httpx",
    "redis",
    "sqlalchemy",
    "prometheus_client",
    "agentcast.gateway",
    "agentcast.transports",
    "agentcast.brokers",
    "agentcast.cluster",
    "agentcast.client",
    "agentcast.cli",
}
CLOCK_CALLS = {"now", "utcnow", "time", "monotonic", "perf_counter", "today"}


def modules() -> list[Path]:
    found = sorted(CORE.glob("*.py"))
    assert len(found) >= 8
    return found


def test_core_imports_nothing_forbidden() -> None:
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), (
                    path.name,
                    name,
                )


def test_core_has_no_coroutines_and_reads_no_clock() -> None:
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.AsyncFunctionDef | ast.Await), (path.name, node.lineno)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in CLOCK_CALLS, (path.name, node.lineno, node.func.attr)


# -- the layers around the core ------------------------------------------------------------

PACKAGE = CORE.parent
FEATURES = (
    "agentcast.runs",
    "agentcast.chat",
    "agentcast.monitoring",
    "agentcast.metrics",
    "agentcast.storage",
    "agentcast.security.feature",
    "agentcast.dashboard",
)
"""Feature packages (and the store they share): the gateway knows none of them. The
security package's policies (``security.origin``, ``security.ownership``,
``security.credentials``) are not features: the gateway and the transports use them."""


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, top level or inside functions (lazy imports count)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_gateway_imports_no_feature() -> None:
    for module in ("gateway.py", "plugin.py", "policy.py", "brokers"):
        paths = (
            sorted((PACKAGE / module).glob("*.py")) if module == "brokers" else [PACKAGE / module]
        )
        for path in paths:
            bad = [name for name in _imports(path) if _under(name, FEATURES)]
            assert bad == [], (path.name, bad)


def test_features_import_no_transport() -> None:
    paths = [PACKAGE / "monitoring.py", PACKAGE / "metrics.py"]
    for package in ("runs", "chat", "storage", "security", "dashboard"):
        paths += sorted((PACKAGE / package).rglob("*.py"))
    assert len(paths) > 10
    for path in paths:
        bad = [name for name in _imports(path) if _under(name, ("agentcast.transports",))]
        assert bad == [], (str(path.relative_to(PACKAGE)), bad)


def test_transports_import_no_feature() -> None:
    for path in sorted((PACKAGE / "transports").glob("*.py")):
        bad = [name for name in _imports(path) if _under(name, FEATURES)]
        assert bad == [], (path.name, bad)


def test_only_the_metrics_feature_imports_prometheus() -> None:
    """The hot path pays nothing for /metrics: the gateway, the core, the brokers and the
    transports keep plain counters; only ``agentcast/metrics.py`` knows prometheus-client
    (it reads those counters at scrape time)."""
    importers = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if any(_under(name, ("prometheus_client",)) for name in _imports(path))
    ]
    assert importers == ["metrics.py"]
