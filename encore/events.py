"""The canonical event model: the one language webhooks, the worker, the ledger and the flows speak.

Each platform's receiver turns a webhook into an `Event`. Everything in it is optional except what
identifies the event, because real stores send older API versions, guest orders and payloads with
the customer's personal data withheld.

What is there must fit where it goes: every number, amount, time and text is bounded to what the
store's columns (and the flows' date arithmetic) can hold, so that a value out of range fails
here, as a malformed delivery the receiver answers 400, and never later in the worker, where
retrying could not help. The bounds are the `Annotated` types below.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator


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
    FEEDBACK_RECEIVED = "feedback.received"
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


# ---- what the store can hold -----------------------------------------------------------------------

INT32_MAX = 2**31 - 1  # an INTEGER column (the customer's order counts)
INT64_MAX = 2**63 - 1  # a BIGINT, and the largest integer the store's JSON columns take (orjson)
MONEY_MAX = Decimal("999999999999.99")  # the store's Money column: NUMERIC(14, 2)
# Times from 1900 to 2999: far from the ends of Python's datetime (years 1 to 9999), so that a
# value survives conversion to any time zone and the flows' offsets and anniversaries.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
KEY_MAX = 128  # customers.platform_id and orders.platform_id: a customer's key and an order's id


def _in_range(value: datetime) -> datetime:
    moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(f"{value.isoformat()} is outside {EARLIEST.year} to {LATEST.year}")
    return value


def _day_in_range(value: date) -> date:
    if not EARLIEST.date() <= value <= LATEST.date():
        raise ValueError(f"{value.isoformat()} is outside {EARLIEST.year} to {LATEST.year}")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text holds a NUL character, which the database can't store")
    return value


_NO_NUL = AfterValidator(_no_nul)
# Texts as wide as their columns, without NUL (PostgreSQL's text types refuse it).
Key = Annotated[str, StringConstraints(max_length=KEY_MAX), _NO_NUL]  # ids, tokens, topics
Name = Annotated[str, StringConstraints(max_length=255), _NO_NUL]  # names, shop domains
EmailText = Annotated[str, StringConstraints(max_length=320), _NO_NUL]
Code = Annotated[str, StringConstraints(max_length=64), _NO_NUL]  # phone numbers, order numbers
Label = Annotated[str, StringConstraints(max_length=32), _NO_NUL]  # locales, statuses, platforms
Currency = Annotated[str, StringConstraints(max_length=8), _NO_NUL]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Quantity = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
# An amount fits NUMERIC(14, 2) once rounded, and has at most 20 decimals (a float's; PostgreSQL's
# numeric can't even read `1e-999999`).
Amount = Annotated[Decimal, Field(ge=-MONEY_MAX, le=MONEY_MAX, decimal_places=20, allow_inf_nan=False)]
Instant = Annotated[datetime, AfterValidator(_in_range)]
Day = Annotated[date, AfterValidator(_day_in_range)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


class Customer(_Model):
    """A customer as a platform described it. None means "not told", never "empty"."""

    id: Key | None = None
    email: EmailText | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    phone: Code | None = None
    birthday: Day | None = None
    email_consent: bool | None = None
    consent_updated_at: Instant | None = None
    tags: list[str] | None = None
    locale: Label | None = None
    has_account: bool | None = None
    orders_count: Count | None = None
    total_spent: Amount | None = None
    created_at: Instant | None = None
    updated_at: Instant | None = None

    @model_validator(mode="after")
    def _key_fits(self) -> Customer:
        key = self.key
        if key is not None and len(key) > KEY_MAX:
            raise ValueError(f"a guest's email address over {KEY_MAX - len('email:')} characters can't key the ledger")
        return self

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
    quantity: Quantity = 1
    price: Amount | None = None


class Order(_Model):
    """An order; totals are Decimal in `currency`."""

    id: Key
    number: Code | None = None
    created_at: Instant | None = None
    updated_at: Instant | None = None
    total: Amount | None = None
    subtotal: Amount | None = None
    currency: Currency | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    discount_codes: list[str] = Field(default_factory=list)
    financial_status: Label | None = None
    fulfillment_status: Label | None = None
    cancelled_at: Instant | None = None
    checkout_token: str | None = None


class Checkout(_Model):
    """A started checkout (abandoned-cart flows)."""

    token: Key
    email: EmailText | None = None
    recovery_url: str | None = None
    total: Amount | None = None
    currency: Currency | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    created_at: Instant | None = None
    updated_at: Instant | None = None
    completed_at: Instant | None = None


class Event(_Model):
    """A normalised webhook: what happened, to whom, in which shop. `id` is the dedupe key and job id."""

    id: Key
    type: EventType
    platform: Label
    shop: Name
    topic: Key
    occurred_at: Instant
    received_at: Instant = Field(default_factory=lambda: datetime.now(UTC))
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

# What a parser raises for a payload it can't take (a pydantic ValidationError is a ValueError): the
# same on every attempt, so the delivery is malformed, never a reason to try again.
MALFORMED_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, OverflowError)


def problem(exc: Exception) -> str:
    """One line saying what a parser refused, naming the field but never quoting its value."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{exc.title}{'.' + where if where else ''}: {first['msg']}{more}"
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)


_JOB_ID_OK = re.compile(r"[A-Za-z0-9_-]{1,100}")


def event_id(platform: str, *parts: object) -> str:
    """A stable event id usable as an RQ job id: the platform's own id when it is safe, else a hash."""
    if len(parts) == 1 and _JOB_ID_OK.fullmatch(str(parts[0])):
        return f"{platform}-{parts[0]}"
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]
    return f"{platform}-{digest}"


def parse_datetime(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text; a naive value is taken as UTC; junk gives None.

    Raises ValueError for a time that has no UTC equivalent (`0001-01-01T00:00:00+05:00`).
    """
    if not value or not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999: no UTC time to give
        raise ValueError(f"{value.strip()[:40]} is out of range") from None


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


def integer(value: Any) -> int | None:
    """An integer from a JSON number or numeric text; junk gives None (a huge one is the model's to refuse)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def mapping(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else {} (WooCommerce, in PHP, sends an empty object as `[]`)."""
    return value if isinstance(value, dict) else {}


def array(value: Any) -> list[Any]:
    """`value` when it is a JSON array, else []."""
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """A stripped string, or None for empty and missing values."""
    if value is None:
        return None
    result = str(value).strip()
    return result or None


def truthy(value: Any) -> bool:
    """How WooCommerce meta values say yes: `yes`, `true`, `1`, `on`."""
    return str(value).strip().lower() in {"yes", "true", "1", "on", "y"}
