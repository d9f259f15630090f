"""Acme Commerce's webhooks: its signature check and the mapping of its payloads to Encore's events.

Acme signs the raw body with the store's webhook secret, hex HMAC-SHA256 in `X-Acme-Signature` as
`sha256=<hex>`; `X-Acme-Store` names the store, `X-Acme-Topic` the topic and `X-Acme-Delivery` the
delivery, which stays the same when Acme delivers again, so it is the dedupe key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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
    parse_datetime,
    parse_decimal,
    text,
)
from encore_retention.webhooks.base import Delivery, Headers, Rejected
from encore_retention.webhooks.secrets import lookup

platform = "acme"

TOPICS: dict[str, EventType] = {
    "order.placed": EventType.ORDER_PLACED,
    "order.paid": EventType.ORDER_PAID,
    "order.shipped": EventType.ORDER_FULFILLED,
    "order.cancelled": EventType.ORDER_CANCELLED,
    "customer.created": EventType.CUSTOMER_CREATED,
    "customer.updated": EventType.CUSTOMER_UPDATED,
}


def signature(body: bytes, secret: str) -> str:
    """`sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class AcmeReceiver:
    """Receiver for `POST /webhooks/acme`."""

    platform = platform
    topics = TOPICS

    def verify(self, headers: Headers, body: bytes) -> Delivery:
        """Find the store by `X-Acme-Store` and check `X-Acme-Signature` with its secret."""
        store = (headers.get("X-Acme-Store") or "").strip().lower()
        given = (headers.get("X-Acme-Signature") or "").strip()
        if not given:
            raise Rejected(401, "missing_signature", "X-Acme-Signature is missing")
        secrets = lookup(platform, store)
        if not secrets:
            raise Rejected(401, "unknown_store", "X-Acme-Store names no store registered with a secret")
        if not any(hmac.compare_digest(signature(body, secret), given) for secret in secrets):
            raise Rejected(401, "bad_signature", "X-Acme-Signature does not match the body")
        topic = (headers.get("X-Acme-Topic") or "").strip()
        if not topic:
            raise Rejected(400, "missing_topic", "X-Acme-Topic is missing")
        return Delivery(shop=store, topic=topic, delivery_id=headers.get("X-Acme-Delivery"))

    def recorded(self, shop: str, topic: str, headers: Mapping[str, str]) -> Delivery:
        """A recorded delivery, from the headers it was archived with."""
        lowered = {name.lower(): value for name, value in headers.items()}
        return Delivery(shop=shop, topic=topic, delivery_id=lowered.get("x-acme-delivery"))

    def key(self, delivery: Delivery, payload: dict[str, Any], body: bytes) -> str | None:
        """The delivery id (a hash of the body without one); None for topics Encore does not handle."""
        if delivery.topic not in TOPICS:
            return None
        if delivery.topic.startswith("order.") and not text(payload.get("id")):
            raise ValueError("order id is missing")
        return event_id(platform, delivery.shop, delivery.topic, delivery.delivery_id or body)

    def parse(self, delivery: Delivery, payload: Any, body: bytes) -> list[Event]:
        """One event for a handled topic, none for the rest."""
        kind = TOPICS.get(delivery.topic)
        if kind is None:
            return []
        key = delivery.key or self.key(delivery, payload, body)
        assert key is not None
        occurred = parse_datetime(payload.get("updated_at")) or parse_datetime(payload.get("created_at"))
        event = Event(
            id=key,
            type=kind,
            platform=platform,
            shop=delivery.shop,
            topic=delivery.topic,
            occurred_at=occurred or datetime.now(UTC),
            raw=payload,
        )
        if delivery.topic.startswith("order."):
            event.order = order(payload)
            event.customer = customer(mapping(payload.get("customer"))) if payload.get("customer") else None
        else:
            event.customer = customer(payload)
        return [event]


receiver = AcmeReceiver()


def customer(payload: dict[str, Any]) -> Customer:
    """A customer from a customer payload, or an order's `customer`."""
    consent = payload.get("accepts_email")
    return Customer(
        id=text(payload.get("id")),
        email=text(payload.get("email")),
        first_name=text(payload.get("first_name")),
        last_name=text(payload.get("last_name")),
        email_consent=consent if isinstance(consent, bool) else None,
        orders_count=integer(payload.get("orders_count")),
        created_at=parse_datetime(payload.get("created_at")),
        updated_at=parse_datetime(payload.get("updated_at")),
    )


def order(payload: dict[str, Any]) -> Order:
    """An order from an `order.*` payload."""
    oid = text(payload.get("id"))
    if not oid:
        raise ValueError("order id is missing")
    status = text(payload.get("status"))
    return Order(
        id=oid,
        number=text(payload.get("number")),
        created_at=parse_datetime(payload.get("created_at")),
        updated_at=parse_datetime(payload.get("updated_at")),
        total=parse_decimal(payload.get("total")),
        currency=text(payload.get("currency")),
        line_items=[
            LineItem(
                product_id=text(item.get("product_id")),
                sku=text(item.get("sku")),
                title=text(item.get("title")) or "",
                quantity=integer(item.get("quantity")) or 1,
                price=parse_decimal(item.get("unit_price")),
            )
            for item in array(payload.get("items"))
            if isinstance(item, dict)
        ],
        discount_codes=[str(code) for code in array(payload.get("discount_codes")) if isinstance(code, str)],
        financial_status=status,
        fulfillment_status="fulfilled" if status == "shipped" else None,
        cancelled_at=parse_datetime(payload.get("updated_at")) if status == "cancelled" else None,
    )
