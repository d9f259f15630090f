"""Normalisation: each platform's documented payloads, older API versions and withheld fields."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from encore_retention.core.events import Event, EventType, event_id
from encore_retention.webhooks.base import Delivery
from encore_retention.webhooks.shopify import receiver as shopify
from encore_retention.webhooks.woocommerce import receiver as woocommerce
from tests.conftest import payload


def _shopify(topic: str, data: dict, webhook_id: str = "d1f2") -> Event:
    events = shopify.parse(
        Delivery(
            shop="s.myshopify.com",
            topic=topic,
            delivery_id=webhook_id,
            headers={"triggered_at": "2026-01-02T03:04:05Z"},
        ),
        data,
        json.dumps(data).encode(),
    )
    assert len(events) == 1
    return events[0]


def _woo(topic: str, data: dict) -> Event:
    events = woocommerce.parse(Delivery(shop="woo.example.com", topic=topic), data, json.dumps(data).encode())
    assert len(events) == 1
    return events[0]


def test_shopify_order_maps_money_ids_and_customer():
    event = _shopify("orders/create", payload("shopify", "orders_create"))
    assert event.type is EventType.ORDER_PLACED
    assert event.id == "shopify-d1f2"
    order = event.order
    assert order.id == "820982911946154508"  # exact, from admin_graphql_api_id, not the rounded `id`
    assert order.total == Decimal("404.95") and order.currency == "USD"
    assert order.created_at == datetime(2022, 1, 1, 0, 0, tzinfo=UTC)
    assert order.line_items[0].title == "Aviator sunglasses" and order.line_items[0].price == Decimal("89.99")
    assert order.cancelled_at is not None and order.financial_status == "voided"
    assert event.customer.id == "115310627314723954"
    assert event.customer.email == "john@example.com" and event.customer.first_name == "John"
    assert event.raw["id"] == payload("shopify", "orders_create")["id"]


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        ("orders/paid", EventType.ORDER_PAID),
        ("orders/fulfilled", EventType.ORDER_FULFILLED),
        ("orders/cancelled", EventType.ORDER_CANCELLED),
        ("orders/updated", EventType.ORDER_UPDATED),
    ],
)
def test_shopify_order_topics(topic, kind):
    assert _shopify(topic, payload("shopify", "orders_paid")).type is kind


def test_shopify_order_without_protected_customer_data():
    """Without protected-customer-data approval the order has no email, name or customer."""
    data = payload("shopify", "orders_create")
    for field in ("email", "contact_email", "customer", "billing_address", "shipping_address", "phone"):
        data.pop(field, None)
    event = _shopify("orders/create", data)
    assert event.customer is None and event.order.total == Decimal("404.95")


def test_shopify_guest_order_is_known_by_email():
    data = payload("shopify", "orders_create")
    data["customer"] = None
    event = _shopify("orders/create", data)
    assert event.customer.id is None and event.customer.key == "email:jon@example.com"


def test_shopify_customer_of_current_api_has_no_consent_or_tags():
    event = _shopify("customers/create", payload("shopify", "customers_create"))
    assert event.type is EventType.CUSTOMER_CREATED
    customer = event.customer
    assert customer.id == "706405506930370084" and customer.email == "bob@biller.com"
    assert customer.email_consent is None and customer.tags is None and customer.orders_count is None


def test_shopify_customer_of_an_older_api_version_carries_consent_tags_and_counts():
    data = payload("shopify", "customers_create")
    data.update(
        {
            "tags": "vip, newsletter",
            "orders_count": 4,
            "total_spent": "199.00",
            "state": "enabled",
            "email_marketing_consent": {
                "state": "subscribed",
                "opt_in_level": "single_opt_in",
                "consent_updated_at": "2025-03-01T10:00:00-05:00",
            },
        }
    )
    customer = _shopify("customers/update", data).customer
    assert customer.tags == ["vip", "newsletter"] and customer.orders_count == 4
    assert customer.total_spent == Decimal("199.00") and customer.has_account is True
    assert customer.email_consent is True and customer.consent_updated_at == datetime(2025, 3, 1, 15, tzinfo=UTC)
    legacy = payload("shopify", "customers_create") | {"accepts_marketing": False}
    assert _shopify("customers/update", legacy).customer.email_consent is False


def test_shopify_consent_and_purchasing_summary_topics():
    consent = _shopify(
        "customers/email_marketing_consent_update", payload("shopify", "customers_email_marketing_consent_update")
    )
    assert consent.type is EventType.CUSTOMER_CONSENT_CHANGED
    assert consent.customer.id == "706405506930370000" and consent.customer.email_consent is False
    summary = _shopify("customers/purchasing_summary", payload("shopify", "customers_purchasing_summary"))
    assert summary.type is EventType.CUSTOMER_PURCHASING_SUMMARY
    figures = (summary.customer.id, summary.customer.orders_count, summary.customer.total_spent)
    assert figures == ("1", 1, Decimal("100.00"))


def test_shopify_checkout_uses_token():
    event = _shopify("checkouts/create", payload("shopify", "checkouts_create"))
    assert event.type is EventType.CHECKOUT_STARTED
    assert event.checkout.token == "123123123"
    assert event.checkout.recovery_url.startswith("https://checkout.local/")
    assert event.checkout.total == Decimal("421.88") and event.customer.email == "john@example.com"


def test_shopify_privacy_topics():
    redact = _shopify("customers/redact", payload("shopify", "customers_redact"))
    assert redact.type is EventType.CUSTOMER_REDACT and redact.type.is_privacy
    assert redact.customer.id == "191167" and redact.data["orders_to_redact"] == ["299938", "280263", "220458"]
    request = _shopify("customers/data_request", payload("shopify", "customers_data_request"))
    assert request.data["data_request_id"] == "9999"
    assert _shopify("shop/redact", payload("shopify", "shop_redact")).type is EventType.SHOP_REDACT
    assert _shopify("app/uninstalled", payload("shopify", "app_uninstalled")).type is EventType.APP_UNINSTALLED


def test_woocommerce_order_created_and_updated():
    created = _woo("order.created", payload("woocommerce", "order_created"))
    assert created.type is EventType.ORDER_PLACED
    assert created.order.id == "727" and created.order.total == Decimal("29.35")
    assert created.order.created_at == datetime(2017, 3, 22, 19, 28, 2, tzinfo=UTC)  # the _gmt field, as UTC
    assert created.customer.id is None and created.customer.key == "email:john.doe@example.com"  # a guest
    updated = _woo("order.updated", payload("woocommerce", "order_updated"))
    assert updated.type is EventType.ORDER_FULFILLED and updated.order.fulfillment_status == "fulfilled"
    assert created.id != updated.id  # date_modified_gmt differs


def test_woocommerce_dedupe_key_ignores_delivery_id_and_body_formatting():
    data = payload("woocommerce", "order_created")
    one = woocommerce.parse(Delivery(shop="w.example", topic="order.created", delivery_id="a"), data, b"x")[0]
    two = woocommerce.parse(Delivery(shop="w.example", topic="order.created", delivery_id="b"), data, b"y")[0]
    assert one.id == two.id


def test_woocommerce_customer_with_birthday_and_consent_meta(env):
    data = payload("woocommerce", "customer_created")
    data["meta_data"] = [
        {"id": 1, "key": "birthday", "value": "1990-02-28"},
        {"id": 2, "key": "marketing_consent", "value": "yes"},
    ]
    customer = _woo("customer.created", data).customer
    assert customer.id == "25" and customer.birthday == date(1990, 2, 28) and customer.email_consent is True
    env.setenv("WOOCOMMERCE_CONSENT_META", "newsletter")
    from encore_retention.core.settings import reset_settings

    reset_settings()
    assert _woo("customer.created", data).customer.email_consent is None  # key not present: unknown


def test_unknown_topics_give_no_event():
    assert shopify.parse(Delivery(shop="s", topic="products/create"), {"id": 1}, b"{}") == []
    assert (
        woocommerce.parse(Delivery(shop="w", topic="coupon.created"), payload("woocommerce", "coupon_created"), b"{}")
        == []
    )


def test_event_round_trips_through_json():
    event = _shopify("orders/create", payload("shopify", "orders_create"))
    again = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    assert again == event
    assert again.order.total == Decimal("404.95")


def test_event_id_is_a_valid_job_id():
    assert event_id("shopify", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043") == "shopify-b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    hashed = event_id("woocommerce", "shop", "order.updated", 727, "2017-03-22T19:30:35")
    assert hashed.startswith("woocommerce-") and len(hashed) == len("woocommerce-") + 40
    assert event_id("shopify", "weird id/with:chars") != "shopify-weird id/with:chars"


# ---- what the store can hold ---------------------------------------------------------------------------


def test_a_time_with_no_utc_equivalent_is_refused_not_overflowed():
    from encore_retention.core.events import parse_datetime

    with pytest.raises(ValueError, match="out of range"):
        parse_datetime("0001-01-01T00:00:00+05:00")
    with pytest.raises(ValueError, match="out of range"):
        parse_datetime("9999-12-31T23:00:00-05:00")
    assert parse_datetime("not a date") is None  # junk is still "not told"
    assert parse_datetime("2026-11-20T10:00:00+05:00") == datetime(2026, 11, 20, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "inside", "outside"),
    [
        ("orders_count", 2**31 - 1, 2**31),
        ("orders_count", 0, -1),
        ("total_spent", Decimal("999999999999.99"), Decimal("1000000000000")),
        ("total_spent", Decimal("-999999999999.99"), Decimal("-1000000000000")),
        ("total_spent", Decimal("0.30000000000000004"), Decimal("1e-999999")),
        ("created_at", datetime(1900, 1, 1, tzinfo=UTC), datetime(1899, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("created_at", datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)),
        ("birthday", date(1900, 1, 1), date(1899, 12, 31)),
        ("first_name", "x" * 255, "x" * 256),
        ("first_name", "Zoë 😀", "Jo\x00hn"),
        ("id", "9" * 128, "9" * 129),
    ],
)
def test_customer_values_are_bounded_to_what_the_store_holds(field, inside, outside):
    from pydantic import ValidationError

    from encore_retention.core.events import Customer

    assert getattr(Customer(**{field: inside}), field) == inside
    with pytest.raises(ValidationError):
        Customer(**{field: outside})
    customer = Customer()
    with pytest.raises(ValidationError):  # an assignment is checked too
        setattr(customer, field, outside)


def test_line_item_quantity_fits_64_bits_and_money_is_finite():
    from pydantic import ValidationError

    from encore_retention.core.events import LineItem

    assert LineItem(quantity=2**63 - 1).quantity == 2**63 - 1
    for bad in (
        {"quantity": 2**63},
        {"quantity": int(1e300)},
        {"price": Decimal("NaN")},
        {"price": Decimal("Infinity")},
    ):
        with pytest.raises(ValidationError):
            LineItem(**bad)


def test_a_guests_key_must_fit_the_ledger_but_a_registered_customers_email_may_be_longer():
    from pydantic import ValidationError

    from encore_retention.core.events import Customer

    address = "x" * 150 + "@example.com"
    assert Customer(id="42", email=address).key == "42"
    assert Customer(email="x" * 110 + "@example.com").key is not None
    with pytest.raises(ValidationError, match="can't key the ledger"):
        Customer(email=address)


def test_the_event_models_bounds_are_the_store_columns_widths():
    """The text bounds of the event model follow the columns they are stored in."""
    from typing import get_args

    from encore_retention.core import events as ev
    from encore_retention.core.store import models

    def width(model: type[ev.BaseModel], field: str) -> int:
        info = model.model_fields[field]  # `Key` keeps its bounds in the metadata, `Key | None` in the annotation
        nested = [meta for arg in get_args(info.annotation) for meta in getattr(arg, "__metadata__", ())]
        for meta in [*info.metadata, *nested]:
            if getattr(meta, "max_length", None):
                return int(meta.max_length)
        raise AssertionError(f"{model.__name__}.{field} has no bound")

    columns = {
        (ev.Customer, "id"): models.Customer.platform_id,
        (ev.Customer, "email"): models.Customer.email,
        (ev.Customer, "first_name"): models.Customer.first_name,
        (ev.Customer, "last_name"): models.Customer.last_name,
        (ev.Customer, "phone"): models.Customer.phone,
        (ev.Customer, "locale"): models.Customer.locale,
        (ev.Order, "id"): models.Order.platform_id,
        (ev.Order, "number"): models.Order.number,
        (ev.Order, "currency"): models.Order.currency,
        (ev.Order, "financial_status"): models.Order.financial_status,
        (ev.Order, "fulfillment_status"): models.Order.fulfillment_status,
        (ev.Event, "id"): models.EventRecord.id,
        (ev.Event, "topic"): models.EventRecord.topic,
        (ev.Event, "platform"): models.EventRecord.platform,
        (ev.Event, "shop"): models.Shop.domain,
    }
    for (model, field), column in columns.items():
        assert width(model, field) == column.type.length, f"{model.__name__}.{field}"
    assert ev.KEY_MAX == models.Customer.platform_id.type.length
    money = models.Customer.total_spent.type
    assert ev.MONEY_MAX == Decimal(10) ** (money.precision - money.scale) - Decimal(1).scaleb(-money.scale)
