"""Test sends: a flow's real rendered email, for a sample or a real customer, sent to an address of your own.

A test send touches no customer, run or frequency cap: nothing is recorded, no code is made (a code
reads as the preview's placeholder), and the email says it is a test, in its subject (`[TEST] `) and
in an `X-Encore-Test` header. It comes from the store's own sender, as the real one would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from encore_retention.connectors import email as email_api
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
    """One test email sent: the flow step it shows, its subject and Message-ID."""

    step: str
    subject: str
    message_id: str


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


def find_customer(db: Session, which: str) -> Customer | None:
    """A ledger customer by row id, platform id or email address (the first of several stores' matches)."""
    query = select(Customer).where(
        or_(Customer.platform_id == which.strip(), Customer.email == which.strip().lower())
        if parse_id(which) is None
        else or_(Customer.id == parse_id(which), Customer.platform_id == which.strip())
    )
    return db.execute(query.order_by(Customer.id).limit(1)).scalar_one_or_none()


def send_tests(
    flow_file: FlowFile, to: str, data: dict[str, Any], step: str | None = None, shop: Shop | None = None
) -> list[TestSent]:
    """Send the flow's emails (or the one at `step`: its label, `steps[2]`, or just `2`) to `to`, marked as tests.

    ValueError when `to` isn't one address or the flow has no email at that step.
    """
    name, address = email_api.mailbox(to)
    rendered = previews.render_flow(flow_file, data)
    wanted = f"steps[{step.strip()}]" if step is not None and step.strip().isdigit() else step
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
        sent.append(TestSent(item.step, subject, message_id))
    return sent
