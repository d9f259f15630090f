"""`encore export webhooks` and `encore replay`: recorded webhooks through the real pipeline, or rehearsed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import responses
from click.testing import CliRunner
from sqlalchemy import func, select

from encore_retention.cli import main
from encore_retention.connectors.base import get_connector
from encore_retention.core import effects
from encore_retention.core.crypto import encrypt
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.models import Customer, EventRecord, Order, Shop
from encore_retention.flows import engine
from encore_retention.flows.models import FlowEffect, FlowRun
from encore_retention.rehearsal import RehearsalConnector, rehearsal
from tests.conftest import PAYLOADS, WC_URL, drain, payload, shopify_headers, use_database
from tests.test_admin import fake_woocommerce_coupons, post_woo, woo_customer, woo_order


def _post_shopify(client, topic: str, name: str, webhook_id: str) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(payload("shopify", name)).encode()
    answer = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, topic, webhook_id=webhook_id))
    assert answer.status_code == 200


def _count(model) -> int:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_export_then_replay_into_an_empty_store(client, redis, env, tmp_path):
    _post_shopify(client, "customers/create", "customers_create", "wh-c1")
    _post_shopify(client, "orders/create", "orders_create", "wh-o1")
    drain(redis)
    export = tmp_path / "webhooks.jsonl"
    result = CliRunner().invoke(main, ["export", "webhooks", "--out", str(export), "--platform", "shopify"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["topic"] for r in records] == ["customers/create", "orders/create"]
    assert json.loads(records[1]["body"]) == payload("shopify", "orders_create")
    assert all("X-Shopify-Hmac-Sha256" not in r["headers"] for r in records)
    assert records[1]["delivery_id"] == "wh-o1"

    # a fresh store: replaying applies both events through the ledger and the flows
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    migrate(fresh)
    use_database(env, fresh)
    first = CliRunner().invoke(main, ["replay", str(export)])
    assert first.exit_code == 0, first.output
    assert first.output.count("applied") == 2
    assert _count(EventRecord) == 2 and _count(Order) == 1 and _count(Customer) >= 1
    runs = _count(FlowRun)
    # replaying again changes nothing: the ledger knows the events, the runs are keyed
    again = CliRunner().invoke(main, ["replay", str(export)])
    assert again.exit_code == 0 and again.output.count("already processed") == 2
    assert _count(EventRecord) == 2 and _count(FlowRun) == runs


@responses.activate
def test_dry_run_says_what_would_happen_and_changes_nothing(client, redis, env, woo_store, tmp_path):
    fake_woocommerce_coupons()
    post_woo(client, woo_customer(801, "ada@example.com", consent=True), "customer.created")
    post_woo(client, woo_order(9801, 801, "ada@example.com", "42.00"), "order.created")
    drain(redis)
    export = tmp_path / "webhooks.jsonl"
    assert CliRunner().invoke(main, ["export", "webhooks", "--out", str(export)]).exit_code == 0
    # rehearse them on another store, where they are new
    calls = len(responses.calls)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    migrate(fresh)
    use_database(env, fresh)
    report = tmp_path / "report.jsonl"
    result = CliRunner().invoke(main, ["replay", str(export), "--dry-run", "--report", str(report)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    sent = [r for r in lines if r["kind"] == "sent"]
    # the welcome email now; the thank-you after its two-hour wait (the rehearsal follows waits)
    assert {r["flow"] for r in sent} == {"welcome", "thank_you_first_order"}
    assert all(r["customer"] == "ada@example.com" for r in sent)
    codes = [r["detail"]["code"] for r in lines if r["kind"] == "discount"]
    assert len(codes) == 1 and codes[0].startswith("HELLO-")
    assert "would be sent; nothing was sent" in result.output
    # nothing happened for real: no call to the store, no email, no ledger row, no run
    assert len(responses.calls) == calls
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1  # the first store's welcome email only
    assert _count(Customer) == 0 and _count(FlowRun) == 0 and _count(FlowEffect) == 0 and _count(EventRecord) == 0


def test_replay_a_folder_of_payload_files(client, redis, env, woo_store, tmp_path):
    folder = tmp_path / "woocommerce"
    folder.mkdir()
    for name in ("customer_created", "order_created", "coupon_created"):
        (folder / f"{name}.json").write_text((PAYLOADS / "woocommerce" / f"{name}.json").read_text())
    result = CliRunner().invoke(main, ["replay", str(folder), "--dry-run", "--follow", "0m"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "coupon_created" in result.output  # not a topic Encore handles
    assert "2 webhook(s) rehearsed" in result.output
    real = CliRunner().invoke(main, ["replay", str(folder / "order_created.json"), "--shop", WC_URL])
    assert real.exit_code == 0, real.output
    assert _count(Order) == 1


def test_bad_recordings_get_a_clear_error(env, redis, tmp_path: Path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"platform": "shopify", "shop": "x.myshopify.com", "topic": "orders/create", "body": "{}"}\nnot json\n'
    )
    result = CliRunner().invoke(main, ["replay", str(broken)])
    assert result.exit_code != 0 and "broken.jsonl:2: not a recorded webhook" in result.output
    loose = tmp_path / "orders_create.json"
    loose.write_text("{}")
    result = CliRunner().invoke(main, ["replay", str(loose)])
    assert result.exit_code != 0 and "which platform?" in result.output
    unknown = tmp_path / "shopify" / "mystery.json"
    unknown.parent.mkdir()
    unknown.write_text("{}")
    result = CliRunner().invoke(main, ["replay", str(unknown), "--shop", "x.myshopify.com"])
    assert result.exit_code != 0 and "which topic?" in result.output
    for body in ("[1, 2]", '"text"', "null", "7"):  # JSON, but no object: a receiver answers these 400
        not_object = tmp_path / "shopify" / "orders_create.json"
        not_object.write_text(body)
        result = CliRunner().invoke(main, ["replay", str(not_object), "--shop", "x.myshopify.com"])
        assert result.exit_code == 1 and "orders_create.json: body is not a JSON object" in result.output, body
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_dry_run_rehearses_on_a_copy_of_sqlite_or_postgresql(db_url, env, redis, tmp_path):
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from encore_retention.core.store.ledger import get_or_create_shop
    from tests.conftest import SHOP

    use_database(env, db_url)
    body = payload("shopify", "orders_create")
    body["cancelled_at"] = None
    body["customer"]["email_marketing_consent"] = {"state": "subscribed", "opt_in_level": "single_opt_in"}
    from encore_retention.webhooks.shopify import order_customer

    customer_id = order_customer(body).key  # type: ignore[union-attr]
    with session_scope() as session:  # two earlier orders: this one is the third
        shop = get_or_create_shop(session, "shopify", SHOP)
        session.flush()
        buyer = Customer(
            shop_id=shop.id,
            platform_id=customer_id,
            email=body["customer"]["email"],
            email_consent=True,
            orders_count=2,
        )
        session.add(buyer)
        session.flush()
        for number in range(2):
            session.add(
                Order(
                    shop_id=shop.id,
                    platform_id=f"old-{number}",
                    customer_id=buyer.id,
                    total=Decimal("30"),
                    placed_at=datetime.now(UTC) - timedelta(days=10 - number),
                    currency="USD",
                )
            )
    record = {
        "platform": "shopify",
        "shop": SHOP,
        "topic": "orders/create",
        "delivery_id": "wh-9",
        "headers": {"X-Shopify-Topic": "orders/create"},
        "body": json.dumps(body),
    }
    export = tmp_path / "one.jsonl"
    export.write_text(json.dumps(record) + "\n")
    report = tmp_path / "report.jsonl"
    result = CliRunner().invoke(main, ["replay", str(export), "--dry-run", "--report", str(report)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert any(r["flow"] == "loyalty_third_order" and r["kind"] == "sent" for r in lines), lines
    assert _count(Order) == 2 and _count(FlowRun) == 0 and _count(EventRecord) == 0


def test_replay_straight_from_the_archive(client, redis, env, tmp_path):
    _post_shopify(client, "customers/create", "customers_create", "wh-a1")
    _post_shopify(client, "orders/create", "orders_create", "wh-a2")
    drain(redis)
    result = CliRunner().invoke(main, ["replay", "--archive", "--since", "2000-01-01", "--topic", "orders/create"])
    assert result.exit_code == 0, result.output
    assert result.output.count("already processed") == 1 and "archive #" in result.output
    nothing = CliRunner().invoke(main, ["replay", "--archive", "--until", "2000-01-01"])
    assert nothing.exit_code != 0 and "no recorded webhooks found" in nothing.output
    export = tmp_path / "x.jsonl"
    export.write_text("")
    assert CliRunner().invoke(main, ["replay"]).exit_code == 2
    both = CliRunner().invoke(main, ["replay", str(export), "--archive"])
    assert both.exit_code == 2 and "give recorded webhook files, or --archive" in both.output


@responses.activate
def test_dry_run_predicts_the_real_replay_duplicates_included_and_as_new_says_it_is_the_other_thing(
    client, redis, env, woo_store, tmp_path
):
    fake_woocommerce_coupons()
    post_woo(client, woo_customer(802, "grace@example.com", consent=True), "customer.created")
    post_woo(client, woo_order(9802, 802, "grace@example.com", "42.00"), "order.created")
    drain(redis)
    export = tmp_path / "webhooks.jsonl"
    assert CliRunner().invoke(main, ["export", "webhooks", "--out", str(export)]).exit_code == 0
    emails = len(list((tmp_path / "outbox").glob("*.eml")))

    report = tmp_path / "dry.jsonl"
    dry = CliRunner().invoke(main, ["replay", str(export), "--dry-run", "--follow", "0m", "--report", str(report)])
    assert dry.exit_code == 0, dry.output
    said = " ".join(dry.output.split())  # the console wraps long lines
    assert "0 email(s) would be sent; 2 event(s) already processed, which the replay skips" in said
    assert [r["kind"] for r in map(json.loads, report.read_text().splitlines())] == ["already processed"] * 2

    real = CliRunner().invoke(main, ["replay", str(export)])
    assert real.exit_code == 0 and real.output.count("already processed") == 2
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == emails  # as predicted: nothing sent

    new_report = tmp_path / "as-new.jsonl"
    as_new = CliRunner().invoke(
        main, ["replay", str(export), "--dry-run", "--as-new", "--follow", "0m", "--report", str(new_report)]
    )
    assert as_new.exit_code == 0, as_new.output
    said = " ".join(as_new.output.split())
    assert "rehearsed as new (--as-new: the real replay skips those already processed)" in said
    # as if never received: applied to the ledger (the flows' own once-per-customer rules still hold)
    assert "already processed" not in new_report.read_text()
    alone = CliRunner().invoke(main, ["replay", str(export), "--as-new"])
    assert alone.exit_code == 2 and "--as-new goes with --dry-run" in alone.output


def test_a_rehearsal_differs_from_a_real_run_only_by_its_effects(env, tmp_path):
    """Inside a rehearsal the effects are its stand-ins, whoever asks for them; outside, the real ones again."""
    shop = Shop(
        id=1, platform="shopify", domain="encore-test.myshopify.com", access_token_enc=encrypt("t"), active=True
    )
    assert type(get_connector(shop)).__name__ == "ShopifyConnector"
    with rehearsal(tmp_path / "rehearsal") as rehearsed:
        assert isinstance(get_connector(shop), RehearsalConnector)
        engine.schedule(7, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), "flowrun-7")
        assert rehearsed.wakeups == [(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), 7)]
        assert effects.current().forget_in_redis is not None
    assert effects.current() is effects.REAL
    assert type(get_connector(shop)).__name__ == "ShopifyConnector"
