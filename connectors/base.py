"""The Connector interface: what a store platform offers the engine, and the registry that finds one.

A platform is one class implementing `Connector`, registered by name. Built-in connectors are listed
in `BUILTIN`; third-party packages add theirs through the `encore.connectors` entry point group
(`name = "package.module:ConnectorClass"`). The flow engine only ever talks to this interface.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from encore_retention.core import events as ev

if TYPE_CHECKING:
    from encore_retention.core.store.models import Shop

ENTRY_POINT_GROUP = "encore.connectors"
BUILTIN: dict[str, str] = {
    "shopify": "encore_retention.connectors.shopify:ShopifyConnector",
    "woocommerce": "encore_retention.connectors.woocommerce:WooCommerceConnector",
}


class PlatformError(Exception):
    """A platform API call failed. `transient` errors (429, 5xx, timeouts) are worth retrying."""

    def __init__(
        self, message: str, *, status: int | None = None, transient: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


@dataclass
class DiscountRequest:
    """A unique, single-use discount code for one customer, as a flow's `create_discount` asks for it.

    `idempotency_key` is stable across retries of the same flow step: a connector must return the
    code it already made for that key rather than mint a second one.
    """

    idempotency_key: str
    kind: Literal["percent", "fixed"]
    value: Decimal
    prefix: str = ""
    currency: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    minimum_subtotal: Decimal | None = None
    usage_limit: int = 1
    customer_id: str | None = None
    customer_email: str | None = None
    title: str | None = None


@dataclass
class Discount:
    """A discount code the platform accepted."""

    code: str
    kind: Literal["percent", "fixed"]
    value: Decimal
    platform_id: str | None = None
    ends_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class Connector(abc.ABC):
    """One store platform, bound to one connected shop."""

    platform: ClassVar[str]

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    @classmethod
    def receiver(cls) -> Any:
        """The webhook receiver (`webhooks.base.Receiver`) of this platform."""
        module = importlib.import_module(f"encore_retention.webhooks.{cls.platform}")
        return module.receiver

    @abc.abstractmethod
    def create_discount(self, request: DiscountRequest) -> Discount:
        """Create (or find, for a repeated idempotency key) a discount code."""

    @abc.abstractmethod
    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        """Add tags to a customer on the platform."""

    @abc.abstractmethod
    def fetch_customer(self, customer_id: str) -> ev.Customer | None:
        """The customer as the platform knows them now (None if gone)."""

    @abc.abstractmethod
    def fetch_orders(self, since: datetime | None = None) -> Iterator[tuple[ev.Order, ev.Customer | None]]:
        """Orders changed since a time (all when None), with their customers, for backfill and reconciliation."""

    @abc.abstractmethod
    def register_webhooks(self, topics: list[str], address: str) -> list[str]:
        """Subscribe the platform's webhooks to `address`; returns the topics now subscribed."""

    def fetch_customers(self, since: datetime | None = None) -> Iterator[ev.Customer]:
        """Customers changed since a time (all when None); optional."""
        raise NotImplementedError(f"{self.platform} cannot list customers")

    def discount_redeemed(self, code: str) -> bool | None:
        """Whether a code has been used, if the platform can tell; None when unknown."""
        return None

    def count(self, resource: str) -> int | None:
        """How many `customers` or `orders` the store has, for progress bars; None when unknown."""
        return None


def available() -> dict[str, str]:
    """Every connector name with its `module:Class` path: built-in, then entry points."""
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.value
    return found


def connector_class(platform: str) -> type[Connector]:
    """The Connector class registered under `platform`."""
    path = available().get(platform)
    if path is None:
        raise LookupError(f"no connector {platform!r} (available: {', '.join(sorted(available()))})")
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise TypeError(f"{path} is not a Connector")
    return cls


def get_connector(shop: Shop) -> Connector:
    """A connector bound to a connected shop."""
    return connector_class(shop.platform)(shop)
