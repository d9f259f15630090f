"""The customer ledger against SQLite and PostgreSQL: idempotent, order-independent, privacy-complete."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from encore_retention.core.crypto import encrypt
from encore_retention.core.events import Event
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import apply_event, export_customer, get_or_create_shop
from encore_retention.core.store.models import Customer, EventRecord, Order, Shop, Suppression
from encore_retention.core.unsubscribe import suppress
from encore_retention.webhooks.base import Delivery
from encore_retention.webhooks.shopify import receiver as shopify
from tests.conftest import payload, use_database

SHOP = "ledger.myshopify.com"
CUSTOMER_GID = "gid://shopify/Customer/7001"


@pytest.fixture
def db(db_url, env):
    use_database(env, db_url)
    return db_url


def shopify_event(topic: str, data: dict, webhook_id: str | None = None) -> Event:
    return shopify.parse(
        Delivery(shop=SHOP, topic=topic, delivery_id=webhook_id or str(uuid.uuid4())), data, json.dumps(data).encode()
    )[0]


def order_payload(
    order_id: int,
    *,
    total: str = "50.00",
    created: str = "2026-01-10T10:00:00Z",
    updated: str | None = None,
    cancelled: str | None = None,
    customer_gid: str = CUSTOMER_GID,
    email: str = "ada@example.com",
) -> dict:
    data = copy.deepcopy(payload("shopify", "orders_create"))
    data.update(
        {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "total_price": total,
            "created_at": created,
            "updated_at": updated or created,
            "cancelled_at": cancelled,
            "email": email,
            "contact_email": email,
            "financial_status": "paid",
        }
    )
    data["customer"].update(
        {
            "id": int(customer_gid.rsplit("/", 1)[1]),
            "admin_graphql_api_id": customer_gid,
            "email": email,
            "first_name": "Ada",
            "last_name": "Lovelace",
        }
    )
    return data


def apply(event: Event):
    with session_scope() as session:
        result = apply_event(session, event)
        return result.new


def ledger_row(platform_id: str = "7001") -> Customer:
    with session_scope() as session:
        return session.execute(select(Customer).where(Customer.platform_id == platform_id)).scalar_one()


def count(model) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_the_same_event_twice_changes_the_ledger_once(db):
    event = shopify_event("orders/create", order_payload(1001))
    assert apply(event) is True
    assert apply(event) is False
    row = ledger_row()
    assert (row.orders_count, row.total_spent) == (1, Decimal("50.00"))
    assert (count(Order), count(EventRecord)) == (1, 1)


def test_counts_totals_and_dates_follow_the_orders(db):
    apply(shopify_event("orders/create", order_payload(1, total="10.00", created="2026-01-01T09:00:00Z")))
    apply(shopify_event("orders/create", order_payload(3, total="30.50", created="2026-03-01T09:00:00Z")))
    apply(shopify_event("orders/create", order_payload(2, total="20.25", created="2026-02-01T09:00:00Z")))
    row = ledger_row()
    assert row.orders_count == 3 and row.total_spent == Decimal("60.75")
    assert row.first_order_at == datetime(2026, 1, 1, 9, tzinfo=UTC)
    assert row.last_order_at == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert row.email == "ada@example.com" and row.first_name == "Ada"


def test_an_update_that_overtakes_the_create_is_not_undone(db):
    newer = order_payload(77, total="80.00", updated="2026-01-10T12:00:00Z", cancelled="2026-01-10T12:00:00Z")
    older = order_payload(77, total="100.00", updated="2026-01-10T10:00:00Z")
    apply(shopify_event("orders/cancelled", newer))
    apply(shopify_event("orders/create", older))
    with session_scope() as session:
        order = session.execute(select(Order)).scalar_one()
        assert order.total == Decimal("80.00") and order.cancelled_at is not None
    row = ledger_row()
    assert row.orders_count == 0 and row.total_spent == Decimal("0")  # a cancelled order doesn't count
    # In the natural order the result is the same.
    apply(shopify_event("orders/create", order_payload(78, total="100.00", updated="2026-01-10T10:00:00Z")))
    apply(
        shopify_event(
            "orders/cancelled",
            order_payload(78, total="80.00", updated="2026-01-10T12:00:00Z", cancelled="2026-01-10T12:00:00Z"),
        )
    )
    assert ledger_row().orders_count == 0


def test_a_restored_order_counts_again(db):
    apply(
        shopify_event(
            "orders/cancelled", order_payload(5, updated="2026-01-10T12:00:00Z", cancelled="2026-01-10T12:00:00Z")
        )
    )
    apply(shopify_event("orders/updated", order_payload(5, updated="2026-01-11T12:00:00Z")))
    assert ledger_row().orders_count == 1


def test_platform_purchasing_summary_is_a_floor(db):
    apply(shopify_event("orders/create", order_payload(1, total="10.00")))
    summary = {
        "customerId": CUSTOMER_GID,
        "numberOfOrders": 5,
        "amountSpent": {"amount": "500.00", "currencyCode": "USD"},
        "lastOrderId": "gid://shopify/Order/1",
        "occurredAt": "2026-01-11T00:00:00.000Z",
    }
    apply(shopify_event("customers/purchasing_summary", summary))
    row = ledger_row()
    assert (row.orders_count, row.total_spent) == (5, Decimal("500.00"))
    stale = summary | {"numberOfOrders": 2, "occurredAt": "2026-01-01T00:00:00.000Z"}
    apply(shopify_event("customers/purchasing_summary", stale))
    assert ledger_row().orders_count == 5


def test_consent_follows_its_own_timestamp(db):
    consent = payload("shopify", "customers_email_marketing_consent_update")
    consent["customer_id"] = 7001
    subscribed = consent | {
        "email_marketing_consent": {
            "state": "subscribed",
            "opt_in_level": "single_opt_in",
            "consent_updated_at": "2026-02-01T00:00:00Z",
        }
    }
    unsubscribed = consent | {
        "email_marketing_consent": {
            "state": "unsubscribed",
            "opt_in_level": None,
            "consent_updated_at": "2026-03-01T00:00:00Z",
        }
    }
    apply(shopify_event("customers/email_marketing_consent_update", unsubscribed))
    apply(shopify_event("customers/email_marketing_consent_update", subscribed))  # older, arrives late
    assert ledger_row().email_consent is False


def test_older_profile_does_not_overwrite_newer(db):
    data = payload("shopify", "customers_create")
    data["admin_graphql_api_id"] = CUSTOMER_GID
    apply(shopify_event("customers/update", data | {"email": "new@example.com", "updated_at": "2026-05-01T00:00:00Z"}))
    apply(
        shopify_event(
            "customers/update",
            data | {"email": "old@example.com", "updated_at": "2026-04-01T00:00:00Z", "phone": "+15555550100"},
        )
    )
    row = ledger_row()
    assert row.email == "new@example.com"
    assert row.phone == "+15555550100"  # blanks are still filled from an older version


def test_customer_redact_deletes_their_personal_data_only(db):
    apply(shopify_event("orders/create", order_payload(1)))
    apply(
        shopify_event(
            "orders/create", order_payload(2, customer_gid="gid://shopify/Customer/8002", email="bob@example.com")
        )
    )
    redact = {
        "shop_id": 1,
        "shop_domain": SHOP,
        "customer": {"id": 7001, "email": "ada@example.com", "phone": None},
        "orders_to_redact": [1],
    }
    apply(shopify_event("customers/redact", redact))
    with session_scope() as session:
        customers = session.execute(select(Customer.platform_id)).scalars().all()
        assert customers == ["8002"]
        assert session.execute(select(Order.platform_id)).scalars().all() == ["2"]
        stored = session.execute(select(EventRecord)).scalars().all()
        assert all("ada@example.com" not in json.dumps(r.payload) for r in stored)
        assert any(r.type == "customer.redact" and r.payload is None for r in stored)


def test_shop_redact_removes_the_shop_and_everything_in_it(db):
    apply(shopify_event("orders/create", order_payload(1)))
    with session_scope() as session:
        shop = session.execute(select(Shop)).scalar_one()
        suppress(session, shop.id, "ada@example.com")
    apply(shopify_event("shop/redact", {"shop_id": 1, "shop_domain": SHOP}))
    assert (count(Shop), count(Customer), count(Order), count(Suppression)) == (0, 0, 0, 0)
    assert count(EventRecord) == 1  # the redact event itself, which holds no personal data


def test_app_uninstalled_drops_the_token_and_deactivates(db):
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        shop.access_token_enc = encrypt("shpat_secret")
    apply(shopify_event("app/uninstalled", payload("shopify", "app_uninstalled")))
    with session_scope() as session:
        shop = session.execute(select(Shop)).scalar_one()
        assert shop.access_token_enc is None and shop.active is False and shop.uninstalled_at is not None


def test_export_holds_everything_about_the_customer(db):
    apply(shopify_event("orders/create", order_payload(1)))
    with session_scope() as session:
        shop = session.execute(select(Shop)).scalar_one()
        data = export_customer(session, shop, "7001")
    assert data["customer"]["email"] == "ada@example.com"
    assert [o["platform_id"] for o in data["orders"]] == ["1"]
    assert data["events"][0]["type"] == "order.placed"


def test_concurrent_events_for_a_new_customer_make_one_row(db):
    """Two workers applying two orders of a customer seen for the first time."""
    events = [shopify_event("orders/create", order_payload(i, total="10.00")) for i in range(1, 9)]
    errors: list[BaseException] = []

    def work(event: Event) -> None:
        try:
            apply(event)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,)) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert count(Customer) == 1
    row = ledger_row()
    assert (row.orders_count, row.total_spent) == (8, Decimal("80.00"))


def test_redaction_also_removes_the_archived_webhook_bodies(db):
    from encore_retention.core import archive

    ada = shopify_event("orders/create", order_payload(1))
    bob = shopify_event(
        "orders/create", order_payload(2, customer_gid="gid://shopify/Customer/8002", email="bob@example.com")
    )
    for event in (ada, bob):
        apply(event)
        archive.record_delivery(
            "shopify",
            SHOP,
            "orders/create",
            event.id,
            [("X-Shopify-Topic", "orders/create")],
            json.dumps(event.raw).encode(),
            "queued",
            [event.id],
        )
    redact = {
        "shop_id": 1,
        "shop_domain": SHOP,
        "customer": {"id": 7001, "email": "ada@example.com", "phone": None},
        "orders_to_redact": [1],
    }
    apply(shopify_event("customers/redact", redact))
    kept = list(archive.deliveries())
    assert [d.event_ids for d in kept] == [[bob.id]]
    assert all("ada@example.com" not in d.body for d in kept)
    apply(shopify_event("shop/redact", {"shop_id": 1, "shop_domain": SHOP}))
    assert list(archive.deliveries()) == []
