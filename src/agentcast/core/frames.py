"""Typed models of every frame of wire protocol v1.

Client commands are validated with these models; server frames are *encoded* by the
fast functions in :mod:`agentcast.core.commands` and the models here describe them. The
JSON Schemas in ``docs/schemas/`` are generated from these models
(``python -m agentcast.schemas``) and a test checks that the committed files match.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "TOPIC_PATTERN",
    "AckFrame",
    "ClientCommand",
    "ErrorFrame",
    "EventFrame",
    "PingCommand",
    "PongFrame",
    "PresenceCommand",
    "PresenceFrame",
    "PublishCommand",
    "ServerFrame",
    "SubscribeCommand",
    "SubscribedFrame",
    "UnsubscribeCommand",
    "UnsubscribedFrame",
    "valid_topic",
]

TOPIC_PATTERN = r"^[A-Za-z0-9_\-:.@/=+]{1,200}$"
_TOPIC_RE = re.compile(TOPIC_PATTERN)

CommandId = str | int | None


def valid_topic(topic: object) -> bool:
    """True when ``topic`` is a usable topic name (1–200 of ``A-Z a-z 0-9 _ - : . @ / = +``)."""
    return isinstance(topic, str) and _TOPIC_RE.match(topic) is not None


class _Frame(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ClientCommand(_Frame):
    """Base of client commands: ``type`` selects the command, ``id`` is echoed in the reply.

    Validation is strict: no coercion (``"3"`` is not an int, ``true`` is not an id).
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    type: str
    id: CommandId = Field(default=None, description="Echoed by the ack, pong or error reply.")


class _TopicCommand(ClientCommand):
    topic: str = Field(pattern=TOPIC_PATTERN, description="Topic name, e.g. `workflow:123`.")


class SubscribeCommand(_TopicCommand):
    """Subscribe to a topic, optionally resuming after sequence number ``since``."""

    type: Literal["subscribe"] = "subscribe"
    since: int | None = Field(
        default=None,
        ge=0,
        description="Last seq the client has seen: events since+1, since+2, … are sent "
        "first. 0 replays all retained history. Absent: live events only.",
    )
    epoch: str | None = Field(
        default=None,
        max_length=64,
        description="The topic epoch the client's `since` belongs to (from `subscribed`). "
        "A different epoch means the topic was reset: the reply says recovered=false.",
    )
    replay: float | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="Instead of subscribing, replay the recorded events after `since` at "
        "N× their original pace (0: at once); see the `replay` command.",
    )


class UnsubscribeCommand(_TopicCommand):
    """Stop receiving a topic's events."""

    type: Literal["unsubscribe"] = "unsubscribe"


class PingCommand(ClientCommand):
    """Application-level ping, answered by ``pong`` (the bare text ``ping`` works too)."""

    type: Literal["ping"] = "ping"


class PresenceCommand(_TopicCommand):
    """Who is subscribed to a topic on every node (answered by ``presence``); refused
    like ``subscribe`` where the client may not subscribe."""

    type: Literal["presence"] = "presence"


class PublishCommand(_TopicCommand):
    """Publish an event to a topic (where the authorizer allows it)."""

    type: Literal["publish"] = "publish"
    event: str = Field(min_length=1, max_length=100, description="The event's `type`.")
    data: dict[str, Any] = Field(default_factory=dict, description="The event's `data` object.")
    producer_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="An idempotent producer's id (with `producer_seq`): a retry of a publish "
        "already made is acknowledged with its original `seq` and `duplicate: true`.",
    )
    producer_seq: int | None = Field(
        None,
        ge=1,
        le=1 << 53,
        description="The producer's own number for this event (1, 2, 3, …; never reused).",
    )

    @field_validator("event")
    @classmethod
    def _event_name(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("event type must be printable text")
        return value


class ServerFrame(_Frame):
    """Base of every server frame: ``type``, ``timestamp`` (ISO-8601 UTC) and ``data``."""

    type: str
    timestamp: str = Field(description="ISO-8601 UTC, e.g. `2026-11-23T01:15:39.123456Z`.")
    data: dict[str, Any]


class EventFrame(ServerFrame):
    """A topic event. ``seq`` is gapless per topic, starting at 1."""

    topic: str
    seq: int = Field(ge=1)


class _Reply(ServerFrame):
    id: CommandId = Field(default=None, description="The `id` of the command answered.")


class SubscribedData(BaseModel):
    seq: int = Field(description="Last seq of the topic when the subscription went live.")
    recovered: bool = Field(
        description="False when `since` was given but history no longer reaches back to "
        "since+1: events since+1 … first_seq-1 are lost and the client must reset its state."
    )
    since: int | None = None
    first_seq: int = Field(description="Oldest seq still in history.")
    epoch: str = Field(description="The topic's epoch; send it back with `since` to resume.")


class SubscribedFrame(_Reply):
    """Reply to ``subscribe``. Replayed events (if any) follow it, then live ones."""

    type: Literal["subscribed"] = "subscribed"
    topic: str
    data: SubscribedData  # type: ignore[assignment]


class UnsubscribedFrame(_Reply):
    """Reply to ``unsubscribe``; also sent without an ``id``, with ``data.reason:
    "forbidden"``, when an ``auth:refresh`` token no longer grants the topic."""

    type: Literal["unsubscribed"] = "unsubscribed"
    topic: str


class PresenceUser(BaseModel):
    user: str = Field(description="The principal's subject.")
    connections: int = Field(ge=1, description="Its connections subscribed to the topic.")


class PresenceData(BaseModel):
    users: list[PresenceUser] = Field(
        description="Users subscribed to the topic on every live node, sorted by name."
    )
    anonymous: int = Field(ge=0, description="Anonymous connections subscribed (open mode).")
    connections: int = Field(ge=0, description="Connections subscribed in all.")
    nodes: int = Field(ge=0, description="Nodes with at least one subscriber.")


class PresenceFrame(_Reply):
    """Reply to ``presence``: who is subscribed to the topic across the cluster."""

    type: Literal["presence"] = "presence"
    topic: str
    data: PresenceData  # type: ignore[assignment]


class PongFrame(_Reply):
    """Reply to ``ping`` (JSON or bare text)."""

    type: Literal["pong"] = "pong"


class AckData(BaseModel):
    topic: str
    seq: int
    duplicate: bool = Field(
        False,
        description="Present (true) when the publish was an idempotent producer's retry "
        "of an event already published: nothing was published, `seq` is the original one "
        "(0 when older than the broker's window).",
    )


class AckFrame(_Reply):
    """Reply to ``publish``: the assigned sequence number."""

    type: Literal["ack"] = "ack"
    data: AckData  # type: ignore[assignment]


class ErrorData(BaseModel):
    code: str = Field(description="Stable machine-readable code; see docs/codes.md.")
    message: str
    field: str | None = Field(default=None, description="The offending field, when one is.")


class ErrorFrame(_Reply):
    """A command could not be carried out. It has no ``topic`` or ``seq``."""

    type: Literal["error"] = "error"
    data: ErrorData  # type: ignore[assignment]
