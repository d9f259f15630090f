"""held emails wait their turn: a run keeps its flow's priority and since when its email is deferred

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default="50", nullable=False))
        batch.add_column(sa.Column("deferred_since", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("deferred_since")
        batch.drop_column("priority")
