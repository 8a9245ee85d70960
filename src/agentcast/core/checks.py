"""The checks every published event passes, whatever its producer: pure, no I/O.

:func:`check_event` validates the topic, the type and the data object, runs the features'
validators (which may return the data with defaults filled in) and encodes the data to
JSON once, within the size bound. It raises :class:`~agentcast.errors.ProtocolError`
naming the field, and nothing else for bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agentcast.codes import ErrorCode
from agentcast.core.envelope import encode_json
from agentcast.core.frames import valid_topic
from agentcast.errors import ProtocolError

__all__ = ["MAX_TYPE_LENGTH", "check_event"]

MAX_TYPE_LENGTH = 100

Validator = Callable[[str, str, dict[str, Any]], dict[str, Any] | None]


def check_event(
    topic: str, type: str, data: Any, validators: Iterable[Validator], max_bytes: int
) -> bytes:
    """The encoded ``data`` of a valid event; raises :class:`ProtocolError` otherwise.

    ``data`` is a JSON object (any mapping; validators get a dict), or bytes already
    encoded by a trusted caller (validators are skipped for those). At most ``max_bytes``
    once encoded.
    """
    if not valid_topic(topic):
        raise ProtocolError(ErrorCode.INVALID_TOPIC, f"invalid topic {topic!r}", field="topic")
    if not isinstance(type, str) or not 0 < len(type) <= MAX_TYPE_LENGTH:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"type must be a string of 1-{MAX_TYPE_LENGTH} characters",
            field="type",
        )
    if isinstance(data, bytes):
        payload = data
    else:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "data must be a JSON object", field="data")
        if not isinstance(data, dict):  # a read-only view, another Mapping type
            data = dict(data)
        for validate in validators:
            checked = validate(topic, type, data)
            if checked is not None:
                data = checked
        try:
            payload = encode_json(data)
        except TypeError as exc:
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"data: {exc}", field="data") from None
    if len(payload) > max_bytes:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"data is {len(payload)} bytes, more than max_event_bytes ({max_bytes})",
            field="data",
        )
    return payload
