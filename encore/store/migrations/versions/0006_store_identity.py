"""shops say who they are in their emails: a sender (From) and a Reply-To beside their name, staff email and URL

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shops") as batch:
        batch.add_column(sa.Column("email_from", sa.String(length=640), nullable=True))
        batch.add_column(sa.Column("reply_to", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shops") as batch:
        batch.drop_column("reply_to")
        batch.drop_column("email_from")
