"""WooCommerce webhooks: signature check with the store's webhook secret, and the mapping to events.

The store is found by `X-WC-Webhook-Source` (its URL, registered with `encore stores add
woocommerce`). WooCommerce signs the raw body, base64 HMAC-SHA256, in `X-WC-Webhook-Signature`.
Its `X-WC-Webhook-Delivery-ID` is new on every delivery, so the dedupe key is the topic, the
resource id and `date_modified_gmt` (a hash of the body when those are missing). Creating a webhook
sends a ping, a form body `webhook_id=N` with no `X-WC-*` headers, that needs exactly a 200.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from encore_retention.core.events import (
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
    truthy,
)
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import utcnow
from encore_retention.webhooks.base import Delivery, ExportedOrder, Headers, Rejected, signature_matches
from encore_retention.webhooks.secrets import lookup

platform = "woocommerce"

TOPICS: dict[str, EventType] = {
    "order.created": EventType.ORDER_PLACED,
    "order.updated": EventType.ORDER_UPDATED,
    "order.deleted": EventType.ORDER_DELETED,
    "order.restored": EventType.ORDER_UPDATED,
    "customer.created": EventType.CUSTOMER_CREATED,
    "customer.updated": EventType.CUSTOMER_UPDATED,
    "customer.deleted": EventType.CUSTOMER_DELETED,
}
# What an `order.updated` means, by the order's new status.
STATUS_EVENTS: dict[str, EventType] = {
    "processing": EventType.ORDER_PAID,
    "completed": EventType.ORDER_FULFILLED,
    "cancelled": EventType.ORDER_CANCELLED,
    "refunded": EventType.ORDER_REFUNDED,
}
PING = re.compile(rb"^webhook_id=\d+$")


def store_domain(url: str) -> str:
    """The key a WooCommerce store is registered under: host and path, lower-case, no scheme or slash.

    "" for text that is not a URL with a host (a port out of range, a broken IPv6 address,
    `javascript:…`): no store is registered under "", so such a source is an unknown store.
    """
    raw = url.strip()
    try:
        parts = urlsplit(raw if "://" in raw else "//" + raw)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    if port and port not in (80, 443):
        host = f"{host}:{port}"
    return (host + parts.path.rstrip("/")).rstrip("/")


class WooCommerceReceiver:
    """Receiver for `POST /webhooks/woocommerce`."""

    platform = platform
    topics = TOPICS

    def verify(self, headers: Headers, body: bytes) -> Delivery:
        """Answer the creation ping; otherwise find the store and check `X-WC-Webhook-Signature`."""
        has_wc_headers = any(h.lower().startswith("x-wc-webhook-") for h in headers.keys())
        if not has_wc_headers and PING.match(body.strip()):
            return Delivery(shop="", topic="ping", ping=True)
        source = headers.get("X-WC-Webhook-Source")
        signature = headers.get("X-WC-Webhook-Signature")
        if not source:
            raise Rejected(401, "unknown_store", "X-WC-Webhook-Source is missing")
        if not signature:
            raise Rejected(401, "missing_signature", "X-WC-Webhook-Signature is missing")
        domain = store_domain(source)
        if not domain:
            raise Rejected(401, "unknown_store", "X-WC-Webhook-Source is not a store's URL")
        secrets = lookup(platform, domain)
        if secrets is None:
            raise Rejected(401, "unknown_store", f"no WooCommerce store registered for {domain}")
        if not secrets:
            raise Rejected(401, "unknown_store", f"store {domain} has no webhook secret")
        if not signature_matches(body, signature, secrets):
            raise Rejected(401, "bad_signature", "X-WC-Webhook-Signature does not match the body")
        topic = (headers.get("X-WC-Webhook-Topic") or "").strip()
        if not topic:
            resource, action = headers.get("X-WC-Webhook-Resource"), headers.get("X-WC-Webhook-Event")
            topic = f"{resource}.{action}" if resource and action else ""
        if not topic:
            raise Rejected(400, "missing_topic", "X-WC-Webhook-Topic is missing")
        return Delivery(shop=domain, topic=topic, delivery_id=headers.get("X-WC-Webhook-Delivery-ID"))

    def recorded(self, shop: str, topic: str, headers: Mapping[str, str]) -> Delivery:
        """The delivery of a recorded webhook, from the headers it was archived with (no signature check)."""
        lowered = {name.lower(): value for name, value in headers.items()}
        return Delivery(shop=shop, topic=topic, delivery_id=lowered.get("x-wc-webhook-delivery-id"))

    def key(self, delivery: Delivery, payload: dict[str, Any], body: bytes) -> str | None:
        """Topic + resource id + `date_modified_gmt` (the delivery id is new on every delivery); None if unhandled."""
        if delivery.topic not in TOPICS:
            return None
        resource_id, modified = payload.get("id"), payload.get("date_modified_gmt")
        if delivery.topic.startswith("order.") and resource_id in (None, "", 0):
            raise ValueError("order id is missing")
        if resource_id is not None and modified:
            return event_id(platform, delivery.shop, delivery.topic, resource_id, modified)
        return event_id(platform, delivery.shop, delivery.topic, body)

    def parse(self, delivery: Delivery, payload: Any, body: bytes) -> list[Event]:
        """One canonical event for a handled topic, none for the rest."""
        kind = TOPICS.get(delivery.topic)
        if kind is None:
            return []
        key = delivery.key or self.key(delivery, payload, body)
        assert key is not None
        modified = payload.get("date_modified_gmt")
        occurred = parse_datetime(modified) or parse_datetime(payload.get("date_created_gmt"))
        event = Event(
            id=key,
            type=kind,
            platform=platform,
            shop=delivery.shop,
            topic=delivery.topic,
            occurred_at=occurred or _now(),
            raw=payload,
        )
        if delivery.topic.startswith("order."):
            event.order = order(payload)
            event.customer = order_customer(payload)
            if kind == EventType.ORDER_UPDATED and delivery.topic == "order.updated":
                event.type = STATUS_EVENTS.get(str(payload.get("status")), EventType.ORDER_UPDATED)
        else:
            event.customer = customer(payload)
        return [event]


receiver = WooCommerceReceiver()


def _now():
    return utcnow()


def _id(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or str(value).strip() in ("", "0"):
        return None
    return str(int(value)) if isinstance(value, (int, float)) else str(value).strip()


def _meta(payload: dict[str, Any], key: str) -> Any:
    for item in array(payload.get("meta_data")):
        if isinstance(item, dict) and item.get("key") == key:
            return item.get("value")
    return None


def customer(payload: dict[str, Any]) -> Customer:
    """A customer from a customer payload; birthday and consent come from configurable meta keys."""
    settings = get_settings()
    billing = mapping(payload.get("billing"))
    consent_raw = _meta(payload, settings.WOOCOMMERCE_CONSENT_META)
    modified = parse_datetime(payload.get("date_modified_gmt"))
    return Customer(
        id=_id(payload.get("id")),
        email=text(payload.get("email")) or text(billing.get("email")),
        first_name=text(payload.get("first_name")) or text(billing.get("first_name")),
        last_name=text(payload.get("last_name")) or text(billing.get("last_name")),
        phone=text(billing.get("phone")),
        birthday=parse_date(_meta(payload, settings.WOOCOMMERCE_BIRTHDAY_META)),
        email_consent=None if consent_raw is None else truthy(consent_raw),
        consent_updated_at=modified if consent_raw is not None else None,
        has_account=True if _id(payload.get("id")) else None,
        orders_count=integer(payload.get("orders_count")),
        total_spent=parse_decimal(payload.get("total_spent")),
        created_at=parse_datetime(payload.get("date_created_gmt")),
        updated_at=modified,
    )


def order_customer(payload: dict[str, Any]) -> Customer | None:
    """The order's customer: a registered one by `customer_id`, a guest by the billing email."""
    billing = mapping(payload.get("billing"))
    cid, email = _id(payload.get("customer_id")), text(billing.get("email"))
    if not cid and not email:
        return None
    return Customer(
        id=cid,
        email=email,
        first_name=text(billing.get("first_name")),
        last_name=text(billing.get("last_name")),
        phone=text(billing.get("phone")),
        has_account=True if cid else None,
    )


def order(payload: dict[str, Any]) -> Order:
    """An order from an `order.*` payload (a deleted order's body may hold only its id)."""
    oid = _id(payload.get("id"))
    if not oid:
        raise ValueError("order id is missing")
    status = text(payload.get("status"))
    items = [
        LineItem(
            product_id=_id(i.get("product_id")),
            variant_id=_id(i.get("variation_id")),
            sku=text(i.get("sku")),
            title=text(i.get("name")) or "",
            quantity=int(i.get("quantity") or 1),
            price=parse_decimal(i.get("price")),
        )
        for i in array(payload.get("line_items"))
        if isinstance(i, dict)
    ]
    modified = parse_datetime(payload.get("date_modified_gmt"))
    return Order(
        id=oid,
        number=text(payload.get("number")),
        created_at=parse_datetime(payload.get("date_created_gmt")),
        updated_at=modified,
        total=parse_decimal(payload.get("total")),
        currency=text(payload.get("currency")),
        line_items=items,
        discount_codes=[
            str(c["code"]) for c in array(payload.get("coupon_lines")) if isinstance(c, dict) and c.get("code")
        ],
        financial_status=status,
        fulfillment_status="fulfilled" if status == "completed" else None,
        cancelled_at=modified if status in ("cancelled", "trash") else None,
    )


class WooCommerceExports:
    """Orders and customers as the REST API (`/wc/v3/orders`, `/wc/v3/customers`) returns them."""

    def recognises(self, payload: dict[str, Any]) -> bool:
        """WooCommerce's objects carry `date_created_gmt`, or a `billing` address and no Shopify `total_price`."""
        return "date_created_gmt" in payload or ("billing" in payload and "total_price" not in payload)

    def order(self, payload: dict[str, Any]) -> ExportedOrder:
        """The order, paid at `date_paid_gmt`, completed at `date_completed_gmt`, cancelled by its status."""
        found = order(payload)
        found.created_at = found.created_at or parse_datetime(payload.get("date_created_gmt"))
        cancelled = found.created_at if payload.get("status") == "cancelled" else None
        return ExportedOrder(
            found,
            order_customer(payload),
            parse_datetime(payload.get("date_paid_gmt")),
            parse_datetime(payload.get("date_completed_gmt")),
            cancelled,
        )

    def customer(self, payload: dict[str, Any]) -> Customer:
        """The customer."""
        return customer(payload)


exports = WooCommerceExports()
