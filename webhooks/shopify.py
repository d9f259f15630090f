"""Shopify webhooks: signature check with the app secret, and the mapping to canonical events.

Shopify signs the raw body with the app's client secret (base64 HMAC-SHA256 in
`X-Shopify-Hmac-Sha256`); during a secret rotation it may still sign with the previous one for up
to an hour, so both are accepted. A custom app added with `encore stores add shopify` signs with its
own secret, stored on the shop. The dedupe key is `X-Shopify-Webhook-Id` (one per delivery of one
topic; `X-Shopify-Event-Id` is shared by the topics one merchant action fires).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, TypeAdapter

from encore_retention.core.events import (
    Checkout,
    Code,
    Customer,
    Event,
    EventType,
    LineItem,
    Order,
    array,
    event_id,
    integer,
    mapping,
    parse_date,
    parse_datetime,
    parse_decimal,
    text,
)
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import utcnow
from encore_retention.webhooks.base import Delivery, ExportedOrder, Headers, Rejected, signature_matches
from encore_retention.webhooks.secrets import shop_secrets

platform = "shopify"

TOPICS: dict[str, EventType] = {
    "orders/create": EventType.ORDER_PLACED,
    "orders/paid": EventType.ORDER_PAID,
    "orders/fulfilled": EventType.ORDER_FULFILLED,
    "orders/cancelled": EventType.ORDER_CANCELLED,
    "orders/updated": EventType.ORDER_UPDATED,
    "orders/delete": EventType.ORDER_DELETED,
    "refunds/create": EventType.ORDER_REFUNDED,
    "customers/create": EventType.CUSTOMER_CREATED,
    "customers/update": EventType.CUSTOMER_UPDATED,
    "customers/delete": EventType.CUSTOMER_DELETED,
    "customers/email_marketing_consent_update": EventType.CUSTOMER_CONSENT_CHANGED,
    "customers/purchasing_summary": EventType.CUSTOMER_PURCHASING_SUMMARY,
    "checkouts/create": EventType.CHECKOUT_STARTED,
    "checkouts/update": EventType.CHECKOUT_UPDATED,
    "customers/redact": EventType.CUSTOMER_REDACT,
    "customers/data_request": EventType.CUSTOMER_DATA_REQUEST,
    "shop/redact": EventType.SHOP_REDACT,
    "app/uninstalled": EventType.APP_UNINSTALLED,
}

# The fields a topic's event cannot do without (any one of each tuple); a delivery lacking them is a 400.
_ORDER_ID = ("admin_graphql_api_id", "id")
REQUIRED: dict[str, tuple[str, ...]] = {
    **{
        topic: _ORDER_ID
        for topic in (
            "orders/create",
            "orders/paid",
            "orders/fulfilled",
            "orders/cancelled",
            "orders/updated",
            "orders/delete",
        )
    },
    "refunds/create": ("order_id",),
    "customers/email_marketing_consent_update": ("customer_id",),
    "customers/purchasing_summary": ("customerId",),
    "checkouts/create": ("token", "id"),
    "checkouts/update": ("token", "id"),
}

# The data request's id is kept with the export it asks for (`data_exports.request_id`, 64 characters).
_REQUEST_ID = TypeAdapter(Code | None, config=ConfigDict(title="data_request.id"))
SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,229}\.myshopify\.com$")  # at most 255 characters, as stored
CONSENT_STATES = {
    "subscribed": True,
    "not_subscribed": False,
    "unsubscribed": False,
    "redacted": False,
    "pending": False,
    "invalid": False,
}


class ShopifyReceiver:
    """Receiver for `POST /webhooks/shopify`."""

    platform = platform
    topics = TOPICS

    def verify(self, headers: Headers, body: bytes) -> Delivery:
        """Check `X-Shopify-Hmac-Sha256` against the app secret(s), then a custom app's own secret.

        The app secrets come from the settings, so ingest needs only Redis; the store is asked (and
        its answer cached) only when they don't match, for a shop registered with a secret of its own.
        """
        shop = (headers.get("X-Shopify-Shop-Domain") or "").strip().lower()
        signature = headers.get("X-Shopify-Hmac-Sha256")
        if not signature:
            raise Rejected(401, "missing_signature", "X-Shopify-Hmac-Sha256 is missing")
        app_secrets = get_settings().shopify_secrets
        if not signature_matches(body, signature, app_secrets):
            own = shop_secrets(platform, shop) if SHOP_DOMAIN.match(shop) else []
            if not app_secrets and not own:
                raise Rejected(401, "unknown_store", "Shopify is not configured (SHOPIFY_API_SECRET unset)")
            if not signature_matches(body, signature, own):
                raise Rejected(401, "bad_signature", "X-Shopify-Hmac-Sha256 does not match the body")
        topic = (headers.get("X-Shopify-Topic") or "").strip()
        if not shop or not SHOP_DOMAIN.match(shop):
            raise Rejected(400, "bad_shop", "X-Shopify-Shop-Domain is missing or not a myshopify.com domain")
        if not topic:
            raise Rejected(400, "missing_topic", "X-Shopify-Topic is missing")
        return Delivery(
            shop=shop,
            topic=topic,
            delivery_id=headers.get("X-Shopify-Webhook-Id"),
            headers={
                "triggered_at": headers.get("X-Shopify-Triggered-At") or "",
                "api_version": headers.get("X-Shopify-Api-Version") or "",
            },
        )

    def recorded(self, shop: str, topic: str, headers: Mapping[str, str]) -> Delivery:
        """The delivery of a recorded webhook, from the headers it was archived with (no signature check)."""
        lowered = {name.lower(): value for name, value in headers.items()}
        return Delivery(
            shop=shop,
            topic=topic,
            delivery_id=lowered.get("x-shopify-webhook-id"),
            headers={
                "triggered_at": lowered.get("x-shopify-triggered-at", ""),
                "api_version": lowered.get("x-shopify-api-version", ""),
            },
        )

    def key(self, delivery: Delivery, payload: dict[str, Any], body: bytes) -> str | None:
        """`shopify-<X-Shopify-Webhook-Id>` (a hash of shop, topic and body without one); None if unhandled."""
        if delivery.topic not in TOPICS:
            return None
        needed = REQUIRED.get(delivery.topic)
        if needed and not any(payload.get(name) not in (None, "") for name in needed):
            raise ValueError(f"{' or '.join(needed)} is missing")
        if delivery.delivery_id:
            return event_id(platform, delivery.delivery_id)
        return event_id(platform, delivery.shop, delivery.topic, body)

    def parse(self, delivery: Delivery, payload: Any, body: bytes) -> list[Event]:
        """One canonical event for a handled topic, none for the rest."""
        kind = TOPICS.get(delivery.topic)
        if kind is None:
            return []
        key = delivery.key or self.key(delivery, payload, body)
        assert key is not None
        occurred = (
            parse_datetime(delivery.headers.get("triggered_at"))
            or parse_datetime(payload.get("updated_at"))
            or parse_datetime(payload.get("occurredAt"))
            or parse_datetime(payload.get("created_at"))
        )
        event = Event(
            id=key,
            type=kind,
            platform=platform,
            shop=delivery.shop,
            topic=delivery.topic,
            occurred_at=occurred or _now(),
            raw=payload,
        )
        if kind.is_order:
            if delivery.topic == "refunds/create":
                event.order = Order(id=_id(payload.get("order_id")) or _require_id(None, "order_id"))
                event.data["refund_id"] = _id(payload.get("id"))
            else:
                event.order = order(payload)
                event.customer = order_customer(payload)
        elif kind == EventType.CUSTOMER_CONSENT_CHANGED:
            event.customer = consent_customer(payload)
        elif kind == EventType.CUSTOMER_PURCHASING_SUMMARY:
            event.customer = Customer(
                id=_id(payload.get("customerId")) or _require_id(None, "customerId"),
                orders_count=integer(payload.get("numberOfOrders")),
                total_spent=parse_decimal(mapping(payload.get("amountSpent")).get("amount")),
                updated_at=parse_datetime(payload.get("occurredAt")),
            )
        elif kind in (EventType.CUSTOMER_CREATED, EventType.CUSTOMER_UPDATED, EventType.CUSTOMER_DELETED):
            event.customer = customer(payload)
        elif kind in (EventType.CHECKOUT_STARTED, EventType.CHECKOUT_UPDATED):
            event.checkout = checkout(payload)
            event.customer = checkout_customer(payload)
        elif kind in (EventType.CUSTOMER_REDACT, EventType.CUSTOMER_DATA_REQUEST):
            event.customer = customer(mapping(payload.get("customer")))
            event.data["orders_to_redact"] = [_id(o) for o in array(payload.get("orders_to_redact"))]
            event.data["orders_requested"] = [_id(o) for o in array(payload.get("orders_requested"))]
            if isinstance(payload.get("data_request"), dict):
                event.data["data_request_id"] = _REQUEST_ID.validate_python(_id(payload["data_request"].get("id")))
        return [event]


receiver = ShopifyReceiver()


# ---- mapping -------------------------------------------------------------------------------------


def _now():
    return utcnow()


def _id(value: Any) -> str | None:
    """A Shopify id as text: the exact number from a `gid://` id, else the value itself."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.startswith("gid://"):
        return value.rsplit("/", 1)[-1].split("?")[0] or None
    if isinstance(value, bool):
        raise TypeError("id is a boolean")
    if isinstance(value, float):
        value = int(value)
    return str(value)


def _exact_id(obj: dict[str, Any]) -> str | None:
    """Prefer `admin_graphql_api_id` (exact) over `id` (rounded in Shopify's published examples)."""
    return _id(obj.get("admin_graphql_api_id")) or _id(obj.get("id"))


def _require_id(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"{name} is missing")
    return value


def _tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(t).strip() for t in value if str(t).strip()]
    return [t.strip() for t in str(value).split(",") if t.strip()]


def _consent(obj: dict[str, Any]) -> tuple[bool | None, Any]:
    consent = obj.get("email_marketing_consent")
    if isinstance(consent, dict) and consent.get("state"):
        state = str(consent["state"]).lower()
        return CONSENT_STATES.get(state, False), parse_datetime(consent.get("consent_updated_at"))
    if isinstance(obj.get("accepts_marketing"), bool):  # API versions before 2022-04
        return obj["accepts_marketing"], parse_datetime(obj.get("accepts_marketing_updated_at"))
    return None, None


def customer(obj: dict[str, Any]) -> Customer:
    """A customer from a customer payload (any API version; every field optional)."""
    consent, consent_at = _consent(obj)
    return Customer(
        id=_exact_id(obj),
        email=text(obj.get("email")),
        first_name=text(obj.get("first_name")),
        last_name=text(obj.get("last_name")),
        phone=text(obj.get("phone")),
        email_consent=consent,
        consent_updated_at=consent_at,
        tags=_tags(obj.get("tags")),
        locale=text(obj.get("locale")),
        has_account=(obj["state"] == "enabled") if isinstance(obj.get("state"), str) else None,
        orders_count=integer(obj.get("orders_count")),
        total_spent=parse_decimal(obj.get("total_spent")),
        created_at=parse_datetime(obj.get("created_at")),
        updated_at=parse_datetime(obj.get("updated_at")),
        birthday=parse_date(obj.get("birthday")),
    )


def order_customer(payload: dict[str, Any]) -> Customer | None:
    """The customer of an order; a guest is known by the order's email, or not at all."""
    nested = payload.get("customer")
    email = text(payload.get("email")) or text(payload.get("contact_email"))
    if isinstance(nested, dict) and nested:
        result = customer(nested)
        if result.email is None and email:
            result.email = email
        if result.locale is None:
            result.locale = text(payload.get("customer_locale"))
        return result
    if email:
        return Customer(email=email, locale=text(payload.get("customer_locale")))
    return None


def consent_customer(payload: dict[str, Any]) -> Customer:
    """The customer of `customers/email_marketing_consent_update`."""
    consent, consent_at = _consent(payload)
    return Customer(
        id=_require_id(_id(payload.get("customer_id")), "customer_id"),
        email=text(payload.get("email_address")),
        email_consent=consent,
        consent_updated_at=consent_at,
    )


def _line_items(items: Any) -> list[LineItem]:
    result = []
    for item in array(items):
        if not isinstance(item, dict):
            continue
        result.append(
            LineItem(
                product_id=_id(item.get("product_id")),
                variant_id=_id(item.get("variant_id")),
                sku=text(item.get("sku")),
                title=text(item.get("title") or item.get("name")) or "",
                quantity=integer(item.get("quantity")) or 1,
                price=parse_decimal(item.get("price")),
            )
        )
    return result


def order(payload: dict[str, Any]) -> Order:
    """An order from an `orders/*` payload."""
    codes = [str(d.get("code")) for d in array(payload.get("discount_codes")) if isinstance(d, dict) and d.get("code")]
    return Order(
        id=_require_id(_exact_id(payload), "id"),
        number=text(payload.get("order_number") or payload.get("name")),
        created_at=parse_datetime(payload.get("created_at")),
        updated_at=parse_datetime(payload.get("updated_at")),
        total=parse_decimal(payload.get("total_price")),
        subtotal=parse_decimal(payload.get("subtotal_price")),
        currency=text(payload.get("currency")),
        line_items=_line_items(payload.get("line_items")),
        discount_codes=codes,
        financial_status=text(payload.get("financial_status")),
        fulfillment_status=text(payload.get("fulfillment_status")),
        cancelled_at=parse_datetime(payload.get("cancelled_at")),
        checkout_token=text(payload.get("checkout_token")),
    )


def checkout(payload: dict[str, Any]) -> Checkout:
    """A checkout; since API 2026-04 checkouts have no `id`, only `token`."""
    token = text(payload.get("token")) or _id(payload.get("id"))
    return Checkout(
        token=_require_id(token, "token"),
        email=text(payload.get("email")),
        recovery_url=text(payload.get("abandoned_checkout_url")),
        total=parse_decimal(payload.get("total_price")),
        currency=text(payload.get("currency") or payload.get("presentment_currency")),
        line_items=_line_items(payload.get("line_items")),
        created_at=parse_datetime(payload.get("created_at")),
        updated_at=parse_datetime(payload.get("updated_at")),
        completed_at=parse_datetime(payload.get("completed_at")),
    )


def checkout_customer(payload: dict[str, Any]) -> Customer | None:
    """The checkout's customer, if any; a guest checkout is known by its email."""
    nested = payload.get("customer")
    if isinstance(nested, dict) and nested:
        result = customer(nested)
        result.email = result.email or text(payload.get("email"))
        return result
    email = text(payload.get("email"))
    return Customer(email=email) if email else None


class ShopifyExports:
    """Orders and customers as the Admin REST API returns them (what most export apps write)."""

    def recognises(self, payload: dict[str, Any]) -> bool:
        """Shopify's objects carry an `admin_graphql_api_id`, or an order's `total_price`."""
        return "admin_graphql_api_id" in payload or "total_price" in payload

    def order(self, payload: dict[str, Any]) -> ExportedOrder:
        """The order, paid at `processed_at` when its status is paid, fulfilled at its first fulfillment."""
        found = order(payload)
        paid = parse_datetime(payload.get("processed_at")) if payload.get("financial_status") == "paid" else None
        fulfillments = [
            parse_datetime(f.get("created_at")) for f in array(payload.get("fulfillments")) if isinstance(f, dict)
        ]
        fulfilled = min((f for f in fulfillments if f), default=None)
        return ExportedOrder(found, order_customer(payload), paid, fulfilled, found.cancelled_at)

    def customer(self, payload: dict[str, Any]) -> Customer:
        """The customer."""
        return customer(payload)


exports = ShopifyExports()
