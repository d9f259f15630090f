"""The soak's load: signed first orders of new customers, sent at a paced rate and retried as platforms do.

`build_orders` makes N orders, half Shopify `orders/create` and half WooCommerce `order.created`,
each by a customer seen for the first time with an address of their own; `deliveries` adds exact
re-deliveries (the same body and headers) of a share of them and shuffles the lot. `Sender` sends
each delivery at its slot of the target rate from a bounded pool of threads (http.client, a new
connection per request); a delivery answered 503, or whose connection fails, goes back in the
schedule after a backoff (0.5 s doubling to 5 s, up to `max_attempts`), like a platform's retry.
2xx is done; any other answer is final and recorded.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

PAYLOADS = Path(__file__).resolve().parent.parent / "tests" / "payloads"
SHOP = "soak-shop.myshopify.com"
WOO_URL = "https://soak-woo.example"


@dataclass
class Order:
    """One first order of a new customer, and what the load saw of it."""

    index: int
    platform: str  # shopify | woocommerce
    email: str
    path: str
    body: bytes
    headers: dict[str, str]
    first_sent: float | None = None  # time.time() of its first request (of any of its deliveries)
    first_ok: float | None = None  # time.time() when it was first answered 2xx


@dataclass
class Delivery:
    """One delivery of an order (the original or a re-delivery) with its attempts."""

    order: Order
    redelivery: bool
    attempts: int = 0
    first_sent: float | None = None  # time.time() of its first request
    outcome: str = ""  # "ok", "http <status>", "gave up"
    answers: list[str] = field(default_factory=list)


def sign(body: bytes, secret: str) -> str:
    """base64(HMAC-SHA256(body, secret)), as both platforms sign a delivery (written here, not imported)."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def shopify_order(index: int, run: str, secret: str) -> Order:
    """A Shopify `orders/create` for a new customer (orders_count 1), signed with the app secret."""
    payload = json.loads((PAYLOADS / "shopify" / "orders_create.json").read_text())
    order_id, customer_id = 7_100_000_000 + index, 8_100_000_000 + index
    email = f"soak-{run}-s{index:06d}@example.com"
    created = _now_iso() + "+00:00"
    payload.update(
        id=order_id,
        admin_graphql_api_id=f"gid://shopify/Order/{order_id}",
        email=email,
        contact_email=email,
        name=f"#S{index}",
        order_number=100_000 + index,
        number=100_000 + index,
        created_at=created,
        updated_at=created,
        processed_at=created,
        token=uuid.uuid4().hex,
        checkout_token=None,
        cart_token=None,
    )
    customer = copy.deepcopy(payload.get("customer") or {})
    customer.update(
        id=customer_id,
        admin_graphql_api_id=f"gid://shopify/Customer/{customer_id}",
        email=email,
        first_name=f"Soak{index}",
        last_name="Shopify",
        orders_count=1,
        created_at=created,
        updated_at=created,
    )
    if isinstance(customer.get("default_address"), dict):
        customer["default_address"] = {**customer["default_address"], "customer_id": customer_id}
    payload["customer"] = customer
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-Hmac-Sha256": sign(body, secret),
        "X-Shopify-API-Version": "2026-04",
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return Order(index, "shopify", email, "/webhooks/shopify", body, headers)


def woocommerce_order(index: int, run: str, secret: str) -> Order:
    """A WooCommerce `order.created` of a guest seen for the first time, signed with the store's secret."""
    payload = json.loads((PAYLOADS / "woocommerce" / "order_created.json").read_text())
    order_id = 9_100_000 + index
    email = f"soak-{run}-w{index:06d}@example.com"
    now = _now_iso()
    payload.update(
        id=order_id,
        number=str(order_id),
        order_key=f"wc_order_{uuid.uuid4().hex[:13]}",
        customer_id=0,
        date_created=now,
        date_created_gmt=now,
        date_modified=now,
        date_modified_gmt=now,
        date_paid=now,
        date_paid_gmt=now,
    )
    payload["billing"] = {**payload["billing"], "email": email, "first_name": f"Soak{index}", "last_name": "Woo"}
    payload["_links"] = {"self": [{"href": f"{WOO_URL}/wp-json/wc/v3/orders/{order_id}"}]}
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": WOO_URL + "/",
        "X-WC-Webhook-Topic": "order.created",
        "X-WC-Webhook-Resource": "order",
        "X-WC-Webhook-Event": "created",
        "X-WC-Webhook-Signature": sign(body, secret),
        "X-WC-Webhook-ID": "12",
        "X-WC-Webhook-Delivery-ID": uuid.uuid4().hex,
    }
    return Order(index, "woocommerce", email, "/webhooks/woocommerce", body, headers)


def build_orders(count: int, run: str, shopify_secret: str, woo_secret: str) -> list[Order]:
    """`count` first orders of distinct new customers, alternately Shopify and WooCommerce."""
    return [
        shopify_order(i, run, shopify_secret) if i % 2 == 0 else woocommerce_order(i, run, woo_secret)
        for i in range(count)
    ]


def deliveries(orders: list[Order], redeliver: float, rng: random.Random) -> list[Delivery]:
    """Every order once, plus exact re-deliveries of `redeliver` of them, in shuffled order."""
    result = [Delivery(order, redelivery=False) for order in orders]
    result += [Delivery(order, redelivery=True) for order in rng.sample(orders, round(len(orders) * redeliver))]
    rng.shuffle(result)
    return result


class Sender:
    """Sends deliveries at `rate` per second from `concurrency` threads, retrying 503s and connection failures."""

    def __init__(
        self,
        port: int,
        items: list[Delivery],
        *,
        rate: float,
        concurrency: int,
        max_attempts: int = 30,
        backoff: float = 0.5,
        max_backoff: float = 5.0,
        timeout: float = 30.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.port = port
        self.items = items
        self.rate = rate
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.log = log
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, Delivery]] = []
        self.sequence = itertools.count()
        self.outstanding = len(items)
        self.first_sends = 0  # deliveries sent at least once: the load's progress
        self.requests = 0
        self.statuses: Counter[str] = Counter()
        self.answers: list[tuple[float, str]] = []  # (time, status or error kind) of every request
        self.unexpected: list[str] = []
        self.stopping = False
        self.started = 0.0
        self.finished = 0.0
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Schedule every delivery at its slot of the rate and start the sending threads."""
        self.started = time.monotonic()
        with self.cond:
            for slot, item in enumerate(self.items):
                heapq.heappush(self.heap, (self.started + slot / self.rate, next(self.sequence), item))
        self.threads = [
            threading.Thread(target=self._client, name=f"soak-load-{i}", daemon=True) for i in range(self.concurrency)
        ]
        for thread in self.threads:
            thread.start()

    def progress(self) -> float:
        """The share of deliveries sent at least once."""
        return self.first_sends / len(self.items) if self.items else 1.0

    def done(self) -> bool:
        """Whether every delivery has its final answer."""
        with self.cond:
            return self.outstanding == 0

    def stop(self) -> None:
        """Ask the threads to stop after their current request."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def join(self, timeout: float) -> None:
        """Wait for the threads to end."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> Delivery | None:
        with self.cond:
            while True:
                if self.stopping or self.outstanding == 0:
                    return None
                if not self.heap:
                    self.cond.wait(0.5)
                    continue
                due = self.heap[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.cond.wait(min(wait, 0.5))
                    continue
                item = heapq.heappop(self.heap)[2]
                item.attempts += 1
                if item.attempts == 1:
                    self.first_sends += 1
                    item.first_sent = time.time()
                if item.order.first_sent is None:
                    item.order.first_sent = time.time()
                return item

    def _send(self, item: Delivery) -> str:
        """One request; its status code as text, or the kind of connection failure."""
        order = item.order
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            connection.request("POST", order.path, body=order.body, headers=order.headers)
            response = connection.getresponse()
            response.read()
            return str(response.status)
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except (http.client.HTTPException, OSError) as exc:
            return type(exc).__name__
        finally:
            connection.close()

    def _client(self) -> None:
        while (item := self._next()) is not None:
            order = item.order
            answer = self._send(item)
            answered = time.time()
            item.answers.append(answer)
            retry = answer == "503" or not answer.isdigit()
            with self.cond:
                self.requests += 1
                self.statuses[answer] += 1
                self.answers.append((answered, answer))
                if answer.isdigit() and 200 <= int(answer) < 300:
                    item.outcome = "ok"
                    if order.first_ok is None or answered < order.first_ok:
                        order.first_ok = answered
                elif retry and item.attempts < self.max_attempts:
                    delay = min(self.max_backoff, self.backoff * 2 ** (item.attempts - 1))
                    heapq.heappush(self.heap, (time.monotonic() + delay, next(self.sequence), item))
                    self.cond.notify()
                    continue
                else:
                    item.outcome = "gave up" if retry else f"http {answer}"
                    if not retry:
                        self.unexpected.append(f"{order.platform} order {order.index}: HTTP {answer}")
                        self.log(
                            f"unexpected answer: {order.platform} order {order.index} "
                            f"({'re-delivery' if item.redelivery else 'delivery'}): HTTP {answer}"
                        )
                    else:
                        self.log(
                            f"gave up on {order.platform} order {order.index} after {item.attempts} "
                            f"attempts: {item.answers[-3:]}"
                        )
                self.outstanding -= 1
                if self.outstanding == 0:
                    self.finished = time.monotonic()
                    self.cond.notify_all()
