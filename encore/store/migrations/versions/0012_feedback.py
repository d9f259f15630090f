"""customers answer "How was your order?": the feedback table, and the last score on the customer

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("feedback_score", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("feedback_at", UTCDateTime(), nullable=True))
    op.create_table(
        "feedback",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("customer_id", IdType, nullable=False),
        sa.Column("subject", sa.String(length=160), nullable=False),
        sa.Column("run_id", IdType, nullable=True),
        sa.Column("order_id", sa.String(length=128), nullable=True),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("queued", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_feedback_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_feedback_shop_id_shops"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("shop_id", "customer_id", "subject", name=op.f("uq_feedback_shop_id_customer_id_subject")),
    )
    op.create_index("ix_feedback_customer", "feedback", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_customer", table_name="feedback")
    op.drop_table("feedback")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("feedback_at")
        batch.drop_column("feedback_score")
