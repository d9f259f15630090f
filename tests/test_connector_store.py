"""The connectors' tables on SQLite and PostgreSQL: idempotent inserts and privacy cascades."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select

from encore_retention.connectors import codes
from encore_retention.connectors.base import Discount
from encore_retention.connectors.models import DataExport, DiscountCode, SyncCursor
from encore_retention.connectors.privacy import record_export
from encore_retention.core import events as ev
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop, redact_customer, redact_shop, upsert_customer
from encore_retention.core.store.models import Shop, utcnow
from tests.conftest import use_database


def _count(model) -> int:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def _data_request(customer_id: str, request_id: int) -> ev.Event:
    return ev.Event(
        id=f"shopify-dr-{request_id}",
        type=ev.EventType.CUSTOMER_DATA_REQUEST,
        platform="shopify",
        shop="encore-test.myshopify.com",
        topic="customers/data_request",
        occurred_at=utcnow(),
        customer=ev.Customer(id=customer_id, email="ada@example.com"),
        data={"data_request_id": str(request_id), "orders_requested": []},
    )


def test_discount_codes_are_recorded_once_per_key(env, db_url):
    use_database(env, db_url)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", "encore-test.myshopify.com")
    made = Discount(
        code="BDAY-AAAA-BBBB",
        kind="percent",
        value=Decimal("15"),
        platform_id="gid://x/1",
        ends_at=datetime(2026, 12, 31, tzinfo=UTC),
    )
    codes.remember(shop, "k1", made)
    codes.remember(shop, "k1", Discount(code="OTHER", kind="fixed", value=Decimal("5")))
    found = codes.remembered(shop, "k1")
    assert found is not None and found.code == "BDAY-AAAA-BBBB" and found.value == Decimal("15.00")
    assert found.ends_at == datetime(2026, 12, 31, tzinfo=UTC)
    assert codes.remembered(shop, "k2") is None and _count(DiscountCode) == 1


def test_exports_and_connector_rows_go_with_the_customer_and_the_shop(env, db_url):
    use_database(env, db_url)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", "encore-test.myshopify.com")
        upsert_customer(session, shop, ev.Customer(id="191167", email="ada@example.com"), utcnow())
        first = record_export(session, shop, _data_request("191167", 1))
        again = record_export(session, shop, _data_request("191167", 1))
        session.add(SyncCursor(shop_id=shop.id, resource="orders", cursor=utcnow()))
        shop_id = shop.id
    assert first == again and _count(DataExport) == 1
    codes.remember(shop, "k", Discount(code="C", kind="percent", value=Decimal("10")))
    with session_scope() as session:
        shop = session.get(Shop, shop_id)
        redact_customer(session, shop, _data_request("191167", 1))
    assert _count(DataExport) == 0 and _count(DiscountCode) == 1
    with session_scope() as session:
        redact_shop(session, session.get(Shop, shop_id))
    assert _count(DiscountCode) == 0 and _count(SyncCursor) == 0 and _count(Shop) == 0
