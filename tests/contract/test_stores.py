"""The run store contract (``agentcast/storage/base.py``) on SQLite and PostgreSQL.

PostgreSQL runs when reachable at ``AGENTCAST_TEST_POSTGRES`` (default: the local test
database, which CI starts); where it is not, those cases are skipped with the reason, or
fail under ``AGENTCAST_REQUIRE_SERVICES=1`` (CI): see :mod:`tests.services`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
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
    # pub() publishes seq n at 1000 + n; one append per event (batches: see below)
    for n in range(1, 6):
        await store.append([pub("chat:a", n)] + ([pub("chat:b", 1)] if n == 1 else []))
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


def timed(topic: str, seq: int, at: float, type: str = "chat:streaming") -> Publication:
    data = b'{"index":%d,"chunk":"t\\u00e9 %d","at":%r}' % (seq, seq, at)
    return Publication(topic, seq, type, data, format_timestamp(at), at)


async def test_a_batchs_runs_of_events_come_back_one_by_one_exactly(store: RunStore) -> None:
    """A batch holding runs of consecutive events (a chat stream's deltas, stored as one
    record per run by the SQL store) reads back event by event: seq, type, timestamp,
    ``at`` and data as appended, from any ``since``, with any ``limit``."""
    ats = [1_700_000_000.123456 + n / 7 for n in range(13)]
    batch = [
        timed("chat:r", n, ats[n], "chat:message" if n == 6 else "chat:streaming")
        for n in range(1, 11)
    ]
    batch.insert(3, timed("chat:other", 1, ats[0]))  # interleaved topics
    await store.append(batch)
    await store.append([timed("chat:r", 11, ats[11]), timed("chat:r", 12, ats[12])])
    events = await store.events("chat:r", 0)
    assert [e.seq for e in events] == list(range(1, 13))
    for e in events:
        assert (e.type, e.at, e.timestamp) == (
            "chat:message" if e.seq == 6 else "chat:streaming",
            ats[e.seq],
            format_timestamp(ats[e.seq]),
        )
        assert e.data == {"index": e.seq, "chunk": f"t\u00e9 {e.seq}", "at": ats[e.seq]}
    for since in range(13):
        assert [e.seq for e in await store.events("chat:r", since)] == list(range(since + 1, 13))
        for limit in (1, 2, 5, 20):
            got = [e.seq for e in await store.events("chat:r", since, limit)]
            assert got == list(range(since + 1, min(12, since + limit) + 1))
    assert [e.seq for e in await store.events("chat:other", 0)] == [1]
    assert await store.last_seqs("chat:") == {"chat:r": 12, "chat:other": 1}


async def test_runs_with_gaps_unsorted_and_duplicates_keep_each_seq_once(store: RunStore) -> None:
    await store.append([pub("chat:g", n) for n in (5, 1, 2, 7, 3, 2, 8)])
    events = await store.events("chat:g", 0)
    assert [e.seq for e in events] == [1, 2, 3, 5, 7, 8]
    assert await store.last_seqs("chat:") == {"chat:g": 8}
    assert [e.seq for e in await store.events("chat:g", 3)] == [5, 7, 8]
    assert [e.seq for e in await store.events("chat:g", 5, limit=1)] == [7]


async def test_a_batch_resent_with_more_events_is_stored_once_and_whole(store: RunStore) -> None:
    """What the recorder does after a write whose outcome it did not learn (the gateway
    stopping mid-commit): the same events again, with newer ones behind them, some
    overlapping a stored run from inside it."""
    await store.append([pub("chat:s", n) for n in range(1, 4)])
    await store.append([pub("chat:s", n) for n in range(1, 7)])  # same start, longer
    await store.append([pub("chat:s", n) for n in range(5, 10)])  # starts inside 1..6
    await store.append([pub("chat:s", n) for n in range(1, 3)])  # shorter: kept as is
    events = await store.events("chat:s", 0)
    assert [e.seq for e in events] == list(range(1, 10))
    assert all(e.data == {"m": 1} for e in events)
    assert await store.last_seqs("chat:") == {"chat:s": 9}
    for since in range(10):
        assert [e.seq for e in await store.events("chat:s", since, limit=3)] == list(
            range(since + 1, min(9, since + 3) + 1)
        )


async def test_prune_cuts_runs_of_events_stored_as_one_record(store: RunStore) -> None:
    """Retention is per event, also inside a run appended in one batch (one record in the
    SQL store): the old part goes, the rest reads back unchanged."""
    await store.append([pub("chat:p", n) for n in range(1, 5)])  # at 1001..1004, one run
    await store.append([pub("chat:p", n) for n in range(5, 8)] + [pub("chat:q", 1)])
    await store.append([pub("chat:q", n) for n in range(2, 5)])
    assert await store.prune("chat:", before=1002.5) == 4  # chat:p 1, 2; chat:q 1, 2
    assert [e.seq for e in await store.events("chat:p", 0)] == list(range(3, 8))
    assert [e.seq for e in await store.events("chat:p", 3, limit=2)] == [4, 5]
    assert await store.prune("chat:", before=1005.5) == 4  # chat:p 3..5; chat:q 3
    assert [(e.seq, e.at) for e in await store.events("chat:p", 0)] == [(6, 1006.0), (7, 1007.0)]
    assert await store.prune("chat:", before=1e9) == 1  # chat:p 6: each topic keeps its last
    assert [e.seq for e in await store.events("chat:p", 0)] == [7]
    assert [e.seq for e in await store.events("chat:q", 0)] == [4]
    assert await store.prune("chat:", before=1e9) == 0
    assert await store.last_seqs("chat:") == {"chat:p": 7, "chat:q": 4}
    await store.append([pub("chat:p", 8)])
    assert [e.seq for e in await store.events("chat:p", 6)] == [7, 8]


async def test_migration_0004_keeps_single_event_rows_readable(store: RunStore) -> None:
    """Rows stored before 0004 (one per event) read as before, next to runs stored after,
    and a downgrade to 0003 expands the runs into one row per event."""
    await store.stop()
    url: str = store.url  # type: ignore[attr-defined]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: _downgrade_to(c, "0003"))
            await conn.run_sync(
                lambda c: c.exec_driver_sql(
                    "INSERT INTO agentcast_run_events (topic, seq, type, timestamp, at, data)"
                    " VALUES ('chat:old', 1, 'log', 't1', 1.5, '{\"m\": 1}'),"
                    " ('chat:old', 2, 'log', 't2', 2.5, '{\"m\": 2}')"
                )
            )
    finally:
        await engine.dispose()
    await store.start()  # upgrades to head
    await store.append([pub("chat:old", n, data=b'{"m":%d}' % n) for n in range(3, 6)])
    events = await store.events("chat:old", 0)
    assert [(e.seq, e.data) for e in events] == [(n, {"m": n}) for n in range(1, 6)]
    assert events[0].timestamp == "t1" and events[0].at == 1.5
    assert await store.last_seqs("chat:") == {"chat:old": 5}
    await store.stop()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: _downgrade_to(c, "0003"))
            rows = await conn.run_sync(
                lambda c: c.exec_driver_sql(
                    "SELECT seq, data FROM agentcast_run_events WHERE topic = 'chat:old'"
                    " ORDER BY seq"
                ).all()
            )
    finally:
        await engine.dispose()
    assert [(seq, orjson.loads(data)) for seq, data in rows] == [(n, {"m": n}) for n in range(1, 6)]
    await store.start()


def _downgrade_to(connection: Any, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.downgrade(config, revision)
