"""The admin page: sign-in rules, flows and their results, timelines, previews, failures."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import jwt
import pytest
import responses
from sqlalchemy import select

from encore_retention.core import archive
from encore_retention.core.queue import PROCESS_EVENT
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer
from tests.conftest import (
    SHOP,
    SHOPIFY_SECRET,
    drain,
    fake_woocommerce_coupons,
    payload,
    post_woo,
    shopify_headers,
    sign_in,
    woo_customer,
    woo_order,
)

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def _csrf(client) -> str:  # type: ignore[no-untyped-def]
    """The form token of the client's session (a page view creates it)."""
    client.get("/admin/failures", environ_base=LOCAL)
    with client.session_transaction() as session:
        return str(session["encore_csrf"])


# ---- sign-in ---------------------------------------------------------------------------------------


def test_without_a_password_only_a_sign_in_link_gets_in(client):
    # coming from this machine is no sign-in: a proxy on the same host looks just the same
    local = client.get("/admin/", environ_base=LOCAL)
    assert local.status_code == 302 and "/admin/login" in local.headers["Location"]
    away = client.get("/admin/", environ_base=REMOTE)
    assert away.status_code == 302 and "/admin/login" in away.headers["Location"]
    assert client.post("/admin/login", data={"password": ""}, environ_base=REMOTE).status_code == 401
    sign_in(client)
    signed_in = client.get("/admin/", environ_base=REMOTE)
    assert signed_in.status_code == 200 and signed_in.headers["Content-Security-Policy"] == "frame-ancestors 'self'"


def test_password_sign_in(env, redis):
    env.setenv("ADMIN_PASSWORD", "correct horse")
    reset_settings()
    from encore_retention.web import create_app

    client = create_app().test_client()
    # with a password set, even this machine signs in
    assert client.get("/admin/", environ_base=LOCAL).status_code == 302
    wrong = client.post("/admin/login", data={"password": "wrong"}, environ_base=REMOTE)
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    right = client.post("/admin/login?next=/admin/messages", data={"password": "correct horse"}, environ_base=REMOTE)
    assert right.status_code == 302 and right.headers["Location"].endswith("/admin/messages")
    assert client.get("/admin/", environ_base=REMOTE).status_code == 200
    # an open redirect is not followed
    again = client.post(
        "/admin/login?next=https://evil.example/", data={"password": "correct horse"}, environ_base=REMOTE
    )
    assert again.headers["Location"].endswith("/admin/")
    csrf = re.search(
        r'name="csrf" value="([^"]+)"', client.get("/admin/", environ_base=REMOTE).get_data(as_text=True)
    ).group(1)  # type: ignore[union-attr]
    assert client.post("/admin/logout", data={"csrf": csrf}, environ_base=REMOTE).status_code == 302
    assert client.get("/admin/", environ_base=REMOTE).status_code == 302


def _token(secret: str = SHOPIFY_SECRET, aud: str = "test-api-key", shop: str = SHOP, **extra) -> str:  # type: ignore[no-untyped-def]
    now = int(time.time())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": aud,
        "sub": "42",
        "exp": now + 60,
        "nbf": now - 5,
        "iat": now - 5,
        "jti": "x",
        "sid": "y",
        **extra,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def test_shopify_session_token_signs_in_that_shop_only(client, redis):
    from encore_retention.core.store.ledger import get_or_create_shop

    with session_scope() as session:
        mine = get_or_create_shop(session, "shopify", SHOP)
        other = get_or_create_shop(session, "shopify", "someone-else.myshopify.com")
        session.flush()
        session.add(Customer(shop_id=mine.id, platform_id="1", email="mine@example.com"))
        session.add(Customer(shop_id=other.id, platform_id="2", email="theirs@example.com"))
    page = client.get("/admin/customers", headers={"Authorization": f"Bearer {_token()}"}, environ_base=REMOTE)
    assert page.status_code == 200
    # Shopify shows the page inside its admin, and only there
    assert page.headers["Content-Security-Policy"] == f"frame-ancestors https://{SHOP} https://admin.shopify.com"
    text = page.get_data(as_text=True)
    assert "mine@example.com" in text and "theirs@example.com" not in text
    # the browser stays signed in as that shop (the signed session), and sees no operator pages
    assert client.get("/admin/customers", environ_base=REMOTE).status_code == 200
    with session_scope() as session:
        theirs = session.execute(select(Customer.id).where(Customer.email == "theirs@example.com")).scalar_one()
    assert client.get(f"/admin/customers/{theirs}", environ_base=REMOTE).status_code == 404


@pytest.mark.parametrize(
    "token",
    [
        _token(secret="another-apps-secret-0123456789abcdef"),
        _token(aud="another-api-key"),
        _token(exp=int(time.time()) - 3600),
        _token(shop="not-a-shop.example.com"),
        _token(iss="https://someone-else.myshopify.com/admin"),
        "not.a.jwt",
    ],
)
def test_bad_session_tokens_are_refused(client, token):
    answer = client.get("/admin/", headers={"Authorization": f"Bearer {token}"}, environ_base=REMOTE)
    assert answer.status_code == 401


# ---- flows, timeline, messages ---------------------------------------------------------------------


@responses.activate
def test_flows_page_counts_runs_emails_codes_redemptions_and_revenue(client, redis, woo_store, tmp_path):
    sign_in(client)
    made = fake_woocommerce_coupons()
    post_woo(client, woo_customer(501, "ada@example.com", consent=True), "customer.created")
    post_woo(client, woo_customer(502, "bob@example.com", consent=False, first="Bob"), "customer.created")
    drain(redis)
    assert len(made) == 1, "the welcome flow made one code, for the consenting customer only"
    code = made[0]["code"].upper()
    post_woo(client, woo_order(9001, 501, "ada@example.com", "80.00", code=code), "order.created")
    for number in range(3):  # Bob's third order would start the loyalty flow, but Bob has not consented
        post_woo(client, woo_order(9002 + number, 502, "bob@example.com", "20.00"), "order.created")
    drain(redis)

    from encore_retention.web.admin.flows import flow_stats

    with session_scope() as session:
        shop_ids = [s for (s,) in session.execute(select(Customer.shop_id).distinct())]
    stats = {s.key: s for s in flow_stats(shop_ids)}
    welcome = stats["welcome"]
    assert (welcome.runs, welcome.suppressed, welcome.emails, welcome.codes) == (1, 0, 1, 1)
    assert welcome.redeemed == 1 and welcome.revenue == Decimal("80.00")
    assert stats["thank_you_first_order"].runs == 2 and stats["thank_you_first_order"].emails == 0  # waiting 2h
    loyalty = stats["loyalty_third_order"]
    assert (loyalty.runs, loyalty.suppressed, loyalty.emails, loyalty.codes, loyalty.redeemed) == (0, 1, 0, 0, 0)

    page = client.get("/admin/", environ_base=LOCAL).get_data(as_text=True)
    assert "Welcome, with a first-purchase code" in page and "€80.00" in page
    assert "customer.created" in page and "customer.birthday -14d at 09:00 yearly" in page  # as the file writes it
    assert "customer.last_order_at 60d at 10:00" in page and "8w4d" not in page
    runs = client.get("/admin/flows/loyalty_third_order?status=suppressed", environ_base=LOCAL).get_data(as_text=True)
    assert "bob@example.com" in runs and "no consent" in runs and "ada@example.com" not in runs
    welcome_runs = client.get("/admin/flows/welcome", environ_base=LOCAL).get_data(as_text=True)
    assert "ada@example.com" in welcome_runs and "completed" in welcome_runs and "bob@example.com" not in welcome_runs
    assert client.get("/admin/flows/no_such_flow", environ_base=LOCAL).status_code == 404


@responses.activate
def test_customer_timeline_says_why(client, redis, woo_store):
    sign_in(client)
    fake_woocommerce_coupons()
    post_woo(client, woo_customer(601, "ada@example.com", consent=True), "customer.created")
    post_woo(client, woo_customer(602, "bob@example.com", consent=False, first="Bob"), "customer.created")
    for number in range(3):
        post_woo(client, woo_order(9100 + number, 602, "bob@example.com", "20.00"), "order.created")
    drain(redis)
    with session_scope() as session:
        ids = dict(session.execute(select(Customer.email, Customer.id)).all())
    ada = client.get(f"/admin/customers/{ids['ada@example.com']}", environ_base=LOCAL).get_data(as_text=True)
    assert "customer.created" in ada  # the event received
    assert "Welcome, with a first-purchase code" in ada  # the run
    assert "customer.email_consent -&gt; true" in ada  # its conditions, and why
    assert re.search(r"created code HELLO-\w{4}-\w{4}", ada)
    assert "sent &#39;welcome.html&#39; to ada@example.com" in ada
    bob = client.get(f"/admin/customers/{ids['bob@example.com']}", environ_base=LOCAL).get_data(as_text=True)
    assert "Thank loyal customers on their third order" in bob
    assert "not started: no consent (customer.email_consent is not true)" in bob
    assert "customer.orders_count == 1 -&gt; true" in bob  # the first order's thank-you run
    found = client.get("/admin/customers?q=bob", environ_base=LOCAL).get_data(as_text=True)
    assert "bob@example.com" in found and "ada@example.com" not in found
    messages = client.get("/admin/messages", environ_base=LOCAL).get_data(as_text=True)
    assert "ada@example.com" in messages and "Welcome to" in messages and "bob@example.com" not in messages
    # the email as it was written to the outbox
    link = re.search(r'href="(/admin/messages/[^"]+)"', messages).group(1)  # type: ignore[union-attr]
    sent = client.get(link.replace("&amp;", "&"), environ_base=LOCAL)
    assert sent.status_code == 200 and "Ada" in sent.get_data(as_text=True)
    assert re.search(r"HELLO-\w{4}-\w{4}", sent.get_data(as_text=True))
    assert "script-src 'none'" in sent.headers["Content-Security-Policy"]
    assert client.get("/admin/messages/not-a-key", environ_base=LOCAL).status_code == 404
    assert client.get("/admin/customers/999999", environ_base=LOCAL).status_code == 404


def test_flow_results_on_sqlite_and_postgresql(db_url, env, redis):
    from encore_retention.core.store.ledger import get_or_create_shop
    from encore_retention.core.store.models import Order
    from encore_retention.flows.models import FlowEffect, FlowRun
    from encore_retention.web.admin.flows import flow_stats
    from tests.conftest import use_database

    use_database(env, db_url)
    now = datetime.now(UTC)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        other = get_or_create_shop(session, "shopify", "other.myshopify.com")
        session.flush()
        ada = Customer(shop_id=shop.id, platform_id="1", email="ada@example.com")
        session.add(ada)
        session.flush()
        for number, (status, when) in enumerate(
            [("done", now - timedelta(days=2)), ("suppressed", now), ("done", now - timedelta(days=45))]
        ):
            run = FlowRun(
                run_key=f"k{number}",
                shop_id=shop.id,
                customer_id=ada.id,
                flow_key="welcome",
                flow_name="Welcome",
                flow_digest="d",
                definition={},
                trigger_key="once",
                status=status,
                position=[0],
                context={},
                started_at=when,
                updated_at=when,
            )
            session.add(run)
            session.flush()
            if status == "done":
                session.add(
                    FlowEffect(
                        key=f"e{number}",
                        run_id=run.id,
                        shop_id=shop.id,
                        customer_id=ada.id,
                        kind="discount",
                        status="done",
                        result={"code": f"HELLO-AAA{number}"},
                        created_at=when,
                    )
                )
                session.add(
                    FlowEffect(
                        key=f"m{number}",
                        run_id=run.id,
                        shop_id=shop.id,
                        customer_id=ada.id,
                        kind="email",
                        status="done",
                        marketing=True,
                        created_at=when,
                    )
                )
        for number, (codes, total, shop_id) in enumerate(
            [(["hello-aaa0"], "70.00", shop.id), (["OTHER"], "20.00", shop.id), (["HELLO-AAA0"], "99.00", other.id)]
        ):
            session.add(
                Order(
                    shop_id=shop_id,
                    platform_id=f"o{number}",
                    customer_id=ada.id if shop_id == shop.id else None,
                    placed_at=now - timedelta(days=1),
                    total=Decimal(total),
                    currency="EUR",
                    discount_codes=codes,
                )
            )
        shop_id = shop.id
    welcome = {s.key: s for s in flow_stats([shop_id])}["welcome"]
    # the 45-day-old run is outside the window; the other shop's order with the same code is not ours
    assert (welcome.runs, welcome.suppressed, welcome.emails, welcome.codes) == (1, 1, 1, 1)
    assert (welcome.redeemed, welcome.revenue, welcome.currency) == (1, Decimal("70.00"), "EUR")


# ---- previews --------------------------------------------------------------------------------------


def test_preview_renders_every_email_step_for_the_sample_and_a_real_customer(client, redis):
    sign_in(client)
    page = client.get("/admin/preview?flow=win_back", environ_base=LOCAL).get_data(as_text=True)
    assert "steps[1]" in page and "steps[3].then[0]" in page  # both emails of the flow
    assert 'width="680"' in page and 'width="375"' in page
    assert "It&#39;s been a while: 15% off, just for you" in page
    html = client.get("/admin/preview/email?flow=win_back&step=steps[3].then[0]", environ_base=LOCAL)
    assert html.status_code == 200 and "BACKPREVIEW" in html.get_data(as_text=True)
    assert "script-src 'none'" in html.headers["Content-Security-Policy"]

    from encore_retention.core.store.ledger import get_or_create_shop

    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        shop.name = "Tea Shop"
        session.flush()
        grace = Customer(
            shop_id=shop.id,
            platform_id="77",
            email="grace@example.com",
            first_name="Grace",
            orders_count=2,
            total_spent=Decimal("40"),
            email_consent=True,
            last_order_at=datetime.now(UTC) - timedelta(days=61),
        )
        session.add(grace)
        session.flush()
        grace_id = grace.id
    real = client.get(f"/admin/preview/email?flow=welcome&customer={grace_id}", environ_base=LOCAL).get_data(
        as_text=True
    )
    assert "Grace" in real and "Tea Shop" in real
    assert client.get("/admin/preview?flow=nope", environ_base=LOCAL).status_code == 404


def test_a_broken_template_is_shown_not_a_500(client, redis, env, tmp_path):
    sign_in(client)
    broken = tmp_path / "tpl"
    broken.mkdir()
    (broken / "welcome.html").write_text("{% extends 'base.html' %}{% block content %}{{ 1 / 0 }}{% endblock %}")
    env.setenv("TEMPLATES_DIR", str(broken))
    reset_settings()
    from encore_retention.flows import render

    render.reset()
    page = client.get("/admin/preview?flow=welcome", environ_base=LOCAL)
    frame = client.get("/admin/preview/email?flow=welcome", environ_base=LOCAL)  # what the page's frames load
    render.reset()
    assert page.status_code == 200 and "ZeroDivisionError" in page.get_data(as_text=True)
    assert frame.status_code == 422 and "ZeroDivisionError" in frame.get_data(as_text=True)


def test_a_template_that_cannot_load_is_reported_on_the_flows_page_and_its_flow_skipped(client, redis, env, tmp_path):
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "welcome.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>Hi</p>\n{% include "footer_typo.html" %}{% endblock %}'
    )
    env.setenv("TEMPLATES_DIR", str(folder))
    reset_settings()
    from encore_retention.flows import render

    render.reset()
    from encore_retention.core.store.ledger import get_or_create_shop

    with session_scope() as session:
        get_or_create_shop(session, "shopify", SHOP)
    try:
        page = client.get("/admin/", headers={"Authorization": f"Bearer {_token()}"}, environ_base=REMOTE)
    finally:
        render.reset()
    text = page.get_data(as_text=True)
    assert page.status_code == 200, text
    assert (
        f"welcome.yaml:18: template &#39;welcome.html&#39; cannot be used: {folder / 'welcome.html'}:2: "
        f"includes &#39;footer_typo.html&#39;, which does not exist"
    ) in text
    assert "Welcome, with a first-purchase code" not in text  # skipped
    assert "Birthday surprise" in text and "We miss you" in text  # the others are loaded


# ---- failures --------------------------------------------------------------------------------------


def test_failed_jobs_are_listed_and_requeued(client, redis):
    sign_in(client)
    from encore_retention.core.queue import EVENTS, queue

    job = queue(EVENTS).enqueue_call(PROCESS_EVENT, args=({"id": "broken"},), job_id="broken-1")
    drain(redis)
    assert job.id in queue(EVENTS).failed_job_registry.get_job_ids()
    page = client.get("/admin/failures", environ_base=LOCAL).get_data(as_text=True)
    assert "broken-1" in page and "ValidationError" in page
    # without the form's token the button does nothing
    assert client.post(f"/admin/failures/{EVENTS}/broken-1/requeue", environ_base=LOCAL).status_code == 400
    done = client.post(f"/admin/failures/{EVENTS}/broken-1/requeue", data={"csrf": _csrf(client)}, environ_base=LOCAL)
    assert done.status_code == 302
    assert "broken-1" in queue(EVENTS).job_ids
    assert "broken-1" not in queue(EVENTS).failed_job_registry.get_job_ids()
    missing = client.post(f"/admin/failures/{EVENTS}/nope/requeue", data={"csrf": _csrf(client)}, environ_base=LOCAL)
    assert missing.status_code == 404


def test_rejected_webhooks_are_listed_with_their_reason_and_no_secret(client, redis):
    sign_in(client)
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create")
    headers["X-Shopify-Hmac-Sha256"] = "forged-signature-value"
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 401
    stored = archive.rejections()
    assert stored[0]["reason"] == "bad_signature" and stored[0]["status"] == 401
    raw = json.dumps(stored)
    assert "forged-signature-value" not in raw and SHOPIFY_SECRET not in raw and "line_items" not in raw
    page = client.get("/admin/failures", environ_base=LOCAL).get_data(as_text=True)
    assert "bad_signature" in page and "does not match the body" in page
    for _ in range(archive.REJECTED_KEEP + 5):
        archive.record_rejection("shopify", "bad_signature", 401, "x")
    assert redis.llen(archive.REJECTED_KEY) == archive.REJECTED_KEEP


# ---- RQ's dashboard, every page, one store or all -------------------------------------------------


def test_rq_dashboard_is_mounted_for_operators_only(client, redis):
    pytest.importorskip("rq_dashboard")
    from encore_retention.core.queue import EVENTS, queue

    queue(EVENTS).enqueue_call(PROCESS_EVENT, args=({"id": "broken"},), job_id="broken-rq")
    drain(redis)
    assert client.get("/admin/rq/", environ_base=LOCAL).status_code == 401
    shop = client.application.test_client()
    shop_page = shop.get("/admin/rq/", headers={"Authorization": f"Bearer {_token()}"}, environ_base=REMOTE)
    assert shop_page.status_code == 401
    sign_in(client)
    page = client.get("/admin/rq/", environ_base=LOCAL)
    assert page.status_code == 200 and "RQ dashboard" in page.get_data(as_text=True)
    queues = client.get("/admin/rq/0/data/queues.json", environ_base=LOCAL).get_json()
    assert {q["name"] for q in queues["queues"]} >= {"events"}
    failed = client.get("/admin/rq/0/data/jobs/events/failed/8/asc/1.json", environ_base=LOCAL).get_json()
    assert [job["id"] for job in failed["jobs"]] == ["broken-rq"]  # read with Encore's JSON serializer
    assert "/admin/rq/" in client.get("/admin/failures", environ_base=LOCAL).get_data(as_text=True)


def test_every_page_on_sqlite_and_postgresql(db_url, env, redis):
    from encore_retention.core.store.ledger import get_or_create_shop
    from encore_retention.core.store.models import EventRecord
    from encore_retention.flows.models import FlowEffect, FlowRun, FlowTrace
    from encore_retention.web import create_app
    from tests.conftest import use_database

    use_database(env, db_url)
    now = datetime.now(UTC)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        session.flush()
        ada = Customer(shop_id=shop.id, platform_id="1", email="Ada@Example.com", first_name="Ada", email_consent=True)
        session.add(ada)
        session.flush()
        session.add(
            EventRecord(
                id="ev-1",
                shop_id=shop.id,
                customer_id=ada.id,
                platform="shopify",
                topic="orders/create",
                type="order.placed",
                occurred_at=now,
                received_at=now,
            )
        )
        run = FlowRun(
            run_key="k",
            shop_id=shop.id,
            customer_id=ada.id,
            flow_key="loyalty_third_order",
            flow_name="Thank loyal customers",
            flow_digest="d",
            definition={},
            trigger_key="once",
            status="done",
            position=[2],
            context={},
            started_at=now,
            updated_at=now,
        )
        session.add(run)
        session.flush()
        session.add(
            FlowTrace(
                run_id=run.id,
                at=now,
                kind="suppressed",
                message="email not sent: frequency cap",
                step="steps[2]",
                detail={"reason": "frequency cap"},
            )
        )
        session.add(
            FlowEffect(
                key="m",
                run_id=run.id,
                shop_id=shop.id,
                customer_id=ada.id,
                kind="email",
                status="done",
                result={"to": "Ada@Example.com", "subject": "Three orders!"},
                created_at=now,
            )
        )
        ada_id = ada.id
    client = create_app().test_client()
    sign_in(client)
    assert "Ada@Example.com" in client.get("/admin/customers?q=ada@ex", environ_base=LOCAL).get_data(as_text=True)
    timeline = client.get(f"/admin/customers/{ada_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "email not sent: frequency cap" in timeline and "order.placed" in timeline and "Three orders!" in timeline
    assert "Three orders!" in client.get("/admin/messages", environ_base=LOCAL).get_data(as_text=True)
    assert client.get("/admin/", environ_base=LOCAL).status_code == 200
    preview = client.get(f"/admin/preview/email?flow=loyalty_third_order&customer={ada_id}", environ_base=LOCAL)
    assert preview.status_code == 200 and "Ada" in preview.get_data(as_text=True)


def test_an_operator_looks_at_one_store_or_all(client, redis):
    sign_in(client)
    from encore_retention.core.store.ledger import get_or_create_shop

    with session_scope() as session:
        first = get_or_create_shop(session, "shopify", SHOP)
        second = get_or_create_shop(session, "woocommerce", "woo.example.com")
        session.flush()
        session.add(Customer(shop_id=first.id, platform_id="1", email="first@example.com"))
        session.add(Customer(shop_id=second.id, platform_id="2", email="second@example.com"))
        second_id = second.id
    page = client.get("/admin/customers", environ_base=LOCAL).get_data(as_text=True)
    assert "first@example.com" in page and "second@example.com" in page and 'name="store"' in page
    chosen = client.post(
        "/admin/store",
        data={"store": str(second_id), "back": "/admin/customers", "csrf": _csrf(client)},
        environ_base=LOCAL,
    )
    assert chosen.status_code == 302 and chosen.headers["Location"].endswith("/admin/customers")
    page = client.get("/admin/customers", environ_base=LOCAL).get_data(as_text=True)
    assert "first@example.com" not in page and "second@example.com" in page
    client.post("/admin/store", data={"store": "", "csrf": _csrf(client)}, environ_base=LOCAL)
    assert "first@example.com" in client.get("/admin/customers", environ_base=LOCAL).get_data(as_text=True)
