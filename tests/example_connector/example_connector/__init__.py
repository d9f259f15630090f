"""An example platform connector: an in-memory store that shows the whole `Connector` interface.

A real connector calls its platform's API in each method (copy `connectors/woocommerce.py`); this
one keeps everything in class-level dictionaries so the tests can look at what it was asked to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime

from encore_retention.connectors.base import Connector, Discount, DiscountRequest
from encore_retention.core import events as ev


class ExampleConnector(Connector):
    """The `example` platform."""

    platform = "example"
    discounts: dict[str, Discount] = {}
    tags: dict[str, set[str]] = {}
    customers: dict[str, ev.Customer] = {}
    webhooks: dict[str, str] = {}

    def create_discount(self, request: DiscountRequest) -> Discount:
        """A code per idempotency key; asking again returns the same one."""
        if request.idempotency_key not in self.discounts:
            digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:8].upper()
            self.discounts[request.idempotency_key] = Discount(
                code=f"{request.prefix.upper()}{digest}",
                kind=request.kind,
                value=request.value,
                platform_id=str(len(self.discounts) + 1),
                ends_at=request.ends_at,
            )
        return self.discounts[request.idempotency_key]

    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        """Remember the tags."""
        self.tags.setdefault(customer_id, set()).update(tags)

    def fetch_customer(self, customer_id: str) -> ev.Customer | None:
        """The customer, if the store has one by that id."""
        return self.customers.get(customer_id)

    def fetch_orders(self, since: datetime | None = None) -> Iterator[tuple[ev.Order, ev.Customer | None]]:
        """No orders in this store."""
        return iter(())

    def register_webhooks(self, topics: list[str], address: str) -> list[str]:
        """Remember where each topic would be delivered."""
        for topic in topics:
            self.webhooks[topic] = address
        return list(topics)


class NotAConnector:
    """Registered by mistake: the registry must refuse it."""
