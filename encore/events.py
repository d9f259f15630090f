"""The canonical event model: the one language webhooks, the worker, the ledger and the flows speak.

Each platform's receiver turns a webhook into an `Event`. Everything in it is optional except what
identifies the event, because real stores send older API versions, guest orders and payloads with
the customer's personal data withheld.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    """Canonical event types; the contract's list plus a few the ledger needs, and `unknown`."""

    ORDER_PLACED = "order.placed"
    ORDER_PAID = "order.paid"
    ORDER_FULFILLED = "order.fulfilled"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_REFUNDED = "order.refunded"
    ORDER_UPDATED = "order.updated"
    ORDER_DELETED = "order.deleted"
    CUSTOMER_CREATED = "customer.created"
    CUSTOMER_UPDATED = "customer.updated"
    CUSTOMER_DELETED = "customer.deleted"
    CUSTOMER_CONSENT_CHANGED = "customer.consent_changed"
    CUSTOMER_PURCHASING_SUMMARY = "customer.purchasing_summary"
    CHECKOUT_STARTED = "checkout.started"
    CHECKOUT_UPDATED = "checkout.updated"
    CUSTOMER_REDACT = "customer.redact"
    CUSTOMER_DATA_REQUEST = "customer.data_request"
    SHOP_REDACT = "shop.redact"
    APP_UNINSTALLED = "app.uninstalled"
    UNKNOWN = "unknown"

    @property
    def is_order(self) -> bool:
        """True for the order.* family."""
        return self.value.startswith("order.")

    @property
    def is_privacy(self) -> bool:
        """True for the events that delete or export personal data."""
        return self in PRIVACY_EVENTS


PRIVACY_EVENTS = frozenset(
    {EventType.CUSTOMER_REDACT, EventType.CUSTOMER_DATA_REQUEST, EventType.SHOP_REDACT, EventType.APP_UNINSTALLED}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Customer(_Model):
    """A customer as a platform described it. None means "not told", never "empty"."""

    id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    birthday: date | None = None
    email_consent: bool | None = None
    consent_updated_at: datetime | None = None
    tags: list[str] | None = None
    locale: str | None = None
    has_account: bool | None = None
    orders_count: int | None = None
    total_spent: Decimal | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def key(self) -> str | None:
        """The ledger key: the platform id, or the email address for a guest."""
        if self.id:
            return self.id
        if self.email:
            return "email:" + self.email.strip().lower()
        return None


class LineItem(_Model):
    """One line of an order or checkout."""

    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    title: str = ""
    quantity: int = 1
    price: Decimal | None = None


class Order(_Model):
    """An order; totals are Decimal in `currency`."""

    id: str
    number: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    total: Decimal | None = None
    subtotal: Decimal | None = None
    currency: str | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    discount_codes: list[str] = Field(default_factory=list)
    financial_status: str | None = None
    fulfillment_status: str | None = None
    cancelled_at: datetime | None = None
    checkout_token: str | None = None


class Checkout(_Model):
    """A started checkout (abandoned-cart flows)."""

    token: str
    email: str | None = None
    recovery_url: str | None = None
    total: Decimal | None = None
    currency: str | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None


class Event(_Model):
    """A normalised webhook: what happened, to whom, in which shop. `id` is the dedupe key and job id."""

    id: str
    type: EventType
    platform: str
    shop: str
    topic: str
    occurred_at: datetime
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    customer: Customer | None = None
    order: Order | None = None
    checkout: Checkout | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    raw: Any = None

    def to_dict(self, *, raw: bool = True) -> dict[str, Any]:
        """A JSON-safe dict (Decimal as string, datetimes ISO 8601)."""
        return self.model_dump(mode="json", exclude=None if raw else {"raw"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        """Rebuild an event from `to_dict`'s output."""
        return cls.model_validate(data)


# ---- helpers shared by the platform parsers -------------------------------------------------------

_JOB_ID_OK = re.compile(r"[A-Za-z0-9_-]{1,100}")


def event_id(platform: str, *parts: object) -> str:
    """A stable event id usable as an RQ job id: the platform's own id when it is safe, else a hash."""
    if len(parts) == 1 and _JOB_ID_OK.fullmatch(str(parts[0])):
        return f"{platform}-{parts[0]}"
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]
    return f"{platform}-{digest}"


def parse_datetime(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text; a naive value is taken as UTC; junk gives None."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_date(value: Any) -> date | None:
    """A date from `YYYY-MM-DD` (or a datetime's date part); junk gives None."""
    if not value or not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def parse_decimal(value: Any) -> Decimal | None:
    """A Decimal from a platform's money string or number; junk gives None."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def text(value: Any) -> str | None:
    """A stripped string, or None for empty and missing values."""
    if value is None:
        return None
    result = str(value).strip()
    return result or None


def truthy(value: Any) -> bool:
    """How WooCommerce meta values say yes: `yes`, `true`, `1`, `on`."""
    return str(value).strip().lower() in {"yes", "true", "1", "on", "y"}
