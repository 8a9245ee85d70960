"""The tables (SQLAlchemy Core). Changes go through a new Alembic migration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

runs = Table(
    "agentcast_runs",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("run_id", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("execution_id", String(200)),
    Column("started_at", String(40)),
    Column("finished_at", String(40)),
    Column("last_seq", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("owner", String(200)),
    Index("ix_agentcast_runs_kind_status", "kind", "status"),
    Index("ix_agentcast_runs_updated_at", "updated_at"),
    Index("ix_agentcast_runs_owner_updated", "owner", "updated_at"),
)

run_events = Table(
    "agentcast_run_events",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("type", String(100), nullable=False),
    Column("timestamp", String(40), nullable=False),
    Column("at", Float, nullable=False),
    Column("data", Text, nullable=False),
    # NULL: the row is one event; else it holds seq … last_seq, the newest published at
    # last_at (0004, see storage/sql.py)
    Column("last_seq", BigInteger),
    Column("last_at", Float),
)

conversations = Table(
    "agentcast_conversations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("agent_id", String(200), nullable=False),
    Column("title", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("message_count", Integer, nullable=False),
    Index("ix_agentcast_conversations_user_updated", "user_id", "updated_at"),
)

# SQLite autoincrements only an INTEGER PRIMARY KEY
MESSAGE_ID = BigInteger().with_variant(Integer, "sqlite")

messages = Table(
    "agentcast_messages",
    metadata,
    Column("id", MESSAGE_ID, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        String(64),
        ForeignKey("agentcast_conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("reply_to", BigInteger),
    Column("model", String(200)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("ttft_ms", Float),
    Column("duration_ms", Float),
    Column("error", Text),
    Index("ix_agentcast_messages_conversation_id", "conversation_id", "id"),
)
