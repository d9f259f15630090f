"""The built-in flows fed by real signed Shopify webhooks, through the receiver, the queue and the worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from encore_retention.connectors import base as connector_registry
from encore_retention.core.store import session_scope
from encore_retention.flows import dates
from encore_retention.flows.models import FlowRun
from tests.conftest import drain, payload, shopify_headers
from tests.flows.helpers import FakeConnector, outbox, walk_to

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def shop_flows(client, redis: Any, env: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]

    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(T0)
    yield client
    dates.set_now(None)


def deliver(client: Any, topic: str, name: str, webhook_id: str) -> None:
    data = payload("shopify", name)
    if name.startswith("orders_"):  # the documented example is a cancelled test order: make it a live one
        data.update(cancelled_at=None, cancel_reason=None, financial_status="paid", test=False)
    body = json.dumps(data).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, topic, webhook_id=webhook_id))
    assert response.status_code == 200, response.data


def test_first_order_webhook_delivered_twice_thanks_once_then_checks_in(shop_flows, redis, tmp_path: Path) -> None:
    deliver(shop_flows, "orders/create", "orders_create", "w-1")
    deliver(shop_flows, "orders/create", "orders_create", "w-1")  # Shopify retries with the same id
    drain(redis)
    deliver(shop_flows, "orders/create", "orders_create", "w-2")  # the same order delivered anew
    drain(redis)
    walk_to(redis, T0 + timedelta(hours=2))
    thanks = [m for m in outbox(tmp_path) if m["Subject"] == "Thank you, John!"]
    assert len(thanks) == 1 and thanks[0]["To"] == "john@example.com"
    deliver(shop_flows, "orders/fulfilled", "orders_fulfilled", "w-3")
    drain(redis)
    walk_to(redis, T0 + timedelta(days=3, hours=3))
    subjects = sorted(m["Subject"] for m in outbox(tmp_path))
    assert len(subjects) == 2 and subjects[0].startswith("How is your order #")


def test_customer_created_without_consent_starts_no_welcome(shop_flows, redis, tmp_path: Path) -> None:
    """Shopify's example customer has no marketing consent: the welcome's conditions keep its run from starting."""
    from encore_retention.core.store.models import Customer

    assert "email_marketing_consent" not in payload("shopify", "customers_create")
    deliver(shop_flows, "customers/create", "customers_create", "w-9")
    drain(redis)
    with session_scope() as session:
        (person,) = session.execute(select(Customer)).scalars().all()
        assert (person.email, person.email_consent) == ("bob@biller.com", None)  # applied; consent never given
        assert session.execute(select(FlowRun)).scalars().all() == []
    assert outbox(tmp_path) == []
