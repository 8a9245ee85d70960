"""The external services some tests use: PostgreSQL (and, when tests need it, Redis).

A test (or fixture) that needs a service calls :func:`require_service` when the service
is unreachable: it is skipped with the reason on a developer's machine, and fails instead
when ``AGENTCAST_REQUIRE_SERVICES=1``, which ``.ci/run`` sets after starting the services,
so CI cannot go green without running them.

PostgreSQL is ``AGENTCAST_TEST_POSTGRES`` (default: the local ``test`` database).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agentcast.storage.sql import async_url

POSTGRES = os.environ.get("AGENTCAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

_TABLES = (
    "agentcast_messages",
    "agentcast_conversations",
    "agentcast_run_events",
    "agentcast_runs",
    "alembic_version",
)


def require_service(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``; fail it when ``AGENTCAST_REQUIRE_SERVICES=1``."""
    if os.environ.get("AGENTCAST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"AGENTCAST_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


async def reset_postgres(url: str = POSTGRES) -> str | None:
    """Drop agentcast's tables at ``url``; None when done, else why it could not connect."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            for table in _TABLES:
                await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        return None
    except Exception as exc:  # refused, unknown database, no driver: all mean "not here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        await engine.dispose()


async def require_postgres(url: str = POSTGRES) -> str:
    """``url`` with agentcast's tables dropped, or :func:`require_service` (skip or fail)."""
    why = await reset_postgres(url)
    if why is not None:
        require_service(f"PostgreSQL not reachable at {url} ({why})")
    return url
