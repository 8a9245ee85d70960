"""The event envelope: a publication encoded once to JSON and framed once.

A :class:`Publication` is what the broker stores and delivers: a topic, its gapless
sequence number, an event type, an ISO-8601 UTC timestamp and the event's ``data``
already serialized to JSON bytes. Its wire form is::

    {"type": T, "topic": TOPIC, "seq": N, "timestamp": "…Z", "data": {…}}

built by splicing the pre-encoded pieces (``data`` is never re-serialized), then framed
as one unmasked WebSocket text frame. Both are computed at most once per publication and
the same bytes go to every subscriber.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["Publication", "encode_json", "format_timestamp", "frame_text", "payload_of_frame"]

_ENVELOPE = b'{"type":%b,"topic":%b,"seq":%d,"timestamp":"%b","data":%b}'
_dumps = orjson.dumps
_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack


def frame_text(payload: bytes) -> bytes:
    """One final, unmasked RFC 6455 text frame carrying ``payload`` (server to client).

    Equivalent to ``websockets.frames.Frame(Opcode.TEXT, payload).serialize(mask=False,
    extensions=[])`` (a unit test checks it), at about a tenth of its cost: this runs once per
    published event and once per control frame, and the connections that receive these
    bytes never negotiate extensions.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _PACK_16(0x81, 126, n) + payload
    return _PACK_64(0x81, 127, n) + payload


def payload_of_frame(frame: bytes) -> bytes:
    """The payload of a frame made by :func:`frame_text` (for transports that frame themselves)."""
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else 4 if n == 126 else 10 :]


def encode_json(obj: Any) -> bytes:
    """JSON-encode ``obj`` (UTF-8, no spaces). Raises ``TypeError`` for non-JSON values.

    The result is copied into a right-sized ``bytes``: orjson (3.13) returns objects
    backed by a 4 KiB allocation whatever their length, and this output is retained in
    history (measured: 4,097 bytes per retained event before the copy, 51 after; the
    copy costs about 0.1 µs).
    """
    return memoryview(orjson.dumps(obj)).tobytes()


_second_cache: list[Any] = [None, ""]


def format_timestamp(epoch: float) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` suffix: ``2026-11-23T01:15:39.123456Z``.

    The date and time up to the second is formatted once per second (this runs once per
    published event).
    """
    second = int(epoch)
    micros = round((epoch - second) * 1_000_000)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    cache = _second_cache
    if cache[0] != second:
        cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cache[0] = second
    return f"{cache[1]}.{micros:06d}Z"


class Publication:
    """One event of one topic, as stored in history and delivered to subscribers.

    ``data`` is the JSON encoding of the event's ``data`` object. ``at`` is the publish
    time in seconds since the epoch (used for history age); ``timestamp`` its ISO form.
    :attr:`frame` is computed on each access and deliberately not cached: the hub frames a
    publication once for all its live subscribers, and publications retained in history
    stay small (a cached frame would double their memory; measured in W3, first-touch page
    faults of retained bytes cost more than re-framing on the rare history replay).

    ``epoch`` is the life of the topic's numbering the seq belongs to (the broker's
    :attr:`~agentcast.core.history.HistoryPage.epoch`): a publication whose epoch differs
    from the previous one of its topic starts a new numbering. It is not part of the wire
    form (clients learn epochs from ``subscribed`` replies).
    """

    __slots__ = ("at", "data", "epoch", "seq", "timestamp", "topic", "type")

    def __init__(
        self,
        topic: str,
        seq: int,
        type: str,
        data: bytes,
        timestamp: str,
        at: float,
        epoch: str = "",
    ) -> None:
        self.topic = topic
        self.seq = seq
        self.type = type
        self.data = data
        self.timestamp = timestamp
        self.at = at
        self.epoch = epoch

    @property
    def payload(self) -> bytes:
        """The envelope as JSON bytes."""
        return _ENVELOPE % (
            _dumps(self.type),
            _dumps(self.topic),
            self.seq,
            self.timestamp.encode(),
            self.data,
        )

    @property
    def frame(self) -> bytes:
        """The envelope framed as one WebSocket text frame (computed on each access)."""
        return frame_text(self.payload)

    @property
    def replay_frame(self) -> bytes:
        """The envelope with ``"replay": true``, framed: a replayed event, told apart from
        live ones (a client de-duplicating by seq must not drop it)."""
        return frame_text(self.payload[:-1] + b',"replay":true}')

    @property
    def size(self) -> int:
        """Approximate bytes held: the encoded data plus a fixed overhead."""
        return len(self.data) + 128

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict (HTTP API, tests)."""
        result: dict[str, Any] = orjson.loads(self.payload)
        return result

    def __repr__(self) -> str:
        return f"Publication({self.topic!r}, seq={self.seq}, type={self.type!r})"
