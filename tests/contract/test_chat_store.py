"""The conversation store contract (``agentcast/storage/chat.py``) in memory, on SQLite
and on PostgreSQL (skipped with the reason where PostgreSQL is unreachable, failed instead
under ``AGENTCAST_REQUIRE_SERVICES=1``, as in CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcast.storage import ChatStore, MemoryChatStore, create_chat_store, create_store
from agentcast.storage.base import RunStore, StoreError
from agentcast.storage.chat import Conversation, NewMessage
from tests.services import require_postgres


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def chats(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatStore]:
    if request.param == "memory":
        yield MemoryChatStore()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'chat.db'}"
    else:
        url = await require_postgres()
    runs: RunStore | None = create_store(url)
    assert runs is not None
    await runs.start()
    try:
        yield create_chat_store(runs)
    finally:
        await runs.stop()


def conv(id: str, user: str = "alice", at: float = 100.0) -> Conversation:
    return Conversation(id, user, "agent-1", f"title {id}", at, at)


def msg(cid: str, role: str, content: str, at: float, **kw: object) -> NewMessage:
    return NewMessage(cid, role, content, created_at=at, completed_at=at, **kw)  # type: ignore[arg-type]


async def test_conversation_roundtrip_and_listing(chats: ChatStore) -> None:
    await chats.create_conversation(conv("c1", at=100.0))
    await chats.create_conversation(conv("c2", at=200.0))
    await chats.create_conversation(conv("c3", user="bob", at=300.0))
    got = await chats.get_conversation("c1")
    assert got == conv("c1", at=100.0)
    assert await chats.get_conversation("nope") is None
    mine, total = await chats.list_conversations("alice", limit=10, offset=0)
    assert [c.id for c in mine] == ["c2", "c1"] and total == 2
    page, total = await chats.list_conversations(None, limit=2, offset=1)
    assert [c.id for c in page] == ["c2", "c1"] and total == 3
    with pytest.raises(StoreError):
        await chats.create_conversation(conv("c1"))


async def test_messages_get_increasing_ids_and_page_backwards(chats: ChatStore) -> None:
    await chats.create_conversation(conv("c1"))
    await chats.create_conversation(conv("other"))
    stored = []
    for i in range(7):
        stored.append(await chats.add_message(msg("c1", "user", f"q{i}", 101.0 + i)))
        await chats.add_message(msg("other", "user", f"x{i}", 101.0 + i))
    ids = [m.id for m in stored]
    assert ids == sorted(ids) and len(set(ids)) == 7
    last3 = await chats.messages("c1", None, 3)
    assert [m.content for m in last3] == ["q4", "q5", "q6"]
    before = await chats.messages("c1", last3[0].id, 3)
    assert [m.content for m in before] == ["q1", "q2", "q3"]
    first = await chats.messages("c1", before[0].id, 3)
    assert [m.content for m in first] == ["q0"]
    assert await chats.messages("c1", first[0].id, 3) == []
    c = await chats.get_conversation("c1")
    assert c is not None and c.message_count == 7 and c.updated_at == 107.0


async def test_message_fields_survive(chats: ChatStore) -> None:
    await chats.create_conversation(conv("c1"))
    q = await chats.add_message(msg("c1", "user", "question ✓", 101.0))
    a = await chats.add_message(
        NewMessage(
            "c1",
            "assistant",
            "partial answ",
            status="cancelled",
            created_at=101.5,
            completed_at=102.25,
            reply_to=q.id,
            model="smollm2",
            prompt_tokens=12,
            completion_tokens=3,
            ttft_ms=15.5,
            duration_ms=750.0,
            error="cancelled by the user",
        )
    )
    (back_q, back_a) = await chats.messages("c1", None, 10)
    assert back_q == q and back_a == a
    wire = back_a.to_wire()
    assert wire["status"] == "cancelled" and wire["reply_to"] == q.id
    assert wire["tokens"] == {"prompt": 12, "completion": 3}


async def test_message_to_missing_conversation_is_refused(chats: ChatStore) -> None:
    with pytest.raises(StoreError):
        await chats.add_message(msg("ghost", "user", "hello", 1.0))


async def test_rename_and_delete(chats: ChatStore) -> None:
    await chats.create_conversation(conv("c1"))
    await chats.add_message(msg("c1", "user", "hello", 101.0))
    renamed = await chats.rename_conversation("c1", "New title", 150.0)
    assert renamed is not None and renamed.title == "New title" and renamed.updated_at == 150.0
    assert await chats.rename_conversation("ghost", "x", 1.0) is None
    assert await chats.delete_conversation("c1") is True
    assert await chats.get_conversation("c1") is None
    assert await chats.messages("c1", None, 10) == []
    assert await chats.delete_conversation("c1") is False


async def test_concurrent_writes_all_succeed(chats: ChatStore) -> None:
    """Under load every write queues and succeeds (SQLite: no "database is locked")."""
    import asyncio

    await asyncio.gather(*(chats.create_conversation(conv(f"c{i}")) for i in range(50)))
    stored = await asyncio.gather(
        *(chats.add_message(msg(f"c{i % 50}", "user", f"m{i}", 101.0)) for i in range(1000))
    )
    assert len({m.id for m in stored}) == 1000
    total = sum([len(await chats.messages(f"c{i}", None, 100)) for i in range(50)])
    assert total == 1000


async def test_writes_at_once_each_get_their_own_answer(chats: ChatStore) -> None:
    """Messages written together (one group commit on SQL stores): each caller gets its own
    message and id, in order per conversation; one to a missing conversation fails alone;
    the conversations' counts and times follow."""
    import asyncio

    await chats.create_conversation(conv("a", at=100.0))
    await chats.create_conversation(conv("b", at=100.0))
    calls = [
        chats.add_message(msg("a", "user", "a0", 101.0)),
        chats.add_message(msg("b", "user", "b0", 105.0)),
        chats.add_message(msg("ghost", "user", "lost", 102.0)),
        chats.add_message(msg("a", "assistant", "a1", 103.0)),
        chats.add_message(msg("a", "user", "a2", 102.0)),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[2], StoreError) and "ghost" in str(results[2])
    stored = [r for r in results if not isinstance(r, BaseException)]
    assert [m.content for m in stored] == ["a0", "b0", "a1", "a2"]
    assert len({m.id for m in stored}) == 4
    a = await chats.messages("a", None, 10)
    assert [m.content for m in a] == ["a0", "a1", "a2"], "stored in the order written"
    assert [m.id for m in a] == sorted(m.id for m in a)
    got_a, got_b = await chats.get_conversation("a"), await chats.get_conversation("b")
    assert got_a is not None and got_b is not None
    assert (got_a.message_count, got_a.updated_at) == (3, 103.0), "latest time, not last"
    assert (got_b.message_count, got_b.updated_at) == (1, 105.0)
