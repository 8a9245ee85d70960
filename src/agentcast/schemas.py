"""JSON Schemas of wire protocol v1, generated from the pydantic models that define it.

Every frame model of :mod:`agentcast.core.frames` and the HTTP API's bodies are entries of
:data:`SCHEMAS`. ``python -m agentcast.schemas`` writes each one, as a JSON Schema (draft
2020-12), to ``docs/schemas/<name>.json`` (sorted keys, two-space indent, trailing newline,
so the files are stable under version control); ``python -m agentcast.schemas --check``
writes nothing and exits 1, naming the stale files, when the committed ones differ from the
models. ``tests/unit/test_docs.py`` runs the same check, and validates the example frames of
``docs/protocol.md`` with :meth:`SchemaEntry.validate`.

Names say who sends what: ``client.<command>`` for commands, ``server.<type>`` for frames
the server sends, ``http.<name>`` for HTTP bodies, ``data.<kind>.<type>`` for the ``data``
of the run vocabularies' events (validated on publish). Every command model in the command
table of a gateway with the default features (:func:`commands`) gets its schema
automatically (named after its class: ``ReplayStopCommand`` is ``client.replay-stop``),
with ``type`` pinned to the values that route to it. A feature that adds a server frame
or an HTTP body registers its model with :func:`register`, next to the built-in entries
at the end of this module.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from agentcast.chat.protocol import (
    AgentFrame,
    ChatAcceptedData,
    ChatCancelledData,
    ChatHistoryReplyData,
    ChatMessageData,
    ChatQueuedData,
    ChatStreamingData,
)
from agentcast.core.frames import (
    AckFrame,
    ErrorData,
    ErrorFrame,
    EventFrame,
    PingCommand,
    PongFrame,
    PresenceCommand,
    PresenceFrame,
    PublishCommand,
    SubscribeCommand,
    SubscribedFrame,
    UnsubscribeCommand,
    UnsubscribedFrame,
)
from agentcast.runs.vocabulary import EXECUTION_EVENTS, WORKFLOW_EVENTS
from agentcast.security.protocol import AuthenticatedFrame, TicketOut
from agentcast.transports.http import EventIn, HistoryOut, PresenceOut, PublishResult

__all__ = [
    "DIALECT",
    "SCHEMAS",
    "SCHEMA_DIR",
    "Direction",
    "HttpError",
    "PublishBody",
    "SchemaEntry",
    "check",
    "entries",
    "main",
    "register",
    "render",
    "render_all",
    "write",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"
"""``docs/schemas`` of a source checkout (``--dir`` chooses another directory)."""

Direction = Literal["client", "server", "http", "data"]

PublishBody = EventIn | Annotated[list[EventIn], Field(min_length=1)]
"""Body of ``POST /api/topics/{topic}/events``: one event, or a non-empty array of them."""


class HttpError(BaseModel):
    """Body of every HTTP error answer (``agentcast.web.http_error``)."""

    detail: ErrorData


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One schema: the model (or type) it is generated from and how.

    ``mode`` is pydantic's JSON Schema mode: ``validation`` for what the server accepts
    (commands, request bodies), ``serialization`` for what it sends.
    """

    name: str
    target: Any
    direction: Direction
    mode: JsonSchemaMode
    title: str | None = None
    description: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.json"

    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.target)

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of this entry."""
        target = self.target
        if isinstance(target, type) and issubclass(target, BaseModel):
            schema = target.model_json_schema(mode=self.mode)
        else:
            schema = self.adapter().json_schema(mode=self.mode)
        if self.title is not None:
            schema["title"] = self.title
        if self.description is not None:
            schema["description"] = self.description
        properties = schema.get("properties", {})
        required: list[str] = schema.get("required", [])
        if self.direction != "http" and "type" in properties and "type" not in required:
            # The models give ``type`` a default for convenience in Python; on the wire
            # every frame carries it (commands without it are refused with bad_frame).
            schema["required"] = ["type", *required]
        names = self.command_types()
        if names and "type" in properties:
            # the values `parse` routes to this model, whatever the model's annotation says
            pinned = {"const": names[0]} if len(names) == 1 else {"enum": list(names)}
            properties["type"] = {**properties["type"], **pinned, "type": "string"}
        return {"$schema": DIALECT, **schema}

    def command_types(self) -> tuple[str, ...]:
        """The command ``type`` values :func:`~agentcast.core.commands.parse` maps to this
        entry's model (client commands only; sorted)."""
        if self.direction != "client":
            return ()
        return tuple(sorted(name for name, model in commands().items() if model is self.target))

    def validate(self, text: str | bytes) -> Any:
        """Validate one JSON document against the model, strictly (no type coercion).

        Returns the validated value; raises :class:`pydantic.ValidationError`.
        """
        return self.adapter().validate_json(text, strict=True)


SCHEMAS: dict[str, SchemaEntry] = {}
"""Every registered schema by name, in registration order."""


def register(
    name: str,
    target: Any,
    direction: Direction,
    *,
    mode: JsonSchemaMode | None = None,
    title: str | None = None,
    description: str | None = None,
) -> SchemaEntry:
    """Add a schema to :data:`SCHEMAS` (written to ``docs/schemas/<name>.json``).

    ``target`` is a pydantic model or any type pydantic can validate. ``mode`` defaults to
    ``serialization`` for server frames and ``validation`` otherwise. Registering a name
    twice replaces the earlier entry.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad schema name {name!r}")
    if mode is None:
        mode = "serialization" if direction == "server" else "validation"
    entry = SchemaEntry(name, target, direction, mode, title, description)
    SCHEMAS[name] = entry
    return entry


def _command_schema_name(model: type[Any]) -> str:
    stem = model.__name__.removesuffix("Command") or model.__name__
    kebab = "".join(f"-{c.lower()}" if c.isupper() else c for c in stem).lstrip("-")
    return f"client.{kebab}"


EXTRA_COMMANDS: dict[str, type[Any]] = {}
"""Commands of features outside the default set that should get schemas too."""


def commands() -> dict[str, type[Any]]:
    """Every command type a gateway with the default features understands, with its
    model (read from such a gateway's command table), plus :data:`EXTRA_COMMANDS`."""
    from agentcast.app import create_gateway
    from agentcast.settings import Settings

    table = create_gateway(Settings(store_url="")).commands.models
    return {**table, **EXTRA_COMMANDS}


def entries() -> dict[str, SchemaEntry]:
    """:data:`SCHEMAS`, after adding every command model of :func:`commands` that has no
    entry yet."""
    registered = {entry.target for entry in SCHEMAS.values()}
    for model in dict.fromkeys(commands().values()):
        if model not in registered:
            name = _command_schema_name(model)
            if name in SCHEMAS:
                raise ValueError(f"schema {name!r} exists for another model than {model!r}")
            register(name, model, "client")
            registered.add(model)
    return SCHEMAS


def render(entry: SchemaEntry) -> str:
    """The file content of one schema: sorted keys, two-space indent, trailing newline."""
    return json.dumps(entry.schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name to content for every registered schema."""
    return {entry.filename: render(entry) for entry in entries().values()}


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema into ``directory`` and delete ``*.json`` files no entry produces.

    Returns the names of the files that changed (written or deleted).
    """
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render_all()
    changed = []
    for filename, text in wanted.items():
        path = directory / filename
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(filename)
    for path in sorted(directory.glob("*.json")):
        if path.name not in wanted:
            path.unlink()
            changed.append(path.name)
    return changed


def check(directory: Path = SCHEMA_DIR, *, context: int = 1) -> list[str]:
    """Problems with the schema files in ``directory``; empty when they are current.

    Each problem is one line (missing, unexpected) or a short unified diff (stale).
    """
    wanted = render_all()
    problems = []
    for filename, text in wanted.items():
        path = directory / filename
        if not path.is_file():
            problems.append(f"missing: {path}")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(),
                text.splitlines(),
                f"{path} (committed)",
                f"{path} (generated)",
                n=context,
                lineterm="",
            )
            lines = list(diff)
            shown = lines[:40]
            if len(lines) > len(shown):
                shown.append(f"… {len(lines) - len(shown)} more diff lines")
            problems.append("stale: " + "\n".join(shown))
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            if path.name not in wanted:
                problems.append(f"unexpected (no registered schema): {path}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentcast.schemas [--check] [--dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m agentcast.schemas",
        description="Write the JSON Schemas of wire protocol v1, or check they are current.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when files are stale"
    )
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help=f"default: {SCHEMA_DIR}")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        problems = check(directory)
        if problems:
            for problem in problems:
                print(problem, file=sys.stderr)
            print(
                f"{len(problems)} schema file(s) out of date: run `python -m agentcast.schemas`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(entries())} schemas in {directory} are current")
        return 0
    changed = write(directory)
    print(f"{len(entries())} schemas in {directory}; {len(changed)} changed")
    for filename in changed:
        print(f"  {filename}")
    return 0


# -- the built-in entries: wire protocol v1 ---------------------------------------------

register("client.subscribe", SubscribeCommand, "client")
register("client.unsubscribe", UnsubscribeCommand, "client")
register("client.ping", PingCommand, "client")
register("client.publish", PublishCommand, "client")
register("client.presence", PresenceCommand, "client")

register("server.event", EventFrame, "server")
register("server.subscribed", SubscribedFrame, "server")
register("server.unsubscribed", UnsubscribedFrame, "server")
register("server.pong", PongFrame, "server")
register("server.presence", PresenceFrame, "server")
register("server.ack", AckFrame, "server")
register("server.error", ErrorFrame, "server")

register(
    "http.publish-body",
    PublishBody,
    "http",
    title="PublishBody",
    description="Body of POST /api/topics/{topic}/events: one event object, or a non-empty "
    "JSON array of them (published in order, all validated before any is published).",
)
register("http.publish-result", PublishResult, "http", mode="serialization")
register("http.history", HistoryOut, "http", mode="serialization")
register("http.presence", PresenceOut, "http", mode="serialization")
register("http.error", HttpError, "http", mode="serialization")
for _kind, _model in EXECUTION_EVENTS.items():
    register(
        f"data.execution.{_kind}",
        _model,
        "data",
        description=f"`data` of a `{_kind}` event on execution:<id> (seed 000).",
    )
for _kind, _model in WORKFLOW_EVENTS.items():
    register(
        f"data.workflow.{_kind}",
        _model,
        "data",
        description=f"`data` of a `{_kind}` event on workflow:<id> (seed 004).",
    )
_chat_data: tuple[tuple[str, type[BaseModel]], ...] = (
    ("message", ChatMessageData),
    ("streaming", ChatStreamingData),
    ("queued", ChatQueuedData),
)
for _name, _data_model in _chat_data:
    register(
        f"data.chat.{_name}",
        _data_model,
        "data",
        mode="serialization",
        description=f"`data` of a `chat:{_name}` event on chat:<conversation_id> (seed 001).",
    )
register(
    "data.chat.history",
    ChatHistoryReplyData,
    "data",
    mode="serialization",
    description="`data` of the `chat:history` reply.",
)
register(
    "data.chat.accepted",
    ChatAcceptedData,
    "data",
    mode="serialization",
    description="`data` of the `chat:accepted` reply.",
)
register(
    "data.chat.cancelled",
    ChatCancelledData,
    "data",
    mode="serialization",
    description="`data` of the `chat:cancelled` reply.",
)
register("server.authenticated", AuthenticatedFrame, "server")
register("http.ticket", TicketOut, "http", mode="serialization")
register(
    "seed003.agent-frame",
    AgentFrame,
    "data",
    mode="serialization",
    description="Every frame of seed 003's endpoint /api/v1/ws/{agent_id}.",
)
entries()  # the commands of every feature the gateway loads (seed 001, runs, …)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
