"""Shopify, through the GraphQL Admin API (version SHOPIFY_API_VERSION) with the shop's access token.

ShopifyAPI (`shopify`) builds the Admin API address and the OAuth URLs and checks OAuth HMACs; the
GraphQL calls themselves go through `requests`, because ShopifyAPI's GraphQL client uses urllib,
prints error bodies and hides the status and `Retry-After` that rate limiting needs.

- Discount codes: `discountCodeBasicCreate` with `context` (the customer only), one use, a readable
  code derived from the flow step's idempotency key; before creating, `codeDiscountNodeByCode`
  finds a code an earlier attempt made, so a retry never mints a second one.
- Throttling: an HTTP 429 waits `Retry-After`; a GraphQL `THROTTLED` error waits until the query's
  cost is restored (`extensions.cost.throttleStatus`); 5xx back off. A 4xx or a mutation's
  `userErrors` raise `PlatformError` with Shopify's message, which the flow run's trace records.
- Protected customer data: without Shopify's approval the API answers personal fields with an
  ACCESS_DENIED error and null; the rest of the answer is used, so a customer may come back without
  an email address (the flow engine ends such runs with that reason).

`PLATFORM` is Shopify's plug-in entry (see `connectors.base.Platform`), with `encore stores add
shopify` (a custom app's token; the app install is `web/install.py`) and the documented example deliveries.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import click
import requests
import shopify

from encore_retention.connectors import codes, identity
from encore_retention.connectors.base import Connector, Discount, DiscountRequest, Platform, PlatformError, Samples
from encore_retention.connectors.http import RetryPolicy, Sleep, json_of, raise_for_status
from encore_retention.core import events as ev
from encore_retention.core.crypto import decrypt, encrypt
from encore_retention.core.resources import folder
from encore_retention.core.settings import get_settings
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Shop, utcnow
from encore_retention.webhooks import secrets as webhook_secrets
from encore_retention.webhooks.base import sign
from encore_retention.webhooks.shopify import SHOP_DOMAIN, exports, receiver

log = logging.getLogger(__name__)

# The webhooks the flows need (the privacy topics are declared in shopify.app.toml instead).
WEBHOOK_TOPICS = [
    "orders/create",
    "orders/paid",
    "orders/fulfilled",
    "orders/cancelled",
    "orders/updated",
    "orders/delete",
    "refunds/create",
    "customers/create",
    "customers/update",
    "customers/delete",
    "customers/email_marketing_consent_update",
    "customers/purchasing_summary",
    "checkouts/create",
    "checkouts/update",
    "app/uninstalled",
]
PRIVACY_TOPICS = ["customers/data_request", "customers/redact", "shop/redact"]
PAGE_SIZE = 100
CONSENT = {
    "SUBSCRIBED": True,
    "NOT_SUBSCRIBED": False,
    "UNSUBSCRIBED": False,
    "PENDING": False,
    "INVALID": False,
    "REDACTED": False,
}

DISCOUNT_CREATE = """
mutation discountCodeBasicCreate($basicCodeDiscount: DiscountCodeBasicInput!) {
  discountCodeBasicCreate(basicCodeDiscount: $basicCodeDiscount) {
    codeDiscountNode { id codeDiscount { ... on DiscountCodeBasic { title startsAt endsAt
      codes(first: 1) { nodes { code } } } } }
    userErrors { field code message }
  }
}"""
DISCOUNT_BY_CODE = """
query codeDiscountNodeByCode($code: String!) {
  codeDiscountNodeByCode(code: $code) {
    id codeDiscount { __typename ... on DiscountCodeBasic { title status startsAt endsAt asyncUsageCount
      codes(first: 1) { nodes { code } } } }
  }
}"""
TAGS_ADD = """
mutation tagsAdd($id: ID!, $tags: [String!]!) {
  tagsAdd(id: $id, tags: $tags) { node { id } userErrors { field message } }
}"""
CUSTOMER_CONSENT = """
query customerEmailConsent($id: ID!) {
  customer(id: $id) { id defaultEmailAddress { emailAddress marketingState marketingOptInLevel } }
}"""
CONSENT_UPDATE = """
mutation customerEmailMarketingConsentUpdate($input: CustomerEmailMarketingConsentUpdateInput!) {
  customerEmailMarketingConsentUpdate(input: $input) {
    customer { id defaultEmailAddress { marketingState marketingOptInLevel marketingUpdatedAt } }
    userErrors { field message code }
  }
}"""
# Marketing states the consent mutation can't set over (Shopify sets them itself): nothing to change then.
UNSETTABLE_STATES = frozenset({"INVALID", "REDACTED"})
CUSTOMER_FIELDS = """
fragment CustomerFields on Customer {
  id firstName lastName phone locale state tags createdAt updatedAt numberOfOrders
  amountSpent { amount currencyCode }
  defaultEmailAddress { emailAddress marketingState marketingUpdatedAt }
  birthday: metafield(namespace: $namespace, key: $key) { value }
}"""
CUSTOMER = (
    """
query customer($id: ID!, $namespace: String!, $key: String!) { customer(id: $id) { ...CustomerFields } }
"""
    + CUSTOMER_FIELDS
)
CUSTOMERS = (
    """
query customers($first: Int!, $after: String, $query: String, $namespace: String!, $key: String!) {
  customers(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    nodes { ...CustomerFields }
    pageInfo { hasNextPage endCursor }
  }
}"""
    + CUSTOMER_FIELDS
)
ORDERS = """
query orders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    nodes {
      id name createdAt updatedAt cancelledAt email currencyCode discountCodes
      displayFinancialStatus displayFulfillmentStatus
      totalPriceSet { shopMoney { amount currencyCode } }
      subtotalPriceSet { shopMoney { amount currencyCode } }
      customer { id firstName lastName defaultEmailAddress { emailAddress } }
      lineItems(first: 50) { nodes { title quantity sku variant { id } product { id }
        originalUnitPriceSet { shopMoney { amount } } } }
    }
    pageInfo { hasNextPage endCursor }
  }
}"""
ACCOUNT_ACTIVATION = """
mutation customerGenerateAccountActivationUrl($customerId: ID!) {
  customerGenerateAccountActivationUrl(customerId: $customerId) {
    accountActivationUrl
    userErrors { field message }
  }
}"""
CUSTOMER_ACCOUNTS = """
query customerAccounts { shop { customerAccountsV2 { customerAccountsVersion url } } }"""
PRODUCT_PAGE = """
query product($id: ID!) { product(id: $id) { onlineStoreUrl } }"""
SHOP = """
query shop { shop { name email contactEmail currencyCode ianaTimezone primaryDomain { url } } }"""
WEBHOOKS = """
query webhookSubscriptions($first: Int!) { webhookSubscriptions(first: $first) { nodes { id topic uri } } }"""
WEBHOOK_CREATE = """
mutation webhookSubscriptionCreate($topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}"""


def gid(kind: str, value: str) -> str:
    """A GraphQL global id (`gid://shopify/Customer/1`) from a plain id (or a gid, unchanged)."""
    return value if str(value).startswith("gid://") else f"gid://shopify/{kind}/{value}"


def plain_id(value: Any) -> str | None:
    """The numeric id of a gid."""
    if not value:
        return None
    return str(value).rsplit("/", 1)[-1]


def topic_enum(topic: str) -> str:
    """`orders/create` -> `ORDERS_CREATE` (WebhookSubscriptionTopic)."""
    return topic.replace("/", "_").upper()


def webhook_address() -> str:
    """Where Shopify delivers the webhooks."""
    return f"{get_settings().APP_URL.rstrip('/')}/webhooks/shopify"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def _messages(errors: list[dict[str, Any]]) -> str:
    return "; ".join(str(e.get("message")) for e in errors if isinstance(e, dict)) or "unknown error"


class ShopifyConnector(Connector):
    """One Shopify shop, with its Admin API access token."""

    platform = "shopify"

    def __init__(
        self, shop: Shop, *, token: str | None = None, sleep: Sleep | None = None, http: requests.Session | None = None
    ) -> None:
        super().__init__(shop)
        token = token or (decrypt(shop.access_token_enc) if shop.access_token_enc else None)
        if not token:
            raise PlatformError(f"shop {shop.domain} has no access token (uninstalled?)")
        self.token = token
        self.version = get_settings().SHOPIFY_API_VERSION
        self.endpoint = shopify.Session(shop.domain, self.version, token).site + "/graphql.json"
        self.http = http or requests.Session()
        self.retry = RetryPolicy(sleep=sleep)
        self.refused: dict[str, str] = {}  # webhook topics Shopify refused at the last register_webhooks

    # ---- GraphQL -------------------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict[str, Any] | None = None, *, what: str = "GraphQL") -> dict[str, Any]:
        """Run one query or mutation; waits out throttling and 5xx, raises PlatformError otherwise."""
        label = f"Shopify {what}"
        headers = {
            "X-Shopify-Access-Token": self.token,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        payload: dict[str, Any] = {"query": query, "variables": variables or {}}
        for attempt in range(self.retry.attempts):
            response = self.retry.call(
                lambda: self.http.post(self.endpoint, json=payload, headers=headers, timeout=30), label
            )
            raise_for_status(response, label)
            body = json_of(response, label)
            errors = body.get("errors") if isinstance(body, dict) else None
            if errors:
                if isinstance(errors, str):
                    raise PlatformError(f"{label}: {errors}", status=response.status_code)
                if any((e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors if isinstance(e, dict)):
                    wait = self.throttle_wait(body)
                    self.retry.wait(
                        wait,
                        PlatformError(f"{label}: throttled", status=429, transient=True, retry_after=wait),
                        attempt,
                    )
                    continue
                data = body.get("data")
                if not data or all(v is None for v in data.values()):
                    raise PlatformError(f"{label}: {_messages(errors)}", status=response.status_code)
                # partial data: fields the granted scopes don't cover (protected customer data) are null
                log.warning("Shopify answered with errors", extra={"what": what, "errors": _messages(errors)[:300]})
            return body.get("data") or {}
        raise AssertionError("unreachable")

    @staticmethod
    def throttle_wait(body: dict[str, Any]) -> float:
        """Seconds until the query's cost is available again, from `extensions.cost`."""
        cost = (body.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus") or {}
        try:
            needed = float(cost.get("requestedQueryCost") or 0) - float(status.get("currentlyAvailable") or 0)
            rate = float(status.get("restoreRate") or 0)
        except (TypeError, ValueError):
            return 1.0
        if rate <= 0:
            return 1.0
        return max(1.0, round(needed / rate, 2))

    @staticmethod
    def user_errors(result: dict[str, Any] | None) -> list[dict[str, Any]]:
        """A mutation's `userErrors`."""
        return list((result or {}).get("userErrors") or [])

    # ---- discounts -----------------------------------------------------------------------------------

    def discount_variables(self, code: str, request: DiscountRequest) -> dict[str, Any]:
        """The `DiscountCodeBasicInput` for a request."""
        if request.kind == "percent":
            value: dict[str, Any] = {"percentage": float(request.value / Decimal(100))}
        else:
            value = {"discountAmount": {"amount": _money(request.value), "appliesOnEachItem": False}}
        context: dict[str, Any] = (
            {"customers": {"add": [gid("Customer", request.customer_id)]}} if request.customer_id else {"all": "ALL"}
        )
        basic: dict[str, Any] = {
            "title": request.title or f"{request.prefix or 'Encore'} {code}".strip(),
            "code": code,
            "startsAt": _iso(request.starts_at or datetime.now(UTC)),
            "endsAt": _iso(request.ends_at) if request.ends_at else None,
            "context": context,
            "customerGets": {"value": value, "items": {"all": True}},
            "usageLimit": request.usage_limit,
            "appliesOncePerCustomer": True,
            "combinesWith": {"orderDiscounts": False, "productDiscounts": False, "shippingDiscounts": True},
        }
        if request.minimum_subtotal is not None:
            minimum = _money(request.minimum_subtotal)
            basic["minimumRequirement"] = {"subtotal": {"greaterThanOrEqualToSubtotal": minimum}}
        return {"basicCodeDiscount": basic}

    def find_discount(self, code: str) -> dict[str, Any] | None:
        """The code discount node with this code, if the shop has one."""
        data = self.graphql(DISCOUNT_BY_CODE, {"code": code}, what="codeDiscountNodeByCode")
        return data.get("codeDiscountNodeByCode")

    def _discount(self, node: dict[str, Any], code: str, request: DiscountRequest) -> Discount:
        details = node.get("codeDiscount") or {}
        return Discount(
            code=code,
            kind=request.kind,
            value=request.value,
            platform_id=node.get("id"),
            ends_at=ev.parse_datetime(details.get("endsAt")) or request.ends_at,
            raw=node,
        )

    def create_discount(self, request: DiscountRequest) -> Discount:
        """A single-use code for one customer; the same request twice finds the first code."""
        known = codes.remembered(self.shop, request.idempotency_key)
        if known is not None:
            return known
        code = codes.code_for(self.shop.id, request)
        node = self.find_discount(code)
        if node is None:
            data = self.graphql(DISCOUNT_CREATE, self.discount_variables(code, request), what="discountCodeBasicCreate")
            result = data.get("discountCodeBasicCreate") or {}
            errors = self.user_errors(result)
            if errors:
                if any(e.get("code") == "TAKEN" for e in errors):
                    node = self.find_discount(code)  # an attempt whose answer was lost made it
                if node is None:
                    raise PlatformError(f"Shopify discountCodeBasicCreate: {_messages(errors)}", status=422)
            else:
                node = result.get("codeDiscountNode")
            if node is None:
                raise PlatformError("Shopify discountCodeBasicCreate returned no discount")
        discount = self._discount(node, code, request)
        codes.remember(self.shop, request.idempotency_key, discount)
        return discount

    def discount_redeemed(self, code: str) -> bool | None:
        """Whether the code has been used (`asyncUsageCount`)."""
        node = self.find_discount(code)
        if node is None:
            return None
        count = (node.get("codeDiscount") or {}).get("asyncUsageCount")
        return None if count is None else int(count) > 0

    # ---- customers -----------------------------------------------------------------------------------

    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        """Add tags to a customer (`tagsAdd`)."""
        data = self.graphql(TAGS_ADD, {"id": gid("Customer", customer_id), "tags": tags}, what="tagsAdd")
        errors = self.user_errors(data.get("tagsAdd"))
        if errors:
            raise PlatformError(f"Shopify tagsAdd: {_messages(errors)}", status=422)

    def withdraw_email_consent(self, customer_id: str) -> str:
        """`customerEmailMarketingConsentUpdate` to UNSUBSCRIBED, keeping the customer's opt-in level.

        The current state is read first: a customer already UNSUBSCRIBED is not written again, and the
        opt-in level (single, confirmed, unknown) they subscribed with is sent back unchanged.
        """
        customer_gid = gid("Customer", customer_id)
        data = self.graphql(CUSTOMER_CONSENT, {"id": customer_gid}, what="customer")
        node = data.get("customer")
        if node is None:
            raise PlatformError(f"Shopify customer {customer_id} not found", status=404)
        address = node.get("defaultEmailAddress") or {}
        state, level = address.get("marketingState"), address.get("marketingOptInLevel")
        if not address.get("emailAddress"):
            return "the customer has no email address on Shopify: nothing to change"
        if state == "UNSUBSCRIBED":
            return "already unsubscribed on Shopify"
        if state in UNSETTABLE_STATES:
            return f"Shopify holds the address as {state}: nothing to change"
        consent: dict[str, Any] = {"marketingState": "UNSUBSCRIBED", "consentUpdatedAt": _iso(utcnow())}
        if level:
            consent["marketingOptInLevel"] = level
        variables = {"input": {"customerId": customer_gid, "emailMarketingConsent": consent}}
        result = self.graphql(CONSENT_UPDATE, variables, what="customerEmailMarketingConsentUpdate")
        payload = result.get("customerEmailMarketingConsentUpdate")
        errors = self.user_errors(payload)
        if errors:
            raise PlatformError(f"Shopify customerEmailMarketingConsentUpdate: {_messages(errors)}", status=422)
        kept = f", opt-in level {level} kept" if level else ""
        return f"unsubscribed on Shopify (was {state or 'unknown'}{kept})"

    def _metafield(self) -> dict[str, str]:
        namespace, _, key = get_settings().SHOPIFY_BIRTHDAY_METAFIELD.partition(".")
        return {"namespace": namespace, "key": key or namespace}

    @staticmethod
    def to_customer(node: dict[str, Any]) -> ev.Customer:
        """A canonical customer from a GraphQL `Customer` (fields the scopes withhold are None)."""
        email = node.get("defaultEmailAddress") or {}
        state = email.get("marketingState")
        amount = node.get("amountSpent") or {}
        birthday = (node.get("birthday") or {}).get("value")
        return ev.Customer(
            id=plain_id(node.get("id")),
            email=ev.text(email.get("emailAddress")),
            first_name=ev.text(node.get("firstName")),
            last_name=ev.text(node.get("lastName")),
            phone=ev.text(node.get("phone")),
            locale=ev.text(node.get("locale")),
            birthday=ev.parse_date(birthday),
            email_consent=CONSENT.get(str(state).upper(), False) if state else None,
            consent_updated_at=ev.parse_datetime(email.get("marketingUpdatedAt")),
            tags=list(node["tags"]) if isinstance(node.get("tags"), list) else None,
            has_account=(node["state"] == "ENABLED") if isinstance(node.get("state"), str) else None,
            orders_count=int(node["numberOfOrders"]) if node.get("numberOfOrders") is not None else None,
            total_spent=ev.parse_decimal(amount.get("amount")),
            created_at=ev.parse_datetime(node.get("createdAt")),
            updated_at=ev.parse_datetime(node.get("updatedAt")),
        )

    def fetch_customer(self, customer_id: str) -> ev.Customer | None:
        """The customer now, with birthday (SHOPIFY_BIRTHDAY_METAFIELD) and email marketing consent."""
        data = self.graphql(CUSTOMER, {"id": gid("Customer", customer_id), **self._metafield()}, what="customer")
        node = data.get("customer")
        return self.to_customer(node) if node else None

    def _pages(self, query: str, root: str, variables: dict[str, Any]) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            data = self.graphql(query, {**variables, "first": PAGE_SIZE, "after": after}, what=root)
            connection = data.get(root) or {}
            yield from connection.get("nodes") or []
            info = connection.get("pageInfo") or {}
            if not info.get("hasNextPage"):
                return
            after = info.get("endCursor")

    @staticmethod
    def _since(since: datetime | None) -> str | None:
        return f"updated_at:>'{_iso(since)}'" if since else None

    def fetch_customers(self, since: datetime | None = None) -> Iterator[ev.Customer]:
        """Customers updated since a time (all when None), page by page."""
        for node in self._pages(CUSTOMERS, "customers", {"query": self._since(since), **self._metafield()}):
            yield self.to_customer(node)

    @staticmethod
    def to_order(node: dict[str, Any]) -> tuple[ev.Order, ev.Customer | None]:
        """A canonical order (and its customer) from a GraphQL `Order`."""
        total = (node.get("totalPriceSet") or {}).get("shopMoney") or {}
        subtotal = (node.get("subtotalPriceSet") or {}).get("shopMoney") or {}
        items = [
            ev.LineItem(
                product_id=plain_id((i.get("product") or {}).get("id")),
                variant_id=plain_id((i.get("variant") or {}).get("id")),
                sku=ev.text(i.get("sku")),
                title=ev.text(i.get("title")) or "",
                quantity=int(i.get("quantity") or 1),
                price=ev.parse_decimal(((i.get("originalUnitPriceSet") or {}).get("shopMoney") or {}).get("amount")),
            )
            for i in ((node.get("lineItems") or {}).get("nodes") or [])
        ]
        financial = node.get("displayFinancialStatus")
        fulfillment = node.get("displayFulfillmentStatus")
        order = ev.Order(
            id=plain_id(node["id"]) or "",
            number=ev.text(node.get("name")),
            created_at=ev.parse_datetime(node.get("createdAt")),
            updated_at=ev.parse_datetime(node.get("updatedAt")),
            total=ev.parse_decimal(total.get("amount")),
            subtotal=ev.parse_decimal(subtotal.get("amount")),
            currency=ev.text(total.get("currencyCode") or node.get("currencyCode")),
            line_items=items,
            discount_codes=[str(c) for c in node.get("discountCodes") or []],
            financial_status=str(financial).lower() if financial else None,
            fulfillment_status=str(fulfillment).lower() if fulfillment else None,
            cancelled_at=ev.parse_datetime(node.get("cancelledAt")),
        )
        buyer = node.get("customer") or {}
        email = ev.text((buyer.get("defaultEmailAddress") or {}).get("emailAddress")) or ev.text(node.get("email"))
        customer = None
        if buyer.get("id") or email:
            customer = ev.Customer(
                id=plain_id(buyer.get("id")),
                email=email,
                first_name=ev.text(buyer.get("firstName")),
                last_name=ev.text(buyer.get("lastName")),
            )
        return order, customer

    def fetch_orders(self, since: datetime | None = None) -> Iterator[tuple[ev.Order, ev.Customer | None]]:
        """Orders updated since a time (all when None), with their customers."""
        for node in self._pages(ORDERS, "orders", {"query": self._since(since)}):
            yield self.to_order(node)

    # ---- account invitations and product pages ------------------------------------------------------

    def customer_accounts(self) -> tuple[str, str | None]:
        """Which customer accounts the shop uses, `classic` or `new`, and the new accounts' sign-in address.

        The store's setting (`encore stores set --customer-accounts`) decides when given; else the shop
        query's `customerAccountsV2.customerAccountsVersion` (`NEW_CUSTOMER_ACCOUNTS` or `CLASSIC`).
        """
        setting = (self.shop.settings or {}).get("customer_accounts")
        if setting == "classic":
            return "classic", None
        data = self.graphql(CUSTOMER_ACCOUNTS, what="customerAccountsV2")
        accounts = (data.get("shop") or {}).get("customerAccountsV2") or {}
        version = setting or (
            "new" if accounts.get("customerAccountsVersion") == "NEW_CUSTOMER_ACCOUNTS" else "classic"
        )
        return version, ev.text(accounts.get("url"))

    def account_invite_url(self, customer_id: str | None, email: str | None) -> str | None:
        """Classic accounts: the customer's own activation link (`customerGenerateAccountActivationUrl`, valid 30
        days, and the one made before stops working); new customer accounts: the sign-in page, where a code
        sent to the address signs the customer in. A customer whose account is enabled already: PlatformError."""
        store = (self.shop.url or f"https://{self.shop.domain}").rstrip("/")
        version, sign_in = self.customer_accounts()
        if version == "new":
            return sign_in or f"{store}/account"
        if not customer_id:
            return f"{store}/account/register"
        data = self.graphql(
            ACCOUNT_ACTIVATION,
            {"customerId": gid("Customer", customer_id)},
            what="customerGenerateAccountActivationUrl",
        )
        result = data.get("customerGenerateAccountActivationUrl") or {}
        errors = self.user_errors(result)
        if errors:
            raise PlatformError(f"Shopify customerGenerateAccountActivationUrl: {_messages(errors)}", status=422)
        return ev.text(result.get("accountActivationUrl"))

    def product_url(self, product_id: str) -> str | None:
        """The product's page on the online store (`onlineStoreUrl`; None when it is not published there)."""
        data = self.graphql(PRODUCT_PAGE, {"id": gid("Product", product_id)}, what="product")
        return ev.text((data.get("product") or {}).get("onlineStoreUrl"))

    # ---- the shop and its webhooks -------------------------------------------------------------------

    def count(self, resource: str) -> int | None:
        """How many customers or orders the shop has (`customersCount`, `ordersCount`), for progress bars."""
        root = {"customers": "customersCount", "orders": "ordersCount"}[resource]
        data = self.graphql(f"query {root} {{ {root}(limit: null) {{ count }} }}", what=root)
        count = (data.get(root) or {}).get("count")
        return int(count) if count is not None else None

    def shop_details(self) -> dict[str, Any]:
        """The shop's name, emails, currency, IANA time zone and primary domain, as Shopify's `shop` query answers."""
        return self.graphql(SHOP, what="shop").get("shop") or {}

    def identity(self) -> dict[str, Any]:
        """The identity fields (`connectors.identity`): the owner's email for staff, the contact email for replies."""
        details = self.shop_details()
        return {
            "name": details.get("name"),
            "staff_email": details.get("email"),
            "reply_to": details.get("contactEmail") or details.get("email"),
            "url": (details.get("primaryDomain") or {}).get("url"),
            "timezone": details.get("ianaTimezone"),
            "currency": details.get("currencyCode"),
        }

    def register_webhooks(self, topics: list[str] | None = None, address: str | None = None) -> list[str]:
        """Subscribe each topic to `address` (`webhookSubscriptionCreate`), skipping those already there.

        Returns the topics now subscribed. A topic Shopify refuses (typically one carrying protected
        customer data before the app is approved for it) is left out and recorded in `refused`
        with Shopify's message; when every topic is refused, PlatformError.
        """
        topics, address = topics or WEBHOOK_TOPICS, address or webhook_address()
        data = self.graphql(WEBHOOKS, {"first": 100}, what="webhookSubscriptions")
        existing = {(n.get("topic"), n.get("uri")) for n in (data.get("webhookSubscriptions") or {}).get("nodes") or []}
        self.refused = {}
        done = []
        for topic in topics:
            enum = topic_enum(topic)
            if (enum, address) not in existing:
                try:
                    result = self.graphql(
                        WEBHOOK_CREATE,
                        {"topic": enum, "webhookSubscription": {"uri": address, "format": "JSON"}},
                        what="webhookSubscriptionCreate",
                    )
                except PlatformError as exc:
                    if exc.transient:
                        raise
                    self.refused[topic] = exc.message
                    continue
                errors = self.user_errors(result.get("webhookSubscriptionCreate"))
                if errors and not any("already been taken" in str(e.get("message")) for e in errors):
                    self.refused[topic] = _messages(errors)
                    continue
            done.append(topic)
        if self.refused:
            log.warning(
                "Shopify refused some webhook topics", extra={"shop": self.shop.domain, "topics": sorted(self.refused)}
            )
        if not done and topics:
            raise PlatformError(
                f"Shopify webhookSubscriptionCreate: {'; '.join(sorted(set(self.refused.values())))}", status=422
            )
        return done


# ---- the plug-in entry -----------------------------------------------------------------------------


@click.command("shopify")
@click.argument("domain")
@click.option("--access-token", required=True, help="Admin API access token of a custom app (shpat_…)")
@click.option("--webhook-secret", default=None, help="the custom app's API secret, if it signs the webhooks")
@click.option(
    "--register-webhooks",
    is_flag=True,
    help="check the token, read the shop's name, emails, URL, currency and time zone, and subscribe the webhooks",
)
def add_store(domain: str, access_token: str, webhook_secret: str | None, register_webhooks: bool) -> None:
    """Register a Shopify shop with a custom-app token."""

    domain = domain.strip().lower()
    if not SHOP_DOMAIN.match(domain):
        raise click.BadParameter("expected a shop domain like example.myshopify.com", param_hint="DOMAIN")
    details: dict[str, Any] = {}
    if register_webhooks:
        probe = Shop(platform="shopify", domain=domain, url=f"https://{domain}")
        try:
            details = ShopifyConnector(probe, token=access_token).identity()
        except PlatformError as exc:
            raise click.ClickException(f"Shopify did not accept the token: {exc.message}") from exc
    migrate()
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", domain)
        shop.url = f"https://{domain}"
        shop.access_token_enc = encrypt(access_token)
        if webhook_secret:
            shop.webhook_secret_enc = encrypt(webhook_secret)
        identity.fill(shop, details)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
        shop_id = shop.id
    webhook_secrets.forget("shopify", domain)
    click.echo(f"store {shop_id} added: shopify {domain}")
    if register_webhooks:
        with session_scope() as session:
            try:
                connector = ShopifyConnector(session.get_one(Shop, shop_id))
                topics = connector.register_webhooks()
            except PlatformError as exc:
                raise click.ClickException(
                    f"store {shop_id} saved, but its webhooks could not be subscribed: "
                    f"{exc.message} (run the command again to retry)"
                ) from exc
        click.echo(f"webhooks: {', '.join(topics)} -> {webhook_address()}")
        for topic, message in sorted(connector.refused.items()):
            click.echo(f"refused: {topic}: {message}", err=True)


def sample_headers(body: bytes, topic: str, secret: str, store: str) -> dict[str, str]:
    """The headers Shopify sends with a delivery for the shop `store`, signed with `secret`."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": store,
        "X-Shopify-Hmac-Sha256": sign(body, secret),
        "X-Shopify-API-Version": get_settings().SHOPIFY_API_VERSION,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": _iso(utcnow()),
    }


def connect_sample_store(store: str, secret: str) -> None:
    """Register the shop `store` as a custom app whose secret `secret` signs its webhooks."""
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", store)
        shop.url = f"https://{store}"
        shop.webhook_secret_enc = encrypt(secret)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
    webhook_secrets.forget("shopify", store)


PLATFORM = Platform(
    name="shopify",
    title="Shopify",
    receiver=receiver,
    connector=ShopifyConnector,
    signature_headers=("X-Shopify-Hmac-Sha256",),
    register=add_store,
    samples=Samples(
        folder=folder("encore_retention.webhooks", "examples/shopify"),
        order_topic="orders/create",
        fields={
            "order_id": ("orders/create", ("admin_graphql_api_id",)),
            "total": ("orders/create", ("total_price",)),
            "currency": ("orders/create", ("currency",)),
            "created_at": ("orders/create", ("created_at",)),
            "quantity": ("orders/create", ("line_items", 0, "quantity")),
            "email": ("orders/create", ("customer", "email")),
            "first_name": ("orders/create", ("customer", "first_name")),
            "orders_count": ("orders/create", ("customer", "orders_count")),
        },
        store="examples.myshopify.com",
        store_header="X-Shopify-Shop-Domain",
        stranger="stranger.myshopify.com",
        sign=sample_headers,
        connect=connect_sample_store,
    ),
    exports=exports,
)
