"""suppressions keep a keyed hash of the address, not the address; shops honour first-format unsubscribe links a year

Revision ID: 0005
Revises: 0004

Every stored address is replaced by `encore.unsubscribe.address_key` (HMAC-SHA256 keyed from
SECRET_KEY, so the process migrating must have the SECRET_KEY the others use). Rows that become
the same (one address stored in two spellings) are kept once, the oldest. The shops that exist now
may have sent links of the first format, which named the address: they honour them for
LEGACY_LINK_DAYS from now (`shops.legacy_links_until`). There is no way back: the addresses are gone.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

from encore_retention.core.store.models import UTCDateTime, utcnow

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHUNK = 1000


def upgrade() -> None:
    from encore_retention.core.unsubscribe import LEGACY_LINK_DAYS, address_key

    op.add_column("shops", sa.Column("legacy_links_until", UTCDateTime(), nullable=True))
    shops = sa.table("shops", sa.column("legacy_links_until", UTCDateTime()))
    op.execute(shops.update().values(legacy_links_until=utcnow() + timedelta(days=LEGACY_LINK_DAYS)))

    op.add_column("suppressions", sa.Column("email_hash", sa.String(length=64), nullable=True))
    suppressions = sa.table(
        "suppressions",
        sa.column("id", sa.BigInteger()),
        sa.column("shop_id", sa.BigInteger()),
        sa.column("email", sa.String()),
        sa.column("email_hash", sa.String()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(suppressions.c.id, suppressions.c.shop_id, suppressions.c.email).order_by(suppressions.c.id)
    ).all()
    seen: set[tuple[int, str]] = set()
    hashed: list[dict[str, object]] = []
    duplicates: list[int] = []
    for row_id, shop_id, email in rows:
        key = address_key(shop_id, email or "")
        if (shop_id, key) in seen:
            duplicates.append(row_id)
            continue
        seen.add((shop_id, key))
        hashed.append({"row_id": row_id, "key": key})
    for start in range(0, len(duplicates), CHUNK):
        bind.execute(suppressions.delete().where(suppressions.c.id.in_(duplicates[start : start + CHUNK])))
    update = (
        suppressions.update().where(suppressions.c.id == sa.bindparam("row_id")).values(email_hash=sa.bindparam("key"))
    )
    for start in range(0, len(hashed), CHUNK):
        bind.execute(update, hashed[start : start + CHUNK])

    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_suppressions_shop_id_email", type_="unique")
        batch_op.drop_column("email")
        batch_op.alter_column("email_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint("uq_suppressions_shop_id_email_hash", ["shop_id", "email_hash"])


def downgrade() -> None:
    raise RuntimeError(
        "0005 replaced the suppressed addresses by keyed hashes; they can't be brought back "
        "(restore a backup taken before it to go back)"
    )
