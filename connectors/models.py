"""The connectors' tables: OAuth install states, discount codes made, reconciliation cursors, data exports.

Every row that belongs to a shop or a customer references it with `ondelete="CASCADE"`, so
`shop/redact` and `customers/redact` remove these rows with the rest.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from encore_retention.core.store.models import Base, IdType, JSONType, Money, UTCDateTime, utcnow


class OAuthState(Base):
    """A single-use `state` of a Shopify install: created at `/shopify/install`, consumed at the callback."""

    __tablename__ = "oauth_states"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    shop_domain: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DiscountCode(Base):
    """A discount code a connector created, by the flow step's idempotency key (no personal data)."""

    __tablename__ = "discount_codes"
    __table_args__ = (
        UniqueConstraint("shop_id", "idempotency_key"),
        Index("ix_discount_codes_shop_code", "shop_id", "code"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    code: Mapped[str] = mapped_column(String(255))
    platform_id: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[Decimal] = mapped_column(Money)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SyncCursor(Base):
    """How far reconciliation has read a shop's orders or customers (the newest modification time seen)."""

    __tablename__ = "sync_cursors"

    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(1024))


class DataExport(Base):
    """The answer to a `customers/data_request`: everything stored about the customer, at that time."""

    __tablename__ = "data_exports"
    __table_args__ = (UniqueConstraint("event_id"), Index("ix_data_exports_shop", "shop_id"))

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
