"""Test sends: the real rendered email to your own address, marked as a test, touching no customer or run."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest
import responses
from click.testing import CliRunner
from sqlalchemy import func, select

from encore_retention.cli import main
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Customer
from encore_retention.flows import trial
from encore_retention.flows.models import FlowEffect, FlowRun
from tests.conftest import SHOP, WC_URL, fake_woocommerce_coupons, sign_in
from tests.test_admin import _csrf
from tests.test_shopify import GRAPHQL, TOKEN, FakeAdmin, _created, _data


def _outbox(tmp_path: Path) -> list[email.message.Message]:
    folder = tmp_path / "outbox"
    return (
        [  # oldest first: a file is named by its message's key, which says nothing of when it was written
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted(folder.glob("*.eml"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        ]
        if folder.exists()
        else []
    )


def _store_with_grace() -> None:
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", "woo.example.com")
        shop.name, shop.email, shop.reply_to = "Woo & Co", "team@woo.example.com", "hello@woo.example.com"
        session.flush()
        session.add(Customer(shop_id=shop.id, platform_id="77", email="grace@example.com", first_name="Grace"))


def test_test_send_mails_every_email_of_a_flow_marked_as_a_test_and_records_nothing(env, redis, tmp_path):
    _store_with_grace()
    result = CliRunner().invoke(
        main, ["flows", "test-send", "win_back", "--to", "me@example.org", "--customer", "grace@example.com"]
    )
    assert result.exit_code == 0, result.output
    sent = _outbox(tmp_path)
    assert len(sent) == 2 and all(m["To"] == "me@example.org" for m in sent)  # the email and its reminder
    assert all(m["Subject"].startswith("[TEST] ") and m["X-Encore-Test"].startswith("win_back step ") for m in sent)
    assert sent[0]["From"] == "Woo & Co <no-reply@localhost>" and sent[0]["Reply-To"] == "hello@woo.example.com"
    assert "Grace" in sent[0].get_body(("html",)).get_content()
    assert "List-Unsubscribe" not in sent[0]  # no customer's unsubscribe link in a test
    with session_scope() as session:
        assert session.execute(select(func.count()).select_from(FlowRun)).scalar() == 0
        assert session.execute(select(func.count()).select_from(FlowEffect)).scalar() == 0


def test_test_send_of_one_step_for_a_sample_file(env, redis, tmp_path):
    sample = tmp_path / "ada.json"
    sample.write_text(json.dumps({"first_name": "Ada", "email": "ada@example.com", "orders_count": 3}))
    result = CliRunner().invoke(
        main, ["flows", "test-send", "loyalty_third_order", "--to", "Me <me@example.org>", "--customer", str(sample)]
    )
    assert result.exit_code == 0, result.output
    [sent] = _outbox(tmp_path)
    assert sent["To"] == "Me <me@example.org>" and sent["Subject"].startswith("[TEST] Three orders!")
    wrong = CliRunner().invoke(main, ["flows", "test-send", "welcome", "--to", "me@example.org", "--step", "9"])
    assert wrong.exit_code == 2 and "welcome has no email at step '9'" in wrong.output
    for bad in ("not an address", "a@example.com, b@example.com"):
        refused = CliRunner().invoke(main, ["flows", "test-send", "welcome", "--to", bad])
        assert refused.exit_code == 2 and "not one email address" in refused.output
    assert len(_outbox(tmp_path)) == 1


def test_the_preview_page_sends_a_test_with_the_session_and_its_form_token(client, redis, tmp_path):
    sign_in(client)
    form = {"flow": "welcome", "step": "steps[1]", "to": "me@example.org"}
    assert client.post("/admin/preview/test-send", data=form).status_code == 400  # no form token
    answer = client.post("/admin/preview/test-send", data={**form, "csrf": _csrf(client)})
    assert answer.status_code == 302
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "test sent to me@example.org: [TEST] " in page, page[page.find('role="status"') :][:300]
    [sent] = _outbox(tmp_path)
    assert sent["To"] == "me@example.org" and sent["X-Encore-Test"] == "welcome step steps[1]"
    assert "test sent" not in client.get(answer.headers["Location"]).get_data(as_text=True)  # shown once


# ---- real codes: made by the store's platform, as tests, for the test's address --------------------

TWO_CODES = """
name: Two codes
trigger: {event: order.placed}
steps:
  - create_discount: {as: first, percent: 10, prefix: ONE}
  - send_email: {template: check_in.html, subject: "First {{ first.code }}"}
  - create_discount: {as: second, percent: 20, prefix: TWO}
  - send_email: {template: check_in.html, subject: "Second {{ second.code }}"}
"""


def _grace_in(platform: str, domain: str) -> None:
    with session_scope() as session:
        shop = get_or_create_shop(session, platform, domain)
        session.flush()
        session.add(
            Customer(shop_id=shop.id, platform_id="207119551", email="grace@example.com", first_name="Grace", tags=[])
        )


def _nothing_recorded() -> None:
    with session_scope() as session:
        assert session.execute(select(func.count()).select_from(FlowRun)).scalar() == 0
        assert session.execute(select(func.count()).select_from(FlowEffect)).scalar() == 0
        assert session.execute(select(Customer.tags)).scalar() == []  # the flow's tag step touched nobody


@responses.activate
def test_real_codes_are_made_by_woocommerce_as_tests_for_the_testers_address(env, redis, woo_store, tmp_path):
    made = fake_woocommerce_coupons()
    _grace_in("woocommerce", "woo.example.com")
    command = ["flows", "test-send", "loyalty_third_order", "--to", "me@example.org", "--customer", "grace@example.com"]
    placeholder = CliRunner().invoke(main, command)
    assert placeholder.exit_code == 0, placeholder.output
    assert made == [] and "LOYALPREVIEW" in _outbox(tmp_path)[0].get_body(("html",)).get_content()

    result = CliRunner().invoke(main, [*command, "--real-codes"])
    assert result.exit_code == 0, result.output
    [coupon] = made
    code = coupon["code"].upper()
    assert coupon["email_restrictions"] == ["me@example.org"]  # the tester's, not Grace's
    assert coupon["amount"] == "10.00" and coupon["usage_limit"] == 1
    posted = json.loads(responses.calls[-1].request.body)
    assert posted["description"] == "[TEST] Thank loyal customers on their third order: test send to me@example.org"
    assert code.startswith("LOYAL-") and f"(real code {code}, a test)" in result.output
    sent = _outbox(tmp_path)[-1]
    assert sent["Subject"].startswith("[TEST] ") and code in sent.get_body(("html",)).get_content()
    _nothing_recorded()


@responses.activate
def test_a_refused_test_code_sends_nothing(env, redis, woo_store, tmp_path):
    responses.add(responses.GET, f"{WC_URL}/wp-json/wc/v3/coupons", json=[])
    responses.add(
        responses.POST,
        f"{WC_URL}/wp-json/wc/v3/coupons",
        status=400,
        json={"code": "woocommerce_rest_invalid_coupon", "message": "Coupons are disabled.", "data": {"status": 400}},
    )
    result = CliRunner().invoke(
        main, ["flows", "test-send", "welcome", "--to", "me@example.org", "--step", "1", "--real-codes"]
    )
    assert result.exit_code == 1 and "the store did not make the test code, nothing was sent" in result.output
    assert "Coupons are disabled." in result.output and _outbox(tmp_path) == []


def test_real_codes_need_a_store(env, redis, tmp_path):
    result = CliRunner().invoke(main, ["flows", "test-send", "welcome", "--to", "me@example.org", "--real-codes"])
    assert result.exit_code == 2 and "real codes need a store" in result.output and _outbox(tmp_path) == []


@pytest.fixture
def shopify_admin(env):  # type: ignore[no-untyped-def]
    """A Shopify store added through the CLI, and its GraphQL Admin API faked as Shopify documents it."""
    result = CliRunner().invoke(main, ["stores", "add", "shopify", SHOP, "--access-token", TOKEN])
    assert result.exit_code == 0, result.output
    fake = FakeAdmin()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, GRAPHQL, callback=fake)
        yield fake


def test_real_codes_on_shopify_are_never_the_customers_and_only_up_to_the_email_sent(
    env, redis, tmp_path, shopify_admin
):
    from tests.test_flows_engine import flow_dir

    admin = shopify_admin
    flow_dir(tmp_path, env, two=TWO_CODES)
    _grace_in("shopify", SHOP)
    admin.on("codeDiscountNodeByCode", _data({"codeDiscountNodeByCode": None}))
    admin.on("discountCodeBasicCreate", lambda variables: _created(variables["basicCodeDiscount"]["code"]))
    command = ["flows", "test-send", "two", "--to", "me@example.org", "--customer", "grace@example.com"]
    result = CliRunner().invoke(main, [*command, "--step", "1", "--real-codes"])
    assert result.exit_code == 0, result.output
    [created] = [variables for operation, variables in admin.calls if operation == "discountCodeBasicCreate"]
    basic = created["basicCodeDiscount"]  # the second code, after the email wanted, is not made
    assert basic["code"].startswith("ONE-") and basic["title"] == "[TEST] Two codes: test send to me@example.org"
    assert basic["context"] == {"all": "ALL"}  # Shopify restricts by customer account: never Grace's
    assert basic["customerGets"]["value"] == {"percentage": 0.1} and basic["usageLimit"] == 1
    [sent] = _outbox(tmp_path)
    assert sent["Subject"] == f"[TEST] First {basic['code']}"
    _nothing_recorded()


@responses.activate
def test_the_preview_page_makes_real_codes_when_asked(client, redis, woo_store, tmp_path):
    made = fake_woocommerce_coupons()
    sign_in(client)
    form = {"flow": "welcome", "step": "steps[1]", "to": "me@example.org", "csrf": _csrf(client)}
    client.post("/admin/preview/test-send", data=form)
    assert made == []  # unticked: the placeholder
    answer = client.post("/admin/preview/test-send", data={**form, "real_codes": "1"})
    [coupon] = made
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert f"(real test code {coupon['code'].upper()})" in page
    assert coupon["email_restrictions"] == ["me@example.org"]
    bodies = sorted(message.get_body(("html",)).get_content() for message in _outbox(tmp_path))
    assert [coupon["code"].upper() in body for body in bodies].count(True) == 1
    assert ["HELLOPREVIEW" in body for body in bodies].count(True) == 1


def test_sample_for_is_whom_the_cli_the_admin_and_the_preview_show(env, redis):
    _store_with_grace()
    with session_scope() as session:
        other = get_or_create_shop(session, "shopify", "closed.myshopify.com")
        other.active = False
    with session_scope() as session:
        grace = trial.find_customer(session, "grace@example.com")
        real = trial.sample_for(session, grace)
        ada = trial.sample_for(session)
        filed = trial.sample_for(session, fields={"first_name": "Lin", "shop": {"name": "Own name"}})
        none_of_mine = trial.sample_for(session, shop_ids=[])
    assert real.data["first_name"] == "Grace" and real.data["shop"]["name"] == "Woo & Co"
    assert real.shop is not None and real.shop.domain == "woo.example.com"  # detached, still readable
    assert ada.data["first_name"] == "Ada" and ada.data["shop"]["email"] == "team@woo.example.com"  # the active store
    assert filed.data["first_name"] == "Lin" and filed.data["shop"]["name"] == "Own name"
    assert filed.data["shop"]["currency"] == "EUR" and filed.shop is not None
    assert none_of_mine.shop is None and "shop" not in none_of_mine.data
