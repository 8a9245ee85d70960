"""Client frames in, typed commands out; server replies encoded to frames.

:func:`parse` turns one text frame into a :class:`~agentcast.core.frames.ClientCommand`
or raises :class:`~agentcast.errors.ProtocolError` with the exact reason. Other features
add commands with :func:`register` (the seeds' ``monitoring:subscribe``, ``chat:send``…).
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
    PublishCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from agentcast.errors import ProtocolError

__all__ = ["COMMANDS", "encode_reply", "error_frame", "parse", "register"]

COMMANDS: dict[str, type[ClientCommand]] = {}
_BARE_PING = PingCommand()


def register(model: type[ClientCommand], *names: str) -> None:
    """Make ``parse`` accept frames whose ``type`` is one of ``names`` as ``model``."""
    for name in names:
        COMMANDS[name] = model


register(SubscribeCommand, "subscribe")
register(UnsubscribeCommand, "unsubscribe")
register(PingCommand, "ping")
register(PublishCommand, "publish")


def parse(text: str) -> ClientCommand:
    """Parse one client text frame.

    The bare text ``ping`` is a :class:`PingCommand`. Anything else must be a JSON object
    with a string ``type`` naming a registered command and valid fields.
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
    model = COMMANDS.get(kind)
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
