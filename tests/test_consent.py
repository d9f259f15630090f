"""Consent back to the store: a one-click unsubscribe or a withdrawal in the admin suppresses at once, then an RQ job
writes it to Shopify (`customerEmailMarketingConsentUpdate`) or WooCommerce (the consent meta key), retried with
backoff on 429 and 5xx, and each attempt shows on the customer's timeline."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import responses
from click.testing import CliRunner
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import select

from encore_retention.cli import main
from encore_retention.connectors import consent as writeback
from encore_retention.connectors import privacy
from encore_retention.core import consent
from encore_retention.core.queue import FLOWS, queue
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import ConsentChange, Customer, Shop, Suppression, utcnow
from encore_retention.core.unsubscribe import address_key, is_suppressed, unsubscribe_url
from tests.conftest import SHOP, WC_URL, drain, payload, register_woo_store, sign_in

GRAPHQL = f"https://{SHOP}/admin/api/2026-04/graphql.json"
TOKEN = "shpat_0123456789abcdef"
ADDRESS = "Grace.Hopper@Example.org"
SHOPIFY_ID = "207119551"
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture
def app(app_on_each_database):  # type: ignore[no-untyped-def]
    """The web app, over SQLite and then PostgreSQL, for every test here."""
    return app_on_each_database


def _shopify_shop() -> int:
    result = CliRunner().invoke(main, ["stores", "add", "shopify", SHOP, "--access-token", TOKEN])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        return session.execute(select(Shop.id).where(Shop.domain == SHOP)).scalar_one()


def _customer(shop_id: int, platform_id: str = SHOPIFY_ID, email: str = ADDRESS) -> int:
    with session_scope() as session:
        row = Customer(shop_id=shop_id, platform_id=platform_id, email=email, first_name="Grace", email_consent=True)
        session.add(row)
        session.flush()
        return row.id


def _changes() -> list[ConsentChange]:
    with session_scope() as session:
        rows = list(session.execute(select(ConsentChange).order_by(ConsentChange.id)).scalars())
        session.expunge_all()
        return rows


def _consent_of(customer_id: int) -> bool | None:
    with session_scope() as session:
        return session.get(Customer, customer_id).email_consent


class FakeShopify:
    """Shopify's GraphQL Admin API by operation, shaped as Shopify documents it; records each call."""

    def __init__(self, state: str = "SUBSCRIBED", level: str | None = "CONFIRMED_OPT_IN") -> None:
        self.state, self.level = state, level
        self.calls: list[tuple[str, dict]] = []
        self.mutation_answers: list[tuple[int, dict[str, str], object]] = []

    def __call__(self, request):  # type: ignore[no-untyped-def]
        assert request.headers["X-Shopify-Access-Token"] == TOKEN
        body = json.loads(request.body)
        operation = re.search(r"(?:query|mutation)\s+(\w+)", body["query"]).group(1)
        self.calls.append((operation, body["variables"]))
        if operation == "customerEmailConsent":
            node = {
                "id": f"gid://shopify/Customer/{SHOPIFY_ID}",
                "defaultEmailAddress": {
                    "emailAddress": ADDRESS.lower(),
                    "marketingState": self.state,
                    "marketingOptInLevel": self.level,
                },
            }
            return 200, {}, json.dumps({"data": {"customer": node}, "extensions": _cost()})
        assert operation == "customerEmailMarketingConsentUpdate"
        if self.mutation_answers:
            status, headers, answer = self.mutation_answers.pop(0)
            return status, headers, answer if isinstance(answer, str) else json.dumps(answer)
        consent_input = body["variables"]["input"]["emailMarketingConsent"]
        self.state = consent_input["marketingState"]
        updated = {
            "customerEmailMarketingConsentUpdate": {
                "customer": {
                    "id": body["variables"]["input"]["customerId"],
                    "defaultEmailAddress": {
                        "marketingState": self.state,
                        "marketingOptInLevel": consent_input.get("marketingOptInLevel"),
                        "marketingUpdatedAt": consent_input.get("consentUpdatedAt"),
                    },
                },
                "userErrors": [],
            }
        }
        return 200, {}, json.dumps({"data": updated, "extensions": _cost()})

    def mutations(self) -> list[dict]:
        return [variables for operation, variables in self.calls if operation == "customerEmailMarketingConsentUpdate"]


def _cost() -> dict:
    return {
        "cost": {
            "requestedQueryCost": 10,
            "actualQueryCost": 10,
            "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1990.0, "restoreRate": 100.0},
        }
    }


@pytest.fixture
def shopify():  # type: ignore[no-untyped-def]
    fake = FakeShopify()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, GRAPHQL, callback=fake)
        yield fake


def _one_click(client, shop_id: int, address: str = ADDRESS):  # type: ignore[no-untyped-def]
    path = urlsplit(unsubscribe_url(shop_id, address)).path
    return client.post(path, data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")


def _release_retries(redis) -> int:  # type: ignore[no-untyped-def]
    """Move the write-back jobs RQ scheduled for a retry to the queue now, and run them; returns how many."""
    registry = ScheduledJobRegistry(FLOWS, connection=redis, serializer=JSONSerializer)
    released = 0
    for job_id in registry.get_job_ids():
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        registry.remove(job)
        queue(FLOWS, redis).enqueue_job(job)
        released += 1
    drain(redis)
    return released


def _csrf(client) -> str:  # type: ignore[no-untyped-def]
    client.get("/admin/suppressions", environ_base=LOCAL)
    with client.session_transaction() as session:
        return str(session["encore_csrf"])


# ---- Shopify --------------------------------------------------------------------------------------


def test_one_click_suppresses_at_once_then_shopify_hears_it_with_the_opt_in_level_kept(client, redis, shopify):
    shop_id = _shopify_shop()
    customer_id = _customer(shop_id)

    assert _one_click(client, shop_id).status_code == 200
    with session_scope() as session:  # before any job ran: the address is suppressed, the platform not yet told
        assert is_suppressed(session, shop_id, ADDRESS) == "unsubscribed"
    assert shopify.calls == []
    (change,) = _changes()
    assert (change.writeback, change.customer_id, change.actor) == ("pending", None, "the customer")

    drain(redis)
    (update,) = shopify.mutations()
    assert update["input"]["customerId"] == f"gid://shopify/Customer/{SHOPIFY_ID}"
    sent = update["input"]["emailMarketingConsent"]
    assert sent["marketingState"] == "UNSUBSCRIBED" and sent["marketingOptInLevel"] == "CONFIRMED_OPT_IN"
    (change,) = _changes()
    assert change.writeback == "done" and change.writeback_attempts == 1 and change.customer_id == customer_id
    assert "opt-in level CONFIRMED_OPT_IN kept" in change.writeback_detail
    assert _consent_of(customer_id) is False

    # idempotent: the job again, or a second click, calls nothing more
    writeback.write_back(change.id)
    assert _one_click(client, shop_id).status_code == 200
    drain(redis)
    assert len(shopify.mutations()) == 1 and len(_changes()) == 1

    sign_in(client)
    page = client.get(f"/admin/customers/{customer_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "unsubscribed (unsubscribed)" in page and "written back to shopify after 1 attempt" in page


def test_a_customer_already_unsubscribed_on_shopify_is_not_written_again(env, redis, shopify):
    shopify.state = "UNSUBSCRIBED"
    shop_id = _shopify_shop()
    customer_id = _customer(shop_id)
    with session_scope() as session:
        customer = session.get(Customer, customer_id)
        change = consent.withdraw(
            session,
            shop_id,
            address_key(shop_id, ADDRESS),
            customer=customer,
            reason="admin",
            source="admin",
            actor="t",
        )
        change_id = change.id
    assert writeback.write_back(change_id)["writeback"] == "done"
    assert shopify.mutations() == []
    assert "already unsubscribed on Shopify" in _changes()[0].writeback_detail


def test_429_and_5xx_are_retried_by_rq_with_backoff_and_each_attempt_is_noted(client, redis, shopify):
    shop_id = _shopify_shop()
    _customer(shop_id)
    shopify.mutation_answers = [
        (429, {"Retry-After": "2"}, {"errors": "Exceeded 2 calls per second for api client. Reduce request rates."}),
        (503, {}, "Service Unavailable"),
    ]
    _one_click(client, shop_id)

    drain(redis)  # attempt 1: 429, one attempt only (no worker sleeps), RQ schedules the retry
    (change,) = _changes()
    assert (change.writeback, change.writeback_attempts) == ("pending", 1)
    assert "429" in change.writeback_detail and "will retry" in change.writeback_detail
    job = Job.fetch(writeback.job_id(change.id), connection=redis, serializer=JSONSerializer)
    assert job.get_status() == "scheduled" and job.retries_left == 5
    scheduled_for = ScheduledJobRegistry(FLOWS, connection=redis, serializer=JSONSerializer).get_scheduled_time(job)
    assert timedelta(seconds=20) < scheduled_for - utcnow() <= timedelta(seconds=30)  # the first interval: 30 s

    assert _release_retries(redis) == 1  # attempt 2: 503
    (change,) = _changes()
    assert (change.writeback, change.writeback_attempts) == ("pending", 2) and "503" in change.writeback_detail

    assert _release_retries(redis) == 1  # attempt 3: done
    (change,) = _changes()
    assert (change.writeback, change.writeback_attempts) == ("done", 3)
    assert len(shopify.mutations()) == 3


def test_a_refusal_is_recorded_and_not_retried(client, redis, shopify):
    shop_id = _shopify_shop()
    customer_id = _customer(shop_id)
    refused = {
        "data": {
            "customerEmailMarketingConsentUpdate": {
                "customer": None,
                "userErrors": [
                    {"field": ["input", "customerId"], "message": "Customer does not exist", "code": "INVALID"}
                ],
            }
        }
    }
    shopify.mutation_answers = [(200, {}, refused)]
    _one_click(client, shop_id)
    drain(redis)
    (change,) = _changes()
    assert change.writeback == "failed" and "Customer does not exist" in change.writeback_detail
    assert ScheduledJobRegistry(FLOWS, connection=redis, serializer=JSONSerializer).get_job_ids() == []
    with session_scope() as session:  # the local suppression holds whatever the platform said
        assert is_suppressed(session, shop_id, ADDRESS) == "unsubscribed"
    sign_in(client)
    page = client.get(f"/admin/customers/{customer_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "not written back to shopify after 1 attempt" in page


def test_redis_down_never_blocks_the_unsubscribe_and_the_write_back_is_queued_later(
    client, redis, shopify, monkeypatch
):
    shop_id = _shopify_shop()
    _customer(shop_id)

    def down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RedisConnectionError("Redis is restarting")

    with monkeypatch.context() as patch:
        patch.setattr(writeback, "queue", down)
        assert _one_click(client, shop_id).status_code == 200
    with session_scope() as session:
        assert is_suppressed(session, shop_id, ADDRESS) == "unsubscribed"
    assert queue(FLOWS, redis).count == 0 and _changes()[0].writeback == "pending"

    assert writeback.requeue_pending() == 0  # not yet: a change is given REQUEUE_AFTER to be written
    assert writeback.requeue_pending(utcnow() + timedelta(minutes=6)) == 1
    assert writeback.requeue_pending(utcnow() + timedelta(minutes=6)) == 0  # its job is queued: not twice
    drain(redis)
    assert _changes()[0].writeback == "done" and len(shopify.mutations()) == 1


# ---- WooCommerce and the admin ---------------------------------------------------------------------


def test_admin_withdrawal_sets_the_woocommerce_consent_meta(client, redis):
    register_woo_store()
    with session_scope() as session:
        shop_id = session.execute(select(Shop.id).where(Shop.platform == "woocommerce")).scalar_one()
    customer_id = _customer(shop_id, platform_id="25", email="john.doe@example.com")
    body = payload("woocommerce", "customer_created")
    body["meta_data"] = [{"id": 8, "key": "marketing_consent", "value": "yes"}]
    sign_in(client)
    csrf = _csrf(client)
    with responses.RequestsMock() as mock:
        mock.get(f"{WC_URL}/wp-json/wc/v3/customers/25", json=body)
        put = mock.put(
            f"{WC_URL}/wp-json/wc/v3/customers/25",
            json={**body, "meta_data": [{"id": 8, "key": "marketing_consent", "value": "no"}]},
        )
        answer = client.post(
            f"/admin/customers/{customer_id}/unsubscribe",
            data={"csrf": csrf, "note": "asked by phone"},
            environ_base=LOCAL,
        )
        assert answer.status_code == 302
        with session_scope() as session:
            assert is_suppressed(session, shop_id, "john.doe@example.com") == "admin"
        drain(redis)
        assert put.call_count == 1
        assert json.loads(mock.calls[-1].request.body) == {"meta_data": [{"key": "marketing_consent", "value": "no"}]}
    (change,) = _changes()
    assert (change.writeback, change.reason, change.note) == ("done", "admin", "asked by phone")
    assert change.actor == "admin: operator (link)"
    assert _consent_of(customer_id) is False
    page = client.get(f"/admin/customers/{customer_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "by admin: operator (link)" in page and "asked by phone" in page and "marketing_consent set to" in page
    with session_scope() as session:  # a data request's export shows the change, the note included
        customer = session.get(Customer, customer_id)
        (exported,) = privacy.SECTIONS["consent_changes"](session, session.get(Shop, shop_id), customer)
        assert (exported["by"], exported["note"], exported["written_back"]) == (
            "admin: operator (link)",
            "asked by phone",
            "done",
        )


def test_admin_withdrawal_needs_the_form_token(client, redis):
    shop_id = _shopify_shop()
    customer_id = _customer(shop_id)
    sign_in(client)
    answer = client.post(f"/admin/customers/{customer_id}/unsubscribe", data={"note": "x"}, environ_base=LOCAL)
    assert answer.status_code == 400
    assert _changes() == [] and _consent_of(customer_id) is True


def test_a_customer_known_only_by_email_has_nothing_to_write_back_and_the_timeline_says_so(client, redis, shopify):
    shop_id = _shopify_shop()
    customer_id = _customer(shop_id, platform_id=f"email:{ADDRESS.lower()}")
    sign_in(client)
    answer = client.post(
        f"/admin/customers/{customer_id}/unsubscribe", data={"csrf": _csrf(client)}, environ_base=LOCAL
    )
    assert answer.status_code == 302
    (change,) = _changes()
    assert change.writeback == "skipped" and change.writeback_detail == consent.EMAIL_ONLY_DETAIL
    assert queue(FLOWS, redis).count == 0  # no job: nothing to tell
    drain(redis)
    assert shopify.calls == []
    page = client.get(f"/admin/customers/{customer_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "known only by email address" in page


def test_an_unsubscribe_link_whose_address_is_no_customer_writes_nothing_back(client, redis, shopify):
    shop_id = _shopify_shop()
    _one_click(client, shop_id, "nobody@example.org")
    drain(redis)
    (change,) = _changes()
    assert change.writeback == "skipped" and change.writeback_detail == consent.NO_CUSTOMER_DETAIL
    assert shopify.calls == []
    with session_scope() as session:
        assert session.execute(select(Suppression.reason)).scalars().all() == ["unsubscribed"]
