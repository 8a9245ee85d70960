"""The ``chat:*`` commands of wire protocol v1 (seed 001's chat flow on ``/ws``).

Field names follow the seeds' snake_case; seed 001's TypeScript client spells ids in
camelCase, so ``conversationId`` and ``agentId`` are accepted too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

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


# -- what the server sends (described here; encoded by the service) ------------------------


class TokenCounts(BaseModel):
    prompt: int = Field(ge=0, description="Estimated prompt tokens (whole budgeted prompt).")
    completion: int = Field(ge=0, description="Estimated tokens of the content.")


class ChatMessageData(BaseModel):
    """``data`` of ``chat:message`` on ``chat:<conversation_id>``, and an item of
    ``chat:history``: one stored message."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(description="Message id: increasing, orders a conversation; 0 if unstored.")
    conversation_id: str
    role: Literal["user", "assistant", "system"]
    content: str = Field(description="The text; for a cancelled or failed answer, the partial.")
    status: Literal["complete", "cancelled", "error"]
    created_at: str
    completed_at: str | None = None
    reply_to: int | None = Field(default=None, description="The user message answered.")
    model: str | None = Field(default=None, description="Model or agent that answered.")
    tokens: TokenCounts
    ttft_ms: float | None = Field(default=None, description="Time to first token.")
    duration_ms: float | None = Field(default=None, description="Queue + generation time.")
    error: str | None = Field(default=None, description="Why the answer is not complete.")


class ChatStreamingData(BaseModel):
    """``data`` of ``chat:streaming``: one delta of the answer being generated; the last
    frame has ``chunk: ""``, ``done: true`` and the final ``status``."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str
    reply_to: int = Field(description="Id of the user message being answered.")
    index: int = Field(ge=0, description="0, 1, 2, … per answer (the done frame: count).")
    chunk: str
    done: bool
    status: Literal["complete", "cancelled", "error"] | None = Field(
        default=None, description="Only on the done frame."
    )


class ChatQueuedData(BaseModel):
    """``data`` of ``chat:queued``: the request waits for the upstream; ``position`` 1 is
    next. Sent on arrival and whenever the position changes."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str
    reply_to: int
    position: int = Field(ge=1)


class ConversationData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    agent_id: str
    title: str
    created_at: str
    updated_at: str
    message_count: int


class ChatHistoryReplyData(BaseModel):
    """``data`` of the ``chat:history`` reply."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = Field(description="None when the user has no conversation.")
    conversation: ConversationData | None
    messages: list[ChatMessageData] = Field(description="Oldest first.")
    has_more: bool = Field(description="Older messages exist: ask again with `before`.")
    before: int | None = Field(description="The `before` of the previous page.")
    generating: bool = Field(description="An answer is being generated right now.")


class ChatAcceptedData(BaseModel):
    """``data`` of the ``chat:accepted`` reply, sent when ``chat:send`` had an ``id``: the
    message is stored (acknowledged) and its answer is under way."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str
    message_id: int
    topic: str = Field(description="`chat:<conversation_id>`, where the answer streams.")


class ChatCancelledData(BaseModel):
    """``data`` of the ``chat:cancelled`` reply."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str
    cancelled: bool = Field(description="False when nothing was running any more.")


class AgentFrame(BaseModel):
    """Seed 003's endpoint ``/api/v1/ws/{agent_id}``: every frame the server sends."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["welcome", "message", "error"]
    sender: Literal["agent"]
    message: str
    agent_id: str | None = Field(default=None, description="Welcome frame only.")
    conversation_id: str | None = Field(default=None, description="Welcome frame only.")
