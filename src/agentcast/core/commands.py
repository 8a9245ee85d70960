"""Client frames in, typed commands out; server replies encoded to frames.

A :class:`CommandTable` maps command ``type`` names to their models. Every gateway owns
one, seeded with :data:`CORE_COMMANDS`; features add theirs when they install (the
seeds' ``monitoring:subscribe``, ``chat:send``…). :meth:`CommandTable.parse` turns one
text frame into a :class:`~agentcast.core.frames.ClientCommand` or raises
:class:`~agentcast.errors.ProtocolError` with the exact reason, and nothing else.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from agentcast.codes import ErrorCode
from agentcast.core.envelope import frame_text
from agentcast.core.frames import (
    ClientCommand,
    PingCommand,
    PresenceCommand,
    PublishCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from agentcast.errors import ProtocolError

__all__ = ["CORE_COMMANDS", "CommandTable", "encode_reply", "error_frame", "parse"]

CORE_COMMANDS: dict[str, type[ClientCommand]] = {
    "subscribe": SubscribeCommand,
    "unsubscribe": UnsubscribeCommand,
    "ping": PingCommand,
    "publish": PublishCommand,
    "presence": PresenceCommand,
}
"""The commands every gateway understands, whatever its features."""
_BARE_PING = PingCommand()


class CommandTable:
    """Command ``type`` names and their models, for one gateway.

    Starts with :data:`CORE_COMMANDS`; :meth:`add` registers a feature's commands. A name
    can be registered once: a second registration raises ``ValueError`` at install time
    rather than silently replacing another feature's command.
    """

    __slots__ = ("models",)

    def __init__(self) -> None:
        self.models: dict[str, type[ClientCommand]] = dict(CORE_COMMANDS)

    def add(self, model: type[ClientCommand], *names: str) -> None:
        """Make :meth:`parse` accept frames whose ``type`` is one of ``names`` as ``model``."""
        for name in names:
            if name in self.models:
                raise ValueError(f"command {name!r} is registered already")
        for name in names:
            self.models[name] = model

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def parse(self, text: str) -> ClientCommand:
        """Parse one client text frame (see :func:`parse`) against this table."""
        return parse(text, self.models)


def parse(text: str, models: dict[str, type[ClientCommand]] = CORE_COMMANDS) -> ClientCommand:
    """Parse one client text frame against ``models`` (the core commands by default).

    The bare text ``ping`` is a :class:`PingCommand`. Anything else must be a JSON object
    with a string ``type`` naming a known command and valid fields. Raises
    :class:`ProtocolError` (and nothing else) for every frame that is not a valid command.
    """
    if text == "ping":
        return _BARE_PING
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a command must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a command needs a string 'type'", field="type")
    model = models.get(kind)
    if model is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND, f"unknown command type {kind!r}", field="type"
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else None  # not union member tags
        invalid_topic = field == "topic" and err["type"] != "missing"
        code = ErrorCode.INVALID_TOPIC if invalid_topic else ErrorCode.INVALID_FIELD
        raise ProtocolError(code, f"{field}: {err['msg']}", field=field) from None


def command_id(text: str) -> Any:
    """Best-effort ``id`` of a frame that failed to parse (so the error can echo it)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        cid = obj.get("id")
        if isinstance(cid, str | int) and not isinstance(cid, bool):
            return cid
    return None


def encode_reply(kind: str, timestamp: str, data: Any, *, id: Any = None, **extra: Any) -> bytes:
    """A framed server reply ``{"type", "timestamp", "data", "id"?, **extra}``."""
    obj: dict[str, Any] = {"type": kind}
    obj.update(extra)
    if id is not None:
        obj["id"] = id
    obj["timestamp"] = timestamp
    obj["data"] = data
    return frame_text(orjson.dumps(obj))


def error_frame(exc: ProtocolError, timestamp: str, *, id: Any = None) -> bytes:
    """The framed ``error`` reply for ``exc``."""
    return encode_reply("error", timestamp, exc.to_data(), id=id)
