"""WooCommerce, through the `woocommerce` package (REST API v3 with the store's consumer key and secret).

HTTPS stores authenticate with HTTP Basic, plain-HTTP stores with OAuth 1.0a in the query string
(the package does both). Coupons are `POST /wc/v3/coupons`; WooCommerce has no customer tags, so
tags live in the customer's `meta_data` under `encore_tags`; birthday and consent come from the
configurable meta keys the webhook parser reads too.

`PLATFORM` is WooCommerce's plug-in entry (see `connectors.base.Platform`), with `encore stores add
woocommerce` and the documented example deliveries.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import requests
from woocommerce import API

from encore_retention.connectors import codes, identity
from encore_retention.connectors.base import Connector, Discount, DiscountRequest, Platform, PlatformError, Samples
from encore_retention.connectors.http import RetryPolicy, Sleep, json_of, platform_message, raise_for_status
from encore_retention.core import events as ev
from encore_retention.core.crypto import decrypt, encrypt
from encore_retention.core.resources import folder
from encore_retention.core.settings import get_settings
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Shop, parse_id, utcnow
from encore_retention.webhooks import secrets as webhook_secrets
from encore_retention.webhooks.base import Delivery, sign
from encore_retention.webhooks.woocommerce import customer, exports, order, order_customer, receiver, store_domain

# What the flows need: orders (placed, paid, fulfilled, cancelled, refunded) and customers.
WEBHOOK_TOPICS = [
    "order.created",
    "order.updated",
    "order.deleted",
    "order.restored",
    "customer.created",
    "customer.updated",
    "customer.deleted",
]
TAGS_META = "encore_tags"
PER_PAGE = 100
KINDS = {"percent": "percent", "fixed": "fixed_cart"}


def webhook_address() -> str:
    """Where the store's webhooks are delivered."""
    return f"{get_settings().APP_URL.rstrip('/')}/webhooks/woocommerce"


def generate_secret() -> str:
    """A new webhook secret."""
    return secrets.token_urlsafe(32)


def _header_count(response: requests.Response, name: str) -> int | None:
    """A count the store sends in a header (`X-WP-Total`, `X-WP-TotalPages`); None when absent or not a count."""
    return parse_id(response.headers.get(name, "").strip())


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


class WooCommerceConnector(Connector):
    """One WooCommerce store."""

    platform = "woocommerce"

    def __init__(
        self,
        shop: Shop,
        *,
        api: API | None = None,
        sleep: Sleep | None = None,
        consumer_key: str | None = None,
        consumer_secret: str | None = None,
    ) -> None:
        super().__init__(shop)
        if api is None:
            if not shop.url:
                raise PlatformError(f"store {shop.domain} has no URL")
            key = consumer_key or (decrypt(shop.consumer_key_enc) if shop.consumer_key_enc else None)
            secret = consumer_secret or (decrypt(shop.consumer_secret_enc) if shop.consumer_secret_enc else None)
            if not key or not secret:
                raise PlatformError(f"store {shop.domain} has no REST API keys")
            api = API(
                url=shop.url, consumer_key=key, consumer_secret=secret, version="wc/v3", timeout=20, user_agent="Encore"
            )
        self.api = api
        self.retry = RetryPolicy(sleep=sleep)

    # ---- HTTP ----------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        endpoint: str,
        data: Any = None,
        params: dict[str, Any] | None = None,
        *,
        allow: tuple[int, ...] = (),
    ) -> requests.Response:
        """One REST call with retries; a 4xx not in `allow` raises PlatformError with WooCommerce's message."""
        what = f"WooCommerce {method} {endpoint}"

        def call() -> requests.Response:
            kwargs: dict[str, Any] = {"params": dict(params or {})}
            if method == "GET":
                return self.api.get(endpoint, **kwargs)
            if method == "DELETE":
                return self.api.delete(endpoint, **kwargs)
            return getattr(self.api, method.lower())(endpoint, data, **kwargs)

        response = self.retry.call(call, what)
        if response.status_code not in allow:
            raise_for_status(response, what)
        return response

    def pages(self, endpoint: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a paginated collection (`X-WP-TotalPages`)."""
        page = 1
        while True:
            response = self.request("GET", endpoint, params={**params, "per_page": PER_PAGE, "page": page})
            items = json_of(response, f"WooCommerce GET {endpoint}")
            if not isinstance(items, list):
                raise PlatformError(f"WooCommerce GET {endpoint}: expected a list")
            yield from items
            total = _header_count(response, "X-WP-TotalPages")
            if not items or (total is not None and page >= total) or (total is None and len(items) < PER_PAGE):
                return
            page += 1

    def count(self, resource: str) -> int | None:
        """How many customers or orders the store has (`X-WP-Total`), for progress bars."""
        params = {"per_page": 1, **({"role": "all"} if resource == "customers" else {})}
        return _header_count(self.request("GET", resource, params=params), "X-WP-Total")

    # ---- the store -----------------------------------------------------------------------------------

    def verify(self) -> dict[str, Any]:
        """Check the keys against the store (they must read WooCommerce settings); returns its identity fields.

        `settings/general` must answer (it proves the keys); the rest is read when the store tells:
        the site's name and time zone from the WordPress REST index, the reply address from the email
        settings, and the staff's address from the new-order email's recipient (`connectors.identity`
        fields). The URL stays the one the store was added with: its REST API answers there.
        """
        general = self._settings(json_of(self.request("GET", "settings/general"), "WooCommerce settings"))
        index = self._site_index()
        email = self._settings(self._optional("settings/email"))
        new_order = self._settings(self._optional("settings/email_new_order"))
        sender_name, sender = email.get("woocommerce_email_from_name"), email.get("woocommerce_email_from_address")
        staff = str(new_order.get("recipient") or "").split(",")[0].strip() or sender
        return {
            "currency": general.get("woocommerce_currency"),
            "timezone": self._zone(index.get("timezone_string")),
            "name": index.get("name") or sender_name,
            "staff_email": staff,
            "reply_to": sender,
        }

    @staticmethod
    def _settings(items: Any) -> dict[str, Any]:
        """A settings group's `id: value` pairs."""
        found = items if isinstance(items, list) else []
        return {str(i.get("id")): i.get("value") for i in found if isinstance(i, dict)}

    def _optional(self, endpoint: str) -> Any:
        """One read the store may refuse (an older WooCommerce, a key without the right): None then, never an error."""
        try:
            response = self.api.get(endpoint)
            return response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def _site_index(self) -> dict[str, Any]:
        """The WordPress REST index (`/wp-json/`, public): the site's name and time zone; {} when it doesn't answer."""
        if not self.shop.url:
            return {}
        try:
            response = requests.get(
                f"{self.shop.url.rstrip('/')}/wp-json/", timeout=10, headers={"Accept": "application/json"}
            )
            found = response.json() if response.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    @staticmethod
    def _zone(zone: Any) -> str | None:
        """An IANA time zone name, None for a bare offset or junk."""
        try:
            return str(ZoneInfo(zone)) if isinstance(zone, str) and zone else None
        except (ZoneInfoNotFoundError, ValueError):
            return None

    def register_webhooks(self, topics: list[str] | None = None, address: str | None = None) -> list[str]:
        """Create (or re-enable) a webhook per topic delivering to `address`, signed with the shop's secret."""
        topics, address = topics or WEBHOOK_TOPICS, address or webhook_address()
        if not self.shop.webhook_secret_enc:
            raise PlatformError(f"store {self.shop.domain} has no webhook secret")
        secret = decrypt(self.shop.webhook_secret_enc)
        existing = {(w.get("topic"), (w.get("delivery_url") or "").rstrip("/")): w for w in self.pages("webhooks", {})}
        done = []
        for topic in topics:
            found = existing.get((topic, address.rstrip("/")))
            body = {
                "name": f"Encore {topic}",
                "topic": topic,
                "delivery_url": address,
                "secret": secret,
                "status": "active",
            }
            if found is None:
                self.request("POST", "webhooks", body)
            else:  # re-enable one WooCommerce disabled after failures, and make its secret ours
                self.request("PUT", f"webhooks/{found['id']}", {"status": "active", "secret": secret})
            done.append(topic)
        return done

    # ---- account invitations and product pages ------------------------------------------------------

    def account_page(self) -> str:
        """The store's my-account page (where a guest registers): the page set in WooCommerce's advanced settings
        (`woocommerce_myaccount_page_id`, as `?page_id=N`, which WordPress sends on to its address), else the
        default `/my-account/`."""
        store = (self.shop.url or f"https://{self.shop.domain}").rstrip("/")
        found = self._optional("settings/advanced/woocommerce_myaccount_page_id")
        page = parse_id(str(found.get("value") or "")) if isinstance(found, dict) else None
        return f"{store}/?page_id={page}" if page else f"{store}/my-account/"

    def account_invite_url(self, customer_id: str | None, email: str | None) -> str | None:
        """The my-account page, with the address as `email` in the query for a store whose registration form reads
        it (WooCommerce's own form fills the address in only from a post: see docs/flows.md)."""
        page = self.account_page()
        if not email:
            return page
        return f"{page}{'&' if '?' in page else '?'}{urlencode({'email': email})}"

    def product_url(self, product_id: str) -> str | None:
        """The product's `permalink` (`GET /products/<id>`); None for a product the store no longer has."""
        response = self.request("GET", f"products/{product_id}", allow=(404,))
        if response.status_code == 404:
            return None
        product = json_of(response, "WooCommerce product")
        return ev.text(product.get("permalink")) if isinstance(product, dict) else None

    # ---- discounts -----------------------------------------------------------------------------------

    def _discount(self, coupon: dict[str, Any], request: DiscountRequest) -> Discount:
        kind = "percent" if coupon.get("discount_type") == "percent" else "fixed"
        expires = ev.parse_datetime(coupon.get("date_expires_gmt"))
        return Discount(
            code=str(coupon["code"]).upper(),
            kind=kind,  # type: ignore[arg-type]
            value=ev.parse_decimal(coupon.get("amount")) or request.value,
            platform_id=str(coupon.get("id")) if coupon.get("id") is not None else None,
            ends_at=expires or request.ends_at,
            raw=coupon,
        )

    def find_coupon(self, code: str) -> dict[str, Any] | None:
        """The coupon with exactly this code, if the store has one."""
        response = self.request("GET", "coupons", params={"code": code})
        for coupon in json_of(response, "WooCommerce coupons") or []:
            if isinstance(coupon, dict) and str(coupon.get("code", "")).lower() == code.lower():
                return coupon
        return None

    def coupon_body(self, code: str, request: DiscountRequest) -> dict[str, Any]:
        """The `POST /coupons` body for a request."""
        body: dict[str, Any] = {
            "code": code,
            "discount_type": KINDS[request.kind],
            "amount": _money(request.value),
            "individual_use": True,
            "usage_limit": request.usage_limit,
            "usage_limit_per_user": 1,
            "description": request.title or f"Encore {request.idempotency_key}"[:200],
        }
        email = request.customer_email
        if not email and request.customer_id:
            customer = self.fetch_customer(request.customer_id)
            email = customer.email if customer else None
        if email:
            body["email_restrictions"] = [email]
        if request.ends_at is not None:
            body["date_expires"] = request.ends_at.astimezone(self.timezone()).strftime("%Y-%m-%dT%H:%M:%S")
        if request.minimum_subtotal is not None:
            body["minimum_amount"] = _money(request.minimum_subtotal)
        return body

    def timezone(self) -> ZoneInfo:
        """The store's time zone (WooCommerce dates without `_gmt` are in it)."""
        try:
            return ZoneInfo(self.shop.timezone or get_settings().DEFAULT_TIMEZONE)
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")

    def create_discount(self, request: DiscountRequest) -> Discount:
        """A single-use coupon for one customer; the same request twice finds the first coupon."""
        known = codes.remembered(self.shop, request.idempotency_key)
        if known is not None:
            return known
        code = codes.code_for(self.shop.id, request)
        coupon = self.find_coupon(code)
        if coupon is None:
            response = self.request("POST", "coupons", self.coupon_body(code, request), allow=(400,))
            if response.status_code == 400:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                if isinstance(body, dict) and body.get("code") == "woocommerce_rest_coupon_code_already_exists":
                    coupon = self.find_coupon(code)  # made by an attempt whose answer was lost
                if coupon is None:
                    raise PlatformError(f"WooCommerce POST coupons: HTTP 400: {platform_message(response)}", status=400)
            else:
                coupon = json_of(response, "WooCommerce POST coupons")
        discount = self._discount(coupon, request)
        codes.remember(self.shop, request.idempotency_key, discount)
        return discount

    def discount_redeemed(self, code: str) -> bool | None:
        """Whether the coupon has been used (`usage_count`)."""
        coupon = self.find_coupon(code)
        return None if coupon is None else int(coupon.get("usage_count") or 0) > 0

    # ---- customers and orders ------------------------------------------------------------------------

    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        """Add tags to the customer's `encore_tags` meta (WooCommerce has no customer tags)."""
        response = self.request("GET", f"customers/{customer_id}")
        current = json_of(response, "WooCommerce customer")
        existing = (
            next(
                (
                    m.get("value")
                    for m in current.get("meta_data") or []
                    if isinstance(m, dict) and m.get("key") == TAGS_META
                ),
                "",
            )
            or ""
        )
        merged = sorted({t.strip() for t in [*str(existing).split(","), *tags] if t.strip()})
        self.request("PUT", f"customers/{customer_id}", {"meta_data": [{"key": TAGS_META, "value": ",".join(merged)}]})

    def withdraw_email_consent(self, customer_id: str) -> str:
        """Set the customer's consent meta (WOOCOMMERCE_CONSENT_META) to `no`, unless it already says no.

        WooCommerce updates the meta entry with that key in place (or adds one) when `meta_data` names the key.
        """
        meta_key = get_settings().WOOCOMMERCE_CONSENT_META
        response = self.request("GET", f"customers/{customer_id}", allow=(404,))
        if response.status_code == 404:
            raise PlatformError(f"WooCommerce customer {customer_id} not found", status=404)
        current = json_of(response, "WooCommerce customer")
        value = next(
            (
                m.get("value")
                for m in current.get("meta_data") or []
                if isinstance(m, dict) and m.get("key") == meta_key
            ),
            None,
        )
        if value is not None and not ev.truthy(value):
            return f"already no consent on WooCommerce ({meta_key} = {value!r})"
        self.request("PUT", f"customers/{customer_id}", {"meta_data": [{"key": meta_key, "value": "no"}]})
        return f"{meta_key} set to 'no' on WooCommerce (was {value!r})"

    def fetch_customer(self, customer_id: str) -> ev.Customer | None:
        """The customer now (None if deleted)."""

        response = self.request("GET", f"customers/{customer_id}", allow=(404,))
        if response.status_code == 404:
            return None
        return customer(json_of(response, "WooCommerce customer"))

    def order_payloads(self, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Raw orders modified after `since` (all when None), as the REST API returns them."""
        params: dict[str, Any] = {"orderby": "id", "order": "asc"}
        if since is not None:
            params.update(modified_after=since.strftime("%Y-%m-%dT%H:%M:%S"), dates_are_gmt="true")
        for payload in self.pages("orders", params):
            # Anything but an object is yielded as it is: the caller refuses it and says so.
            modified = ev.parse_datetime(payload.get("date_modified_gmt")) if isinstance(payload, dict) else None
            if since is None or modified is None or modified > since:
                yield payload

    def customer_payloads(self, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Raw customers modified after `since` (the endpoint can't filter by it: filtered here)."""
        params: dict[str, Any] = {"role": "all", "orderby": "id", "order": "asc"}
        if since is not None:  # ignored by stores that don't know it, used by those that do
            params.update(modified_after=since.strftime("%Y-%m-%dT%H:%M:%S"), dates_are_gmt="true")
        for payload in self.pages("customers", params):
            # Anything but an object is yielded as it is: the caller refuses it and says so.
            modified = ev.parse_datetime(payload.get("date_modified_gmt")) if isinstance(payload, dict) else None
            if since is None or modified is None or modified > since:
                yield payload

    def fetch_orders(self, since: datetime | None = None) -> Iterator[tuple[ev.Order, ev.Customer | None]]:
        """Orders changed since a time, with their customers."""

        for payload in self.order_payloads(since):
            yield order(payload), order_customer(payload)

    def fetch_customers(self, since: datetime | None = None) -> Iterator[ev.Customer]:
        """Customers changed since a time."""

        for payload in self.customer_payloads(since):
            yield customer(payload)

    def events_for(self, topic: str, payload: dict[str, Any]) -> list[ev.Event]:
        """Canonical events for a fetched resource, keyed exactly as its webhook would be."""

        body = json.dumps(payload, sort_keys=True).encode()
        return receiver.parse(Delivery(shop=self.shop.domain, topic=topic), payload, body)


# ---- the plug-in entry -----------------------------------------------------------------------------


@click.command("woocommerce")
@click.argument("url")
@click.option("--consumer-key", required=True, help="REST API consumer key (ck_…), with read/write permission")
@click.option("--consumer-secret", required=True, help="REST API consumer secret (cs_…)")
@click.option("--webhook-secret", default=None, help="sign the webhooks with this secret (default: a new one)")
@click.option(
    "--no-verify", is_flag=True, help="don't call the store: save the keys as given and create the webhooks by hand"
)
def add_store(url: str, consumer_key: str, consumer_secret: str, webhook_secret: str | None, no_verify: bool) -> None:
    """Connect a WooCommerce store: check the keys, create its webhooks, print the store id."""

    domain = store_domain(url)
    if not domain or not url.strip().lower().startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not a store URL (expected http://… or https://…)", param_hint="URL")
    url = url.strip().rstrip("/")
    generated = webhook_secret is None
    secret = webhook_secret or generate_secret()
    facts: dict[str, Any] = {}
    if not no_verify:
        probe = Shop(platform="woocommerce", domain=domain, url=url)
        try:
            facts = WooCommerceConnector(probe, consumer_key=consumer_key, consumer_secret=consumer_secret).verify()
        except PlatformError as exc:
            raise click.ClickException(f"the store did not accept the keys: {exc.message}") from exc
    migrate()
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", domain)
        shop.url = url
        shop.consumer_key_enc = encrypt(consumer_key)
        shop.consumer_secret_enc = encrypt(consumer_secret)
        shop.webhook_secret_enc = encrypt(secret)
        identity.fill(shop, facts)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
        shop_id = shop.id
    webhook_secrets.forget("woocommerce", domain)
    if no_verify:
        click.echo(f"store {shop_id} added: woocommerce {domain}")
        if generated:
            click.echo(
                f"create the webhooks in WooCommerce > Settings > Advanced > Webhooks with delivery URL "
                f"{webhook_address()} and secret {secret}"
            )
        return
    with session_scope() as session:
        shop = session.get_one(Shop, shop_id)
        try:
            topics = WooCommerceConnector(shop).register_webhooks()
        except PlatformError as exc:
            raise click.ClickException(
                f"store {shop_id} saved, but its webhooks could not be created: "
                f"{exc.message} (run the command again to retry)"
            ) from exc
    click.echo(f"store {shop_id} added: woocommerce {domain}")
    click.echo(f"webhooks: {', '.join(topics)} -> {webhook_address()}")


def sample_headers(body: bytes, topic: str, secret: str, store: str) -> dict[str, str]:
    """The headers WooCommerce sends with a delivery from the store at URL `store`, signed with `secret`."""
    resource, _, event = topic.partition(".")
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": store.rstrip("/") + "/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": sign(body, secret),
        "X-WC-Webhook-ID": "12",
        "X-WC-Webhook-Delivery-ID": secrets.token_hex(16),
    }


def connect_sample_store(store: str, secret: str) -> None:
    """Register the store at URL `store`, its webhooks signed with `secret` (no API keys: nothing is called)."""
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", store_domain(store))
        shop.url = store.rstrip("/")
        shop.webhook_secret_enc = encrypt(secret)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
    webhook_secrets.forget("woocommerce", store_domain(store))


PLATFORM = Platform(
    name="woocommerce",
    title="WooCommerce",
    receiver=receiver,
    connector=WooCommerceConnector,
    signature_headers=("X-WC-Webhook-Signature",),
    register=add_store,
    samples=Samples(
        folder=folder("encore_retention.webhooks", "examples/woocommerce"),
        order_topic="order.created",
        fields={
            "order_id": ("order.created", ("id",)),
            "total": ("order.created", ("total",)),
            "currency": ("order.created", ("currency",)),
            "created_at": ("order.created", ("date_created_gmt",)),
            "quantity": ("order.created", ("line_items", 0, "quantity")),
            "email": ("order.created", ("billing", "email")),
            "first_name": ("order.created", ("billing", "first_name")),
            "orders_count": ("customer.created", ("orders_count",)),
        },
        store="https://woo.example.com",
        store_header="X-WC-Webhook-Source",
        stranger="https://unknown.example.org",
        sign=sample_headers,
        connect=connect_sample_store,
    ),
    exports=exports,
)
