"""The receivers: one shared table of bad inputs for every installed platform, then each platform's own cases.

The table knows no platform: it takes each one's example deliveries, its signing and where its examples keep
a field from the platform's plug-in entry (`Platform.samples`), so a platform installed from another package
runs the same cases (tests/test_platform_plugin.py runs this module with one installed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select

from encore_retention.connectors.base import Platform, Samples, platforms
from encore_retention.core import archive
from encore_retention.core.queue import BODY_PREFIX, EVENTS, PROCESS_DELIVERY, enqueue_delivery, queue
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.models import Customer, EventRecord, Order
from encore_retention.webhooks.base import Delivery
from tests.conftest import (
    SHOP,
    SHOPIFY_SECRET,
    WC_SECRET,
    WC_URL,
    drain,
    payload,
    shopify_headers,
    woo_headers,
)

PLATFORMS = sorted(name for name, entry in platforms().items() if entry.samples is not None)
SECRET = "examples-webhook-secret"  # the example store's own webhook secret, on every platform

Case = Callable[[Platform, bytes, dict[str, str]], tuple[bytes, dict[str, str], int]]


@pytest.fixture
def example_store(env: pytest.MonkeyPatch) -> Callable[[str], Platform]:
    """Register a platform's example store, signing with SECRET, in the test's database; returns the platform."""

    def connect(name: str) -> Platform:
        entry = platforms()[name]
        assert entry.samples is not None
        migrate()
        entry.samples.connect(entry.samples.store, SECRET)
        return entry

    return connect


def _samples(entry: Platform) -> Samples:
    assert entry.samples is not None, f"{entry.name} has no samples"
    return entry.samples


def _valid(entry: Platform) -> tuple[bytes, dict[str, str]]:
    samples = _samples(entry)
    body = json.dumps(samples.example(samples.order_topic)).encode()
    return body, samples.headers(body, secret=SECRET)


def _signed(entry: Platform, body: bytes, topic: str | None = None) -> dict[str, str]:
    return _samples(entry).headers(body, topic, secret=SECRET)


def _set(data: Any, path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _missing_signature(entry, body, headers):
    return body, {k: v for k, v in headers.items() if k not in entry.signature_headers}, 401


def _wrong_signature(entry, body, headers):
    return body, _samples(entry).headers(body, secret="not-the-secret"), 401


def _tampered_body(entry, body, headers):
    data = json.loads(body)
    topic, path = _samples(entry).fields["total"]
    _set(data, path, "4.95")
    return json.dumps(data).encode(), headers, 401


def _garbage_signature(entry, body, headers):
    return body, {**headers, **dict.fromkeys(entry.signature_headers, "%%%not base64%%%")}, 401


def _empty_body(entry, body, headers):
    return b"", _signed(entry, b""), 400


def _not_json(entry, body, headers):
    bad = b"{this is not json"
    return bad, _signed(entry, bad), 400


def _json_array(entry, body, headers):
    bad = b"[1, 2, 3]"
    return bad, _signed(entry, bad), 400


def _wrong_content_type(entry, body, headers):
    return body, {**headers, "Content-Type": "text/plain"}, 400


def _huge_body(entry, body, headers):
    big = b'{"pad": "' + b"x" * (2 * 1024 * 1024 + 10) + b'"}'
    return big, _signed(entry, big), 413


def _unknown_store(entry, body, headers):
    samples = _samples(entry)
    return body, samples.headers(body, secret="another-stores-secret", store=samples.stranger), 401


def _missing_id(entry, body, headers):
    data = json.loads(body)
    topic, path = _samples(entry).fields["order_id"]
    target = data
    for key in path[:-1]:
        target = target[key]
    target.pop(path[-1])
    data.pop("id", None)
    bad = json.dumps(data).encode()
    return bad, _signed(entry, bad), 400


def _bad_source(name: str, value: str) -> Case:
    """A store header no store can have (a port out of range, a broken IPv6 address, `javascript:…`): 401."""

    def case(entry, body, headers):
        return body, {**headers, _samples(entry).store_header: value}, 401

    case.__name__ = name
    return case


def _signed_change(name: str, field: str, value: Any) -> Case:
    """A signed delivery of the example that carries `field`, with the field set to `value`: 400."""

    def case(entry, body, headers):
        samples = _samples(entry)
        topic, path = samples.fields[field]
        data = samples.example(topic)
        _set(data, path, value)
        bad = json.dumps(data).encode()
        return bad, _signed(entry, bad, topic), 400

    case.__name__ = name
    return case


def _number_cases() -> list[Case]:
    return [
        _signed_change("_orders_count_1e300", "orders_count", 1e300),
        _signed_change("_orders_count_23_digits", "orders_count", "99999999999999999999999"),
        _signed_change("_orders_count_over_int32", "orders_count", 2**31),
        _signed_change("_orders_count_negative", "orders_count", -1),
        _signed_change("_quantity_1e300", "quantity", 1e300),
        _signed_change("_quantity_over_int64", "quantity", 2**63),
        _signed_change("_created_at_year_1_east_of_utc", "created_at", "0001-01-01T00:00:00+05:00"),
        _signed_change("_created_at_year_9999_west_of_utc", "created_at", "9999-12-31T23:00:00-05:00"),
        _signed_change("_created_at_year_1", "created_at", "0001-01-01T00:00:00Z"),
        _signed_change("_created_at_year_3000", "created_at", "3000-01-01T00:00:00Z"),
    ]


BAD_INPUTS: list[Case] = [
    _missing_signature,
    _wrong_signature,
    _tampered_body,
    _garbage_signature,
    _empty_body,
    _not_json,
    _json_array,
    _wrong_content_type,
    _huge_body,
    _unknown_store,
    _missing_id,
    _bad_source("_source_port_out_of_range", "http://a:99999/"),
    _bad_source("_source_broken_ipv6", "http://[::1"),
    _bad_source("_source_javascript", "javascript:alert(1)"),
    _bad_source("_source_longer_than_a_domain", "w" * 300 + ".myshopify.com"),
    *_number_cases(),
    _signed_change("_total_over_numeric_14_2", "total", "1000000000000"),
    _signed_change("_total_with_a_huge_exponent", "total", "1e-999999"),
    _signed_change("_email_over_its_column", "email", "x" * 320 + "@example.com"),
    _signed_change("_name_with_nul", "first_name", "Jo\x00hn"),
    _signed_change("_order_id_over_its_column", "order_id", "9" * 129),
    _signed_change("_currency_over_its_column", "currency", "DOLLARS!!"),
]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_rejected_and_nothing_is_queued(platform, case, client, redis: Redis, example_store):
    entry = example_store(platform)
    body, headers = _valid(entry)
    body, headers, expected = case(entry, body, headers)
    response = client.post(f"/webhooks/{platform}", data=body, headers=headers)
    assert response.status_code == expected, response.get_data(as_text=True)
    assert response.is_json and response.get_json()["error"]
    assert queue(EVENTS, redis).count == 0
    recorded = archive.rejections()  # the admin page's rejected webhooks
    assert recorded and (recorded[0]["platform"], recorded[0]["status"]) == (platform, expected)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_valid_delivery_is_queued(platform, client, redis: Redis, example_store):
    entry = example_store(platform)
    body, headers = _valid(entry)
    response = client.post(f"/webhooks/{platform}", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "queued"
    assert queue(EVENTS, redis).count == 1
    job = queue(EVENTS, redis).jobs[0]
    assert job.id == response.get_json()["events"][0]
    assert job.args[0] == platform and job.args[1]["key"] == job.id
    assert redis.get(BODY_PREFIX + job.id) == body  # the raw body is queued with the job, untouched
    assert not set(map(str.lower, job.args[1]["http_headers"])) & set(map(str.lower, entry.signature_headers))
    drain(redis)
    with session_scope() as session:
        record = session.execute(select(EventRecord)).scalar_one()
        assert (record.id, record.type) == (job.id, "order.placed")
    assert redis.get(BODY_PREFIX + job.id) is None  # processed: the archive keeps it, Redis lets it go


def test_shopify_delivered_twice_is_one_job_and_one_ledger_update(client, redis: Redis):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create", webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    first = client.post("/webhooks/shopify", data=body, headers=headers)
    retry = client.post("/webhooks/shopify", data=body, headers={**headers, "X-Shopify-Triggered-At": "later"})
    assert (first.status_code, retry.status_code) == (200, 200)
    assert (first.get_json()["status"], retry.get_json()["status"]) == ("queued", "duplicate")
    assert queue(EVENTS, redis).count == 1
    drain(redis)
    # The same delivery processed again (a job retried after a crash) changes nothing either.
    from encore_retention.jobs import process_delivery

    job = queue(EVENTS, redis).fetch_job(first.get_json()["events"][0])
    assert job is not None and job.is_finished
    redis.set(BODY_PREFIX + job.id, body)  # as if the worker died after committing, before cleaning up
    assert process_delivery(*job.args)["new"] is False
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EventRecord)) == 1
        assert session.scalar(select(func.count()).select_from(Order)) == 1
        customer = session.execute(select(Customer)).scalar_one()
        assert customer.platform_id == "115310627314723954"  # exact id from admin_graphql_api_id
        assert customer.email == "john@example.com"


def test_shopify_event_id_header_is_not_the_dedupe_key(client, redis: Redis):
    """One merchant action fires several topics sharing X-Shopify-Event-Id: each is its own event."""
    body = json.dumps(payload("shopify", "orders_create")).encode()
    event_id = str(uuid.uuid4())
    for topic in ("orders/create", "orders/paid"):
        response = client.post(
            "/webhooks/shopify", data=body, headers={**shopify_headers(body, topic), "X-Shopify-Event-Id": event_id}
        )
        assert response.get_json()["status"] == "queued"
    assert queue(EVENTS, redis).count == 2


def test_shopify_previous_secret_is_accepted_during_rotation(client, redis: Redis, env):
    env.setenv("SHOPIFY_API_SECRET", "the-new-secret")
    env.setenv("SHOPIFY_API_SECRET_PREVIOUS", SHOPIFY_SECRET)
    from encore_retention.core.settings import reset_settings

    reset_settings()
    body = json.dumps(payload("shopify", "customers_create")).encode()
    old = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "customers/create"))
    new = client.post(
        "/webhooks/shopify", data=body, headers=shopify_headers(body, "customers/create", secret="the-new-secret")
    )
    stale = client.post(
        "/webhooks/shopify", data=body, headers=shopify_headers(body, "customers/create", secret="an-older-secret")
    )
    assert (old.status_code, new.status_code, stale.status_code) == (200, 200, 401)


def test_unhandled_topic_is_answered_200_and_not_queued(client, redis: Redis):
    body = json.dumps({"id": 1, "title": "A product"}).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "products/create"))
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert queue(EVENTS, redis).count == 0


def test_woocommerce_creation_ping_gets_exactly_200(client, redis: Redis):
    response = client.post(
        "/webhooks/woocommerce", data="webhook_id=42", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200
    assert queue(EVENTS, redis).count == 0


def test_woocommerce_redelivery_with_new_delivery_id_is_a_duplicate(client, redis: Redis, woo_store):
    body = json.dumps(payload("woocommerce", "order_created")).encode()
    first = client.post("/webhooks/woocommerce", data=body, headers=woo_headers(body, "order.created"))
    again = client.post("/webhooks/woocommerce", data=body, headers=woo_headers(body, "order.created"))
    assert first.get_json()["status"] == "queued"
    assert again.get_json()["status"] == "duplicate"
    updated = json.dumps(payload("woocommerce", "order_updated")).encode()
    later = client.post("/webhooks/woocommerce", data=updated, headers=woo_headers(updated, "order.updated"))
    assert later.get_json()["status"] == "queued"
    assert queue(EVENTS, redis).count == 2
    drain(redis)
    with session_scope() as session:
        types = session.execute(select(EventRecord.type).order_by(EventRecord.occurred_at)).scalars().all()
    assert types == ["order.placed", "order.fulfilled"]  # order.updated with status completed


def test_woocommerce_store_matches_http_and_https_and_trailing_slash(client, redis: Redis, woo_store):
    body = json.dumps(payload("woocommerce", "customer_created")).encode()
    headers = woo_headers(body, "customer.created", source=WC_URL.replace("https://", "http://") + "/")
    response = client.post("/webhooks/woocommerce", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_woocommerce_wrong_secret_for_a_known_store_is_401(client, redis: Redis, woo_store):
    body = json.dumps(payload("woocommerce", "order_created")).encode()
    response = client.post(
        "/webhooks/woocommerce", data=body, headers=woo_headers(body, "order.created", secret=WC_SECRET + "x")
    )
    assert response.status_code == 401


def test_redis_down_gives_503_and_a_retry_is_accepted_later(client, redis: Redis, monkeypatch):
    from encore_retention.core import queue as encore_queue

    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create")
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    encore_queue.set_redis(dead)
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 503
    encore_queue.set_redis(redis)
    retried = client.post("/webhooks/shopify", data=body, headers=headers)
    assert retried.status_code == 200
    assert retried.get_json()["status"] == "queued"


@pytest.mark.parametrize("round_trips", [0, 1, 2, 3])
def test_redis_dying_mid_delivery_never_leaves_a_200_without_its_job(client, redis: Redis, round_trips: int):
    """Redis answers `round_trips` commands, then the connection dies: a 503, or a 200 with the job and body there.

    Whatever the first answer, the platform's retry (Redis back) ends with the job and its body in Redis.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError

    from encore_retention.core import queue as encore_queue
    from encore_retention.core.queue import BODY_PREFIX

    class Dying(Redis):
        left = round_trips

        def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
            if Dying.left <= 0:
                raise RedisConnectionError("connection reset by peer")
            Dying.left -= 1
            return super().execute_command(*args, **options)

    dying = Dying(connection_pool=redis.connection_pool)
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create")
    encore_queue.set_redis(dying)
    first = client.post("/webhooks/shopify", data=body, headers=headers)
    encore_queue.set_redis(redis)
    assert first.status_code in (200, 503)
    key = f"shopify-{headers['X-Shopify-Webhook-Id']}"
    if first.status_code == 200:
        assert redis.exists(f"rq:job:{key}") and redis.exists(BODY_PREFIX + key)
    else:
        assert not redis.exists(f"encore:seen:{key}")
    retried = client.post("/webhooks/shopify", data=body, headers=headers)
    assert retried.status_code == 200
    assert retried.get_json()["status"] == ("duplicate" if first.status_code == 200 else "queued")
    assert redis.exists(f"rq:job:{key}") and redis.exists(BODY_PREFIX + key)
    assert redis.lrange("rq:queue:events", 0, -1) == [key.encode()]


def test_a_script_stopped_by_an_error_writes_no_dedupe_mark(client, redis: Redis):
    """A key of the wrong type stops the enqueue script: 503, no mark, and the retry is accepted once fixed."""
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create")
    redis.set("rq:queue:events", "not a list")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 503
    assert not redis.exists(f"encore:seen:shopify-{headers['X-Shopify-Webhook-Id']}")
    redis.delete("rq:queue:events")
    assert client.post("/webhooks/shopify", data=body, headers=headers).get_json()["status"] == "queued"


def test_healthz_reports_the_failing_part(client, redis: Redis):
    from encore_retention.core import queue as encore_queue

    assert client.get("/healthz").status_code == 200
    encore_queue.set_redis(Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "redis" in response.get_json()["failing"]


def test_shop_domain_header_must_be_a_myshopify_domain(client, redis: Redis):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create", shop="evil.example.com")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 400
    assert SHOP.endswith(".myshopify.com")


def test_a_data_request_id_wider_than_its_column_is_answered_400(client, redis: Redis):
    data = payload("shopify", "customers_data_request")
    data["data_request"]["id"] = "9" * 65  # kept with the export, data_exports.request_id: 64 characters
    body = json.dumps(data).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "customers/data_request"))
    assert response.status_code == 400
    assert "data_request.id" in archive.rejections()[0]["detail"]


@pytest.mark.parametrize(
    ("topic", "example", "path", "value"),
    [
        ("customers/purchasing_summary", "customers_purchasing_summary", ("amountSpent",), "1,000 USD"),
        ("customers/data_request", "customers_data_request", ("customer",), "a string"),
        ("customers/redact", "customers_redact", ("orders_to_redact",), {"0": 1}),
        ("orders/create", "orders_create", ("line_items",), "none"),
        ("orders/create", "orders_create", ("discount_codes",), 12),
    ],
)
def test_an_object_or_array_of_the_wrong_type_is_read_as_empty(topic, example, path, value, client, redis: Redis):
    """As WooCommerce sends an empty object as `[]`: no 500 (the parsers once called `.get` on a string)."""
    data = payload("shopify", example)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    body = json.dumps(data).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, topic))
    assert response.status_code == 200, response.get_data(as_text=True)
    drain(redis)
    job = queue(EVENTS, redis).fetch_job(response.get_json()["events"][0])
    assert job.is_finished and "rejected" not in job.return_value()


def test_a_value_the_event_model_refuses_is_answered_400_before_anything_is_queued(client, redis: Redis, woo_store):
    data = payload("woocommerce", "order_created")
    data["line_items"][0]["quantity"] = "two"
    body = json.dumps(data).encode()
    response = client.post("/webhooks/woocommerce", data=body, headers=woo_headers(body, "order.created"))
    assert response.status_code == 400
    assert queue(EVENTS, redis).count == 0
    rejected = archive.rejections()[0]
    assert (rejected["reason"], rejected["topic"], rejected["status"]) == ("malformed", "order.created", 400)


def _queue_as_accepted(entry: Platform, data: dict, topic: str, key: str, shop: str | None = None) -> None:
    """Queue a delivery the way the receiver does after its 200, but without its checks (an older version's).

    The store is the one the receiver finds for the example store's signed delivery, unless `shop` names it.
    """
    body = json.dumps(data).encode()
    shop = shop or entry.receiver.verify(_signed(entry, body, topic), body).shop
    delivery = Delivery(shop=shop, topic=topic, delivery_id=key, key=key, received_at="2026-11-20T10:00:00+00:00")
    assert enqueue_delivery(entry.name, delivery.to_dict(), body, key)


# The values that once passed the receiver and then failed the worker on every retry.
WORKER_BAD_VALUES = {
    "orders_count_1e300": ("orders_count", 1e300),
    "orders_count_23_digits": ("orders_count", "99999999999999999999999"),
    "quantity_1e300": ("quantity", 1e300),
    "created_at_year_1_east_of_utc": ("created_at", "0001-01-01T00:00:00+05:00"),
    "created_at_year_9999_west_of_utc": ("created_at", "9999-12-31T23:00:00-05:00"),
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("value", WORKER_BAD_VALUES)
def test_a_queued_delivery_the_worker_cannot_take_is_recorded_and_not_retried(
    platform, value, env, db_url, redis: Redis, example_store
):
    """Data errors are the same on every attempt: the job ends, the rejection is recorded, nothing is applied."""
    from rq.job import JobStatus

    from tests.conftest import use_database

    use_database(env, db_url)
    entry = example_store(platform)
    samples = _samples(entry)
    field, bad_value = WORKER_BAD_VALUES[value]
    topic, path = samples.fields[field]
    data = samples.example(topic)
    _set(data, path, bad_value)
    bad_key = f"{platform}-bad-{value.replace('_', '-')}"
    _queue_as_accepted(entry, data, topic, bad_key)
    good = samples.example(samples.order_topic)  # the same queue, a delivery the worker can take
    _queue_as_accepted(entry, good, samples.order_topic, f"{platform}-good")
    drain(redis)
    job = queue(EVENTS, redis).fetch_job(bad_key)
    assert job.get_status() == JobStatus.FINISHED and job.retries_left == 5  # never retried
    assert job.return_value()["rejected"]
    assert not queue(EVENTS, redis).failed_job_registry.count
    assert not queue(EVENTS, redis).scheduled_job_registry.count
    rejected = archive.rejections()[0]
    assert (rejected["platform"], rejected["reason"], rejected["topic"]) == (platform, "malformed", topic)
    assert rejected["delivery_id"] == bad_key
    assert not redis.exists(BODY_PREFIX + job.id)
    with session_scope() as session:
        ids = session.execute(select(EventRecord.id)).scalars().all()
    assert ids == [f"{platform}-good"]


def test_an_event_the_database_refuses_is_rejected_and_the_deliverys_others_are_applied(
    env, postgres_url, redis, monkeypatch, example_store
):
    """A value the event model let through but PostgreSQL refuses (DataError) is not retried either."""
    if postgres_url is None:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
    from tests.conftest import _truncate_postgres, use_database

    _truncate_postgres(postgres_url)
    use_database(env, postgres_url)
    entry = example_store("shopify")
    receiver = entry.receiver
    parse = receiver.parse

    def two_events(delivery, payload_, body):  # type: ignore[no-untyped-def]
        good = parse(delivery, payload_, body)[0]
        bad = good.model_copy(update={"id": good.id + "-2"})
        bad.order = bad.order.model_construct(**{**dict(bad.order), "number": "9" * 65})  # wider than its column
        return [bad, good]

    monkeypatch.setattr(receiver, "parse", two_events)
    _queue_as_accepted(entry, payload("shopify", "orders_create"), "orders/create", "shopify-two")
    drain(redis)
    job = queue(EVENTS, redis).fetch_job("shopify-two")
    assert job.is_finished and job.retries_left == 5
    results = job.return_value()["results"]
    assert "value too long" in results[0]["rejected"] and results[1]["new"] is True
    assert archive.rejections()[0]["detail"].startswith("orders/create: the database refused a value")
    with session_scope() as session:
        assert session.execute(select(EventRecord.id)).scalars().all() == ["shopify-two"]
        assert session.execute(select(Order.number)).scalars().all() == ["1234"]


def test_a_database_that_does_not_answer_is_retried(env, redis: Redis):
    """Not a data error: the job fails and RQ schedules its retry, the body kept for it."""
    from tests.conftest import use_database

    use_database(env, "postgresql+psycopg://postgres@127.0.0.1:1/encore?connect_timeout=1")
    shopify = platforms()["shopify"]
    _queue_as_accepted(shopify, payload("shopify", "orders_create"), "orders/create", "shopify-later", shop=SHOP)
    drain(redis)
    job = queue(EVENTS, redis).fetch_job("shopify-later")
    assert job.get_status() == "scheduled" and job.retries_left == 4
    assert redis.exists(BODY_PREFIX + job.id)
    assert archive.rejections() == []


def test_a_queued_delivery_is_the_job_rq_itself_would_write(redis: Redis):
    """The enqueue script writes RQ's own job hash: the same fields, read back by RQ as the same call."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from encore_retention.core.queue import EVENT_RETRY, FAILURE_TTL, RESULT_TTL, enqueue_delivery

    delivery = {"shop": SHOP, "topic": "orders/create", "delivery_id": "d-1", "http_headers": {"X-A": "é"}}
    assert enqueue_delivery("shopify", delivery, b"{}", "shopify-d-1", redis)
    q = queue(EVENTS, redis)
    model = q.create_job(
        PROCESS_DELIVERY,
        args=("shopify", delivery),
        job_id="m",
        retry=EVENT_RETRY,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description="shopify orders/create",
    )
    q._prepare_for_queue(model)
    expected = {name for name, value in model.to_dict().items() if value is not None}
    assert {name.decode() for name in redis.hkeys("rq:job:shopify-d-1")} == expected
    job = Job.fetch("shopify-d-1", connection=redis, serializer=JSONSerializer)
    assert (job.func_name, job.args, job.kwargs) == (PROCESS_DELIVERY, ["shopify", delivery], {})
    assert (job.origin, job.get_status(), job.retries_left, job.retry_intervals) == (
        "events",
        "queued",
        5,
        EVENT_RETRY.intervals,
    )
    assert (job.timeout, job.result_ttl, job.failure_ttl, job.description) == (
        model.timeout,
        RESULT_TTL,
        FAILURE_TTL,
        "shopify orders/create",
    )
    assert abs((job.enqueued_at - model.enqueued_at).total_seconds()) < 60


def test_a_redaction_naming_hundreds_of_orders_is_applied(env, db_url, client, redis: Redis):
    """Each order id is a few text filters; hundreds of them in one OR are deeper than SQLite parses."""
    from tests.conftest import use_database

    use_database(env, db_url)
    order = json.dumps(payload("shopify", "orders_create")).encode()
    placed = client.post("/webhooks/shopify", data=order, headers=shopify_headers(order, "orders/create"))
    assert placed.status_code == 200
    data = payload("shopify", "customers_redact")
    data["customer"] = {"id": 115310627314723954, "email": "john@example.com", "phone": None}
    data["orders_to_redact"] = list(range(1000, 1300)) + [820982911946154508]
    body = json.dumps(data).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "customers/redact"))
    assert response.status_code == 200
    drain(redis)
    job = queue(EVENTS, redis).fetch_job(response.get_json()["events"][0])
    assert job.is_finished, job.latest_result().exc_string if job.latest_result() else job.get_status()
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 0
        assert session.scalar(select(func.count()).select_from(Customer)) == 0
