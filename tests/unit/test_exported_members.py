"""The curated public API (changing it is a release note), and the naming rules of the
package's exceptions and close codes."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import agentcast
import agentcast.client
import agentcast.errors
from agentcast.codes import CLOSE_CODES, CloseCode

SRC = Path(agentcast.__file__).parent
PROTOCOL = (SRC.parent.parent / "docs" / "protocol.md").read_text()


def test_exported_members() -> None:
    assert sorted(agentcast.__all__) == sorted(
        [
            "AgentcastError",
            "AuthenticationError",
            "BrokerError",
            "ClientError",
            "CloseCode",
            "CommandError",
            "ConfigError",
            "ConnectionClosedError",
            "ConnectionRequest",
            "ErrorCode",
            "Feature",
            "Gateway",
            "HistoryLostError",
            "OpenPolicy",
            "Principal",
            "ProtocolError",
            "Publication",
            "Settings",
            "SocketEndpoint",
            "__version__",
            "create_gateway",
            "default_features",
            "load_settings",
        ]
    )
    for name in agentcast.__all__:
        assert getattr(agentcast, name) is not None


def test_client_exported_members() -> None:
    assert sorted(agentcast.client.__all__) == sorted(
        [
            "Client",
            "ClientError",
            "CommandFailedError",
            "ConnectionClosedError",
            "ConnectionLostError",
            "Event",
            "HandshakeRefusedError",
            "HistoryLost",
            "HistoryLostError",
            "Retry",
            "Snapshot",
            "Subscription",
            "connect",
            "ws_url_of",
        ]
    )
    for name in agentcast.client.__all__:
        assert getattr(agentcast.client, name) is not None


@pytest.mark.parametrize(
    ("old", "new"),
    [("CommandFailed", "CommandFailedError"), ("HandshakeRefused", "HandshakeRefusedError")],
)
def test_deprecated_client_names_still_work_and_warn(old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"agentcast.client.{old} is deprecated, use"):
        alias = getattr(agentcast.client, old)
    assert alias is getattr(agentcast.client, new)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        exec(f"from agentcast.client import {old}", {})
    with pytest.raises(AttributeError, match="no attribute 'CommandFaild'"):
        agentcast.client.CommandFaild  # noqa: B018


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in the package, by name (each name once)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(agentcast.__path__, "agentcast."):
        if ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == info.name
            ):
                assert found.get(obj.__name__, obj) is obj, f"two classes named {obj.__name__}"
                found[obj.__name__] = obj
    return found


def test_every_exception_is_named_error() -> None:
    classes = exception_classes()
    assert len(classes) > 20
    assert [name for name in classes if not name.endswith("Error")] == []


def test_one_class_of_each_exception_name() -> None:
    """No other class of the package (an event model, say) takes an exception's name."""
    names = exception_classes()
    clashes = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ClassDef)
                and node.name in names
                and names[node.name].__module__.replace(".", "/") not in str(path)
            ):
                clashes.append(f"{path.relative_to(SRC)}: {node.name}")
    assert clashes == []


def documented_tree() -> dict[str, str | None]:
    """The exception tree of agentcast/errors.py's docstring: each name and its parent."""
    doc = agentcast.errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    indent = 0
    for line in doc.split("::", 1)[1].split("\n\n", 2)[1].splitlines():
        found = re.search(r"[├└]── (\w+)", line)
        if found is None:
            if re.fullmatch(r"\s*(\w+Error)\s*", line):  # the root
                stack = [line.strip()]
                indent = len(line) - len(line.lstrip())
                parents[stack[0]] = None
            continue
        depth = (found.start() - indent) // 4 + 1
        del stack[depth:]
        parents[found[1]] = stack[-1]
        stack.append(found[1])
    return parents


def test_the_documented_tree_is_the_real_one() -> None:
    """agentcast/errors.py's tree names every exception class of the package with its
    real parent; the internal ones are named in the paragraph after it."""
    classes = exception_classes()
    tree = documented_tree()
    internal = set(re.findall(r"``(_\w+Error)``", agentcast.errors.__doc__ or ""))
    assert set(tree) | internal == set(classes)
    for name, parent in tree.items():
        if parent is not None:
            assert classes[parent] in classes[name].__bases__, (name, parent)
    root = classes["AgentcastError"]
    public = [cls for name, cls in classes.items() if not name.startswith("_")]
    assert all(issubclass(cls, root) for cls in public)


RESERVED = {code for code, info in CLOSE_CODES.items() if info.reserved}
SENDERS_EXEMPT = {"codes.py", "client"}
"""Where reserved codes may be named: the table itself, and the client (which maps HTTP
refusals to them and never sends a server's close code)."""


def test_reserved_close_codes_are_not_sent() -> None:
    assert {CloseCode.NORMAL} <= RESERVED  # 4500 is sent since JWT authentication (issue 11)
    values = {int(code) for code in RESERVED}
    uses = []
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        if relative.parts[0] in SENDERS_EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "CloseCode"
                and node.attr in {code.name for code in RESERVED}
            ):
                uses.append(f"{relative}:{node.lineno} CloseCode.{node.attr}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and "close" in node.func.attr
                and any(
                    isinstance(arg, ast.Constant) and arg.value in values
                    for arg in [*node.args, *(kw.value for kw in node.keywords)]
                )
            ):
                uses.append(f"{relative}:{node.lineno} a literal reserved code")
    assert uses == []


def test_protocol_doc_marks_the_reserved_codes() -> None:
    rows = re.findall(r"^\| (\d{4}) \| ([^|]*) \|", PROTOCOL, re.M)
    marked = {int(code) for code, meaning in rows if "(reserved" in meaning}
    assert marked == {int(code) for code in RESERVED}
