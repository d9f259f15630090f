"""The Connector interface, and the platforms' registry: what a store platform offers Encore.

A platform is a plug-in: one `Platform` entry (its webhook receiver, its `Connector`, the headers that
carry its signatures, its `encore stores add` command, its example deliveries and its export reader) published in the
`encore.platforms` entry point group (`name = "package.module:platform"`). Encore's own Shopify and
WooCommerce come through the same door (see pyproject.toml), so the web app, the worker, the CLI and
the tools read every platform from `platforms()` and list none themselves. A package that brings a
connector alone (no receiver) may still publish it in the older `encore.connectors` group
(`name = "package.module:ConnectorClass"`). The flow engine only ever talks to the `Connector` interface.
"""

from __future__ import annotations

import abc
import functools
import importlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from importlib.abc import Traversable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import click

from encore_retention.core import effects
from encore_retention.core import events as ev

if TYPE_CHECKING:  # names only: the flows that import this interface load no receiver
    from encore_retention.core.store.models import Shop
    from encore_retention.webhooks.base import Exports, Receiver

log = logging.getLogger(__name__)

PLATFORM_GROUP = "encore.platforms"
ENTRY_POINT_GROUP = "encore.connectors"  # a connector alone, without a receiver


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

    def withdraw_email_consent(self, customer_id: str) -> str:
        """Record on the platform that the customer no longer accepts marketing email; returns what was done.

        Idempotent: a customer already unsubscribed there is left as is (and the answer says so). Raises
        `PlatformError` (transient for 429 and 5xx, which the write-back job retries with backoff), and
        NotImplementedError on a platform that keeps no consent Encore can change (the job notes it, once).
        """
        raise NotImplementedError(f"{self.platform} keeps no email consent Encore can change")

    def account_invite_url(self, customer_id: str | None, email: str | None) -> str | None:
        """A link that lets a guest (no account yet) create one: `customer_id` on the platform (None for a guest
        known by address only) and the address. None when the platform offers none."""
        return None

    def product_url(self, product_id: str) -> str | None:
        """The public page of a product (for a review request); None when unknown or not published."""
        return None


JsonPath = tuple[str | int, ...]  # keys and list indexes into a JSON payload


@dataclass(frozen=True)
class Samples:
    """A platform's example deliveries, shaped as the platform documents them, and how to sign one.

    The shared receiver tests play them against every installed platform, and `encore replay` reads
    files named like them. `folder` holds one `<topic>.json` per topic, `/` and `.` written `_`.
    `fields` says where the examples keep what the shared bad-input table alters, as
    `name: (topic, path)`: `order_id`, `total`, `currency`, `created_at`, `quantity`, `email` and
    `first_name` in an order, `orders_count` in whichever example carries it.
    """

    folder: Traversable
    order_topic: str
    fields: Mapping[str, tuple[str, JsonPath]]
    store: str
    """The example store (a domain or a URL, as the deliveries name it)."""
    store_header: str
    """The header that names the store of a delivery."""
    stranger: str
    """A well-formed store name that nobody registered."""
    sign: Callable[[bytes, str, str, str], dict[str, str]]
    """`sign(body, topic, secret, store)`: every header the platform sends with such a delivery."""
    connect: Callable[[str, str], None]
    """`connect(store, secret)`: register a store whose deliveries are signed with `secret` (the current database)."""

    def example(self, topic: str) -> dict[str, Any]:
        """The example payload of a topic."""
        stem = topic.replace("/", "_").replace(".", "_")
        return dict(json.loads(self.folder.joinpath(f"{stem}.json").read_text(encoding="utf-8")))

    def headers(
        self, body: bytes, topic: str | None = None, *, secret: str, store: str | None = None
    ) -> dict[str, str]:
        """The headers of a delivery of `body` signed with `secret` (the order topic, the example store by default)."""
        return self.sign(body, topic or self.order_topic, secret, store or self.store)


@dataclass(frozen=True)
class Platform:
    """One store platform, as a plug-in: everything Encore needs to know about it, in one entry."""

    name: str
    """The platform's name: the URL of its receiver (`/webhooks/<name>`) and its stores' `platform`."""
    title: str
    receiver: Receiver
    connector: type[Connector]
    signature_headers: tuple[str, ...]
    """Headers that carry signatures or credentials: never archived, never logged."""
    register: click.Command | None = None
    """`encore stores add <name>`: connect a store of this platform."""
    samples: Samples | None = None
    exports: Exports | None = None
    """Reads the platform's JSON exports of orders and customers (`encore simulate`)."""

    def __post_init__(self) -> None:
        if self.receiver.platform != self.name or getattr(self.connector, "platform", self.name) != self.name:
            raise ValueError(f"platform {self.name!r}: its receiver and connector must name it too")


@functools.cache
def platforms() -> dict[str, Platform]:
    """Every installed platform by name, from the `encore.platforms` entry point group.

    Found once per process. A plug-in that fails to load is logged and left out; the others work.
    """
    found: dict[str, Platform] = {}
    for entry in sorted(entry_points(group=PLATFORM_GROUP), key=lambda e: e.name):
        try:
            value = entry.load()
        except Exception:  # noqa: BLE001 - another package's import error must not stop Encore
            log.exception("platform plug-in failed to load", extra={"platform": entry.name, "entry": entry.value})
            continue
        if not isinstance(value, Platform) or value.name != entry.name:
            log.error(
                "entry point is not a Platform of that name", extra={"platform": entry.name, "entry": entry.value}
            )
            continue
        found.setdefault(entry.name, value)
    return found


def get_platform(name: str) -> Platform:
    """The installed platform called `name` (LookupError listing the installed ones)."""
    found = platforms().get(name)
    if found is None:
        raise LookupError(f"no platform {name!r} (installed: {', '.join(sorted(platforms())) or 'none'})")
    return found


def receiver_of(name: str) -> Receiver | None:
    """The webhook receiver of an installed platform, None for a name no platform has."""
    found = platforms().get(name)
    return found.receiver if found else None


def available() -> dict[str, str]:
    """Every connector name with its `module:Class` path: the platforms', then connector-only entry points."""
    found = {name: f"{p.connector.__module__}:{p.connector.__qualname__}" for name, p in platforms().items()}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def connector_class(platform: str) -> type[Connector]:
    """The Connector class registered under `platform`."""
    if (known := platforms().get(platform)) is not None:
        return known.connector
    path = available().get(platform)
    if path is None:
        raise LookupError(f"no connector {platform!r} (available: {', '.join(sorted(available()))})")
    module_name, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise TypeError(f"{path} is not a Connector")
    return cls


def get_connector(shop: Shop) -> Connector:
    """A connector bound to a connected shop (a rehearsal's stand-in inside `core.effects.acting`)."""
    instead = effects.current().connector
    if instead is not None:
        return instead(shop)
    return connector_class(shop.platform)(shop)
