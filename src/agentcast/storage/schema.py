"""The tables (SQLAlchemy Core). Changes go through a new Alembic migration."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, MetaData, String, Table, Text

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
    Index("ix_agentcast_runs_kind_status", "kind", "status"),
    Index("ix_agentcast_runs_updated_at", "updated_at"),
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
)
