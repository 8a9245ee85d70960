"""The ``chat:*`` commands of wire protocol v1 (seed 001's chat flow on ``/ws``).

Field names follow the seeds' snake_case; seed 001's TypeScript client spells ids in
camelCase, so ``conversationId`` and ``agentId`` are accepted too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from agentcast.core.commands import register
from agentcast.core.frames import ClientCommand

__all__ = [
    "ChatCancelCommand",
    "ChatCancelData",
    "ChatHistoryCommand",
    "ChatHistoryData",
    "ChatSendCommand",
    "ChatSendData",
]

_ID = r"^[A-Za-z0-9_\-.@=+]{1,64}$"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)


def _conversation_field(description: str) -> Any:
    return Field(
        default=None,
        pattern=_ID,
        validation_alias=AliasChoices("conversation_id", "conversationId"),
        description=description,
    )


class ChatSendData(_Data):
    message: str = Field(min_length=1, description="The user's message.")
    conversation_id: str | None = _conversation_field(
        "Continue this conversation (yours); absent: a new conversation is created."
    )
    agent: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        validation_alias=AliasChoices("agent", "agent_id", "agentId"),
        description="Agent id of a new conversation (default: the server's default agent).",
    )
    title: str | None = Field(
        default=None, max_length=200, description="Title of a new conversation."
    )


class ChatSendCommand(ClientCommand):
    """Send a message: the server stores it, publishes it as ``chat:message`` on
    ``chat:<conversation_id>`` (subscribing this connection), streams the answer as
    ``chat:streaming`` frames and publishes the stored answer as ``chat:message``."""

    type: Literal["chat:send"] = "chat:send"
    data: ChatSendData


class ChatHistoryData(_Data):
    conversation_id: str | None = _conversation_field(
        "The conversation; absent: your most recently updated one."
    )
    before: int | None = Field(
        default=None, ge=1, description="Only messages with an id below this (paging back)."
    )
    limit: int | None = Field(
        default=None, ge=1, le=1000, description="At most this many (default 10)."
    )


class ChatHistoryCommand(ClientCommand):
    """Stored messages of a conversation, answered by a ``chat:history`` frame."""

    type: Literal["chat:history"] = "chat:history"
    data: ChatHistoryData = Field(default_factory=ChatHistoryData)


class ChatCancelData(_Data):
    conversation_id: str | None = _conversation_field(
        "The conversation whose generation to stop; absent: the last one you started."
    )


class ChatCancelCommand(ClientCommand):
    """Stop a generation (or take it out of the queue); the partial answer is stored as
    ``cancelled``."""

    type: Literal["chat:cancel"] = "chat:cancel"
    data: ChatCancelData = Field(default_factory=ChatCancelData)


register(ChatSendCommand, "chat:send")
register(ChatHistoryCommand, "chat:history")
register(ChatCancelCommand, "chat:cancel")
