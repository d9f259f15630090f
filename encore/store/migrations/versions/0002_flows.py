"""flows: flow runs, steps and their side effects

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import IdType, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_runs",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("run_key", sa.String(length=512), nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("customer_id", IdType, nullable=True),
        sa.Column("flow_key", sa.String(length=128), nullable=False),
        sa.Column("flow_name", sa.String(length=255), nullable=False),
        sa.Column("flow_digest", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("trigger_key", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("position", sa.JSON(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("wake_at", UTCDateTime(), nullable=True),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_flow_runs_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_flow_runs_shop_id_shops"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_runs")),
        sa.UniqueConstraint("run_key", name=op.f("uq_flow_runs_run_key")),
    )
    op.create_index("ix_flow_runs_status_wake", "flow_runs", ["status", "wake_at"])
    op.create_index("ix_flow_runs_customer_flow", "flow_runs", ["customer_id", "flow_key"])
    op.create_index("ix_flow_runs_shop_status", "flow_runs", ["shop_id", "status"])

    op.create_table(
        "flow_trace",
        sa.Column("id", IdType, autoincrement=True, nullable=False),
        sa.Column("run_id", IdType, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("step", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["flow_runs.id"], name=op.f("fk_flow_trace_run_id_flow_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_trace")),
    )
    op.create_index("ix_flow_trace_run", "flow_trace", ["run_id", "id"])

    op.create_table(
        "flow_effects",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("run_id", IdType, nullable=False),
        sa.Column("shop_id", IdType, nullable=False),
        sa.Column("customer_id", IdType, nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("marketing", sa.Boolean(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("done_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["flow_runs.id"], name=op.f("fk_flow_effects_run_id_flow_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_flow_effects_shop_id_shops"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_flow_effects_customer_id_customers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_flow_effects")),
    )
    op.create_index("ix_flow_effects_cap", "flow_effects", ["customer_id", "kind", "created_at"])
    op.create_index("ix_flow_effects_run", "flow_effects", ["run_id"])

    op.create_index("ix_customers_shop_last_order", "customers", ["shop_id", "last_order_at"])
    op.create_index("ix_customers_shop_first_order", "customers", ["shop_id", "first_order_at"])


def downgrade() -> None:
    op.drop_index("ix_customers_shop_first_order", table_name="customers")
    op.drop_index("ix_customers_shop_last_order", table_name="customers")
    op.drop_table("flow_effects")
    op.drop_table("flow_trace")
    op.drop_table("flow_runs")
