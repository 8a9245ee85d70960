"""Runs and their event log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agentcast_runs",
        sa.Column("topic", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("execution_id", sa.String(200)),
        sa.Column("started_at", sa.String(40)),
        sa.Column("finished_at", sa.String(40)),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_agentcast_runs_kind_status", "agentcast_runs", ["kind", "status"])
    op.create_index("ix_agentcast_runs_updated_at", "agentcast_runs", ["updated_at"])
    op.create_table(
        "agentcast_run_events",
        sa.Column("topic", sa.String(200), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("timestamp", sa.String(40), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agentcast_run_events")
    op.drop_index("ix_agentcast_runs_updated_at", "agentcast_runs")
    op.drop_index("ix_agentcast_runs_kind_status", "agentcast_runs")
    op.drop_table("agentcast_runs")
