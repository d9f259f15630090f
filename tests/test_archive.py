"""The webhook archive: accepted deliveries kept without their signatures, then purged after the retention."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from encore_retention.core import archive
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from tests.conftest import SHOP, drain, payload, shopify_headers


def test_accepted_webhooks_are_archived_without_signatures_and_purged(client, redis, env):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create", webhook_id="wh-1")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200  # a retry
    assert list(archive.deliveries()) == []  # the worker archives a delivery as it normalises it
    drain(redis)
    rows = list(archive.deliveries())
    assert [r.outcome for r in rows] == ["queued"]  # the duplicate was never queued, so is not archived twice
    row = rows[0]
    assert row.body.encode() == body and row.topic == "orders/create" and row.shop == SHOP
    assert row.delivery_id == "wh-1" and row.event_ids
    assert "X-Shopify-Hmac-Sha256" not in row.headers and row.headers["X-Shopify-Topic"] == "orders/create"
    assert archive.purge(now=datetime.now(UTC) + timedelta(days=29)) == 0
    env.setenv("WEBHOOK_RETENTION_DAYS", "7")
    reset_settings()
    assert archive.purge(now=datetime.now(UTC) + timedelta(days=8)) == 1
    assert list(archive.deliveries()) == []

    from encore_retention.cron import declared_jobs

    assert any(job["func"] is archive.purge for job in declared_jobs())


@pytest.mark.parametrize("orders", [3, 400])  # a few needles filter in SQL; hundreds are read once and checked here
def test_a_redaction_finds_the_archived_deliveries_naming_the_person_among_many_ids(db_url, env, orders):
    from encore_retention.connectors.privacy import archived_names
    from encore_retention.core.store.ledger import Person
    from tests.conftest import use_database

    use_database(env, db_url)
    shop = "many.myshopify.com"
    person = Person(platform="shopify", shop=shop, emails={"zed@example.com"}, platform_ids={"9100"})
    person.order_ids = {str(7000 + n) for n in range(orders)}
    bodies = {
        "names-an-order": {"id": 7000 + orders - 1, "email": "someone@example.com"},
        "names-the-address": {"id": 1, "email": "Zed@Example.com"},
        "a-longer-number": {"id": 70000, "note": "order 70001 is not theirs"},
        "another-shop-order": {"id": 2, "customer": {"id": 9101, "email": "other@example.com"}},
    }
    for name, body in bodies.items():
        archive.record_delivery("shopify", shop, "orders/create", name, [], json.dumps(body).encode(), "queued", [name])
    archive.record_delivery(
        "shopify",
        "other.myshopify.com",
        "orders/create",
        "elsewhere",
        [],
        json.dumps({"id": 7000, "email": "zed@example.com"}).encode(),
        "queued",
        ["elsewhere"],
    )
    assert (len(person.needles()) > archive.NEEDLES_PER_QUERY) == (orders > 10)
    with session_scope() as session:
        removed = archive.forget(session, "shopify", shop, person.needles(), lambda row: archived_names(person, row))
    assert removed == 2
    with session_scope() as session:
        left = set(session.execute(select(archive.WebhookDelivery.delivery_id)).scalars())
    assert left == {"a-longer-number", "another-shop-order", "elsewhere"}
