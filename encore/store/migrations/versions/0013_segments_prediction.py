"""customers get a predicted next order (a date trigger, indexed per shop); shops keep their median gap between orders

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("predicted_next_order", UTCDateTime(), nullable=True))
    with op.batch_alter_table("shops") as batch:
        batch.add_column(sa.Column("order_interval_days", sa.Float(), nullable=True))
        batch.add_column(sa.Column("order_interval_on", sa.Date(), nullable=True))
    op.create_index("ix_customers_shop_predicted_next", "customers", ["shop_id", "predicted_next_order"])


def downgrade() -> None:
    op.drop_index("ix_customers_shop_predicted_next", table_name="customers")
    with op.batch_alter_table("shops") as batch:
        batch.drop_column("order_interval_on")
        batch.drop_column("order_interval_days")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("predicted_next_order")
