"""The documentation cannot drift from the code.

* ``docs/schemas/*.json`` are exactly what ``python -m agentcast.schemas`` generates, and
  every frame and command model has a schema.
* ``docs/codes.md`` is exactly ``agentcast.codes.render_markdown()``.
* ``docs/protocol.md`` names every close code and error code, and every one of its
  ```` ```json ```` blocks is an example preceded by ``<!-- example: NAME -->`` that
  validates (strictly, with the pydantic models) against schema ``NAME``, with no field the
  model does not declare; ``<!-- example: NAME extra=a,b -->`` allows top-level fields
  ``a`` and ``b``, and ``<!-- example: unchecked (why) -->`` marks a block that no model
  describes yet. Every registered schema has at least one example.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from agentcast import schemas
from agentcast.codes import CLOSE_CODES, CloseCode, ErrorCode, render_markdown
from agentcast.core import frames
from agentcast.core.commands import CommandTable
from agentcast.schemas import SCHEMAS, SchemaEntry, check, entries, main, render_all, write

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PROTOCOL = (DOCS / "protocol.md").read_text(encoding="utf-8")

_MARKED = re.compile(
    r"<!-- example: (?P<name>\S+)(?: extra=(?P<extra>[\w,:-]+))?(?: \([^)]*\))? -->\n"
    r"```json\n(?P<body>.*?)\n```",
    re.DOTALL,
)
_JSON_BLOCK = re.compile(r"^```json$", re.MULTILINE)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _examples() -> list[tuple[str, frozenset[str], str]]:
    return [
        (m["name"], frozenset(filter(None, (m["extra"] or "").split(","))), m["body"])
        for m in _MARKED.finditer(PROTOCOL)
    ]


EXAMPLES = [(name, extra, body) for name, extra, body in _examples() if name != "unchecked"]


# -- generated files ----------------------------------------------------------------------


def test_committed_schemas_are_current() -> None:
    problems = check(DOCS / "schemas")
    assert not problems, "\n".join(problems) + "\nrun `python -m agentcast.schemas`"


def test_codes_md_is_current() -> None:
    committed = (DOCS / "codes.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), "run `python -m agentcast.codes > docs/codes.md`"


def test_every_frame_model_and_command_has_a_schema() -> None:
    registered = {entry.target for entry in entries().values()}
    bases = {frames.ClientCommand, frames.ServerFrame}
    models = [
        obj
        for name in frames.__all__
        if inspect.isclass(obj := getattr(frames, name))
        and issubclass(obj, BaseModel)
        and obj not in bases
    ]
    assert models
    assert [m.__name__ for m in models if m not in registered] == []
    assert (
        sorted({name for name, model in schemas.commands().items() if model not in registered})
        == []
    )


def test_schema_files_are_stable_json() -> None:
    for entry in SCHEMAS.values():
        text = schemas.render(entry)
        schema = json.loads(text)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert text.endswith("}\n")
        assert text == json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        if entry.direction in ("client", "server"):  # frames; http bodies and data are not
            assert "type" in schema["required"], entry.name


def test_command_schemas_pin_the_routed_types() -> None:
    subscribe = SCHEMAS["client.subscribe"].schema()
    assert subscribe["properties"]["type"]["const"] == "subscribe"
    task = SCHEMAS["client.task"].schema()
    assert task["properties"]["type"]["enum"] == ["task:subscribe", "task:unsubscribe"]
    assert SCHEMAS["server.event"].command_types() == ()


# -- the generator ------------------------------------------------------------------------


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "schemas"
    assert main(["--check", "--dir", str(directory)]) == 1
    assert "missing:" in capsys.readouterr().err

    assert main(["--dir", str(directory)]) == 0
    assert sorted(p.name for p in directory.iterdir()) == sorted(render_all())
    assert check(directory) == []
    assert write(directory) == []  # nothing changes the second time
    assert main(["--check", "--dir", str(directory)]) == 0

    event = directory / "server.event.json"
    event.write_text(event.read_text().replace('"seq"', '"sequence"'), encoding="utf-8")
    (directory / "server.old.json").write_text("{}\n", encoding="utf-8")
    problems = check(directory)
    assert len(problems) == 2
    assert problems[0].startswith("stale: ") and "+" in problems[0] and "sequence" in problems[0]
    assert problems[1].startswith("unexpected")
    assert main(["--check", "--dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "2 schema file(s) out of date" in err

    assert sorted(write(directory)) == ["server.event.json", "server.old.json"]
    assert check(directory) == []


def test_register_more_models(tmp_path: Path) -> None:
    class ShoutCommand(frames.ClientCommand):
        text: str

    try:
        entry = schemas.register("client.shout", ShoutCommand, "client")
        assert entry.mode == "validation" and entry.filename == "client.shout.json"
        assert SCHEMAS["client.shout"] is entry
        assert "client.shout.json" in render_all()
        assert entry.schema()["required"] == ["type", "text"]
        assert entry.validate('{"type": "shout", "text": "hi"}').text == "hi"
        with pytest.raises(ValidationError):
            entry.validate('{"type": "shout", "text": 5}')  # strict: no coercion
    finally:
        del SCHEMAS["client.shout"]
    with pytest.raises(ValueError):
        schemas.register("../escape", ShoutCommand, "client")
    assert schemas.register("server.x", frames.PongFrame, "server").mode == "serialization"
    del SCHEMAS["server.x"]


def test_commands_registered_later_get_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    class LoudShoutCommand(frames.ClientCommand):
        text: str

    monkeypatch.setitem(schemas.EXTRA_COMMANDS, "loud:shout", LoudShoutCommand)
    monkeypatch.setitem(schemas.EXTRA_COMMANDS, "loud:whisper", LoudShoutCommand)
    try:
        entry = entries()["client.loud-shout"]
        assert entry.target is LoudShoutCommand
        assert entry.schema()["properties"]["type"]["enum"] == ["loud:shout", "loud:whisper"]
        assert "client.loud-shout.json" in render_all()

        class Impostor(frames.ClientCommand):
            pass

        Impostor.__name__ = "LoudShoutCommand"
        monkeypatch.setitem(schemas.EXTRA_COMMANDS, "impostor", Impostor)
        with pytest.raises(ValueError, match="another model"):
            entries()
    finally:
        SCHEMAS.pop("client.loud-shout", None)


# -- docs/protocol.md ---------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_protocol_names_every_error_code(code: ErrorCode) -> None:
    assert f"`{code.value}`" in PROTOCOL


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: str(int(c)))
def test_protocol_names_every_close_code(code: CloseCode) -> None:
    assert re.search(rf"\b{int(code)}\b", PROTOCOL), CLOSE_CODES[code].reason


def test_protocol_links_the_code_tables() -> None:
    assert "(codes.md)" in PROTOCOL


def test_every_json_block_is_a_marked_example() -> None:
    blocks = len(_JSON_BLOCK.findall(PROTOCOL))
    assert blocks == len(_examples()), "precede every ```json block with <!-- example: NAME -->"
    assert len(EXAMPLES) >= len(SCHEMAS)


def test_every_schema_has_an_example() -> None:
    shown = {name for name, _, _ in EXAMPLES}
    assert sorted(set(entries()) - shown) == []
    assert sorted(shown - set(entries())) == []


def _extras(value: Any) -> set[str]:
    if isinstance(value, list):
        return set().union(*(_extras(item) for item in value))
    if isinstance(value, BaseModel):
        return set(value.model_extra or ())
    return set()


@pytest.mark.parametrize(
    ("name", "extra", "body"), EXAMPLES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXAMPLES)]
)
def test_protocol_example_is_valid(name: str, extra: frozenset[str], body: str) -> None:
    entry: SchemaEntry = SCHEMAS[name]
    wire = json.loads(body)
    value = entry.validate(body)
    # no field the model does not declare (nested models ignore unknown fields: compare)
    assert _extras(value) <= extra, f"undeclared fields {_extras(value) - extra}"
    dumped = entry.adapter().dump_python(value, mode="json", exclude_unset=True)
    assert dumped == wire, "the example has fields the model drops"
    if entry.direction == "client":
        table = CommandTable()
        table.models = schemas.commands()
        command = table.parse(body)
        assert type(command) is entry.target and command.type == wire["type"]
    if entry.direction == "server":
        assert wire["type"] and _TIMESTAMP.match(wire["timestamp"]), wire["timestamp"]
        if "seq" in wire and name != "server.event":
            pytest.fail("only topic events carry seq")
