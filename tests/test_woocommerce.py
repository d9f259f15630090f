"""WooCommerce connector against `responses` fakes of the REST API v3, shaped as WooCommerce documents them."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import select

from encore_retention.cli import main
from encore_retention.connectors.base import DiscountRequest, PlatformError, get_connector
from encore_retention.connectors.woocommerce import WEBHOOK_TOPICS, WooCommerceConnector
from encore_retention.core.crypto import decrypt
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop
from tests.conftest import WC_URL, payload

API = f"{WC_URL}/wp-json/wc/v3"
HTTP_URL = "http://shop.example.org/store"


def _settings_general(currency: str = "EUR") -> list[dict]:
    return [
        {
            "id": "woocommerce_default_country",
            "label": "Country and State",
            "type": "select",
            "default": "GB",
            "value": "US:CA",
        },
        {"id": "woocommerce_currency", "label": "Currency", "type": "select", "default": "GBP", "value": currency},
    ]


def _webhook(id_: int, topic: str, delivery_url: str, status: str = "active") -> dict:
    resource, _, event = topic.partition(".")
    return {
        "id": id_,
        "name": f"Encore {topic}",
        "status": status,
        "topic": topic,
        "resource": resource,
        "event": event,
        "hooks": [],
        "delivery_url": delivery_url,
        "date_created": "2026-11-20T10:00:00",
        "date_created_gmt": "2026-11-20T10:00:00",
        "date_modified": "2026-11-20T10:00:00",
        "date_modified_gmt": "2026-11-20T10:00:00",
        "_links": {"self": [{"href": f"{API}/webhooks/{id_}"}], "collection": [{"href": f"{API}/webhooks"}]},
    }


def _coupon(code: str, body: dict, id_: int = 720) -> dict:
    coupon = copy.deepcopy(payload("woocommerce", "coupon_created"))
    coupon.update(
        {
            "id": id_,
            "code": code.lower(),
            "amount": body["amount"],
            "discount_type": body["discount_type"],
            "usage_limit": body["usage_limit"],
            "email_restrictions": body.get("email_restrictions", []),
            "minimum_amount": body.get("minimum_amount", "0.00"),
            "individual_use": body["individual_use"],
            "date_expires": body.get("date_expires"),
            "date_expires_gmt": body.get("date_expires"),
        }
    )
    return coupon


def _shop() -> Shop:
    with session_scope() as session:
        return session.execute(select(Shop).where(Shop.platform == "woocommerce")).scalar_one()


def _request(**overrides) -> DiscountRequest:  # type: ignore[no-untyped-def]
    values = dict(
        idempotency_key="run-41:step-1",
        kind="percent",
        value=Decimal("15"),
        prefix="bday",
        ends_at=datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
        minimum_subtotal=Decimal("50"),
        customer_id="25",
        customer_email="john.doe@example.com",
        title="Birthday 15%",
    )
    values.update(overrides)
    return DiscountRequest(**values)  # type: ignore[arg-type]


# ---- encore stores add woocommerce ------------------------------------------------------------------


@responses.activate
def test_stores_add_verifies_keys_and_creates_the_webhooks(env):
    responses.get(f"{API}/settings/general", json=_settings_general("EUR"))
    responses.get(
        f"{WC_URL}/wp-json/",
        json={
            "name": "Woo",
            "url": WC_URL,
            "gmt_offset": "1",
            "timezone_string": "Europe/Berlin",
            "namespaces": ["wc/v3"],
        },
    )
    responses.get(f"{API}/webhooks", json=[], headers={"X-WP-Total": "0", "X-WP-TotalPages": "0"})
    created = []

    def create(request):  # type: ignore[no-untyped-def]
        body = json.loads(request.body)
        created.append(body)
        return 201, {}, json.dumps(_webhook(100 + len(created), body["topic"], body["delivery_url"]))

    responses.add_callback(responses.POST, f"{API}/webhooks", callback=create)
    result = CliRunner().invoke(
        main,
        ["stores", "add", "woocommerce", WC_URL + "/", "--consumer-key", "ck_live", "--consumer-secret", "cs_live"],
    )
    assert result.exit_code == 0, result.output
    shop = _shop()
    assert f"store {shop.id} added: woocommerce woo.example.com" in result.output
    assert shop.currency == "EUR" and shop.url == WC_URL and shop.timezone == "Europe/Berlin"
    assert shop.name == "Woo" and shop.email is None  # the email settings didn't answer: nothing guessed
    assert decrypt(shop.consumer_key_enc) == "ck_live"
    secret = decrypt(shop.webhook_secret_enc)
    assert len(secret) >= 32
    assert [b["topic"] for b in created] == WEBHOOK_TOPICS
    assert {b["delivery_url"] for b in created} == {"http://localhost:8000/webhooks/woocommerce"}
    assert {b["secret"] for b in created} == {secret}
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")  # HTTPS: basic auth
    assert secret not in result.output


@responses.activate
def test_stores_add_http_store_with_given_secret_reenables_a_disabled_webhook(env):
    api = f"{HTTP_URL}/wp-json/wc/v3"
    address = "http://localhost:8000/webhooks/woocommerce"
    responses.get(f"{api}/settings/general", json=_settings_general("USD"))
    responses.get(
        f"{api}/webhooks",
        json=[_webhook(7, "order.created", address, status="disabled")],
        headers={"X-WP-TotalPages": "1"},
    )
    responses.put(f"{api}/webhooks/7", json=_webhook(7, "order.created", address))
    responses.post(f"{api}/webhooks", json=_webhook(8, "order.updated", address), status=201)
    result = CliRunner().invoke(
        main,
        [
            "stores",
            "add",
            "woocommerce",
            HTTP_URL,
            "--consumer-key",
            "ck_h",
            "--consumer-secret",
            "cs_h",
            "--webhook-secret",
            "given-secret",
        ],
    )
    assert result.exit_code == 0, result.output
    query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert query["oauth_consumer_key"] == ["ck_h"] and "oauth_signature" in query  # HTTP: OAuth 1.0a
    put = [c for c in responses.calls if c.request.method == "PUT"]
    assert json.loads(put[0].request.body) == {"status": "active", "secret": "given-secret"}
    posted = [json.loads(c.request.body)["topic"] for c in responses.calls if c.request.method == "POST"]
    assert posted == WEBHOOK_TOPICS[1:]
    assert _shop().domain == "shop.example.org/store"


@responses.activate
def test_stores_add_with_wrong_keys_fails_clearly_and_saves_nothing(env):
    responses.get(
        f"{API}/settings/general",
        status=401,
        json={
            "code": "woocommerce_rest_authentication_error",
            "message": "Consumer secret is invalid.",
            "data": {"status": 401},
        },
    )
    result = CliRunner().invoke(
        main, ["stores", "add", "woocommerce", WC_URL, "--consumer-key", "ck_x", "--consumer-secret", "cs_bad"]
    )
    assert result.exit_code == 1
    assert "Consumer secret is invalid." in result.output
    with session_scope() as session:
        assert session.execute(select(Shop)).scalars().all() == []


@pytest.mark.parametrize("url", ["not a url", "http://a:99999/", "http://[::1", "javascript:alert(1)"])
def test_stores_add_rejects_a_non_url(env, url):
    result = CliRunner().invoke(
        main, ["stores", "add", "woocommerce", url, "--consumer-key", "k", "--consumer-secret", "s", "--no-verify"]
    )
    assert result.exit_code == 2 and "not a store URL" in result.output


@pytest.mark.parametrize("source", ["http://a:99999/", "http://[::1", "javascript:alert(1)", "https://", "file:///x"])
def test_a_source_that_is_not_a_store_url_has_no_domain(source):
    from encore_retention.webhooks.woocommerce import store_domain

    assert store_domain(source) == ""
    assert store_domain("HTTPS://Woo.Example.com:8443/shop/") == "woo.example.com:8443/shop"


# ---- coupons ----------------------------------------------------------------------------------------


@responses.activate
def test_create_discount_posts_the_documented_coupon_body(woo_store):
    responses.get(f"{API}/coupons", json=[])
    sent = []

    def create(request):  # type: ignore[no-untyped-def]
        body = json.loads(request.body)
        sent.append(body)
        return 201, {}, json.dumps(_coupon(body["code"], body))

    responses.add_callback(responses.POST, f"{API}/coupons", callback=create)
    shop = _shop()
    connector = get_connector(shop)
    assert isinstance(connector, WooCommerceConnector)
    discount = connector.create_discount(_request())
    body = sent[0]
    assert body["code"].startswith("BDAY-") and len(body["code"]) == len("BDAY-XXXX-XXXX")
    assert body == {
        "code": body["code"],
        "discount_type": "percent",
        "amount": "15.00",
        "individual_use": True,
        "usage_limit": 1,
        "usage_limit_per_user": 1,
        "description": "Birthday 15%",
        "email_restrictions": ["john.doe@example.com"],
        "date_expires": "2026-12-31T23:00:00",
        "minimum_amount": "50.00",
    }
    assert discount.code == body["code"] and discount.platform_id == "720" and discount.kind == "percent"
    assert parse_qs(urlsplit(responses.calls[0].request.url).query)["code"] == [body["code"]]

    # the same step again: the code it already made, without another coupon
    again = get_connector(shop).create_discount(_request())
    assert again.code == discount.code and len(sent) == 1


@responses.activate
def test_fixed_discount_and_a_different_key_give_a_different_code(woo_store):
    responses.get(f"{API}/coupons", json=[])
    sent = []

    def create(request):  # type: ignore[no-untyped-def]
        sent.append(json.loads(request.body))
        return 201, {}, json.dumps(_coupon(sent[-1]["code"], sent[-1]))

    responses.add_callback(responses.POST, f"{API}/coupons", callback=create)
    connector = get_connector(_shop())
    first = connector.create_discount(
        _request(idempotency_key="a", kind="fixed", value=Decimal("5"), minimum_subtotal=None, ends_at=None)
    )
    second = connector.create_discount(_request(idempotency_key="b"))
    assert sent[0]["discount_type"] == "fixed_cart" and sent[0]["amount"] == "5.00"
    assert "minimum_amount" not in sent[0] and "date_expires" not in sent[0]
    assert first.code != second.code


@responses.activate
def test_a_retry_after_a_lost_answer_finds_the_coupon_instead_of_minting_another(woo_store):
    shop = _shop()
    made: dict = {}

    def lookup(request):  # type: ignore[no-untyped-def]
        code = parse_qs(urlsplit(request.url).query)["code"][0]
        return 200, {}, json.dumps([made[code]] if code in made else [])

    def create(request):  # type: ignore[no-untyped-def]
        body = json.loads(request.body)
        made[body["code"]] = _coupon(body["code"], body, id_=901)
        raise requests.ConnectionError("read timed out")  # the store made it, the answer was lost

    responses.add_callback(responses.GET, f"{API}/coupons", callback=lookup)
    responses.add_callback(responses.POST, f"{API}/coupons", callback=create)
    connector = WooCommerceConnector(shop, sleep=lambda s: None)
    connector.retry.attempts = 1
    with pytest.raises(PlatformError) as caught:
        connector.create_discount(_request())
    assert caught.value.transient
    discount = WooCommerceConnector(shop, sleep=lambda s: None).create_discount(_request())  # the job's retry
    assert discount.platform_id == "901" and len(made) == 1
    assert len([c for c in responses.calls if c.request.method == "POST"]) == 1


@responses.activate
def test_code_already_exists_answer_finds_the_existing_coupon(woo_store):
    shop = _shop()
    calls = {"get": 0}
    existing: dict = {}

    def lookup(request):  # type: ignore[no-untyped-def]
        calls["get"] += 1
        return 200, {}, json.dumps([existing["coupon"]] if calls["get"] > 1 else [])

    def create(request):  # type: ignore[no-untyped-def]
        body = json.loads(request.body)
        existing["coupon"] = _coupon(body["code"], body, id_=555)
        return (
            400,
            {},
            json.dumps(
                {
                    "code": "woocommerce_rest_coupon_code_already_exists",
                    "message": "The coupon code already exists",
                    "data": {"status": 400},
                }
            ),
        )

    responses.add_callback(responses.GET, f"{API}/coupons", callback=lookup)
    responses.add_callback(responses.POST, f"{API}/coupons", callback=create)
    assert get_connector(shop).create_discount(_request()).platform_id == "555"


@responses.activate
def test_rate_limit_waits_as_asked_and_5xx_backs_off(woo_store):
    responses.get(f"{API}/coupons", status=429, headers={"Retry-After": "7"}, json={"message": "slow down"})
    responses.get(f"{API}/coupons", status=503, body="Service Unavailable")
    responses.get(f"{API}/coupons", status=502, body="Bad Gateway")
    responses.get(f"{API}/coupons", json=[{"id": 1, "code": "x-1", "usage_count": 1}])
    slept: list[float] = []
    connector = WooCommerceConnector(_shop(), sleep=slept.append)
    assert connector.discount_redeemed("X-1") is True
    assert slept == [7.0, 2.0, 4.0]


@responses.activate
def test_a_long_retry_after_is_handed_to_the_job_instead_of_sleeping(woo_store):
    responses.get(f"{API}/coupons", status=429, headers={"Retry-After": "120"})
    slept: list[float] = []
    with pytest.raises(PlatformError) as caught:
        WooCommerceConnector(_shop(), sleep=slept.append).find_coupon("X")
    assert slept == [] and caught.value.transient and caught.value.retry_after == 120.0


@responses.activate
def test_4xx_is_reported_with_the_platform_message_and_not_retried(woo_store):
    responses.post(
        f"{API}/coupons",
        status=400,
        json={"code": "rest_invalid_param", "message": "Invalid parameter(s): discount_type", "data": {"status": 400}},
    )
    responses.get(f"{API}/coupons", json=[])
    slept: list[float] = []
    with pytest.raises(PlatformError) as caught:
        WooCommerceConnector(_shop(), sleep=slept.append).create_discount(_request())
    assert caught.value.status == 400 and not caught.value.transient
    assert "Invalid parameter(s): discount_type" in caught.value.message
    assert slept == [] and len([c for c in responses.calls if c.request.method == "POST"]) == 1


# ---- customers and orders ---------------------------------------------------------------------------


@responses.activate
def test_fetch_customer_reads_birthday_and_consent_meta(woo_store, env):
    env.setenv("WOOCOMMERCE_BIRTHDAY_META", "dob")
    from encore_retention.core.settings import reset_settings

    reset_settings()
    customer = payload("woocommerce", "customer_created")
    customer["meta_data"] = [
        {"id": 1, "key": "dob", "value": "1990-07-14"},
        {"id": 2, "key": "marketing_consent", "value": "yes"},
    ]
    responses.get(f"{API}/customers/25", json=customer)
    responses.get(
        f"{API}/customers/26",
        status=404,
        json={"code": "woocommerce_rest_invalid_id", "message": "Invalid resource ID.", "data": {"status": 404}},
    )
    connector = get_connector(_shop())
    fetched = connector.fetch_customer("25")
    assert fetched is not None and fetched.birthday.isoformat() == "1990-07-14" and fetched.email_consent is True
    assert connector.fetch_customer("26") is None


@responses.activate
def test_tag_customer_merges_into_meta(woo_store):
    customer = payload("woocommerce", "customer_created")
    customer["meta_data"] = [{"id": 3, "key": "encore_tags", "value": "vip"}]
    responses.get(f"{API}/customers/25", json=customer)
    responses.put(f"{API}/customers/25", json=customer)
    get_connector(_shop()).tag_customer("25", ["winback", "vip"])
    put = json.loads(responses.calls[-1].request.body)
    assert put == {"meta_data": [{"key": "encore_tags", "value": "vip,winback"}]}


@responses.activate
def test_fetch_orders_pages_through_modified_after(woo_store):
    order = payload("woocommerce", "order_created")
    second = copy.deepcopy(order)
    second["id"] = order["id"] + 1
    responses.get(f"{API}/orders", json=[order], headers={"X-WP-Total": "2", "X-WP-TotalPages": "2"})
    responses.get(f"{API}/orders", json=[second], headers={"X-WP-Total": "2", "X-WP-TotalPages": "2"})
    since = datetime(2017, 1, 1, tzinfo=UTC)
    got = list(get_connector(_shop()).fetch_orders(since))
    assert [o.id for o, _c in got] == [str(order["id"]), str(second["id"])]
    first_query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert first_query["modified_after"] == ["2017-01-01T00:00:00"] and first_query["dates_are_gmt"] == ["true"]
    assert first_query["page"] == ["1"] and parse_qs(urlsplit(responses.calls[1].request.url).query)["page"] == ["2"]
    assert got[0][1] is not None and got[0][1].email == order["billing"]["email"]


@responses.activate
def test_create_discount_joins_the_callers_transaction(woo_store):
    """The flow engine calls with a shop from its own session, maybe holding SQLite's write lock."""
    from encore_retention.connectors.models import DiscountCode

    responses.get(f"{API}/coupons", json=[])
    responses.add_callback(
        responses.POST,
        f"{API}/coupons",
        callback=lambda r: (201, {}, json.dumps(_coupon(json.loads(r.body)["code"], json.loads(r.body)))),
    )
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.platform == "woocommerce")).scalar_one()
        shop.name = "Woo"
        session.flush()  # this transaction now holds the write lock
        discount = get_connector(shop).create_discount(_request())
    with session_scope() as session:
        row = session.execute(select(DiscountCode)).scalar_one()
        assert row.code == discount.code and row.idempotency_key == "run-41:step-1"


def _identity_endpoints(name: str = "Woo Shop") -> None:
    """The store's settings as WooCommerce answers them: general, email and the new-order email."""
    responses.get(f"{API}/settings/general", json=_settings_general("EUR"))
    responses.get(f"{WC_URL}/wp-json/", json={"name": name, "url": WC_URL, "timezone_string": "Europe/Lisbon"})
    responses.get(
        f"{API}/settings/email",
        json=[
            {"id": "woocommerce_email_from_name", "label": '"From" name', "type": "text", "value": name},
            {
                "id": "woocommerce_email_from_address",
                "label": '"From" address',
                "type": "email",
                "value": "shop@woo.example.com",
            },
        ],
    )
    responses.get(
        f"{API}/settings/email_new_order",
        json=[
            {
                "id": "recipient",
                "label": "Recipient(s)",
                "type": "text",
                "value": "staff@woo.example.com, boss@woo.example.com",
            }
        ],
    )


def _add(*extra: str):  # type: ignore[no-untyped-def]
    command = ["stores", "add", "woocommerce", WC_URL, "--consumer-key", "ck_live", "--consumer-secret", "cs_live"]
    return CliRunner().invoke(main, [*command, "--webhook-secret", "s", *extra])


@responses.activate
def test_stores_add_reads_the_stores_identity_and_stores_set_overrides_it_for_good(env):
    _identity_endpoints()
    responses.get(f"{API}/webhooks", json=[], headers={"X-WP-Total": "0", "X-WP-TotalPages": "0"})
    responses.post(f"{API}/webhooks", json=_webhook(101, "order.created", "x"), status=201)
    assert _add().exit_code == 0
    shop = _shop()
    assert (shop.name, shop.email, shop.reply_to, shop.timezone) == (
        "Woo Shop",
        "staff@woo.example.com",
        "shop@woo.example.com",
        "Europe/Lisbon",
    )

    result = CliRunner().invoke(
        main,
        ["stores", "set", "woo.example.com", "--name", "Woo & Co", "--from", "Woo & Co <news@woo.example.com>"]
        + ["--staff-email", "team@woo.example.com", "--timezone", "Europe/Madrid"],
    )
    assert result.exit_code == 0, result.output
    assert "set name, from, staff-email, timezone" in result.output
    responses.replace(
        responses.GET, f"{WC_URL}/wp-json/", json={"name": "Renamed in WordPress", "timezone_string": "UTC"}
    )
    assert _add().exit_code == 0  # connected again: what the operator set stays, the rest follows the store
    shop = _shop()
    assert (shop.name, shop.email_from, shop.email, shop.timezone) == (
        "Woo & Co",
        "Woo & Co <news@woo.example.com>",
        "team@woo.example.com",
        "Europe/Madrid",
    )
    assert shop.reply_to == "shop@woo.example.com"
    listed = CliRunner().invoke(main, ["stores", "list", "--details"])
    assert "team@woo.example.com" in listed.output and "Europe/Madrid" in listed.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--from", "a@example.com, b@example.com", "not one email address"),
        ("--staff-email", "Team <team@example.com>", "an address without a name"),
        ("--reply-to", "nobody", "not one email address"),
        ("--timezone", "Mars/Olympus", "not an IANA time zone"),
        ("--url", "javascript:alert(1)", "expected http"),
        ("--currency", "EURO", "three-letter code"),
        ("--review-url", "reviews.example/us", "review-url: expected http"),
        ("--customer-accounts", "legacy", "'legacy' is not one of"),
    ],
)
def test_stores_set_refuses_what_is_not_a_value_of_that_field(env, woo_store, option, value, message):
    result = CliRunner().invoke(main, ["stores", "set", "woo.example.com", option, value])
    assert result.exit_code == 2 and message in result.output, result.output
    assert _shop().name is None


def test_stores_set_needs_a_known_store_and_something_to_set(env, woo_store):
    assert (
        "no store 'nope.example.com'"
        in CliRunner().invoke(main, ["stores", "set", "nope.example.com", "--name", "X"]).output
    )
    assert "nothing to set" in CliRunner().invoke(main, ["stores", "set", "woo.example.com"]).output


# ---- account invitations and product pages ----------------------------------------------------------


def _page_setting(value: str) -> dict:
    """`GET /settings/advanced/woocommerce_myaccount_page_id`, as the REST API documents a setting option."""
    return {
        "id": "woocommerce_myaccount_page_id",
        "label": "My account page",
        "description": "Page contents: [woocommerce_my_account]",
        "type": "select",
        "default": "",
        "tip": "Page contents: [woocommerce_my_account]",
        "value": value,
        "options": {"9": "My account"},
    }


@responses.activate
def test_account_invite_is_the_my_account_page_with_the_address(woo_store):
    setting = f"{API}/settings/advanced/woocommerce_myaccount_page_id"
    responses.add(responses.GET, setting, json=_page_setting("9"))
    connector = get_connector(_shop())
    assert (
        connector.account_invite_url(None, "ada+tea@example.com")
        == f"{WC_URL}/?page_id=9&email=ada%2Btea%40example.com"
    )
    responses.replace(responses.GET, setting, json={"code": "rest_setting_setting_invalid"}, status=404)
    assert connector.account_invite_url("25", None) == f"{WC_URL}/my-account/"
    assert connector.account_invite_url("25", "a@b.example") == f"{WC_URL}/my-account/?email=a%40b.example"


@responses.activate
def test_product_url_is_the_products_permalink(woo_store):
    responses.add(
        responses.GET,
        f"{API}/products/794",
        json={"id": 794, "name": "Green tea", "permalink": f"{WC_URL}/product/green-tea/"},
    )
    responses.add(
        responses.GET,
        f"{API}/products/795",
        json={"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.", "data": {"status": 404}},
        status=404,
    )
    connector = get_connector(_shop())
    assert connector.product_url("794") == f"{WC_URL}/product/green-tea/"
    assert connector.product_url("795") is None


def test_stores_set_keeps_the_review_page_and_the_customer_accounts_for_review_and_invite_links(env, woo_store):
    result = CliRunner().invoke(
        main,
        [
            "stores",
            "set",
            "woo.example.com",
            "--review-url",
            "https://reviews.example/woo/",
            "--customer-accounts",
            "new",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "set review-url, customer-accounts" in result.output
    assert _shop().settings["review_url"] == "https://reviews.example/woo"
    assert _shop().settings["customer_accounts"] == "new"
    listed = CliRunner().invoke(main, ["stores", "list", "--details"]).output
    assert "review-url   https://reviews.example/woo" in listed and "customer-accounts new" in listed
    from encore_retention.flows.steps import shop_view

    assert shop_view(_shop())["review_url"] == "https://reviews.example/woo"
    assert CliRunner().invoke(main, ["stores", "set", "woo.example.com", "--customer-accounts", "auto"]).exit_code == 0
    assert "customer_accounts" not in _shop().settings  # auto: the platform is asked again
