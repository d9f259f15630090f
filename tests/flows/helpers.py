"""Helpers for the flow tests: a fake connector, events, a clock that walks through waits, a local HTTP server."""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from redis import Redis
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from encore_retention.connectors.base import Connector, Discount, DiscountRequest
from encore_retention.core import events as ev
from encore_retention.core.queue import FLOWS, queue
from encore_retention.flows import dates
from tests.conftest import drain

SHOP = "encore-test.myshopify.com"
_ids = itertools.count(1)


class FakeConnector(Connector):
    """Records calls; codes are made once per idempotency key, like the real connectors promise."""

    platform = "shopify"
    discounts: dict[str, Discount] = {}
    requests: list[DiscountRequest] = []
    tags: list[tuple[str, list[str]]] = []
    redeemed: set[str] = set()
    fail_next: list[Exception] = []

    @classmethod
    def reset(cls) -> None:
        cls.discounts, cls.requests, cls.tags, cls.redeemed, cls.fail_next = {}, [], [], set(), []

    def create_discount(self, request: DiscountRequest) -> Discount:
        if self.fail_next:
            raise self.fail_next.pop(0)
        FakeConnector.requests.append(request)
        if request.idempotency_key not in self.discounts:
            code = f"{request.prefix}{len(self.discounts) + 1:06d}"
            self.discounts[request.idempotency_key] = Discount(
                code=code,
                kind=request.kind,
                value=request.value,
                platform_id=str(len(self.discounts) + 1),
                ends_at=request.ends_at,
            )
        return self.discounts[request.idempotency_key]

    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        FakeConnector.tags.append((customer_id, tags))

    def fetch_customer(self, customer_id: str) -> ev.Customer | None:
        return None

    def fetch_orders(self, since=None):  # type: ignore[no-untyped-def]
        return iter(())

    def register_webhooks(self, topics: list[str], address: str) -> list[str]:
        return topics

    def discount_redeemed(self, code: str) -> bool | None:
        return code in self.redeemed

    def account_invite_url(self, customer_id: str | None, email: str | None) -> str | None:
        return f"https://{self.shop.domain}/account/activate/{customer_id or 'guest'}"

    def product_url(self, product_id: str) -> str | None:
        return f"https://{self.shop.domain}/products/p{product_id}"


@contextmanager
def fake_platform(env: Any, at: datetime) -> Iterator[Any]:
    """Every store's platform answered by FakeConnector (reset), and the engine's clock frozen at `at`."""
    from encore_retention.connectors import base as connector_registry

    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(at)
    try:
        yield env
    finally:
        dates.set_now(None)


def customer(cid: str = "1001", **fields: Any) -> ev.Customer:
    """A consenting customer with an email address unless told otherwise."""
    values: dict[str, Any] = {"id": cid, "email": f"c{cid}@example.com", "first_name": "Ada", "email_consent": True}
    values.update(fields)
    return ev.Customer(**values)


def event(
    kind: str,
    at: datetime,
    cust: ev.Customer | None,
    *,
    order: ev.Order | None = None,
    checkout: ev.Checkout | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A canonical event as the queue carries it."""
    return ev.Event(
        id=event_id or f"test-{next(_ids)}",
        type=ev.EventType(kind),
        platform="shopify",
        shop=SHOP,
        topic=kind,
        occurred_at=at,
        received_at=at,
        customer=cust,
        order=order,
        checkout=checkout,
    ).to_dict()


def order(oid: str, at: datetime, total: str = "60.00", codes: list[str] | None = None) -> ev.Order:
    """An order placed at `at`."""
    return ev.Order(
        id=oid,
        number=oid,
        created_at=at,
        updated_at=at,
        total=Decimal(total),
        currency="EUR",
        line_items=[ev.LineItem(title="Tea", quantity=2, price=Decimal("30.00"))],
        discount_codes=codes or [],
        financial_status="paid",
    )


def walk_to(connection: Redis, when: datetime) -> None:
    """Move the clock to `when`, release the scheduled jobs due by then, and run everything queued."""
    dates.set_now(when)
    for name in (FLOWS,):
        registry = ScheduledJobRegistry(name, connection=connection, serializer=JSONSerializer)
        q = queue(name, connection)
        for job_id in registry.get_jobs_to_schedule(int(when.timestamp())):
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            registry.remove(job)
            q.enqueue_job(job)
    drain(connection)


def outbox(tmp_path: Path) -> list[email.message.Message]:
    """The messages in the file outbox, oldest name first."""
    folder = tmp_path / "outbox"
    if not folder.exists():
        return []
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(folder.glob("*.eml"))]


@contextmanager
def hook_server(*answers: tuple[int, dict[str, str]]) -> Iterator[tuple[ThreadingHTTPServer, list[dict[str, Any]]]]:
    """A real HTTP server on 127.0.0.1 recording each POST (path, headers, JSON body); it answers `answers`
    in turn (status, headers), then 204."""
    received: list[dict[str, Any]] = []
    pending = list(answers)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            length = int(self.headers["Content-Length"])
            received.append(
                {"path": self.path, "headers": dict(self.headers), "json": json.loads(self.rfile.read(length))}
            )
            status, headers = pending.pop(0) if pending else (204, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, received
    finally:
        server.shutdown()
        server.server_close()
