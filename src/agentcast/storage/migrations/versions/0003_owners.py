"""Run owners: who a run belongs to (conversations have had their ``user_id`` since 0002).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs stored before have no owner: nobody's, readable by admin only
    op.add_column("agentcast_runs", sa.Column("owner", sa.String(200), nullable=True))
    op.create_index("ix_agentcast_runs_owner_updated", "agentcast_runs", ["owner", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_agentcast_runs_owner_updated", "agentcast_runs")
    with op.batch_alter_table("agentcast_runs") as batch:
        batch.drop_column("owner")
