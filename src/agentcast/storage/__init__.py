"""Run storage: finished and live runs with their full event log.

``base.py`` states the contract; ``sql.py`` implements it with SQLAlchemy (async) for
SQLite (the embedded default, ``sqlite:///agentcast.db``) and PostgreSQL
(``postgresql://…``), with Alembic migrations applied at start.
"""

from __future__ import annotations

from agentcast.storage.base import RunStore, RunSummary, StoredEvent

__all__ = ["RunStore", "RunSummary", "StoredEvent", "create_store"]


def create_store(url: str) -> RunStore | None:
    """The store for ``url`` (``""`` disables storage)."""
    if not url:
        return None
    from agentcast.storage.sql import SqlRunStore

    return SqlRunStore(url)
