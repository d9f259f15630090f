"""flow versions keep their templates: a waiting run renders the templates of the version it started on

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_versions",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("flow_key", sa.String(length=128), nullable=False),
        sa.Column("templates", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_versions")),
        sa.UniqueConstraint("digest", name=op.f("uq_flow_versions_digest")),
    )


def downgrade() -> None:
    op.drop_table("flow_versions")
