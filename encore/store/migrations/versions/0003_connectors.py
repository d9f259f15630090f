"""connectors: OAuth states, discount codes made, reconciliation cursors, data exports

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_states",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("shop_domain", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_oauth_states")),
    )
    op.create_table(
        "discount_codes",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("code", sa.String(length=255), nullable=False),
        sa.Column("platform_id", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Numeric(14, 2), nullable=False),
        sa.Column("ends_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_discount_codes_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discount_codes")),
        sa.UniqueConstraint("shop_id", "idempotency_key", name=op.f("uq_discount_codes_shop_id_idempotency_key")),
    )
    op.create_index("ix_discount_codes_shop_code", "discount_codes", ["shop_id", "code"])
    op.create_table(
        "sync_cursors",
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("cursor", UTCDateTime(), nullable=True),
        sa.Column("last_run_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_sync_cursors_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("shop_id", "resource", name=op.f("pk_sync_cursors")),
    )
    op.create_table(
        "data_exports",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("customer_id", IdType, nullable=True),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_data_exports_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_data_exports_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_exports")),
        sa.UniqueConstraint("event_id", name=op.f("uq_data_exports_event_id")),
    )
    op.create_index("ix_data_exports_shop", "data_exports", ["shop_id"])


def downgrade() -> None:
    op.drop_index("ix_data_exports_shop", table_name="data_exports")
    op.drop_table("data_exports")
    op.drop_table("sync_cursors")
    op.drop_index("ix_discount_codes_shop_code", table_name="discount_codes")
    op.drop_table("discount_codes")
    op.drop_table("oauth_states")
