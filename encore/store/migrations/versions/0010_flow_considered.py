"""a customer's timeline says which flows an event was considered for and why none started

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_considered",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("customer_id", IdType, nullable=False),
        sa.Column("cause", sa.String(length=255), nullable=False),
        sa.Column("flow_key", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_flow_considered_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_flow_considered_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_considered")),
        sa.UniqueConstraint(
            "customer_id", "cause", "flow_key", name=op.f("uq_flow_considered_customer_id_cause_flow_key")
        ),
    )


def downgrade() -> None:
    op.drop_table("flow_considered")
