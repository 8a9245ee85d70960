"""Event ranges: one row may hold a run of consecutive events of one topic.

``last_seq`` and ``last_at`` are NULL for a row holding one event (every row stored
before, and single events since); otherwise the row holds the events ``seq`` …
``last_seq``, the newest published at ``last_at``, and its ``data`` is a JSON array of
``[type, timestamp, at, data]`` (see ``storage/sql.py``). A chat
stream's batch of token deltas is then one row instead of one per token.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agentcast_run_events", sa.Column("last_seq", sa.BigInteger, nullable=True))
    op.add_column("agentcast_run_events", sa.Column("last_at", sa.Float, nullable=True))


def downgrade() -> None:
    # expand the ranges into one row per event first: the older schema reads those only
    bind = op.get_bind()
    ranges = bind.execute(
        sa.text("SELECT topic, seq, data FROM agentcast_run_events WHERE last_seq IS NOT NULL")
    ).all()
    for topic, first, data in ranges:
        rows = [
            {
                "t": topic,
                "s": first + i,
                "y": type_,
                "ts": timestamp,
                "at": at,
                "d": orjson.dumps(item).decode(),
            }
            for i, (type_, timestamp, at, item) in enumerate(orjson.loads(data))
        ]
        for row in rows:  # the range's own row, and any single row it overlaps
            bind.execute(
                sa.text("DELETE FROM agentcast_run_events WHERE topic = :t AND seq = :s"),
                {"t": row["t"], "s": row["s"]},
            )
        bind.execute(
            sa.text(
                "INSERT INTO agentcast_run_events (topic, seq, type, timestamp, at, data)"
                " VALUES (:t, :s, :y, :ts, :at, :d)"
            ),
            rows,
        )
    with op.batch_alter_table("agentcast_run_events") as batch:
        batch.drop_column("last_at")
        batch.drop_column("last_seq")
