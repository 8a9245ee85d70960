"""The conversation store contract, and its in-memory implementation.

* Conversations belong to a ``user`` (a principal's subject) and carry an agent id, a
  title and timestamps (seconds since the epoch).
* Messages get increasing integer ids (global, so ``id`` orders the messages of a
  conversation); :meth:`ChatStore.messages` pages backwards with ``before``.
* A message is written once, complete: status ``complete``, ``cancelled`` or ``error``
  (``content`` then holds the partial answer).
* Failures raise :class:`~agentcast.storage.base.StoreError`; nothing was applied.

``sql.py`` implements the contract on SQLite and PostgreSQL (same migrations as runs).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from agentcast.core.envelope import format_timestamp
from agentcast.storage.base import StoreError

__all__ = ["ChatMessage", "ChatStore", "Conversation", "MemoryChatStore", "NewMessage"]

ROLES = ("user", "assistant", "system")
STATUSES = ("complete", "cancelled", "error")


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    user: str
    agent_id: str
    title: str
    created_at: float
    updated_at: float
    message_count: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "title": self.title,
            "created_at": format_timestamp(self.created_at),
            "updated_at": format_timestamp(self.updated_at),
            "message_count": self.message_count,
        }


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store (the store assigns its id)."""

    conversation_id: str
    role: str
    content: str
    status: str = "complete"
    created_at: float = 0.0
    completed_at: float | None = None
    reply_to: int | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: int
    conversation_id: str
    role: str
    content: str
    status: str
    created_at: float
    completed_at: float | None
    reply_to: int | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float | None
    error: str | None

    @classmethod
    def of(cls, id: int, new: NewMessage) -> ChatMessage:
        return cls(id=id, **{f: getattr(new, f) for f in NewMessage.__dataclass_fields__})

    def to_wire(self) -> dict[str, Any]:
        """The ``data`` of a ``chat:message`` frame and an item of ``chat:history``."""
        out: dict[str, Any] = {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "created_at": format_timestamp(self.created_at),
        }
        if self.completed_at is not None:
            out["completed_at"] = format_timestamp(self.completed_at)
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.model is not None:
            out["model"] = self.model
        out["tokens"] = {"prompt": self.prompt_tokens, "completion": self.completion_tokens}
        if self.ttft_ms is not None:
            out["ttft_ms"] = round(self.ttft_ms, 3)
        if self.duration_ms is not None:
            out["duration_ms"] = round(self.duration_ms, 3)
        if self.error is not None:
            out["error"] = self.error
        return out


class ChatStore(ABC):
    """Conversations and their messages (see the module docstring)."""

    @abstractmethod
    async def create_conversation(self, conversation: Conversation) -> Conversation: ...

    @abstractmethod
    async def get_conversation(self, id: str) -> Conversation | None: ...

    @abstractmethod
    async def list_conversations(
        self, user: str | None, limit: int, offset: int
    ) -> tuple[list[Conversation], int]:
        """The user's conversations (every user's for None), most recently updated first,
        and the total."""

    @abstractmethod
    async def rename_conversation(self, id: str, title: str, now: float) -> Conversation | None: ...

    @abstractmethod
    async def delete_conversation(self, id: str) -> bool:
        """Delete a conversation and its messages; False when there was none."""

    @abstractmethod
    async def add_message(self, message: NewMessage) -> ChatMessage:
        """Store ``message`` with the next id; the conversation's ``updated_at`` and count
        follow. Raises StoreError when the conversation does not exist."""

    @abstractmethod
    async def messages(
        self, conversation_id: str, before: int | None, limit: int
    ) -> list[ChatMessage]:
        """The ``limit`` latest messages with ``id < before`` (all when None), oldest first."""


class MemoryChatStore(ChatStore):
    """Conversations in this process's memory (tests, and ``store_url=""``)."""

    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[str, list[ChatMessage]] = {}
        self._ids = itertools.count(1)

    async def create_conversation(self, conversation: Conversation) -> Conversation:
        if conversation.id in self._conversations:
            raise StoreError(f"conversation {conversation.id!r} exists")
        self._conversations[conversation.id] = conversation
        self._messages[conversation.id] = []
        return conversation

    async def get_conversation(self, id: str) -> Conversation | None:
        return self._conversations.get(id)

    async def list_conversations(
        self, user: str | None, limit: int, offset: int
    ) -> tuple[list[Conversation], int]:
        found = [c for c in self._conversations.values() if user is None or c.user == user]
        found.sort(key=lambda c: (-c.updated_at, c.id))
        return found[offset : offset + limit], len(found)

    async def rename_conversation(self, id: str, title: str, now: float) -> Conversation | None:
        conv = self._conversations.get(id)
        if conv is None:
            return None
        conv = self._conversations[id] = replace(conv, title=title, updated_at=now)
        return conv

    async def delete_conversation(self, id: str) -> bool:
        self._messages.pop(id, None)
        return self._conversations.pop(id, None) is not None

    async def add_message(self, message: NewMessage) -> ChatMessage:
        conv = self._conversations.get(message.conversation_id)
        if conv is None:
            raise StoreError(f"no conversation {message.conversation_id!r}")
        stored = ChatMessage.of(next(self._ids), message)
        self._messages[conv.id].append(stored)
        self._conversations[conv.id] = replace(
            conv,
            updated_at=max(conv.updated_at, message.completed_at or message.created_at),
            message_count=conv.message_count + 1,
        )
        return stored

    async def messages(
        self, conversation_id: str, before: int | None, limit: int
    ) -> list[ChatMessage]:
        items = self._messages.get(conversation_id, [])
        if before is not None:
            items = [m for m in items if m.id < before]
        return items[-limit:] if limit > 0 else []
