"""Conversations and their messages.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agentcast_conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("agent_id", sa.String(200), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_agentcast_conversations_user_updated",
        "agentcast_conversations",
        ["user_id", "updated_at"],
    )
    op.create_table(
        "agentcast_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "conversation_id",
            sa.String(64),
            sa.ForeignKey("agentcast_conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("completed_at", sa.Float),
        sa.Column("reply_to", sa.BigInteger),
        sa.Column("model", sa.String(200)),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("duration_ms", sa.Float),
        sa.Column("error", sa.Text),
    )
    op.create_index(
        "ix_agentcast_messages_conversation_id", "agentcast_messages", ["conversation_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_agentcast_messages_conversation_id", "agentcast_messages")
    op.drop_table("agentcast_messages")
    op.drop_index("ix_agentcast_conversations_user_updated", "agentcast_conversations")
    op.drop_table("agentcast_conversations")
