"""The external services some tests use: PostgreSQL (and, when tests need it, Redis).

A test (or fixture) that needs a service calls :func:`require_service` when the service
is unreachable: it is skipped with the reason on a developer's machine, and fails instead
when ``AGENTCAST_REQUIRE_SERVICES=1``, which ``.ci/run`` sets after starting the services,
so CI cannot go green without running them.

PostgreSQL is ``AGENTCAST_TEST_POSTGRES`` (default: the local ``test`` database); Redis
is ``AGENTCAST_TEST_REDIS`` (default: database 0 of the local server), shared with other
test runs: a test uses a key prefix of its own (:func:`redis_prefix`) and deletes it
(:func:`delete_prefix`), never the whole database.
"""

from __future__ import annotations

import os
import secrets
from typing import NoReturn

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from agentcast.storage.sql import async_url

REDIS = os.environ.get("AGENTCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")

_POSTGRES = os.environ.get("AGENTCAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest -n N

POSTGRES = (
    make_url(_POSTGRES)
    .set(database=f"{make_url(_POSTGRES).database}_{_WORKER}")
    .render_as_string(hide_password=False)
    if _WORKER
    else _POSTGRES
)
"""The test database: under pytest-xdist each worker has its own (``test_gw0``, ...), created
on first use, because the store tests drop and create agentcast's tables."""

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


async def _create_database(url: str) -> None:
    """Create ``url``'s database when it does not exist (connecting to the base one)."""
    name = make_url(url).database
    engine = create_async_engine(async_url(_POSTGRES), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not found:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


async def reset_postgres(url: str = POSTGRES) -> str | None:
    """Drop agentcast's tables at ``url``; None when done, else why it could not connect."""
    engine = create_async_engine(async_url(url))
    try:
        if url != _POSTGRES:
            await _create_database(url)
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


def require_redis(url: str = REDIS) -> str:
    """``url`` when a Redis server answers there, else :func:`require_service`."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_service(f"Redis not reachable at {url} ({exc})")
    finally:
        client.close()
    return url


def redis_prefix() -> str:
    """A key prefix no other test (or test run) uses."""
    return f"agentcast-test-{secrets.token_hex(6)}"


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (what a test created), as a flushed server."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()
