"""SQLAlchemy models of the store. Migrations in `migrations/versions/` build the same schema.

The core tables (shops, customers, orders, events) belong to ingest; the flow engine and the
connectors add theirs in their own modules and migrations.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from encore_retention.core.events import INT64_MAX

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Money = Numeric(14, 2, asdecimal=True)
JSONType = JSON()
IdType = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = INT64_MAX  # the largest IdType value, on PostgreSQL (BIGINT) and SQLite (INTEGER) alike


def parse_id(value: object) -> int | None:
    """A row id given from outside (a URL, a form, a command line), or None when it can't be one.

    Only ASCII digits count (`str.isdigit` also takes `²` and other digits `int` refuses), and only
    values IdType can hold: a larger number would overflow the database's integer, not miss a row.
    """
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if number <= MAX_ID else None


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class Shop(Base):
    """A connected store: a Shopify shop or a WooCommerce site. Secrets are Fernet-encrypted."""

    __tablename__ = "shops"
    __table_args__ = (UniqueConstraint("platform", "domain"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    domain: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))  # the staff's address: internal alerts go here
    # The store's sender: From (a mailbox, `Name <address>`) and Reply-To; unset, EMAIL_FROM's address under the
    # store's name, and replies to the staff's address.
    email_from: Mapped[str | None] = mapped_column(String(640))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str | None] = mapped_column(String(8))
    timezone: Mapped[str | None] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(String(512))
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    consumer_key_enc: Mapped[str | None] = mapped_column(Text)
    consumer_secret_enc: Mapped[str | None] = mapped_column(Text)
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[str | None] = mapped_column(String(1024))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    installed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    uninstalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Until when unsubscribe links of the first format (which named the address) are honoured; None: never.
    legacy_links_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The store's median days between a customer's consecutive orders, as of the start of `order_interval_on`
    # (a UTC day): what predictions shrink toward (`encore.store.prediction`); refreshed once a day.
    order_interval_days: Mapped[float | None] = mapped_column(Float)
    order_interval_on: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Customer(Base):
    """The customer ledger: one row per customer per shop, updated by every event about them."""

    __tablename__ = "customers"
    __table_args__ = (
        UniqueConstraint("shop_id", "platform_id"),
        Index("ix_customers_shop_email", "shop_id", "email"),
        Index("ix_customers_birthday_md", "birthday_month", "birthday_day"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    platform_id: Mapped[str] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(255))
    last_name: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str | None] = mapped_column(String(64))
    birthday: Mapped[date | None] = mapped_column(Date)
    birthday_month: Mapped[int | None] = mapped_column(Integer)
    birthday_day: Mapped[int | None] = mapped_column(Integer)
    email_consent: Mapped[bool | None] = mapped_column(Boolean)
    consent_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    has_account: Mapped[bool | None] = mapped_column(Boolean)
    orders_count: Mapped[int] = mapped_column(Integer, default=0)
    total_spent: Mapped[Decimal] = mapped_column(Money, default=Decimal("0"))
    first_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the customer's next order is expected, from their own gaps between orders (2+ orders; else None).
    predicted_next_order: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_orders_count: Mapped[int | None] = mapped_column(Integer)
    reported_total_spent: Mapped[Decimal | None] = mapped_column(Money)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    profile_version: Mapped[datetime | None] = mapped_column(UTCDateTime)
    platform_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The customer's last answer to "How was your order?" (1 to 5) and when it was given (`feedback.received`).
    feedback_score: Mapped[int | None] = mapped_column(Integer)
    feedback_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Order(Base):
    """An order as last seen; the ledger's aggregates are computed from these rows."""

    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("shop_id", "platform_id"), Index("ix_orders_customer", "customer_id"))

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    platform_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"))
    number: Mapped[str | None] = mapped_column(String(64))
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    platform_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    total: Mapped[Decimal | None] = mapped_column(Money)
    currency: Mapped[str | None] = mapped_column(String(8))
    financial_status: Mapped[str | None] = mapped_column(String(32))
    fulfillment_status: Mapped[str | None] = mapped_column(String(32))
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    discount_codes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventRecord(Base):
    """Every event the worker processed: the database half of exactly-once ingest, and the timeline."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_customer", "customer_id"),
        Index("ix_events_shop_received", "shop_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    shop_id: Mapped[int | None] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"))
    platform: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Suppression(Base):
    """An address that must not get marketing email from a shop (unsubscribed, bounced, complained).

    The address itself is not kept: `email_hash` is its keyed hash (`encore.unsubscribe.address_key`),
    all a send needs to be checked, so a suppression outlives the customer's redaction without
    holding anything that names them.
    """

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("shop_id", "email_hash"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    email_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsentChange(Base):
    """A change to whether an address may get marketing email from a shop, who made it and why, and what the store's
    platform was told: the customer's timeline and the suppression list read these.

    `action` is `unsubscribed` (a one-click unsubscribe, a complaint, a hard bounce, a withdrawal in the admin)
    or `unsuppressed` (the admin lifted a suppression). An unsubscribe is written back to the platform by an RQ
    job; `writeback` says how that went: `pending`, `done`, `failed`, `skipped` (nothing to write back, `detail`
    says why) or `none` (not written back: an unsuppress never re-subscribes anyone on the platform).
    """

    __tablename__ = "consent_changes"
    __table_args__ = (
        Index("ix_consent_changes_customer", "customer_id"),
        Index("ix_consent_changes_shop_hash", "shop_id", "email_hash"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    email_hash: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(255), default="")
    actor: Mapped[str] = mapped_column(String(255), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    writeback: Mapped[str] = mapped_column(String(16), default="pending")
    writeback_detail: Mapped[str] = mapped_column(Text, default="")
    writeback_attempts: Mapped[int] = mapped_column(Integer, default=0)
    writeback_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SoftBounce(Base):
    """Soft bounces of an address at a shop since its last delivery: `count` in a row, then it is suppressed."""

    __tablename__ = "soft_bounces"
    __table_args__ = (UniqueConstraint("shop_id", "email_hash"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    email_hash: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Feedback(Base):
    """One answer to "How was your order?": a score from 1 to 5 and an optional comment, once per asked order.

    `subject` is what was asked about (`order:<id>`, else `run:<id>`), so that a link clicked twice records
    once. The row goes with its customer (a redaction) and its shop. `queued` says whether its
    `feedback.received` event reached the queue; an answer posted again re-queues one that did not.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("shop_id", "customer_id", "subject"),
        Index("ix_feedback_customer", "customer_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(160))
    run_id: Mapped[int | None] = mapped_column(IdType)
    order_id: Mapped[str | None] = mapped_column(String(128))
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    queued: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
