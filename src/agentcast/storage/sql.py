"""The run store on SQLAlchemy (async): SQLite by default, PostgreSQL by URL.

URLs: ``sqlite:///path.db`` (driver aiosqlite), ``postgresql://user@host/db`` (driver
asyncpg); explicit ``+driver`` URLs are kept. Migrations (Alembic, shipped in
``storage/migrations``) are applied by :meth:`SqlRunStore.start`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from agentcast.core.envelope import Publication
from agentcast.security.ownership import pattern_like
from agentcast.storage.base import RunStore, RunSummary, RunVisibility, StoredEvent, StoreError
from agentcast.storage.chat import ChatMessage, ChatStore, Conversation, NewMessage
from agentcast.storage.schema import conversations, messages, run_events, runs

__all__ = ["SqlChatStore", "SqlRunStore", "async_url"]

MIGRATIONS = Path(__file__).parent / "migrations"


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for a plain database URL."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL (readers do not block the writer), and wait up to 10 s for another process's
    lock instead of failing at once."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _glob(pattern: str) -> str:
    """A ``topics`` claim pattern as a SQLite ``GLOB`` (``[`` and ``]`` literal)."""
    return "".join("[" + c + "]" if c in "[]" else c for c in pattern)


def _summary(row: Any) -> RunSummary:
    return RunSummary(
        topic=row.topic,
        kind=row.kind,
        run_id=row.run_id,
        status=row.status,
        execution_id=row.execution_id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        last_seq=row.last_seq,
        state=orjson.loads(row.state),
        owner=row.owner,
    )


# A row holds one event (``last_seq`` NULL, ``data`` the event's data) or a run of
# consecutive events of one topic: ``seq`` … ``last_seq``, ``data`` the JSON array of
# their ``[type, timestamp, at, data]``; ``type``, ``timestamp`` and ``at`` are the
# first's, ``last_at`` the newest's (retention). ``append`` writes one row per topic per
# batch where it can: a chat stream's deltas of one recorder batch (~10 at 50 tokens/s)
# cost one row, not ten.
# A row whose first seq is stored already replaces the stored one only when it reaches
# further (a batch re-sent with more events behind it); readers skip seqs they have.
_SQLITE_APPEND = (
    "INSERT INTO agentcast_run_events (topic, seq, type, timestamp, at, data, last_seq, last_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (topic, seq) DO UPDATE SET "
    "last_seq = excluded.last_seq, last_at = excluded.last_at, data = excluded.data "
    "WHERE excluded.last_seq > coalesce(agentcast_run_events.last_seq, agentcast_run_events.seq)"
)

_Row = tuple[str, int, str, str, float, str, int | None, float | None]
_COLUMNS = ("topic", "seq", "type", "timestamp", "at", "data", "last_seq", "last_at")


_YIELD_EVERY_EVENTS = 512
"""``append`` lets the event loop run after encoding this many events' rows (~0.4 ms): a
batch of 10,000 chat tokens is not one 8 ms stall of every connection."""


def by_topic(events: list[Publication]) -> dict[str, list[Publication]]:
    """``events`` split by topic, each topic's in the order given."""
    topics: dict[str, list[Publication]] = {}
    for p in events:
        pubs = topics.get(p.topic)
        if pubs is None:
            topics[p.topic] = [p]
        else:
            pubs.append(p)
    return topics


def event_rows(events: list[Publication]) -> list[_Row]:
    """The rows storing ``events``: one per run of consecutive seqs of one topic (a
    duplicate seq within ``events`` keeps its first copy)."""
    rows: list[_Row] = []
    for topic, pubs in by_topic(events).items():
        topic_rows(topic, pubs, rows)
    return rows


def topic_rows(topic: str, pubs: list[Publication], rows: list[_Row]) -> None:
    """Append to ``rows`` the rows storing ``pubs``, events of ``topic``."""
    first = pubs[0].seq
    if [p.seq for p in pubs] == list(range(first, first + len(pubs))):
        rows.append(_row(topic, pubs))  # the usual case: one run, in order
        return
    pubs.sort(key=_seq)  # stable: the first copy of a seq stays first
    start = 0
    for end in range(1, len(pubs) + 1):
        if end < len(pubs) and pubs[end].seq - pubs[end - 1].seq in (0, 1):
            continue  # the run goes on (a duplicate is dropped below)
        run = [
            p
            for i, p in enumerate(pubs[start:end], start)
            if i == start or pubs[i - 1].seq != p.seq
        ]
        rows.append(_row(topic, run))
        start = end


def _row(topic: str, run: list[Publication]) -> _Row:
    """The row of ``run`` (consecutive seqs of ``topic``)."""
    first = run[0]
    if len(run) == 1:
        return (
            topic,
            first.seq,
            first.type,
            first.timestamp,
            first.at,
            first.data.decode(),
            None,
            None,
        )
    fragment = orjson.Fragment
    data = orjson.dumps([(p.type, p.timestamp, p.at, fragment(p.data)) for p in run])
    last = run[-1]
    return (
        topic,
        first.seq,
        first.type,
        first.timestamp,
        first.at,
        data.decode(),
        last.seq,
        last.at,
    )


def _seq(p: Publication) -> int:
    return p.seq


def _publication(e: StoredEvent) -> Publication:
    return Publication(e.topic, e.seq, e.type, orjson.dumps(e.data), e.timestamp, e.at)


def expand_rows(rows: Any, since: int) -> list[StoredEvent]:
    """The events of ``rows`` (one topic's, in seq order) after ``since``, each seq once."""
    out: list[StoredEvent] = []
    after = since
    loads = orjson.loads
    for r in rows:
        if r.last_seq is None:
            if r.seq > after:
                out.append(StoredEvent(r.topic, r.seq, r.type, r.timestamp, r.at, loads(r.data)))
                after = r.seq
            continue
        if r.last_seq <= after:
            continue
        for seq, (type_, timestamp, at, data) in enumerate(loads(r.data), r.seq):
            if seq > after:
                out.append(StoredEvent(r.topic, seq, type_, timestamp, at, data))
        after = r.last_seq
    return out


class SqlRunStore(RunStore):
    """SQLite or PostgreSQL through SQLAlchemy's async engine."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.engine: AsyncEngine | None = None

    @property
    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise StoreError("store not started")
        return self.engine

    def _insert(self, table: Any) -> Any:
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table)
        if dialect == "sqlite":
            return sqlite.insert(table)
        raise StoreError(f"unsupported database {dialect!r}")  # pragma: no cover

    async def start(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.split(":///", 1)[-1]
            if path and path != ":memory:" and not Path(path).parent.is_dir():
                raise StoreError(
                    f"cannot open the run store {self.url!r}: directory "
                    f"{str(Path(path).parent)!r} does not exist"
                )
            # One connection, shared in turn: SQLite has one writer at a time, and
            # concurrent connections of one process would fail with "database is locked"
            # under load instead of queueing. Waiting for the pool is that queue.
            engine = create_async_engine(
                self.url,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=120,
            )
            if path and path != ":memory:":
                event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(self.url, pool_pre_ping=True)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open the run store {self.url!r}: {exc}") from exc
        self.engine = engine

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def ping(self) -> None:
        """``SELECT 1`` on a pooled connection (PostgreSQL's pool checks it first)."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def append(self, events: list[Publication]) -> None:
        if not events:
            return
        rows: list[_Row] = []
        encoded = 0
        for topic, pubs in by_topic(events).items():
            topic_rows(topic, pubs, rows)
            encoded += len(pubs)
            if encoded >= _YIELD_EVERY_EVENTS:
                encoded = 0
                await asyncio.sleep(0)
        try:
            async with self._engine.begin() as conn:
                await self._write_rows(conn, rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"storing {len(events)} events failed: {exc}") from exc

    async def _write_rows(self, conn: AsyncConnection, rows: list[_Row]) -> None:
        if not rows:
            return
        if self._engine.dialect.name == "sqlite":
            # the driver's executemany with tuples: a third of the CPU per row of the Core
            # statement with one dict per row
            await conn.exec_driver_sql(_SQLITE_APPEND, rows)
            return
        stmt = self._insert(run_events)
        stmt = stmt.on_conflict_do_update(
            index_elements=["topic", "seq"],
            set_={
                "last_seq": stmt.excluded.last_seq,
                "last_at": stmt.excluded.last_at,
                "data": stmt.excluded.data,
            },
            where=stmt.excluded.last_seq > func.coalesce(run_events.c.last_seq, run_events.c.seq),
        )
        await conn.execute(stmt, [dict(zip(_COLUMNS, row, strict=True)) for row in rows])

    async def upsert_runs(self, summaries: list[RunSummary]) -> None:
        if not summaries:
            return
        now = time.time()
        rows = [
            {
                "topic": r.topic,
                "kind": r.kind,
                "run_id": r.run_id,
                "status": r.status,
                "execution_id": r.execution_id,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "last_seq": r.last_seq,
                "state": orjson.dumps(r.state).decode(),
                "updated_at": now,
                "owner": r.owner,
            }
            for r in summaries
        ]
        insert = self._insert(runs)
        replaced: dict[str, Any] = {
            c: insert.excluded[c] for c in rows[0] if c not in ("topic", "owner")
        }
        replaced["owner"] = func.coalesce(runs.c.owner, insert.excluded.owner)  # kept once set
        # never back: two nodes writing one run's summary keep the later seq's
        stmt = insert.on_conflict_do_update(
            index_elements=["topic"],
            set_=replaced,
            where=runs.c.last_seq <= insert.excluded.last_seq,
        )
        try:
            async with self._engine.begin() as conn:
                for row in rows:  # one statement per row: upserts do not batch on every driver
                    await conn.execute(stmt, row)
        except SQLAlchemyError as exc:
            raise StoreError(f"storing {len(rows)} runs failed: {exc}") from exc

    async def list_runs(
        self,
        kind: str | None,
        status: str | None,
        limit: int,
        offset: int,
        visibility: RunVisibility | None = None,
    ) -> tuple[list[RunSummary], int]:
        query = select(runs)
        count = select(func.count()).select_from(runs)
        if visibility is not None:
            seen = self._visible(visibility)
            query = query.where(seen)
            count = count.where(seen)
        if kind is not None:
            query = query.where(runs.c.kind == kind)
            count = count.where(runs.c.kind == kind)
        if status is not None:
            query = query.where(runs.c.status == status)
            count = count.where(runs.c.status == status)
        query = query.order_by(runs.c.updated_at.desc(), runs.c.topic).limit(limit).offset(offset)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            total = (await conn.execute(count)).scalar_one()
        return [_summary(r) for r in rows], int(total)

    def _visible(self, visibility: RunVisibility) -> Any:
        """``owner = :owner OR topic matches a pattern``, case-sensitive on every database
        (SQLite's ``LIKE`` ignores ASCII case: its ``GLOB`` is used there)."""
        clauses: list[Any] = [runs.c.owner == visibility.owner]
        sqlite_ = self._engine.dialect.name == "sqlite"
        for pattern in visibility.patterns:
            if sqlite_:
                clauses.append(runs.c.topic.op("GLOB")(_glob(pattern)))
            else:
                clauses.append(runs.c.topic.like(pattern_like(pattern), escape="\\"))
        return or_(*clauses)

    async def get_run(self, topic: str) -> RunSummary | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(runs).where(runs.c.topic == topic))).first()
        return _summary(row) if row is not None else None

    async def events(self, topic: str, since: int, limit: int | None = None) -> list[StoredEvent]:
        # from the row holding since + 1 (the last one starting at or before it) on
        holding = (
            select(func.max(run_events.c.seq))
            .where(run_events.c.topic == topic, run_events.c.seq <= since + 1)
            .scalar_subquery()
        )
        query = select(run_events).where(
            run_events.c.topic == topic, run_events.c.seq >= func.coalesce(holding, 0)
        )
        out: list[StoredEvent] = []
        try:
            async with self._engine.connect() as conn:
                while True:
                    page = query.order_by(run_events.c.seq)
                    want = None if limit is None else limit - len(out)
                    if want is not None:
                        page = page.limit(want)  # a row holds one event or more
                    rows = (await conn.execute(page)).all()
                    new = expand_rows(rows, out[-1].seq if out else since)
                    out.extend(new)
                    if want is None or len(new) >= want or len(rows) < want:
                        break
                    query = select(run_events).where(
                        run_events.c.topic == topic, run_events.c.seq > rows[-1].seq
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the events of {topic!r} failed: {exc}") from exc
        return out if limit is None else out[:limit]

    async def last_seqs(self, prefix: str | None = None) -> dict[str, int]:
        last = func.max(func.coalesce(run_events.c.last_seq, run_events.c.seq))
        query = select(run_events.c.topic, last)
        if prefix is not None:
            query = query.where(*_under(prefix))
        query = query.group_by(run_events.c.topic)
        try:
            async with self._engine.connect() as conn:
                return {topic: int(seq) for topic, seq in (await conn.execute(query)).all()}
        except SQLAlchemyError as exc:
            raise StoreError(f"reading last seqs failed: {exc}") from exc

    async def prune(self, prefix: str, before: float) -> int:
        later = run_events.alias("later")
        has_later = (
            select(later.c.seq)
            .where(later.c.topic == run_events.c.topic, later.c.seq > run_events.c.seq)
            .exists()
        )
        # rows whose newest event is old go whole (one statement); a run some of whose
        # events are old, or the topic's last row, is rewritten without them (few rows:
        # those crossing ``before``, and the last row of topics idle since)
        newest = func.coalesce(run_events.c.last_at, run_events.c.at)
        whole = (
            delete(run_events)
            .where(*_under(prefix), newest < before, has_later)
            .returning(run_events.c.seq, run_events.c.last_seq)
        )
        crossing = select(run_events, has_later.label("has_later")).where(
            *_under(prefix),
            run_events.c.last_seq.is_not(None),
            run_events.c.at < before,
        )
        try:
            async with self._engine.begin() as conn:
                gone = (await conn.execute(whole)).all()
                count = sum(1 if last is None else last - seq + 1 for seq, last in gone)
                for row in (await conn.execute(crossing)).all():
                    events = expand_rows([row], row.seq - 1)
                    kept = [e for e in events if e.at >= before]
                    if not kept and not row.has_later:
                        kept = events[-1:]  # the numbering
                    count += len(events) - len(kept)
                    await conn.execute(
                        delete(run_events).where(
                            run_events.c.topic == row.topic, run_events.c.seq == row.seq
                        )
                    )
                    await self._write_rows(conn, event_rows([_publication(e) for e in kept]))
        except SQLAlchemyError as exc:
            raise StoreError(f"pruning {prefix!r} events failed: {exc}") from exc
        return count

    async def delete_events(self, topic: str) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(run_events).where(run_events.c.topic == topic))
        except SQLAlchemyError as exc:
            raise StoreError(f"deleting the events of {topic!r} failed: {exc}") from exc

    async def unfinished(self) -> list[str]:
        done = ("completed", "failed", "cancelled", "lost")
        query = select(runs.c.topic).where(runs.c.status.not_in(done))
        async with self._engine.connect() as conn:
            return [row.topic for row in (await conn.execute(query)).all()]


def _under(prefix: str) -> tuple[Any, Any]:
    """The conditions of topics starting with ``prefix`` (a range on the primary key)."""
    return run_events.c.topic >= prefix, run_events.c.topic < prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=row.id,
        user=row.user_id,
        agent_id=row.agent_id,
        title=row.title,
        created_at=row.created_at,
        updated_at=row.updated_at,
        message_count=row.message_count,
    )


_MESSAGE_FIELDS = tuple(NewMessage.__dataclass_fields__)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class SqlChatStore(ChatStore):
    """Conversations in the run store's database (same engine, same migrations).

    Messages are written with group commit: :meth:`add_message` queues its row and one
    writer stores every queued row in one transaction (one statement bumps the
    conversations, one inserts the messages), then answers each caller with its id. With
    many conversations answering at once this costs a fraction of a transaction per
    message (``benchmarks/chat.py``: 1,000 answers ending within seconds); alone, a message
    waits for nothing.
    """

    def __init__(self, runs: SqlRunStore) -> None:
        self.runs = runs
        self._queued: list[tuple[NewMessage, asyncio.Future[ChatMessage]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def create_conversation(self, conversation: Conversation) -> Conversation:
        row = {
            "id": conversation.id,
            "user_id": conversation.user,
            "agent_id": conversation.agent_id,
            "title": conversation.title,
            "created_at": conversation.created_at,
            "updated_at": conversation.updated_at,
            "message_count": conversation.message_count,
        }
        try:
            async with self.runs._engine.begin() as conn:
                await conn.execute(insert(conversations), row)
        except SQLAlchemyError as exc:
            raise StoreError(f"storing conversation {conversation.id!r} failed: {exc}") from exc
        return conversation

    async def get_conversation(self, id: str) -> Conversation | None:
        query = select(conversations).where(conversations.c.id == id)
        try:
            async with self.runs._engine.connect() as conn:
                row = (await conn.execute(query)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"reading conversation {id!r} failed: {exc}") from exc
        return _conversation(row) if row is not None else None

    async def list_conversations(
        self, user: str | None, limit: int, offset: int
    ) -> tuple[list[Conversation], int]:
        query = select(conversations)
        count = select(func.count()).select_from(conversations)
        if user is not None:
            query = query.where(conversations.c.user_id == user)
            count = count.where(conversations.c.user_id == user)
        query = query.order_by(conversations.c.updated_at.desc(), conversations.c.id)
        try:
            async with self.runs._engine.connect() as conn:
                rows = (await conn.execute(query.limit(limit).offset(offset))).all()
                total = (await conn.execute(count)).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(f"listing conversations failed: {exc}") from exc
        return [_conversation(r) for r in rows], int(total)

    async def rename_conversation(self, id: str, title: str, now: float) -> Conversation | None:
        stmt = (
            update(conversations)
            .where(conversations.c.id == id)
            .values(title=title, updated_at=now)
        )
        try:
            async with self.runs._engine.begin() as conn:
                if (await conn.execute(stmt)).rowcount == 0:
                    return None
        except SQLAlchemyError as exc:
            raise StoreError(f"renaming conversation {id!r} failed: {exc}") from exc
        return await self.get_conversation(id)

    async def delete_conversation(self, id: str) -> bool:
        try:
            async with self.runs._engine.begin() as conn:
                await conn.execute(delete(messages).where(messages.c.conversation_id == id))
                result = await conn.execute(delete(conversations).where(conversations.c.id == id))
        except SQLAlchemyError as exc:
            raise StoreError(f"deleting conversation {id!r} failed: {exc}") from exc
        return bool(result.rowcount)

    async def add_message(self, message: NewMessage) -> ChatMessage:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ChatMessage] = loop.create_future()
        done.add_done_callback(_retrieved)  # a cancelled caller leaves no unread failure
        self._queued.append((message, done))
        if self._writer is None:
            self._writer = loop.create_task(self._write_queued())
        # a caller that is cancelled stops waiting; its message is stored all the same
        return await asyncio.shield(done)

    async def _write_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._write_batch(batch)
        finally:
            self._writer = None

    async def _write_batch(
        self, batch: list[tuple[NewMessage, asyncio.Future[ChatMessage]]]
    ) -> None:
        """One transaction for ``batch``; each caller gets its message or its StoreError."""
        sqlite_ = self.runs._engine.dialect.name == "sqlite"
        bumps: dict[str, dict[str, Any]] = {}
        for message, _ in batch:
            touched = message.completed_at or message.created_at
            bump = bumps.setdefault(
                message.conversation_id,
                {"b_id": message.conversation_id, "b_n": 0, "b_touched": touched},
            )
            bump["b_n"] += 1
            bump["b_touched"] = max(bump["b_touched"], touched)
        latest = func.max if sqlite_ else func.greatest
        bump_stmt = (
            update(conversations)
            .where(conversations.c.id == bindparam("b_id"))
            .values(
                message_count=conversations.c.message_count + bindparam("b_n"),
                updated_at=latest(conversations.c.updated_at, bindparam("b_touched")),
            )
        )
        try:
            async with self.runs._engine.begin() as conn:
                found = set(
                    (
                        await conn.execute(
                            select(conversations.c.id).where(conversations.c.id.in_(list(bumps)))
                        )
                    ).scalars()
                )
                kept = [(m, f) for m, f in batch if m.conversation_id in found]
                ids: list[int] = []
                if kept:
                    await conn.execute(bump_stmt, [b for c, b in bumps.items() if c in found])
                    rows = [{f: getattr(m, f) for f in _MESSAGE_FIELDS} for m, _ in kept]
                    result = await conn.execute(
                        insert(messages).returning(messages.c.id, sort_by_parameter_order=True),
                        rows,
                    )
                    ids = [int(i) for i in result.scalars()]
        except SQLAlchemyError as exc:
            failure = StoreError(f"storing a message failed: {exc}")
            for _, done in batch:
                if not done.done():
                    done.set_exception(failure)
            return
        for (message, done), new_id in zip(kept, ids, strict=True):
            if not done.done():
                done.set_result(ChatMessage.of(new_id, message))
        for message, done in batch:
            if not done.done():
                done.set_exception(StoreError(f"no conversation {message.conversation_id!r}"))

    async def messages(
        self, conversation_id: str, before: int | None, limit: int
    ) -> list[ChatMessage]:
        query = select(messages).where(messages.c.conversation_id == conversation_id)
        if before is not None:
            query = query.where(messages.c.id < before)
        query = query.order_by(messages.c.id.desc()).limit(limit)
        try:
            async with self.runs._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"reading messages failed: {exc}") from exc
        return [
            ChatMessage(id=r.id, **{f: getattr(r, f) for f in _MESSAGE_FIELDS})
            for r in reversed(rows)
        ]
