"""A store's identity: its name, staff email, sender (From and Reply-To), URL, time zone and currency.

The platform fills them when a store is connected (Shopify's `shop` query, WooCommerce's settings
and system status); `encore stores set` overrides any of them, and a value the operator set is kept
when the store is connected again. Templates read them as `shop.*`; every store mails as itself.

Two more fields only the operator sets, kept in the store's `settings`: `review_url`, the page of the
store's review app where review requests send customers (`shop.review_url`), and `customer_accounts`
(Shopify: `classic` or `new`; `auto`, the default, asks the shop which it uses), which decides the
link of an account invitation.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from encore_retention.connectors.email.base import mailbox
from encore_retention.core.store.models import Shop

# The shop's attribute for each identity field, as `encore stores set` names them.
FIELDS = {
    "name": "name",
    "staff_email": "email",
    "email_from": "email_from",
    "reply_to": "reply_to",
    "url": "url",
    "timezone": "timezone",
    "currency": "currency",
}
OVERRIDDEN = "identity_set"  # in Shop.settings: the fields the operator set
# Fields kept in Shop.settings under their own name, set by the operator only.
SETTINGS = ("review_url", "customer_accounts")
ACCOUNT_KINDS = ("classic", "new", "auto")


def clean(field: str, value: str) -> str:
    """A field's value as stored; ValueError saying what is wrong with it."""
    value = value.strip()
    if field in ("staff_email", "reply_to"):
        name, address = mailbox(value)
        if name:
            raise ValueError(f"{field.replace('_', '-')}: an address without a name, like staff@example.com")
        return address
    if field == "email_from":
        name, address = mailbox(value)
        return f"{name} <{address}>" if name else address
    if field in ("url", "review_url"):
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{field.replace('_', '-')}: expected http://… or https://…, got {value!r}")
        return value.rstrip("/")
    if field == "timezone":
        try:
            return str(ZoneInfo(value))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: {value!r} is not an IANA time zone (like Europe/Paris)") from None
    if field == "currency":
        if not (len(value) == 3 and value.isalpha()):
            raise ValueError(f"currency: expected a three-letter code like EUR, got {value!r}")
        return value.upper()
    if field == "customer_accounts":
        if value.lower() not in ACCOUNT_KINDS:
            raise ValueError(f"customer-accounts: one of {', '.join(ACCOUNT_KINDS)}, got {value!r}")
        return value.lower()
    if field == "name":
        if not value or len(value) > 255:
            raise ValueError("name: 1 to 255 characters")
        return value
    raise ValueError(f"unknown field {field!r} (expected one of: {', '.join((*FIELDS, *SETTINGS))})")


def override(shop: Shop, field: str, value: str) -> None:
    """Set a field as the operator asked (validated); connecting the store again keeps it."""
    cleaned = clean(field, value)
    settings = dict(shop.settings or {})
    if field in SETTINGS:
        settings.pop(field, None)
        if cleaned != "auto":  # `auto`: ask the platform again
            settings[field] = cleaned
    else:
        setattr(shop, FIELDS[field], cleaned)
        settings[OVERRIDDEN] = sorted({*settings.get(OVERRIDDEN, []), field})
    shop.settings = settings


def fill(shop: Shop, facts: dict[str, Any]) -> None:
    """Fill the fields the platform told about, except those the operator set; a value that isn't valid is skipped."""
    kept = set((shop.settings or {}).get(OVERRIDDEN, []))
    for field, value in facts.items():
        if field in kept or not value or not isinstance(value, str):
            continue
        try:
            setattr(shop, FIELDS[field], clean(field, value))
        except (KeyError, ValueError):
            continue


def describe(shop: Shop) -> dict[str, str | None]:
    """The identity fields of a store, as `encore stores list --details` and the admin show them."""
    found: dict[str, str | None] = {field: getattr(shop, attribute) for field, attribute in FIELDS.items()}
    found.update({field: (shop.settings or {}).get(field) for field in SETTINGS})
    return found
