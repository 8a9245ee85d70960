"""Run storage: finished and live runs with their full event log.

``base.py`` states the contract; ``sql.py`` implements it with SQLAlchemy (async) for
SQLite (the embedded default, ``sqlite:///agentcast.db``) and PostgreSQL
(``postgresql://…``), with Alembic migrations applied at start.
"""

from __future__ import annotations

from agentcast.storage.base import RunStore, RunSummary, StoredEvent
from agentcast.storage.chat import ChatStore, MemoryChatStore

__all__ = [
    "ChatStore",
    "MemoryChatStore",
    "RunStore",
    "RunSummary",
    "StoredEvent",
    "create_chat_store",
    "create_store",
]


def create_store(url: str) -> RunStore | None:
    """The store for ``url`` (``""`` disables storage)."""
    if not url:
        return None
    from agentcast.storage.sql import SqlRunStore

    return SqlRunStore(url)


def create_chat_store(runs: RunStore | None) -> ChatStore:
    """The conversation store next to ``runs`` (in memory when storage is disabled)."""
    if runs is None:
        return MemoryChatStore()
    from agentcast.storage.sql import SqlChatStore, SqlRunStore

    if isinstance(runs, SqlRunStore):
        return SqlChatStore(runs)
    return MemoryChatStore()  # pragma: no cover - a custom run store without chat support
