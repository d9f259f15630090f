"""consent changes written back to the store, and soft bounces counted in a row

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_changes",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("customer_id", IdType, nullable=True),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("writeback", sa.String(length=16), nullable=False),
        sa.Column("writeback_detail", sa.Text(), nullable=False),
        sa.Column("writeback_attempts", sa.Integer(), nullable=False),
        sa.Column("writeback_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_consent_changes_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_consent_changes_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_changes")),
    )
    op.create_index("ix_consent_changes_customer", "consent_changes", ["customer_id"])
    op.create_index("ix_consent_changes_shop_hash", "consent_changes", ["shop_id", "email_hash"])
    op.create_table(
        "soft_bounces",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_soft_bounces_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soft_bounces")),
        sa.UniqueConstraint("shop_id", "email_hash", name=op.f("uq_soft_bounces_shop_id_email_hash")),
    )


def downgrade() -> None:
    op.drop_table("soft_bounces")
    op.drop_index("ix_consent_changes_shop_hash", table_name="consent_changes")
    op.drop_index("ix_consent_changes_customer", table_name="consent_changes")
    op.drop_table("consent_changes")
