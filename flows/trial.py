"""Test sends: a flow's real rendered email, for a sample or a real customer, sent to an address of your own.

A test send touches no customer, run or frequency cap: no run or side effect is recorded, and the email
says it is a test, in its subject (`[TEST] `) and in an `X-Encore-Test` header. It comes from the
store's own sender, as the real one would. A code reads as the preview's placeholder, unless real
codes are asked for (`real_codes`): then the store's platform makes each, titled as a test and, where
the platform restricts codes by address, for the test's address only, never for the customer shown.

`sample_for` says whom a preview or a test send is for: a real customer, a sample file, or Ada.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from encore_retention.connectors import base as connectors
from encore_retention.connectors import email as email_api
from encore_retention.connectors.base import Discount, DiscountRequest
from encore_retention.core.store.models import Customer, Order, Shop, parse_id
from encore_retention.flows import preview as previews
from encore_retention.flows.loader import FlowFile
from encore_retention.flows.steps import store_sender

TEST_PREFIX = "[TEST] "
TEST_HEADER = "X-Encore-Test"
SAMPLE_CUSTOMER: dict[str, Any] = {
    "id": "sample",
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "orders_count": 1,
    "total_spent": "84.00",
    "email_consent": True,
    "birthday": "1990-12-10",
    "tags": ["vip"],
    "order": {
        "id": "1001",
        "number": "1001",
        "total": "84.00",
        "subtotal": "76.00",
        "currency": "EUR",
        "line_items": [
            {"title": "Linen shirt", "quantity": 1, "price": "56.00"},
            {"title": "Canvas tote", "quantity": 1, "price": "20.00"},
        ],
    },
    "checkout": {
        "token": "sample-checkout",
        "email": "ada@example.com",
        "total": "76.00",
        "currency": "EUR",
        "recovery_url": "https://shop.example.com/checkouts/sample/recover",
        "line_items": [{"title": "Linen shirt", "quantity": 1, "price": "56.00"}],
    },
}


@dataclass
class TestSent:
    """One test email sent: the flow step it shows, its subject and Message-ID, and the real codes made for it."""

    step: str
    subject: str
    message_id: str
    codes: list[str] = field(default_factory=list)


@dataclass
class Sample:
    """Whom a preview or a test send is for: the fields its templates read, and the store it is from (detached)."""

    data: dict[str, Any]
    shop: Shop | None


def shop_sample(shop: Shop) -> dict[str, Any]:
    """A store as a preview's `shop`."""
    return {
        "domain": shop.domain,
        "name": shop.name or shop.domain,
        "email": shop.email,
        "currency": shop.currency or "EUR",
        "timezone": shop.timezone,
    }


def customer_sample(customer: Customer, shop: Shop | None, db: Session) -> dict[str, Any]:
    """A preview sample from a real customer: ledger fields, their latest order, their shop."""
    data: dict[str, Any] = {
        "id": customer.platform_id,
        "email": customer.email,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "locale": customer.locale,
        "timezone": customer.timezone,
        "birthday": customer.birthday.isoformat() if customer.birthday else None,
        "email_consent": bool(customer.email_consent),
        "tags": list(customer.tags or []),
        "orders_count": customer.orders_count or 0,
        "total_spent": str(customer.total_spent or 0),
        "first_order_at": customer.first_order_at.isoformat() if customer.first_order_at else None,
        "last_order_at": customer.last_order_at.isoformat() if customer.last_order_at else None,
        "predicted_next_order": (customer.predicted_next_order.isoformat() if customer.predicted_next_order else None),
    }
    latest = db.execute(
        select(Order).where(Order.customer_id == customer.id).order_by(Order.placed_at.desc()).limit(1)
    ).scalar_one_or_none()
    if latest is not None:
        data["order"] = {
            "id": latest.platform_id,
            "number": latest.number,
            "total": str(latest.total or 0),
            "currency": latest.currency,
            "created_at": latest.placed_at.isoformat() if latest.placed_at else None,
            "discount_codes": list(latest.discount_codes or []),
        }
    else:
        data["order"] = SAMPLE_CUSTOMER["order"]
    data["checkout"] = {**SAMPLE_CUSTOMER["checkout"], "email": customer.email}
    if shop is not None:
        data["shop"] = shop_sample(shop)
    return data


def default_shop(db: Session, shop_ids: Collection[int] | None = None) -> Shop | None:
    """The store a sample is shown in: the first active one (of `shop_ids`, when given), else the first."""
    query = select(Shop).order_by(Shop.active.desc(), Shop.id).limit(1)
    if shop_ids is not None:
        query = query.where(Shop.id.in_(list(shop_ids) or [-1]))
    return db.execute(query).scalar_one_or_none()


def sample_for(
    db: Session,
    customer: Customer | None = None,
    *,
    fields: dict[str, Any] | None = None,
    shop_ids: Collection[int] | None = None,
) -> Sample:
    """The sample of a preview or a test send: a real customer's (in their store), else a sample file's
    `fields`, else Ada (`SAMPLE_CUSTOMER`), in the `default_shop` of `shop_ids` (a file's own `shop` fields win).

    The store comes back detached from `db`, ready for a test send after the session is closed.
    """
    if customer is not None:
        shop = db.get(Shop, customer.shop_id)
        data = customer_sample(customer, shop, db)
    else:
        data = dict(SAMPLE_CUSTOMER if fields is None else fields)
        shop = default_shop(db, shop_ids)
        if shop is not None:
            data["shop"] = {**shop_sample(shop), **(data.get("shop") or {})}
    if shop is not None:
        db.expunge(shop)
    return Sample(data, shop)


def find_customer(db: Session, which: str) -> Customer | None:
    """A ledger customer by row id, platform id or email address (the first of several stores' matches)."""
    query = select(Customer).where(
        or_(Customer.platform_id == which.strip(), Customer.email == which.strip().lower())
        if parse_id(which) is None
        else or_(Customer.id == parse_id(which), Customer.platform_id == which.strip())
    )
    return db.execute(query.order_by(Customer.id).limit(1)).scalar_one_or_none()


def real_codes(
    shop: Shop, flow_file: FlowFile, address: str, made: list[Discount]
) -> Callable[[DiscountRequest], Discount]:
    """A maker of real codes for one test send, through the store's connector; each code made is added to `made`.

    A code is titled as a test, keyed apart from any run's (so no run finds it), and restricted to the
    test's address where the platform restricts codes by address (WooCommerce); it is never restricted
    to the customer shown, for whom the test must change nothing. Its value, minimum and expiry are
    the step's.
    """
    batch = uuid.uuid4().hex[:12]

    def make(request: DiscountRequest) -> Discount:
        test = replace(
            request,
            idempotency_key=f"encore-{shop.id}-test-{flow_file.key}-{batch}-{len(made)}",
            customer_id=None,
            customer_email=address,
            title=f"{TEST_PREFIX}{flow_file.flow.name}: test send to {address}"[:255],
        )
        discount = connectors.get_connector(shop).create_discount(test)
        made.append(discount)
        return discount

    return make


def send_tests(
    flow_file: FlowFile,
    to: str,
    data: dict[str, Any],
    step: str | None = None,
    shop: Shop | None = None,
    *,
    codes: bool = False,
) -> list[TestSent]:
    """Send the flow's emails (or the one at `step`: its label, `steps[2]`, or just `2`) to `to`, marked as tests.

    With `codes`, the `create_discount` steps up to the last email sent make real codes in `shop`
    (`real_codes`); else a code is the preview's placeholder. ValueError when `to` isn't one address,
    the flow has no email at that step, or real codes are asked for without a store; PlatformError when
    the store refuses a code (nothing is sent then).
    """
    name, address = email_api.mailbox(to)
    wanted = f"steps[{step.strip()}]" if step is not None and step.strip().isdigit() else step
    made: list[Discount] = []
    if codes:
        if shop is None:
            raise ValueError("real codes need a store to make them in (connect one, or pick a customer of one)")
        rendered = previews.render_flow(flow_file, data)  # the placeholder pass finds the emails wanted
        chosen_steps = [p.step for p in rendered if wanted is None or p.step == wanted]
        if chosen_steps:
            maker = real_codes(shop, flow_file, address, made)
            rendered = previews.render_flow(flow_file, data, codes=maker, until=chosen_steps[-1])
    else:
        rendered = previews.render_flow(flow_file, data)
    chosen = [p for p in rendered if wanted is None or p.step == wanted]
    if not chosen:
        steps = ", ".join(p.step for p in rendered) or "none"
        raise ValueError(f"{flow_file.key} has no email at step {step!r} (its email steps: {steps})")
    sender = (shop.email_from or store_sender(shop.name)) if shop is not None else None
    reply_to = (shop.reply_to or shop.email) if shop is not None else None
    sent = []
    for item in chosen:
        subject = TEST_PREFIX + item.subject
        message_id = email_api.send(
            email_api.OutgoingEmail(
                to=f"{name} <{address}>" if name else address,
                subject=subject,
                html=item.html,
                text=item.text,
                idempotency_key=f"test-{flow_file.key}-{uuid.uuid4().hex}",
                marketing=False,  # no unsubscribe link of a customer's: this goes to whoever tests it
                from_addr=sender,
                reply_to=reply_to,
                headers={TEST_HEADER: f"{flow_file.key} step {item.step}"},
            )
        )
        shown = [code.code for code in made if code.code in item.html or code.code in item.text]
        sent.append(TestSent(item.step, subject, message_id, shown))
    return sent
