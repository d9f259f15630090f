"""Shopify connector against `responses` fakes of the GraphQL Admin API, shaped as Shopify documents them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import select

from encore_retention.cli import main
from encore_retention.connectors.base import DiscountRequest, PlatformError, get_connector
from encore_retention.connectors.shopify import WEBHOOK_TOPICS, ShopifyConnector
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop
from tests.conftest import SHOP

GRAPHQL = f"https://{SHOP}/admin/api/2026-04/graphql.json"
TOKEN = "shpat_0123456789abcdef"


def _cost(requested: int = 10, available: float = 1990.0, restore: float = 100.0) -> dict:
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": requested,
            "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": restore},
        }
    }


def _data(data: dict, **cost) -> dict:  # type: ignore[no-untyped-def]
    return {"data": data, "extensions": _cost(**cost)}


THROTTLED = {
    "errors": [
        {
            "message": "Throttled",
            "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
        }
    ],
    "extensions": {
        "cost": {
            "requestedQueryCost": 752,
            "actualQueryCost": None,
            "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 2, "restoreRate": 100.0},
        }
    },
}


def _created(code: str, node_id: int = 1057371343) -> dict:
    return _data(
        {
            "discountCodeBasicCreate": {
                "codeDiscountNode": {
                    "id": f"gid://shopify/DiscountCodeNode/{node_id}",
                    "codeDiscount": {
                        "title": "Birthday 15%",
                        "startsAt": "2026-12-01T00:00:00Z",
                        "endsAt": "2026-12-31T23:00:00Z",
                        "codes": {"nodes": [{"code": code}]},
                    },
                },
                "userErrors": [],
            }
        }
    )


def _node(code: str, node_id: int = 1057371343, used: int = 0) -> dict:
    return {
        "id": f"gid://shopify/DiscountCodeNode/{node_id}",
        "codeDiscount": {
            "__typename": "DiscountCodeBasic",
            "title": "Birthday 15%",
            "status": "ACTIVE",
            "startsAt": "2026-12-01T00:00:00Z",
            "endsAt": "2026-12-31T23:00:00Z",
            "asyncUsageCount": used,
            "codes": {"nodes": [{"code": code}]},
        },
    }


@pytest.fixture
def shop(env) -> Shop:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["stores", "add", "shopify", SHOP, "--access-token", TOKEN])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        return session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()


class FakeAdmin:
    """Answers GraphQL by operation; records every request's query and variables."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.answers: dict[str, list] = {}

    def on(self, operation: str, *answers) -> None:  # type: ignore[no-untyped-def]
        self.answers.setdefault(operation, []).extend(answers)

    def __call__(self, request):  # type: ignore[no-untyped-def]
        assert request.headers["X-Shopify-Access-Token"] == TOKEN
        body = json.loads(request.body)
        operation = re.search(r"(?:query|mutation)\s+(\w+)", body["query"]).group(1)
        self.calls.append((operation, body["variables"]))
        queue = self.answers[operation]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            answer = answer(body["variables"])
        status, headers, payload = answer if isinstance(answer, tuple) else (200, {}, answer)
        return status, headers, json.dumps(payload) if not isinstance(payload, str) else payload

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


@pytest.fixture
def admin():  # type: ignore[no-untyped-def]
    fake = FakeAdmin()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, GRAPHQL, callback=fake)
        yield fake


def _request(**overrides) -> DiscountRequest:  # type: ignore[no-untyped-def]
    values = dict(
        idempotency_key="run-7:step-2",
        kind="percent",
        value=Decimal("15"),
        prefix="bday",
        starts_at=datetime(2026, 12, 1, tzinfo=UTC),
        ends_at=datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
        minimum_subtotal=Decimal("40"),
        customer_id="207119551",
        title="Birthday 15%",
    )
    values.update(overrides)
    return DiscountRequest(**values)  # type: ignore[arg-type]


# ---- discounts --------------------------------------------------------------------------------------


def test_create_discount_sends_context_for_the_customer_and_is_idempotent(shop, admin):
    admin.on("codeDiscountNodeByCode", _data({"codeDiscountNodeByCode": None}))
    admin.on("discountCodeBasicCreate", lambda variables: _created(variables["basicCodeDiscount"]["code"]))
    connector = get_connector(shop)
    assert isinstance(connector, ShopifyConnector)
    discount = connector.create_discount(_request())
    assert admin.ops() == ["codeDiscountNodeByCode", "discountCodeBasicCreate"]
    variables = admin.calls[1][1]["basicCodeDiscount"]
    code = variables["code"]
    assert code.startswith("BDAY-") and len(code) == len("BDAY-XXXX-XXXX")
    assert admin.calls[0][1] == {"code": code}
    assert variables == {
        "title": "Birthday 15%",
        "code": code,
        "startsAt": "2026-12-01T00:00:00Z",
        "endsAt": "2026-12-31T23:00:00Z",
        "context": {"customers": {"add": ["gid://shopify/Customer/207119551"]}},
        "customerGets": {"value": {"percentage": 0.15}, "items": {"all": True}},
        "usageLimit": 1,
        "appliesOncePerCustomer": True,
        "combinesWith": {"orderDiscounts": False, "productDiscounts": False, "shippingDiscounts": True},
        "minimumRequirement": {"subtotal": {"greaterThanOrEqualToSubtotal": "40.00"}},
    }
    assert "customerSelection" not in variables  # deprecated on current API versions
    assert discount.code == code and discount.platform_id == "gid://shopify/DiscountCodeNode/1057371343"
    # the same flow step again: no second code, not even a lookup
    assert get_connector(shop).create_discount(_request()).code == code
    assert len(admin.calls) == 2


def test_fixed_amount_without_customer_id_is_for_anyone_once(shop, admin):
    admin.on("codeDiscountNodeByCode", _data({"codeDiscountNodeByCode": None}))
    admin.on("discountCodeBasicCreate", _created("WB-AAAA-BBBB"))
    get_connector(shop).create_discount(
        _request(
            kind="fixed",
            value=Decimal("5"),
            customer_id=None,
            minimum_subtotal=None,
            ends_at=None,
            idempotency_key="k2",
        )
    )
    variables = admin.calls[1][1]["basicCodeDiscount"]
    assert variables["customerGets"]["value"] == {"discountAmount": {"amount": "5.00", "appliesOnEachItem": False}}
    assert variables["context"] == {"all": "ALL"} and variables["endsAt"] is None
    assert "minimumRequirement" not in variables and variables["usageLimit"] == 1


def test_a_retry_after_a_lost_answer_finds_the_code_instead_of_minting_another(shop, admin):
    admin.on(
        "codeDiscountNodeByCode",
        _data({"codeDiscountNodeByCode": None}),
        _data({"codeDiscountNodeByCode": _node("X", node_id=42)}),
    )
    admin.on(
        "discountCodeBasicCreate",
        requests.ConnectionError("read timed out"),
        _data(
            {
                "discountCodeBasicCreate": {
                    "codeDiscountNode": None,
                    "userErrors": [
                        {
                            "field": ["basicCodeDiscount", "code"],
                            "code": "TAKEN",
                            "message": "Code must be unique. Please try a different code.",
                        }
                    ],
                }
            }
        ),
    )
    slept: list[float] = []
    discount = ShopifyConnector(shop, sleep=slept.append).create_discount(_request())
    assert discount.platform_id == "gid://shopify/DiscountCodeNode/42"
    assert admin.ops() == [
        "codeDiscountNodeByCode",
        "discountCodeBasicCreate",
        "discountCodeBasicCreate",
        "codeDiscountNodeByCode",
    ]
    assert slept == [1.0]


def test_an_existing_code_is_returned_without_creating(shop, admin):
    admin.on("codeDiscountNodeByCode", _data({"codeDiscountNodeByCode": _node("X", node_id=9)}))
    discount = get_connector(shop).create_discount(_request())
    assert admin.ops() == ["codeDiscountNodeByCode"] and discount.platform_id.endswith("/9")


def test_user_errors_are_reported_with_shopify_message(shop, admin):
    admin.on("codeDiscountNodeByCode", _data({"codeDiscountNodeByCode": None}))
    admin.on(
        "discountCodeBasicCreate",
        _data(
            {
                "discountCodeBasicCreate": {
                    "codeDiscountNode": None,
                    "userErrors": [
                        {
                            "field": ["basicCodeDiscount", "endsAt"],
                            "code": "INVALID",
                            "message": "Ends at needs to be after starts_at",
                        }
                    ],
                }
            }
        ),
    )
    with pytest.raises(PlatformError) as caught:
        get_connector(shop).create_discount(_request())
    assert "Ends at needs to be after starts_at" in caught.value.message and not caught.value.transient


# ---- rate limits and errors -------------------------------------------------------------------------


def test_graphql_throttled_waits_until_the_cost_is_restored(shop, admin):
    admin.on("codeDiscountNodeByCode", THROTTLED, _data({"codeDiscountNodeByCode": _node("X", used=1)}))
    slept: list[float] = []
    assert ShopifyConnector(shop, sleep=slept.append).discount_redeemed("X") is True
    assert slept == [7.5]  # (752 requested - 2 available) / 100 restored per second
    assert admin.ops() == ["codeDiscountNodeByCode", "codeDiscountNodeByCode"]


def test_http_429_waits_retry_after_and_5xx_backs_off(shop, admin):
    admin.on(
        "tagsAdd",
        (429, {"Retry-After": "2.0"}, {"errors": "Exceeded 2 calls per second for api client."}),
        (502, {}, "<html>Bad Gateway</html>"),
        (503, {}, {"errors": "Service unavailable"}),
        _data({"tagsAdd": {"node": {"id": "gid://shopify/Customer/1"}, "userErrors": []}}),
    )
    slept: list[float] = []
    ShopifyConnector(shop, sleep=slept.append).tag_customer("1", ["vip"])
    assert slept == [2.0, 2.0, 4.0]
    assert admin.calls[-1][1] == {"id": "gid://shopify/Customer/1", "tags": ["vip"]}


def test_throttling_for_longer_than_a_worker_should_wait_goes_back_to_the_job(shop, admin):
    admin.on("tagsAdd", (429, {"Retry-After": "90"}, {"errors": "Exceeded"}))
    slept: list[float] = []
    with pytest.raises(PlatformError) as caught:
        ShopifyConnector(shop, sleep=slept.append).tag_customer("1", ["vip"])
    assert caught.value.transient and caught.value.retry_after == 90.0 and slept == []


def test_4xx_is_a_platform_error_with_shopify_message(shop, admin):
    admin.on(
        "customer",
        (401, {}, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
    )
    slept: list[float] = []
    with pytest.raises(PlatformError) as caught:
        ShopifyConnector(shop, sleep=slept.append).fetch_customer("1")
    assert caught.value.status == 401 and not caught.value.transient
    assert "Invalid API key or access token" in caught.value.message and slept == []


# ---- customers, orders, webhooks --------------------------------------------------------------------

CUSTOMER_NODE = {
    "id": "gid://shopify/Customer/207119551",
    "firstName": "Bob",
    "lastName": "Norman",
    "phone": None,
    "locale": "en",
    "state": "ENABLED",
    "tags": ["vip"],
    "createdAt": "2026-01-02T10:00:00Z",
    "updatedAt": "2026-11-01T10:00:00Z",
    "numberOfOrders": "3",
    "amountSpent": {"amount": "199.65", "currencyCode": "USD"},
    "defaultEmailAddress": {
        "emailAddress": "bob.norman@mail.example.com",
        "marketingState": "SUBSCRIBED",
        "marketingUpdatedAt": "2026-03-04T05:06:07Z",
    },
    "birthday": {"value": "1988-02-29"},
}


def test_fetch_customer_reads_birthday_metafield_and_consent(shop, admin, env):
    env.setenv("SHOPIFY_BIRTHDAY_METAFIELD", "custom.dob")
    from encore_retention.core.settings import reset_settings

    reset_settings()
    admin.on("customer", _data({"customer": CUSTOMER_NODE}))
    customer = get_connector(shop).fetch_customer("207119551")
    assert admin.calls[0][1] == {"id": "gid://shopify/Customer/207119551", "namespace": "custom", "key": "dob"}
    assert customer is not None and customer.id == "207119551" and customer.email == "bob.norman@mail.example.com"
    assert customer.birthday.isoformat() == "1988-02-29" and customer.email_consent is True
    assert customer.orders_count == 3 and customer.total_spent == Decimal("199.65") and customer.tags == ["vip"]


def test_without_protected_data_access_the_customer_comes_back_without_email(shop, admin):
    node = dict(CUSTOMER_NODE, firstName=None, lastName=None, defaultEmailAddress=None)
    admin.on(
        "customer",
        {
            "data": {"customer": node},
            "errors": [
                {
                    "message": "This app is not approved to access the Customer object. See "
                    "https://shopify.dev/docs/apps/launch/protected-customer-data for more details.",
                    "path": ["customer", "defaultEmailAddress"],
                    "extensions": {"code": "ACCESS_DENIED"},
                }
            ],
            "extensions": _cost(),
        },
    )
    customer = get_connector(shop).fetch_customer("207119551")
    assert customer is not None and customer.email is None and customer.email_consent is None
    assert customer.birthday is not None


def test_fetch_orders_pages_with_an_updated_at_query(shop, admin):
    order = {
        "id": "gid://shopify/Order/450789469",
        "name": "#1001",
        "createdAt": "2026-11-01T10:00:00Z",
        "updatedAt": "2026-11-02T10:00:00Z",
        "cancelledAt": None,
        "email": "bob.norman@mail.example.com",
        "currencyCode": "USD",
        "discountCodes": ["BDAY-AAAA-BBBB"],
        "displayFinancialStatus": "PAID",
        "displayFulfillmentStatus": "UNFULFILLED",
        "totalPriceSet": {"shopMoney": {"amount": "598.94", "currencyCode": "USD"}},
        "subtotalPriceSet": {"shopMoney": {"amount": "597.00", "currencyCode": "USD"}},
        "customer": {
            "id": "gid://shopify/Customer/207119551",
            "firstName": "Bob",
            "lastName": "Norman",
            "defaultEmailAddress": {"emailAddress": "bob.norman@mail.example.com"},
        },
        "lineItems": {
            "nodes": [
                {
                    "title": "IPod Nano - 8gb",
                    "quantity": 1,
                    "sku": "IPOD2008PINK",
                    "variant": {"id": "gid://shopify/ProductVariant/39072856"},
                    "product": {"id": "gid://shopify/Product/632910392"},
                    "originalUnitPriceSet": {"shopMoney": {"amount": "199.00"}},
                }
            ]
        },
    }
    second = dict(order, id="gid://shopify/Order/450789470", name="#1002")
    admin.on(
        "orders",
        _data({"orders": {"nodes": [order], "pageInfo": {"hasNextPage": True, "endCursor": "c1"}}}),
        _data({"orders": {"nodes": [second], "pageInfo": {"hasNextPage": False, "endCursor": "c2"}}}),
    )
    got = list(get_connector(shop).fetch_orders(datetime(2026, 11, 1, tzinfo=UTC)))
    assert [o.id for o, _ in got] == ["450789469", "450789470"]
    assert admin.calls[0][1] == {"query": "updated_at:>'2026-11-01T00:00:00Z'", "first": 100, "after": None}
    assert admin.calls[1][1]["after"] == "c1"
    first, buyer = got[0]
    assert first.total == Decimal("598.94") and first.financial_status == "paid"
    assert first.line_items[0].product_id == "632910392" and buyer.id == "207119551"


def test_register_webhooks_subscribes_what_is_missing(shop, admin):
    address = "http://localhost:8000/webhooks/shopify"
    admin.on(
        "webhookSubscriptions",
        _data(
            {
                "webhookSubscriptions": {
                    "nodes": [{"id": "gid://shopify/WebhookSubscription/1", "topic": "ORDERS_CREATE", "uri": address}]
                }
            }
        ),
    )
    admin.on(
        "webhookSubscriptionCreate",
        _data(
            {
                "webhookSubscriptionCreate": {
                    "webhookSubscription": {
                        "id": "gid://shopify/WebhookSubscription/2",
                        "topic": "ORDERS_PAID",
                        "uri": address,
                    },
                    "userErrors": [],
                }
            }
        ),
    )
    topics = get_connector(shop).register_webhooks()
    assert topics == WEBHOOK_TOPICS
    created = [v for op, v in admin.calls if op == "webhookSubscriptionCreate"]
    assert [v["topic"] for v in created] == [t.replace("/", "_").upper() for t in WEBHOOK_TOPICS[1:]]
    assert "APP_UNINSTALLED" in [v["topic"] for v in created]
    assert {json.dumps(v["webhookSubscription"]) for v in created} == {json.dumps({"uri": address, "format": "JSON"})}
    assert not any("REDACT" in v["topic"] or "DATA_REQUEST" in v["topic"] for v in created)


def test_an_uninstalled_shop_has_no_connector(shop):
    from encore_retention.core.store.ledger import uninstall_shop

    with session_scope() as session:
        uninstall_shop(session, session.get(Shop, shop.id))
    with session_scope() as session:
        with pytest.raises(PlatformError, match="no access token"):
            get_connector(session.get(Shop, shop.id))


def test_shipped_app_configuration_declares_the_privacy_topics():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).parent.parent / "shopify.app.toml").read_text())
    declared = {topic for sub in config["webhooks"]["subscriptions"] for topic in sub.get("compliance_topics", [])}
    assert declared == {"customers/data_request", "customers/redact", "shop/redact"}
    assert config["auth"]["redirect_urls"][0].endswith("/shopify/callback")
    assert config["webhooks"]["api_version"] == "2026-04"


def test_stores_add_shopify_can_check_the_token_and_subscribe_webhooks(env, admin):
    admin.on(
        "shop",
        _data(
            {
                "shop": {
                    "name": "Encore Test",
                    "email": "o@example.com",
                    "contactEmail": "hello@encore-test.example",
                    "currencyCode": "CAD",
                    "ianaTimezone": "America/Toronto",
                    "primaryDomain": {"url": "https://shop.encore-test.example"},
                }
            }
        ),
    )
    admin.on("webhookSubscriptions", _data({"webhookSubscriptions": {"nodes": []}}))
    admin.on(
        "webhookSubscriptionCreate",
        lambda v: _data(
            {
                "webhookSubscriptionCreate": {
                    "webhookSubscription": {
                        "id": "gid://shopify/WebhookSubscription/5",
                        "topic": v["topic"],
                        "uri": v["webhookSubscription"]["uri"],
                    },
                    "userErrors": [],
                }
            }
        ),
    )
    result = CliRunner().invoke(
        main,
        [
            "stores",
            "add",
            "shopify",
            SHOP,
            "--access-token",
            TOKEN,
            "--webhook-secret",
            "custom-app-secret",
            "--register-webhooks",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "webhooks: orders/create" in result.output
    assert admin.ops().count("webhookSubscriptionCreate") == len(WEBHOOK_TOPICS)
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        assert (shop.name, shop.currency, shop.timezone) == ("Encore Test", "CAD", "America/Toronto")
        # the owner's address is the staff's; customers' replies go to the public contact address
        assert (shop.email, shop.reply_to) == ("o@example.com", "hello@encore-test.example")
        assert shop.url == "https://shop.encore-test.example" and shop.email_from is None


def test_stores_add_shopify_with_a_rejected_token_saves_nothing(env, admin):
    admin.on(
        "shop", (401, {}, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"})
    )
    result = CliRunner().invoke(
        main, ["stores", "add", "shopify", SHOP, "--access-token", TOKEN, "--register-webhooks"]
    )
    assert result.exit_code == 1 and "Invalid API key or access token" in result.output
    with session_scope() as session:
        assert session.execute(select(Shop)).scalars().all() == []


def test_complete_customer_fills_a_ledger_row_the_webhook_left_without_email(shop, admin):
    from encore_retention.connectors.enrich import complete_customer
    from encore_retention.core import events as ev
    from encore_retention.core.store.ledger import upsert_customer
    from encore_retention.core.store.models import Customer, utcnow

    with session_scope() as session:
        row = session.get(Shop, shop.id)
        upsert_customer(session, row, ev.Customer(id="207119551"), utcnow() - timedelta(days=30))
    admin.on("customer", _data({"customer": CUSTOMER_NODE}))
    with session_scope() as session:
        row = session.get(Shop, shop.id)
        customer = session.execute(select(Customer).where(Customer.platform_id == "207119551")).scalar_one()
        assert complete_customer(session, row, customer) is True
    with session_scope() as session:
        customer = session.execute(select(Customer)).scalar_one()
        assert customer.email == "bob.norman@mail.example.com" and customer.email_consent is True
        assert customer.birthday.isoformat() == "1988-02-29"
    # without access to protected data there is still no address: False, and no error
    admin.answers["customer"] = [
        {
            "data": {"customer": dict(CUSTOMER_NODE, id="gid://shopify/Customer/5", defaultEmailAddress=None)},
            "errors": [
                {
                    "message": "This app is not approved to access the Customer object.",
                    "extensions": {"code": "ACCESS_DENIED"},
                }
            ],
        }
    ]
    with session_scope() as session:
        row = session.get(Shop, shop.id)
        upsert_customer(session, row, ev.Customer(id="5"), utcnow() - timedelta(days=30))
        session.flush()
        other = session.execute(select(Customer).where(Customer.platform_id == "5")).scalar_one()
        assert complete_customer(session, row, other) is False


PROTECTED = "This app is not approved to subscribe to webhook topics containing protected customer data."


def test_topics_shopify_refuses_are_left_out_and_reported(shop, admin):
    admin.on("webhookSubscriptions", _data({"webhookSubscriptions": {"nodes": []}}))

    def create(variables):  # type: ignore[no-untyped-def]
        if variables["topic"].startswith("CUSTOMERS_"):
            return _data(
                {
                    "webhookSubscriptionCreate": {
                        "webhookSubscription": None,
                        "userErrors": [{"field": ["webhookSubscription"], "message": PROTECTED}],
                    }
                }
            )
        return _data(
            {
                "webhookSubscriptionCreate": {
                    "webhookSubscription": {
                        "id": "gid://shopify/WebhookSubscription/9",
                        "topic": variables["topic"],
                        "uri": variables["webhookSubscription"]["uri"],
                    },
                    "userErrors": [],
                }
            }
        )

    admin.on("webhookSubscriptionCreate", create)
    connector = get_connector(shop)
    topics = connector.register_webhooks()
    assert "orders/create" in topics and "app/uninstalled" in topics
    assert not any(t.startswith("customers/") for t in topics)
    assert set(connector.refused) == {t for t in WEBHOOK_TOPICS if t.startswith("customers/")}
    assert set(connector.refused.values()) == {PROTECTED}


def test_when_every_topic_is_refused_it_is_an_error(shop, admin):
    admin.on("webhookSubscriptions", _data({"webhookSubscriptions": {"nodes": []}}))
    refused = {"webhookSubscription": None, "userErrors": [{"message": PROTECTED}]}
    admin.on("webhookSubscriptionCreate", _data({"webhookSubscriptionCreate": refused}))
    with pytest.raises(PlatformError, match="not approved"):
        get_connector(shop).register_webhooks(["customers/create"])


# ---- account invitations and product pages ----------------------------------------------------------


def _accounts(version: str, url: str | None = "https://shopify.com/548380009/account") -> dict:
    """The shop query's `customerAccountsV2`, as the Admin API documents it."""
    return _data({"shop": {"customerAccountsV2": {"customerAccountsVersion": version, "url": url}}})


def _activation(url: str | None, errors: list | None = None) -> dict:
    return _data({"customerGenerateAccountActivationUrl": {"accountActivationUrl": url, "userErrors": errors or []}})


def test_classic_accounts_get_the_customers_own_activation_link(shop, admin):
    link = f"https://{SHOP}/account/activate/207119551/a1b2c3d4e5-1700000000"
    admin.on("customerAccounts", _accounts("CLASSIC", None))
    admin.on("customerGenerateAccountActivationUrl", _activation(link))
    assert ShopifyConnector(shop).account_invite_url("207119551", "ada@example.com") == link
    assert admin.calls == [
        ("customerAccounts", {}),
        ("customerGenerateAccountActivationUrl", {"customerId": "gid://shopify/Customer/207119551"}),
    ]


def test_new_customer_accounts_link_to_the_sign_in_page_without_a_mutation(shop, admin):
    admin.on("customerAccounts", _accounts("NEW_CUSTOMER_ACCOUNTS"))
    assert ShopifyConnector(shop).account_invite_url("207119551", "ada@example.com") == (
        "https://shopify.com/548380009/account"
    )
    assert admin.ops() == ["customerAccounts"]


def test_the_stores_setting_decides_which_accounts_it_uses(shop, admin):
    link = f"https://{SHOP}/account/activate/1/token"
    with session_scope() as session:
        row = session.get_one(Shop, shop.id)
        row.settings = {**(row.settings or {}), "customer_accounts": "classic"}
    with session_scope() as session:
        classic = session.get_one(Shop, shop.id)
        admin.on("customerGenerateAccountActivationUrl", _activation(link))
        assert ShopifyConnector(classic).account_invite_url("1", None) == link
        assert admin.ops() == ["customerGenerateAccountActivationUrl"]  # the shop is not asked
        classic.settings = {**classic.settings, "customer_accounts": "new"}
        admin.on("customerAccounts", _accounts("CLASSIC", f"https://{SHOP}/account"))
        assert ShopifyConnector(classic).account_invite_url("1", None) == f"https://{SHOP}/account"


def test_an_enabled_account_is_refused_with_shopifys_message(shop, admin):
    admin.on("customerAccounts", _accounts("CLASSIC", None))
    admin.on(
        "customerGenerateAccountActivationUrl",
        _activation(None, [{"field": ["customerId"], "message": "Account already enabled"}]),
    )
    with pytest.raises(PlatformError) as raised:
        ShopifyConnector(shop).account_invite_url("207119551", None)
    assert raised.value.status == 422 and "Account already enabled" in raised.value.message
    assert not raised.value.transient


def test_product_url_is_the_online_store_page_or_none(shop, admin):
    admin.on(
        "product",
        _data({"product": {"onlineStoreUrl": f"https://{SHOP}/products/green-tea"}}),
        _data({"product": {"onlineStoreUrl": None}}),
    )
    connector = ShopifyConnector(shop)
    assert connector.product_url("632910392") == f"https://{SHOP}/products/green-tea"
    assert connector.product_url("632910393") is None
    assert admin.calls[0] == ("product", {"id": "gid://shopify/Product/632910392"})
