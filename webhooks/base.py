"""What every platform's receiver shares: size limit, signature check, JSON parsing, durable enqueue.

A platform module supplies a `Receiver`: `verify()` checks the signature over the raw body and says
which shop and topic the delivery is for, `parse()` turns the payload into canonical events. None of
it needs Flask: the worker and the tools run the same parsers. The web app's view
(`encore_retention.web.app.receive`) does the rest and maps every failure to the contract's answer:

    200 queued, duplicate, ignored topic, ping · 400 malformed · 401 bad signature or unknown store
    413 too large · 503 the queue can't take it (the platform retries; nothing is lost)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from encore_retention.core.events import Customer, Event, EventType, Order


class Rejected(Exception):
    """A delivery we refuse; `status` is the HTTP answer, `reason` a short machine-readable word."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.status = status
        self.reason = reason
        self.detail = detail or reason


@dataclass
class Delivery:
    """What the signature check established about one delivery; travels to the worker as a dict."""

    shop: str
    topic: str
    delivery_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ping: bool = False
    key: str | None = None
    received_at: str | None = None
    http_headers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for the job that normalises the delivery."""
        return {
            "shop": self.shop,
            "topic": self.topic,
            "delivery_id": self.delivery_id,
            "headers": self.headers,
            "key": self.key,
            "received_at": self.received_at,
            "http_headers": self.http_headers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delivery:
        """Rebuild a delivery from `to_dict`'s output."""
        return cls(
            **{
                k: data[k]
                for k in ("shop", "topic", "delivery_id", "headers", "key", "received_at", "http_headers")
                if k in data
            }
        )


class Headers(Protocol):
    """A request's headers, looked up by name whatever its case (werkzeug's `Headers`, for one)."""

    def get(self, key: str, /) -> str | None:
        """The value of header `key`, None when absent."""

    def keys(self) -> Iterable[str]:
        """The headers' names."""


class Receiver(Protocol):
    """One platform's webhook receiver."""

    platform: str

    @property
    def topics(self) -> Mapping[str, EventType]:
        """The platform's topics Encore handles, with the canonical event each mostly becomes."""

    def verify(self, headers: Headers, body: bytes) -> Delivery:
        """Check the signature over the raw body; raise Rejected(401) when it fails."""

    def recorded(self, shop: str, topic: str, headers: Mapping[str, str]) -> Delivery:
        """The delivery of a recorded webhook, from the headers it was archived with (`encore replay`)."""

    def key(self, delivery: Delivery, payload: dict[str, Any], body: bytes) -> str | None:
        """The event key (dedupe key, job id) of a delivery; None for topics Encore does not handle.

        Raises ValueError when a field the topic needs is missing (answered 400).
        """

    def parse(self, delivery: Delivery, payload: Any, body: bytes) -> list[Event]:
        """Canonical events for a verified payload; [] for topics Encore does not handle.

        Run by the receiver to check a delivery before the 200, then by the worker. Raises one of
        `encore.events.MALFORMED_ERRORS` for a payload it can't take (answered 400).
        """


@dataclass
class ExportedOrder:
    """An order from a platform's JSON export, with its customer and when it was paid, fulfilled and cancelled."""

    order: Order
    customer: Customer | None
    paid_at: datetime | None = None
    fulfilled_at: datetime | None = None
    cancelled_at: datetime | None = None


class Exports(Protocol):
    """A platform's JSON exports (orders and customers, as its API returns them): what `encore simulate` reads."""

    def recognises(self, payload: dict[str, Any]) -> bool:
        """Whether an exported object is this platform's."""

    def order(self, payload: dict[str, Any]) -> ExportedOrder:
        """The order of an exported object (ValueError, TypeError or KeyError when it is not one)."""

    def customer(self, payload: dict[str, Any]) -> Customer:
        """The customer of an exported object."""


def sign(body: bytes, secret: str) -> str:
    """base64(HMAC-SHA256(body, secret)): how Shopify and WooCommerce both sign."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def signature_matches(body: bytes, signature: str | None, secrets: Iterable[str]) -> bool:
    """True if `signature` is the body's HMAC under any of `secrets`, compared in constant time."""
    if not signature:
        return False
    given = signature.strip().encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(body, secret).encode(), given)
    return matched


def parse_json(mimetype: str | None, body: bytes) -> Any:
    """The JSON payload of a signed delivery; Rejected(400) for a wrong content type, empty or bad JSON."""
    mimetype = (mimetype or "").lower()
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Rejected(400, "content_type", f"expected application/json, got {mimetype or 'none'}")
    if not body.strip():
        raise Rejected(400, "empty_body", "empty body")
    try:
        payload = orjson.loads(body)
    except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "not_json", f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise Rejected(400, "not_object", "body is not a JSON object")
    return payload
