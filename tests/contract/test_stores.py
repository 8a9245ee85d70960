"""The run store contract (``agentcast/storage/base.py``) on SQLite and PostgreSQL.

PostgreSQL runs when reachable at ``AGENTCAST_TEST_POSTGRES`` (default: the local test
database, which CI starts); where it is not, those cases are skipped with the reason, or
fail under ``AGENTCAST_REQUIRE_SERVICES=1`` (CI): see :mod:`tests.services`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from agentcast.core.envelope import Publication, format_timestamp
from agentcast.storage import RunSummary, create_store
from agentcast.storage.base import RunStore, RunVisibility, StoreError
from agentcast.storage.sql import MIGRATIONS
from tests.conftest import free_port
from tests.services import require_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        url = await require_postgres()
    s = create_store(url)
    assert s is not None
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def pub(topic: str, seq: int, type: str = "log", data: bytes = b'{"m":1}') -> Publication:
    return Publication(topic, seq, type, data, format_timestamp(1000.0 + seq), 1000.0 + seq)


def summary(topic: str, status: str, last_seq: int = 1, owner: str | None = None) -> RunSummary:
    kind, run_id = topic.split(":", 1)
    return RunSummary(
        topic, kind, run_id, status, "e1", "t0", None, last_seq, {"status": status}, owner
    )


async def test_events_are_idempotent_and_ordered(store: RunStore) -> None:
    await store.append([pub("workflow:1", 2), pub("workflow:1", 1), pub("execution:9", 1)])
    await store.append([pub("workflow:1", 2, data=b'{"m":"dup"}'), pub("workflow:1", 3)])
    events = await store.events("workflow:1", 0)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[1].data == {"m": 1}  # the first copy is kept
    assert events[0].to_wire()["timestamp"] == format_timestamp(1001.0)
    assert [e.seq for e in await store.events("workflow:1", 1, limit=1)] == [2]
    assert await store.last_seqs() == {"workflow:1": 3, "execution:9": 1}
    await store.append([])


async def test_runs_upsert_list_filter_and_page(store: RunStore) -> None:
    await store.upsert_runs([summary("workflow:a", "running"), summary("execution:b", "completed")])
    await store.upsert_runs([summary("workflow:a", "failed", 5)])
    run = await store.get_run("workflow:a")
    assert run is not None
    assert (run.status, run.last_seq, run.state) == ("failed", 5, {"status": "failed"})
    assert await store.get_run("workflow:none") is None
    everything, total = await store.list_runs(None, None, 10, 0)
    assert total == 2
    assert {r.topic for r in everything} == {"workflow:a", "execution:b"}
    only, total = await store.list_runs("execution", None, 10, 0)
    assert ([r.topic for r in only], total) == (["execution:b"], 1)
    failed, _ = await store.list_runs(None, "failed", 10, 0)
    assert [r.topic for r in failed] == ["workflow:a"]
    page, total = await store.list_runs(None, None, 1, 1)
    assert (len(page), total) == (1, 2)
    await store.upsert_runs([summary("workflow:c", "running")])
    assert await store.unfinished() == ["workflow:c"]
    await store.upsert_runs([])


async def test_owner_is_stored_once_and_never_replaced(store: RunStore) -> None:
    await store.upsert_runs([summary("workflow:o", "running"), summary("workflow:p", "running")])
    assert (await store.get_run("workflow:o")).owner is None  # type: ignore[union-attr]
    await store.upsert_runs([summary("workflow:o", "running", 2, owner="alice")])
    await store.upsert_runs([summary("workflow:o", "completed", 3, owner="mallory")])
    await store.upsert_runs([summary("workflow:o", "completed", 4)])
    run = await store.get_run("workflow:o")
    assert run is not None and (run.owner, run.last_seq, run.status) == ("alice", 4, "completed")


async def test_listing_by_visibility_matches_owner_or_pattern(store: RunStore) -> None:
    await store.upsert_runs(
        [
            summary("workflow:a1", "running", owner="alice"),
            summary("workflow:b1", "running", owner="bob"),
            summary("workflow:team-42:x", "running", owner="bob"),
            summary("workflow:TEAM-42:y", "running", owner="bob"),
            summary("workflow:team-4%:z", "running", owner="bob"),
            summary("workflow:team_42:w", "running", owner="bob"),
            summary("execution:[x]", "running", owner="bob"),
            summary("workflow:demo", "running"),
        ]
    )
    alice = RunVisibility("alice")
    found, total = await store.list_runs(None, None, 10, 0, alice)
    assert ([r.topic for r in found], total) == (["workflow:a1"], 1)
    team = RunVisibility("alice", ("workflow:team-42:*",))
    found, total = await store.list_runs(None, None, 10, 0, team)
    assert {r.topic for r in found} == {"workflow:a1", "workflow:team-42:x"}  # case, _ literal
    assert total == 2
    literal = RunVisibility("carol", ("workflow:team-4%:?", "execution:[x]"))
    found, _ = await store.list_runs(None, None, 10, 0, literal)
    assert {r.topic for r in found} == {"workflow:team-4%:z", "execution:[x]"}
    page, total = await store.list_runs("workflow", "running", 1, 1, team)
    assert (len(page), total) == (1, 2)
    nobody, total = await store.list_runs(None, None, 10, 0, RunVisibility("zed"))
    assert (nobody, total) == ([], 0)


async def test_migration_0003_adds_owner_to_stored_runs(tmp_path: Path, store: RunStore) -> None:
    """A database at revision 0002 (runs without owners) upgrades in place: its runs
    belong to nobody until an owner is stored."""
    await store.stop()
    url: str = store.url  # type: ignore[attr-defined]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: c.exec_driver_sql("DROP TABLE IF EXISTS alembic_version"))
            for table in ("agentcast_messages", "agentcast_conversations", "agentcast_run_events"):
                await conn.run_sync(lambda c, t=table: c.exec_driver_sql(f"DROP TABLE {t}"))
            await conn.run_sync(lambda c: c.exec_driver_sql("DROP TABLE agentcast_runs"))
            await conn.run_sync(lambda c: _upgrade_to(c, "0002"))
            await conn.run_sync(
                lambda c: c.exec_driver_sql(
                    "INSERT INTO agentcast_runs (topic, kind, run_id, status, last_seq, state,"
                    " updated_at) VALUES ('workflow:old', 'workflow', 'old', 'completed', 3,"
                    " '{}', 1.0)"
                )
            )
    finally:
        await engine.dispose()
    await store.start()  # upgrades to head
    old = await store.get_run("workflow:old")
    assert old is not None and (old.owner, old.last_seq) == (None, 3)
    await store.upsert_runs([summary("workflow:old", "completed", 3, owner="alice")])
    assert (await store.get_run("workflow:old")).owner == "alice"  # type: ignore[union-attr]


def _upgrade_to(connection: Any, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_migrations_are_idempotent(store: RunStore) -> None:
    await store.append([pub("workflow:m", 1)])
    again = create_store(store.url)  # type: ignore[attr-defined]
    assert again is not None
    await again.start()  # upgrading a database at head changes nothing
    try:
        assert [e.seq for e in await again.events("workflow:m", 0)] == [1]
    finally:
        await again.stop()


async def test_unusable_store_url_is_a_clear_error(tmp_path: Path) -> None:
    assert create_store("") is None
    bad = create_store(f"sqlite:///{tmp_path}/missing-dir/x.db")
    assert bad is not None
    with pytest.raises(StoreError, match="cannot open the run store"):
        await bad.start()
    with pytest.raises(StoreError, match="not started"):
        await bad.events("workflow:1", 0)


async def test_missing_service_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    monkeypatch.delenv("AGENTCAST_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"PostgreSQL not reachable at {nowhere} "):
        await require_postgres(nowhere)
    monkeypatch.setenv("AGENTCAST_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="AGENTCAST_REQUIRE_SERVICES=1 but PostgreSQL"):
        await require_postgres(nowhere)


async def test_prune_keeps_each_topics_last_event_and_other_prefixes(store: RunStore) -> None:
    # pub() publishes seq n at 1000 + n
    await store.append([pub("chat:a", n) for n in range(1, 6)] + [pub("chat:b", 1)])
    await store.append([pub("workflow:w", n) for n in range(1, 4)] + [pub("chat;x", 1)])
    assert await store.last_seqs("chat:") == {"chat:a": 5, "chat:b": 1}
    assert await store.prune("chat:", before=1003.5) == 3  # chat:a 1..3; chat:b 1 is its last
    assert [e.seq for e in await store.events("chat:a", 0)] == [4, 5]
    assert [e.seq for e in await store.events("chat:b", 0)] == [1]
    assert await store.prune("chat:", before=1e9) == 1  # chat:a 4: 5 stays, the numbering
    assert await store.last_seqs("chat:") == {"chat:a": 5, "chat:b": 1}
    assert [e.seq for e in await store.events("workflow:w", 0)] == [1, 2, 3]
    assert len(await store.events("chat;x", 0)) == 1
    assert (await store.last_seqs())["workflow:w"] == 3
    await store.delete_events("chat:a")
    assert await store.last_seqs("chat:") == {"chat:b": 1}
