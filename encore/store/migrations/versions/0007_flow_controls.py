"""flows can be paused and resumed, runs cancelled, each action recorded

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_controls",
        sa.Column("flow_key", sa.String(length=128), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("flow_key", name=op.f("pk_flow_controls")),
    )
    op.create_table(
        "flow_actions",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("flow_key", sa.String(length=128), nullable=False),
        sa.Column("run_id", IdType, nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["flow_runs.id"], name=op.f("fk_flow_actions_run_id_flow_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_actions")),
    )
    with op.batch_alter_table("flow_actions") as batch:
        batch.create_index("ix_flow_actions_flow_at", ["flow_key", "at"], unique=False)


def downgrade() -> None:
    op.drop_table("flow_actions")
    op.drop_table("flow_controls")
