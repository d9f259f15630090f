"""Malformed webhook deliveries for both receivers, made from a seed, and the checks they must pass.

`Fuzzer(seed).cases(n)` mutates the documented example payloads (tests/payloads/) and their headers:
wrong types, huge, negative and non-finite numbers, numbers as text, out-of-range and impossible
dates, deep nesting, huge strings, NUL and other odd unicode, nulls, missing fields, bad email
addresses, unknown topics and odd headers. Most cases are signed with the right secret over the
mutated body, so they get past the signature check into parsing and normalising; the rest test the
check itself. `post_all` sends them through a Flask client; `run_queued` then runs every job the
receivers queued (the worker's pipeline: normalise, ledger, flows) and collects what any job raised.

tests/test_fuzz.py runs a few hundred cases on SQLite and PostgreSQL; bench/fuzz.py runs thousands.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import responses
from redis import Redis

from encore_retention.webhooks import shopify, woocommerce
from encore_retention.webhooks.base import sign

PAYLOADS = Path(__file__).parent / "payloads"

# The fields the parsers read: a mutation lands on one of these most of the time.
READ_FIELDS = {
    "id",
    "admin_graphql_api_id",
    "email",
    "contact_email",
    "created_at",
    "updated_at",
    "cancelled_at",
    "total_price",
    "subtotal_price",
    "currency",
    "presentment_currency",
    "order_number",
    "name",
    "financial_status",
    "fulfillment_status",
    "checkout_token",
    "customer_locale",
    "discount_codes",
    "code",
    "line_items",
    "quantity",
    "price",
    "product_id",
    "variant_id",
    "variation_id",
    "sku",
    "title",
    "customer",
    "first_name",
    "last_name",
    "phone",
    "orders_count",
    "total_spent",
    "tags",
    "state",
    "email_marketing_consent",
    "consent_updated_at",
    "accepts_marketing",
    "accepts_marketing_updated_at",
    "birthday",
    "locale",
    "token",
    "abandoned_checkout_url",
    "completed_at",
    "customer_id",
    "email_address",
    "customerId",
    "numberOfOrders",
    "amountSpent",
    "amount",
    "occurredAt",
    "order_id",
    "orders_to_redact",
    "orders_requested",
    "data_request",
    "date_modified_gmt",
    "date_created_gmt",
    "status",
    "number",
    "total",
    "billing",
    "coupon_lines",
    "meta_data",
    "key",
    "value",
}

DATES = [
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:00:00-05:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01",
    "9999-12-31",
    "0000-00-00 00:00:00",
    "2026-02-30T00:00:00Z",
    "1899-12-31T23:59:59Z",
    "3000-01-01T00:00:00Z",
    "2026-11-20T10:00:00+25:00",
    "2026-11-20T10:00:00+23:59",
    "2026-11-20",
    "20261120T100000Z",
    "-2026-01-01",
    "2026-11-20T24:00:00Z",
    "2026-11-20T10:00:00.123456789Z",
    "Z",
    "T",
    "1970-01-01T00:00:00Z",
    "2026-11-20 10:00:00",
    "1e10",
    "--04-12",
]
NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64 - 1,
    1e300,
    -1e300,
    1.5,
    -0.0,
    5e-324,
    1e15,
    0.005,
    999999999999.99,
    1000000000000,
    -999999999999.99,
    12345678901234.56,
]
NUMBER_TEXT = [
    "1e300",
    "1e300",
    "99999999999999999999999",
    "-99999999999999999999999",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "1e999",
    "-1e999",
    "0x10",
    " 12 ",
    "1_000",
    "١٢٣",
    "²",
    "12.345.678",
    "1,5",
    "",
    "-",
    ".",
    "1e-999999",
    "0." + "0" * 5000 + "1",
    "9" * 5000,
    "999999999999.995",
    "1E+12",
    "-0",
    "+5",
]
TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e\u0041",
    "😀" * 50,
    "x" * 300,
    "x" * 70000,
    "é" * 200,
    "\ud7ff",
    "\n\t\r",
    "<script>alert(1)</script>",
    "'; DROP TABLE customers; --",
    "%s%n%x",
    "{{ 7*7 }}",
    "{% raw %}",
    "${7*7}",
    "gid://shopify/Order/",
    "gid://shopify/Customer/" + "9" * 200,
    "gid://",
    "gid://shopify/Customer/1?x=1",
    "\ufeff",
    "\u0301" * 100,
    "ǅ",
    "İ",
    "ß" * 100,
    "\U0010ffff",
    "null",
    "true",
    "[]",
]
EMAILS = [
    "not-an-email",
    "@",
    "a@b",
    "x" * 300 + "@example.com",
    "a@" + "b" * 400 + ".com",
    '"quoted"@example.com',
    "ü@ü.de",
    "user@example.com\nBcc: evil@example.com",
    "user@example.com\r\nSubject: hi",
    "user@[127.0.0.1]",
    " ",
    "a" * 64 + "@" + "b" * 63 + ".com",
    "<user@example.com>",
    "User <user@example.com>",
    "user@example.com, other@example.com",
    "user@@example.com",
    "user@example..com",
    ".user@example.com",
    "user\x00@example.com",
    "USER@EXAMPLE.COM",
    "user+tag@example.com",
    "x" * 115 + "@e.com",
    "x" * 117 + "@e.co",
]
CONTAINERS: list[Callable[[], Any]] = [
    lambda: [],
    lambda: {},
    lambda: [1, 2],
    lambda: {"a": 1},
    lambda: [None],
    lambda: [[[]]],
    lambda: {"": ""},
    lambda: _nested(200),
    lambda: list(range(3000)),
    lambda: [{"code": "X" * 300}] * 50,
    lambda: {"state": "subscribed", "consent_updated_at": "0001-01-01T00:00:00+05:00"},
    lambda: {"amount": "1e300", "currencyCode": "USD"},
    lambda: [{"key": "birthday", "value": "0001-01-01"}],
    lambda: [{"key": "marketing_consent", "value": ["yes"]}],
    lambda: [{"quantity": 1e300, "price": "1"}],
]
SCALARS: list[Any] = [
    None,
    True,
    False,
    "yes",
    "subscribed",
    "unsubscribed",
    "enabled",
    "processing",
    "completed",
    "cancelled",
    "refunded",
    "trash",
]

# Every topic the receivers handle, in their order; shop/redact is left out: it deletes the shop's whole
# ledger, which would hide what the other cases did.
SHOPIFY_TOPICS = [topic for topic in shopify.TOPICS if topic != "shop/redact"]
SHOPIFY_FIXTURE = {topic: topic.replace("/", "_") for topic in SHOPIFY_TOPICS}
SHOPIFY_FIXTURE.update(
    {
        "orders/cancelled": "orders_create",
        "orders/updated": "orders_paid",
        "orders/delete": "orders_create",
        "refunds/create": "orders_create",
        "customers/delete": "customers_update",
        "app/uninstalled": "app_uninstalled",
    }
)
WOO_TOPICS = list(woocommerce.TOPICS)
WOO_FIXTURE = {
    "order.created": "order_created",
    "order.updated": "order_updated",
    "order.deleted": "order_created",
    "order.restored": "order_updated",
    "customer.created": "customer_created",
    "customer.updated": "customer_created",
    "customer.deleted": "customer_created",
}
ODD_TOPICS = [
    "",
    " ",
    "orders/create ",
    "ORDERS/CREATE",
    "orders/",
    "/",
    "products/create",
    "order.created",
    "orders/create\t",
    "x" * 500,
    "customers/redact/extra",
    "coupon.created",
    "action.woo",
    "order.updated.extra",
    "order.",
    ".created",
    "customer.restored",
]
SOURCES = [
    "http://a:99999/",
    "http://[::1",
    "javascript:alert(1)",
    "",
    " ",
    "https://",
    "http://",
    "https://woo.example.com:99999",
    "https://woo.example.com:0",
    "https://woo.example.com:-1",
    "http://user:pw@woo.example.com/",
    "HTTPS://WOO.EXAMPLE.COM/",
    "https://woo.example.com:443/",
    "https://woo.example.com/%zz",
    "https://[zz]/",
    "//woo.example.com",
    "woo.example.com",
    "https://" + "w" * 300 + ".example.com",
    "https://woo.example.com\t",
    "file:///etc/passwd",
    "https://xn--w-9ga.example.com",
    "https://woo.example.com/../",
    "http://[::1]:80/",
    "mailto:a@b",
]
SHOP_DOMAINS = [
    "",
    "EVIL.myshopify.com",
    "evil.example.com",
    "a" * 300 + ".myshopify.com",
    "-x.myshopify.com",
    ".myshopify.com",
    "x.myshopify.com.evil.com",
    "x.myshopify.com ",
    "x..myshopify.com",
    "é.myshopify.com",
]
CONTENT_TYPES = [
    "text/plain",
    "",
    "application/json; charset=utf-16",
    "application/vnd.api+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "APPLICATION/JSON",
    "application/json;;",
    "application/jsonp",
]
HEADER_TEXT = ["", " ", "x" * 2000, "é", "0", "-1", "null", "\t", "a b c", "%00", "Zm9v", "=" * 50]


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


@dataclass
class Case:
    """One request: the platform's path, the body and headers, and what was done to them."""

    platform: str
    body: bytes
    headers: dict[str, str]
    what: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The receiver's path."""
        return f"/webhooks/{self.platform}"


class Fuzzer:
    """Seeded generator of mutated, mostly signed, deliveries for both platforms."""

    def __init__(self, seed: int, *, shopify_secret: str, shop: str, wc_secret: str, wc_url: str) -> None:
        self.rng = random.Random(seed)
        self.shopify_secret, self.shop, self.wc_secret, self.wc_url = shopify_secret, shop, wc_secret, wc_url
        self.examples = {p.parent.name + "/" + p.stem: json.loads(p.read_text()) for p in PAYLOADS.rglob("*.json")}
        self.customer_ids = [self.rng.randrange(1, 10**12) for _ in range(20)]  # shared, so customers meet again

    def cases(self, count: int) -> Iterator[Case]:
        """`count` cases, half for each platform."""
        for number in range(count):
            yield self.case("shopify" if number % 2 == 0 else "woocommerce")

    def case(self, platform: str) -> Case:
        """One mutated delivery for `platform`."""
        rng = self.rng
        topic = rng.choice(SHOPIFY_TOPICS if platform == "shopify" else WOO_TOPICS)
        example = f"{platform}/" + (SHOPIFY_FIXTURE[topic] if platform == "shopify" else WOO_FIXTURE[topic])
        if rng.random() < 0.05:  # another topic's payload under this topic
            example = rng.choice([name for name in self.examples if name.startswith(platform + "/")])
        data = copy.deepcopy(self.examples[example])
        self._fresh_ids(platform, data)
        what: list[str] = [topic]
        for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 5))):
            what.append(self._mutate(data))
        body = self._encode(data, what)
        headers = (self._shopify_headers if platform == "shopify" else self._woo_headers)(body, topic, what)
        self._sign(platform, body, headers, what)
        return Case(platform, body, headers, what)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # ---- the body ------------------------------------------------------------------------------------

    def _fresh_ids(self, platform: str, data: dict[str, Any]) -> None:
        """New resource ids and versions, so that cases are not each other's duplicates."""
        rng = self.rng
        number = rng.randrange(1, 10**15)
        if "id" in data:
            data["id"] = number
        if "admin_graphql_api_id" in data and "Order" in str(data["admin_graphql_api_id"]):
            data["admin_graphql_api_id"] = f"gid://shopify/Order/{number}"
        customer = data.get("customer")
        if isinstance(customer, dict) and "id" in customer:
            cid = rng.choice(self.customer_ids)
            customer["id"], customer["admin_graphql_api_id"] = cid, f"gid://shopify/Customer/{cid}"
        if platform == "woocommerce":
            data["date_modified_gmt"] = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T10:00:00"
            if "customer_id" in data:
                data["customer_id"] = rng.choice(self.customer_ids + [0])
        if "orders_to_redact" in data:  # a redaction forgets someone of its own, not the other cases' customers
            data["customer"] = {
                "id": rng.randrange(10**12, 10**13),
                "email": f"gone-{self._uuid()}@example.com",
                "phone": None,
            }
            data["orders_to_redact"] = [rng.randrange(10**15, 10**16)]
        for name in ("token", "customer_id", "customerId"):
            if name in data and platform == "shopify":
                data[name] = (
                    self._uuid().replace("-", "")
                    if name == "token"
                    else f"gid://shopify/Customer/{rng.choice(self.customer_ids)}"
                    if name == "customerId"
                    else rng.choice(self.customer_ids)
                )

    def _paths(self, value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        if isinstance(value, dict):
            for key, item in value.items():
                yield (*prefix, key)
                yield from self._paths(item, (*prefix, key))
        elif isinstance(value, list):
            for index, item in enumerate(value[:3]):
                yield (*prefix, index)
                yield from self._paths(item, (*prefix, index))

    def _value(self, name: Any) -> Any:
        rng = self.rng
        pools: list[Callable[[], Any]] = [
            lambda: rng.choice(DATES),
            lambda: rng.choice(NUMBERS),
            lambda: rng.choice(NUMBER_TEXT),
            lambda: rng.choice(TEXT),
            lambda: rng.choice(EMAILS),
            lambda: rng.choice(CONTAINERS)(),
            lambda: rng.choice(SCALARS),
        ]
        # Lean towards the kind of value the field holds, so that the mutation gets past the obvious checks.
        text = str(name)
        if "date" in text or text.endswith("_at") or text in ("occurredAt", "birthday"):
            return rng.choice(DATES) if rng.random() < 0.6 else rng.choice(pools)()
        if "email" in text:
            return rng.choice(EMAILS) if rng.random() < 0.6 else rng.choice(pools)()
        if text in (
            "quantity",
            "orders_count",
            "numberOfOrders",
            "price",
            "total",
            "total_price",
            "amount",
            "total_spent",
            "subtotal_price",
            "id",
            "customer_id",
            "product_id",
            "variant_id",
        ):
            return rng.choice(NUMBERS + NUMBER_TEXT) if rng.random() < 0.6 else rng.choice(pools)()
        return rng.choice(pools)()

    def _mutate(self, data: dict[str, Any]) -> str:
        """Change one thing in `data`; returns what was done."""
        rng = self.rng
        paths = list(self._paths(data))
        read = [p for p in paths if p[-1] in READ_FIELDS]
        roll = rng.random()
        if roll < 0.06:  # marketing consent, so that the flows get on to their emails
            if "billing" in data:
                data.setdefault("meta_data", [])
                if isinstance(data["meta_data"], list):
                    data["meta_data"].append({"key": "marketing_consent", "value": "yes"})
            target = data["customer"] if isinstance(data.get("customer"), dict) else data
            target["email_marketing_consent"] = {"state": "subscribed", "consent_updated_at": "2026-11-20T10:00:00Z"}
            return "consent"
        if roll < 0.14:  # a field the parsers read that the example lacks
            name = rng.choice(
                [
                    "orders_count",
                    "total_spent",
                    "birthday",
                    "accepts_marketing",
                    "tags",
                    "state",
                    "email_marketing_consent",
                    "locale",
                    "meta_data",
                    "numberOfOrders",
                    "occurredAt",
                ]
            )
            target: Any = data
            if isinstance(data.get("customer"), dict) and rng.random() < 0.5:
                target = data["customer"]
            target[name] = self._value(name)
            return f"add {name}={_short(target[name])}"
        path = rng.choice(read if read and roll < 0.8 else paths) if paths else ()
        if not path:
            data[rng.choice(list(READ_FIELDS))] = None
            return "add null"
        parent: Any = data
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if rng.random() < 0.15:
            if isinstance(parent, dict):
                del parent[last]
            else:
                parent.pop(last)
            return f"drop {_path(path)}"
        parent[last] = self._value(last)
        return f"set {_path(path)}={_short(parent[last])}"

    def _encode(self, data: dict[str, Any], what: list[str]) -> bytes:
        """The body: JSON of `data`, or now and then something that is barely (or not) JSON."""
        rng = self.rng
        body = json.dumps(data, ensure_ascii=rng.random() < 0.5).encode()
        roll = rng.random()
        if roll > 0.12:
            return body
        mangles: list[tuple[str, Callable[[bytes], bytes]]] = [
            ("truncated", lambda b: b[: rng.randrange(0, max(1, len(b)))]),
            ("array", lambda b: b"[" + b + b"]"),
            ("string", lambda b: json.dumps(b.decode()).encode()),
            ("null", lambda b: b"null"),
            ("number", lambda b: b"1e400"),
            ("bom", lambda b: b"\xef\xbb\xbf" + b),
            ("latin-1", lambda b: b.replace(b"John", b"J\xf6hn")),
            ("invalid utf-8", lambda b: b[:-1] + b"\xff}"),
            ("deep", lambda b: b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"),
            (
                "NaN",
                lambda b: (
                    b.replace(b'"total_price": "', b'"total_price": NaN, "x": "', 1)
                    if b'"total_price": "' in b
                    else b'{"id": NaN}'
                ),
            ),
            ("1e400", lambda b: b'{"id": 1, "total": 1e400, "orders_count": 1e400}'),
            ("duplicate keys", lambda b: b[:-1] + b', "id": "again"}' if b.endswith(b"}") else b),
            ("empty", lambda b: b""),
            ("whitespace", lambda b: b" \n\t "),
            ("utf-16", lambda b: b.decode().encode("utf-16")),
            ("ping", lambda b: b"webhook_id=12"),
            ("huge", lambda b: b'{"id": 1, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'),
        ]
        name, mangle = rng.choice(mangles)
        what.append(f"body {name}")
        return mangle(body)

    # ---- the headers ---------------------------------------------------------------------------------

    def _shopify_headers(self, body: bytes, topic: str, what: list[str]) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": self.shop,
            "X-Shopify-API-Version": "2026-04",
            "X-Shopify-Webhook-Id": self._uuid(),
            "X-Shopify-Event-Id": self._uuid(),
            "X-Shopify-Triggered-At": "2026-11-20T10:00:00.000Z",
        }
        odd: list[tuple[str, list[str]]] = [
            ("X-Shopify-Topic", ODD_TOPICS),
            ("X-Shopify-Shop-Domain", SHOP_DOMAINS),
            ("Content-Type", CONTENT_TYPES),
            ("X-Shopify-Webhook-Id", HEADER_TEXT + ["x" * 99, "x" * 101]),
            ("X-Shopify-Triggered-At", DATES + HEADER_TEXT),
            ("X-Shopify-API-Version", HEADER_TEXT),
        ]
        self._odd_headers(headers, odd, what)
        return headers

    def _woo_headers(self, body: bytes, topic: str, what: list[str]) -> dict[str, str]:
        rng = self.rng
        resource, _, event = topic.partition(".")
        headers = {
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": self.wc_url + "/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-ID": "12",
            "X-WC-Webhook-Delivery-ID": self._uuid().replace("-", ""),
        }
        odd: list[tuple[str, list[str]]] = [
            ("X-WC-Webhook-Source", SOURCES),
            ("X-WC-Webhook-Topic", ODD_TOPICS),
            ("Content-Type", CONTENT_TYPES),
            ("X-WC-Webhook-Resource", HEADER_TEXT + ["order", "customer"]),
            ("X-WC-Webhook-Event", HEADER_TEXT + ["created", "updated"]),
            ("X-WC-Webhook-Delivery-ID", HEADER_TEXT),
            ("X-WC-Webhook-ID", HEADER_TEXT),
        ]
        self._odd_headers(headers, odd, what)
        if rng.random() < 0.03:
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            what.append("no X-WC headers")
        return headers

    def _odd_headers(self, headers: dict[str, str], odd: list[tuple[str, list[str]]], what: list[str]) -> None:
        rng = self.rng
        if rng.random() > 0.25:
            return
        for _ in range(rng.choice((1, 1, 2))):
            name, values = rng.choice(odd)
            if rng.random() < 0.2:
                headers.pop(name, None)
                what.append(f"no {name}")
            else:
                headers[name] = rng.choice(values)
                what.append(f"{name}: {_short(headers[name])}")

    def _sign(self, platform: str, body: bytes, headers: dict[str, str], what: list[str]) -> None:
        rng = self.rng
        name = "X-Shopify-Hmac-Sha256" if platform == "shopify" else "X-WC-Webhook-Signature"
        secret = self.shopify_secret if platform == "shopify" else self.wc_secret
        roll = rng.random()
        if roll < 0.85:
            headers[name] = sign(body, secret)
        elif roll < 0.9:
            what.append("unsigned")
        elif roll < 0.95:
            headers[name] = sign(body, secret + "x")
            what.append("wrong secret")
        else:
            headers[name] = rng.choice(["", "%%%", "=" * 44, "x" * 5000, sign(body, secret)[:-2]])
            what.append("garbage signature")


def _path(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- running them --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the receivers answered, and what happened to what they queued."""

    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[tuple[int, Case, str]] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)  # by the job id it was queued as
    job_errors: list[tuple[str, str]] = field(default_factory=list)
    rejected_by_worker: list[tuple[str, str]] = field(default_factory=list)
    applied: int = 0
    removed: int = 0  # queued, then removed by a redaction of the customer they name

    @property
    def unexpected(self) -> list[tuple[int, Case, str]]:
        """The 5xx answers other than 503."""
        return [error for error in self.server_errors if error[0] != 503]


def post_all(client: Any, cases: Iterator[Case], outcome: Outcome | None = None) -> Outcome:
    """Send every case through the Flask test client; count the answers and keep the 5xx ones."""
    outcome = outcome or Outcome()
    for case in cases:
        try:
            response = client.post(case.path, data=case.body, headers=case.headers)
        except Exception as exc:  # noqa: BLE001 - a testing app raises what production answers with a 500
            outcome.statuses[500] += 1
            outcome.server_errors.append((500, case, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        outcome.statuses[response.status_code] += 1
        if response.status_code >= 500:
            outcome.server_errors.append((response.status_code, case, response.get_data(as_text=True)[:500]))
        elif response.status_code == 200 and response.is_json and response.get_json().get("status") == "queued":
            for job_id in response.get_json()["events"]:
                outcome.queued.append(job_id)
                outcome.cases[job_id] = case
    return outcome


@contextmanager
def woocommerce_api(wc_url: str) -> Iterator[responses.RequestsMock]:
    """The WooCommerce store's REST API, faked: coupons are created (so flows get on to their emails), any
    other call finds no server; nothing leaves the machine."""
    api = f"{wc_url}/wp-json/wc/v3/coupons"

    def create(request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        coupon = {
            "id": 720,
            "code": str(body.get("code", "")).lower(),
            "amount": body.get("amount"),
            "discount_type": body.get("discount_type"),
            "date_expires": body.get("date_expires"),
            "date_expires_gmt": body.get("date_expires"),
        }
        return 201, {}, json.dumps(coupon)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(api, json=[])
        mock.add_callback(responses.POST, api, callback=create)
        yield mock


def run_queued(connection: Redis, outcome: Outcome, wc_url: str) -> Outcome:
    """Run every queued job (deliveries, then the flow jobs they queue) and note any exception a job raised."""
    from rq import SimpleWorker
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    from encore_retention.core import queue as encore_queue

    def collect(job: Job, exc_type: type, exc_value: BaseException, _tb: Any) -> bool:
        outcome.job_errors.append((job.id, f"{exc_type.__name__}: {exc_value}"[:500]))
        return True

    queues = [encore_queue.queue(name, connection) for name in encore_queue.QUEUES]
    with woocommerce_api(wc_url):
        SimpleWorker(queues, connection=connection, serializer=JSONSerializer, exception_handlers=[collect]).work(
            burst=True
        )
    for job_id in outcome.queued:
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:  # a `customers/redact` removes the queued jobs that name its customer
            outcome.removed += 1
            continue
        result = job.return_value()
        if job.get_status() != JobStatus.FINISHED:
            outcome.job_errors.append((job_id, f"job {job.get_status()}, not finished"))
        elif not isinstance(result, dict):  # finished, its result since forgotten by a redaction it names
            outcome.applied += 1
        elif "rejected" in result:
            outcome.rejected_by_worker.append((job_id, str(result["rejected"])))
        else:
            outcome.applied += 1
    return outcome
