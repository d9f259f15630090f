"""Acme Commerce's REST API (`https://<store>/api/v1`, a bearer token per store): codes, tags, customers, orders.

Acme takes an `Idempotency-Key` header on every write and answers a repeated one with the first
result, so a retried flow step gets the code it already made.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import requests

from encore_acme.receiver import TOPICS, customer, order
from encore_retention.connectors.base import Connector, Discount, DiscountRequest, PlatformError
from encore_retention.core import events as ev
from encore_retention.core.crypto import decrypt
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import Shop

TIMEOUT = 15


class AcmeConnector(Connector):
    """One Acme store, with its API token."""

    platform = "acme"

    def __init__(self, shop: Shop, *, token: str | None = None) -> None:
        super().__init__(shop)
        self.token = token or (decrypt(shop.access_token_enc) if shop.access_token_enc else "")

    def call(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        """One API call; PlatformError (transient for 429 and 5xx) when Acme refuses it."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if key:
            headers["Idempotency-Key"] = key
        url = f"https://{self.shop.domain}/api/v1{path}"
        try:
            response = requests.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise PlatformError(f"Acme did not answer: {type(exc).__name__}", transient=True) from exc
        if response.status_code >= 400:
            retry_after = response.headers.get("Retry-After")
            raise PlatformError(
                f"Acme answered {response.status_code}",
                status=response.status_code,
                transient=response.status_code == 429 or response.status_code >= 500,
                retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        return response.json() if response.content else None

    def create_discount(self, request: DiscountRequest) -> Discount:
        """`POST /discount-codes`, keyed by the flow step's idempotency key."""
        body = {
            "prefix": request.prefix,
            "type": request.kind,
            "value": str(request.value),
            "usage_limit": request.usage_limit,
            "customer_id": request.customer_id,
            "ends_at": request.ends_at.isoformat() if request.ends_at else None,
        }
        made = self.call("POST", "/discount-codes", key=request.idempotency_key, json=body)
        return Discount(
            code=str(made["code"]),
            kind=request.kind,
            value=request.value,
            platform_id=str(made["id"]),
            ends_at=request.ends_at,
            raw=made,
        )

    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        """`POST /customers/<id>/tags`."""
        self.call("POST", f"/customers/{customer_id}/tags", json={"tags": tags})

    def fetch_customer(self, customer_id: str) -> ev.Customer | None:
        """`GET /customers/<id>` (None when Acme has no such customer)."""
        try:
            return customer(self.call("GET", f"/customers/{customer_id}"))
        except PlatformError as exc:
            if exc.status == 404:
                return None
            raise

    def fetch_orders(self, since: datetime | None = None) -> Iterator[tuple[ev.Order, ev.Customer | None]]:
        """`GET /orders?updated_since=…`, page by page."""
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, **({"updated_since": since.isoformat()} if since else {})}
            found = self.call("GET", "/orders", params=params) or []
            for payload in found:
                yield order(payload), customer(payload["customer"]) if payload.get("customer") else None
            if not found:
                return
            page += 1

    def register_webhooks(self, topics: list[str] | None = None, address: str | None = None) -> list[str]:
        """`PUT /webhooks`: Acme's webhooks of `topics` delivered to `address`."""
        topics = topics or list(TOPICS)
        address = address or f"{get_settings().APP_URL.rstrip('/')}/webhooks/acme"
        self.call("PUT", "/webhooks", json={"topics": topics, "address": address})
        return topics
