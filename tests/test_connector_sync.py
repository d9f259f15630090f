"""WooCommerce reconciliation (missed webhooks reach the flows once), `encore import customers`, and
the privacy export of `customers/data_request`."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import responses
from click.testing import CliRunner
from sqlalchemy import func, select

from encore_retention.cli import main
from encore_retention.connectors.cron import CRON_JOBS, reconcile_shop, reconcile_woocommerce
from encore_retention.connectors.models import DataExport, SyncCursor
from encore_retention.core import archive
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, EventRecord, Order, Shop, utcnow
from tests.conftest import WC_URL, drain, payload, shopify_headers, woo_headers

API = f"{WC_URL}/wp-json/wc/v3"


def _gmt(moment) -> str:  # type: ignore[no-untyped-def]
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _order(order_id: int, modified) -> dict:  # type: ignore[no-untyped-def]
    body = copy.deepcopy(payload("woocommerce", "order_created"))
    body.update(id=order_id, date_modified_gmt=_gmt(modified), date_created_gmt=_gmt(modified - timedelta(minutes=1)))
    return body


def _customer(customer_id: int, modified) -> dict:  # type: ignore[no-untyped-def]
    body = copy.deepcopy(payload("woocommerce", "customer_created"))
    body.update(id=customer_id, date_modified_gmt=_gmt(modified), email=f"c{customer_id}@example.com")
    return body


def _shop_id(platform: str = "woocommerce") -> int:
    with session_scope() as session:
        return session.execute(select(Shop.id).where(Shop.platform == platform)).scalar_one()


def _count(model) -> int:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def _deliver_woo(client, topic: str, body: dict):  # type: ignore[no-untyped-def]
    raw = json.dumps(body).encode()
    return client.post("/webhooks/woocommerce", data=raw, headers=woo_headers(raw, topic))


def test_reconciliation_queues_only_what_no_webhook_brought_and_only_once(client, redis, woo_store):
    now = utcnow()
    seen = _order(727, now + timedelta(seconds=10))
    missed = _order(728, now + timedelta(seconds=20))
    customer = _customer(25, now + timedelta(seconds=30))
    assert _deliver_woo(client, "order.created", seen).get_json()["status"] == "queued"
    drain(redis)
    assert _count(EventRecord) == 1

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{API}/orders", json=[seen, missed], headers={"X-WP-TotalPages": "1"})
        mock.get(f"{API}/customers", json=[customer], headers={"X-WP-TotalPages": "1"})
        counts = reconcile_shop(_shop_id(), connection=redis)
        assert counts == {"orders": 1, "customers": 1}
        drain(redis)
        with session_scope() as session:
            assert session.execute(select(Order.platform_id).order_by(Order.platform_id)).scalars().all() == [
                "727",
                "728",
            ]
            assert (
                session.execute(select(Customer.email).where(Customer.platform_id == "25")).scalar_one()
                == "c25@example.com"
            )
        assert _count(EventRecord) == 3
        # the next run finds the same changes: nothing more reaches the flows
        assert reconcile_shop(_shop_id(), connection=redis) == {"orders": 0, "customers": 0}
        drain(redis)
        assert _count(EventRecord) == 3
        orders_queries = [parse_qs(urlsplit(c.request.url).query) for c in mock.calls if "/orders" in c.request.url]
        assert orders_queries[0]["dates_are_gmt"] == ["true"]
        # the second run reads from the newest change seen, less a few minutes for clock skew
        second_since = (now + timedelta(seconds=20) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
        assert orders_queries[-1]["modified_after"] == [second_since]

    with session_scope() as session:
        cursor = session.get(SyncCursor, (_shop_id(), "orders"))
        assert cursor.cursor.replace(microsecond=0) == (now + timedelta(seconds=20)).replace(microsecond=0)
    # the webhook that was missed arrives late after all: a duplicate, not a second event
    assert _deliver_woo(client, "order.created", missed).get_json()["status"] == "duplicate"


def test_reconciliation_of_a_failing_store_records_the_error_and_carries_on(redis, woo_store):
    with responses.RequestsMock() as mock:
        mock.get(
            f"{API}/orders",
            status=401,
            json={
                "code": "woocommerce_rest_cannot_view",
                "message": "Sorry, you cannot list resources.",
                "data": {"status": 401},
            },
        )
        results = reconcile_woocommerce()
    assert "Sorry, you cannot list resources." in results[str(_shop_id())]["error"]
    with session_scope() as session:
        cursor = session.get(SyncCursor, (_shop_id(), "orders"))
        assert cursor.cursor is None and "cannot list resources" in cursor.last_error


def test_cron_declares_the_reconciliation():
    assert CRON_JOBS[0]["func"] is reconcile_woocommerce and CRON_JOBS[0]["interval"] == 900


def test_import_customers_fills_the_ledger_without_events(redis, woo_store):
    old = utcnow() - timedelta(days=900)
    with responses.RequestsMock() as mock:
        mock.get(
            f"{API}/customers",
            json=[_customer(25, old), _customer(26, old)],
            headers={"X-WP-Total": "2", "X-WP-TotalPages": "1"},
        )
        order = _order(727, old)
        order["customer_id"] = 25
        mock.get(f"{API}/orders", json=[order], headers={"X-WP-Total": "1", "X-WP-TotalPages": "1"})
        result = CliRunner().invoke(main, ["import", "customers", "woo.example.com"])
        counted = [c.request.url for c in mock.calls if "per_page=1&" in c.request.url + "&"]
    assert result.exit_code == 0, result.output
    assert len(counted) == 2  # the progress bars' totals (X-WP-Total) for customers and orders
    assert "imported 2 customers and 1 orders from woo.example.com" in result.output
    with session_scope() as session:
        bought = session.execute(select(Customer).where(Customer.platform_id == "25")).scalar_one()
        assert bought.orders_count == 1 and str(bought.total_spent) == order["total"]
    assert _count(EventRecord) == 0 and redis.keys("rq:job:*") == []  # no flow starts from a backfill


def test_import_of_an_unknown_store_says_so(env):
    result = CliRunner().invoke(main, ["import", "customers", "nowhere.example.com"])
    assert result.exit_code == 2 and "no store 'nowhere.example.com'" in result.output


# ---- customers/data_request -------------------------------------------------------------------------


def _deliver_shopify(client, topic: str, body: dict):  # type: ignore[no-untyped-def]
    raw = json.dumps(body).encode()
    return client.post("/webhooks/shopify", data=raw, headers=shopify_headers(raw, topic))


def test_data_request_produces_an_export_that_redact_removes(client, redis):
    created = payload("shopify", "customers_create")
    created.update(id=191167, admin_graphql_api_id="gid://shopify/Customer/191167", email="john@example.com")
    order = payload("shopify", "orders_create")
    order["customer"] = dict(
        order.get("customer") or {}, id=191167, admin_graphql_api_id="gid://shopify/Customer/191167"
    )
    assert _deliver_shopify(client, "customers/create", created).status_code == 200
    assert _deliver_shopify(client, "orders/create", order).status_code == 200
    request = payload("shopify", "customers_data_request")
    request["shop_domain"] = "encore-test.myshopify.com"
    assert _deliver_shopify(client, "customers/data_request", request).status_code == 200
    drain(redis)

    with session_scope() as session:
        export = session.execute(select(DataExport)).scalar_one()
        data = export.data
        export_id = export.id
    assert export.request_id == "9999" and export.customer_id is not None
    assert data["customer"]["email"] == "john@example.com" and data["customer"]["platform_id"] == "191167"
    assert len(data["orders"]) == 1 and data["orders_requested"] == ["299938", "280263", "220458"]
    assert {e["type"] for e in data["events"]} >= {"customer.created", "order.placed"}

    shown = CliRunner().invoke(main, ["privacy", "show", str(export_id)])
    assert shown.exit_code == 0 and json.loads(shown.output)["customer"]["email"] == "john@example.com"
    listed = CliRunner().invoke(main, ["privacy", "exports"])
    assert "john@example.com" in listed.output

    # the same request delivered again is one export
    assert _deliver_shopify(client, "customers/data_request", request).status_code == 200
    drain(redis)
    assert _count(DataExport) == 1

    redact = payload("shopify", "customers_redact")
    redact["shop_domain"] = "encore-test.myshopify.com"
    assert _deliver_shopify(client, "customers/redact", redact).status_code == 200
    drain(redis)
    assert _count(DataExport) == 0 and _count(Customer) == 0


def test_data_request_for_an_unknown_customer_records_an_empty_export(client, redis):
    request = payload("shopify", "customers_data_request")
    assert _deliver_shopify(client, "customers/data_request", request).status_code == 200
    drain(redis)
    with session_scope() as session:
        export = session.execute(select(DataExport)).scalar_one()
        assert export.customer_id is None and export.data["customer"] is None


def test_shop_redact_removes_the_connector_rows(client, redis, env):
    from encore_retention.connectors.models import DiscountCode, OAuthState

    with session_scope() as session:
        shop = Shop(
            platform="shopify", domain="encore-test.myshopify.com", active=True, settings={}, created_at=utcnow()
        )
        session.add(shop)
        session.flush()
        session.add(
            DiscountCode(
                shop_id=shop.id, idempotency_key="k", code="C-1", kind="percent", value=10, created_at=utcnow()
            )
        )
        session.add(SyncCursor(shop_id=shop.id, resource="orders", cursor=utcnow()))
        session.add(OAuthState(nonce="n", shop_domain=shop.domain, created_at=utcnow()))
    assert (
        _deliver_shopify(
            client, "shop/redact", {"shop_id": 954889, "shop_domain": "encore-test.myshopify.com"}
        ).status_code
        == 200
    )
    drain(redis)
    assert _count(DiscountCode) == 0 and _count(SyncCursor) == 0 and _count(Shop) == 0


def test_import_reads_odd_page_counts_from_the_store_as_unknown(redis, woo_store):
    """A store (or a plug-in in front of it) sending counts that are not counts: the import still works."""
    old = utcnow() - timedelta(days=900)
    with responses.RequestsMock() as mock:
        mock.get(
            f"{API}/customers",
            json=[_customer(25, old)],
            headers={"X-WP-Total": "²", "X-WP-TotalPages": "99999999999999999999999"},
        )
        mock.get(f"{API}/orders", json=[], headers={"X-WP-Total": "-1", "X-WP-TotalPages": "1e3"})
        result = CliRunner().invoke(main, ["import", "customers", "woo.example.com"])
    assert result.exit_code == 0, result.output
    assert "imported 1 customers and 0 orders from woo.example.com" in result.output


def test_a_store_named_by_a_number_that_is_no_id_is_a_clear_error(redis, woo_store):
    for store in ("²", "99999999999999999999999"):
        result = CliRunner().invoke(main, ["import", "customers", store])
        assert result.exit_code == 2, result.output  # click's usage error, not a traceback (exit code 1)
        assert f"Error: Invalid value for STORE: no store {store!r}" in result.output, result.output


def test_a_payload_the_parser_refuses_is_recorded_and_the_rest_of_the_store_goes_on(redis, woo_store):
    """One order the receiver's parser can't take must not stop a store's reconciliation for good."""
    now = utcnow()
    bad = _order(801, now + timedelta(seconds=10))
    bad["total"] = "1e400"  # no amount a store can hold
    good = _order(802, now + timedelta(seconds=20))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{API}/orders", json=[bad, "not an order", good], headers={"X-WP-TotalPages": "1"})
        mock.get(f"{API}/customers", json=[], headers={"X-WP-TotalPages": "1"})
        counts = reconcile_shop(_shop_id(), connection=redis)
    assert counts == {"orders": 1, "orders_refused": 2, "customers": 0}
    drain(redis)
    with session_scope() as session:
        assert session.execute(select(Order.platform_id)).scalars().all() == ["802"]
        cursor = session.get(SyncCursor, (_shop_id(), "orders"))
        assert cursor.last_error is None
        assert cursor.cursor.replace(microsecond=0) == (now + timedelta(seconds=20)).replace(microsecond=0)
    refused = [r for r in archive.rejections() if "(reconciliation)" in r["detail"]]
    assert len(refused) == 2 and {r["delivery_id"] for r in refused} == {"reconcile-801", None}
