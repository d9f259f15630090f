"""The admin page: sign-in rules, flows and their results, timelines, previews, failures, the webhook archive."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import responses
from sqlalchemy import select

from encore import archive
from encore.settings import reset_settings
from encore.store import session_scope
from encore.store.models import Customer
from tests.conftest import SHOP, SHOPIFY_SECRET, WC_URL, drain, payload, shopify_headers, sign_in, woo_headers

API = f"{WC_URL}/wp-json/wc/v3"
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def _csrf(client) -> str:  # type: ignore[no-untyped-def]
    """The form token of the client's session (a page view creates it)."""
    client.get("/admin/failures", environ_base=LOCAL)
    with client.session_transaction() as session:
        return str(session["encore_csrf"])


def fake_woocommerce_coupons() -> list[dict]:  # type: ignore[type-arg]
    """WooCommerce's coupons endpoint as documented: GET ?code= lists, POST creates (201)."""
    made: list[dict] = []  # type: ignore[type-arg]

    def lookup(request):  # type: ignore[no-untyped-def]
        code = parse_qs(urlsplit(request.url).query).get("code", [""])[0].lower()
        return 200, {}, json.dumps([c for c in made if c["code"] == code])

    def create(request):  # type: ignore[no-untyped-def]
        body = json.loads(request.body)
        coupon = {"id": 700 + len(made), "code": body["code"].lower(), "amount": body["amount"],
                  "discount_type": body["discount_type"], "date_expires": body.get("date_expires"),
                  "date_expires_gmt": body.get("date_expires"), "usage_count": 0, "individual_use": True,
                  "email_restrictions": body.get("email_restrictions", []), "usage_limit": body.get("usage_limit")}
        made.append(coupon)
        return 201, {}, json.dumps(coupon)

    responses.add_callback(responses.GET, f"{API}/coupons", callback=lookup)
    responses.add_callback(responses.POST, f"{API}/coupons", callback=create)
    return made


def woo_customer(cid: int, email: str, consent: bool, first: str = "Ada") -> dict:  # type: ignore[type-arg]
    body = payload("woocommerce", "customer_created")
    body.update(id=cid, email=email, first_name=first, date_modified_gmt=f"2026-11-20T09:00:{cid % 60:02d}")
    body["billing"]["email"] = email
    body["meta_data"] = [{"id": 1, "key": "marketing_consent", "value": "yes" if consent else "no"}]
    return body


def woo_order(oid: int, cid: int, email: str, total: str, code: str | None = None) -> dict:  # type: ignore[type-arg]
    body = payload("woocommerce", "order_created")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    body.update(id=oid, number=str(oid), customer_id=cid, total=total, currency="EUR", date_created_gmt=now,
                date_modified_gmt=now)
    body["billing"]["email"] = email
    body["coupon_lines"] = [{"id": 1, "code": code, "discount": "5.00", "discount_tax": "0.00",
                             "meta_data": []}] if code else []
    return body


def post_woo(client, body: dict, topic: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    raw = json.dumps(body).encode()
    answer = client.post("/webhooks/woocommerce", data=raw, headers=woo_headers(raw, topic))
    assert answer.status_code == 200, answer.get_data(as_text=True)


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
    from webhooks import create_app

    client = create_app().test_client()
    # with a password set, even this machine signs in
    assert client.get("/admin/", environ_base=LOCAL).status_code == 302
    wrong = client.post("/admin/login", data={"password": "wrong"}, environ_base=REMOTE)
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    right = client.post("/admin/login?next=/admin/messages", data={"password": "correct horse"}, environ_base=REMOTE)
    assert right.status_code == 302 and right.headers["Location"].endswith("/admin/messages")
    assert client.get("/admin/", environ_base=REMOTE).status_code == 200
    # an open redirect is not followed
    again = client.post("/admin/login?next=https://evil.example/", data={"password": "correct horse"},
                        environ_base=REMOTE)
    assert again.headers["Location"].endswith("/admin/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin/", environ_base=REMOTE)
                     .get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    assert client.post("/admin/logout", data={"csrf": csrf}, environ_base=REMOTE).status_code == 302
    assert client.get("/admin/", environ_base=REMOTE).status_code == 302


def _token(secret: str = SHOPIFY_SECRET, aud: str = "test-api-key", shop: str = SHOP, **extra) -> str:  # type: ignore[no-untyped-def]
    now = int(time.time())
    claims = {"iss": f"https://{shop}/admin", "dest": f"https://{shop}", "aud": aud, "sub": "42", "exp": now + 60,
              "nbf": now - 5, "iat": now - 5, "jti": "x", "sid": "y", **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_shopify_session_token_signs_in_that_shop_only(client, redis):
    from encore.store.ledger import get_or_create_shop

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


@pytest.mark.parametrize("token", [
    _token(secret="another-apps-secret-0123456789abcdef"),
    _token(aud="another-api-key"),
    _token(exp=int(time.time()) - 3600),
    _token(shop="not-a-shop.example.com"),
    _token(iss="https://someone-else.myshopify.com/admin"),
    "not.a.jwt",
])
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

    from webhooks.admin import flow_stats

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
    assert "customer.created" in page and "customer.birthday -2w at 09:00 yearly" in page
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

    from encore.store.ledger import get_or_create_shop

    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        shop.name = "Tea Shop"
        session.flush()
        grace = Customer(shop_id=shop.id, platform_id="77", email="grace@example.com", first_name="Grace",
                         orders_count=2, total_spent=Decimal("40"), email_consent=True,
                         last_order_at=datetime.now(UTC) - timedelta(days=61))
        session.add(grace)
        session.flush()
        grace_id = grace.id
    real = client.get(f"/admin/preview/email?flow=welcome&customer={grace_id}",
                      environ_base=LOCAL).get_data(as_text=True)
    assert "Grace" in real and "Tea Shop" in real
    assert client.get("/admin/preview?flow=nope", environ_base=LOCAL).status_code == 404


def test_a_broken_template_is_shown_not_a_500(client, redis, env, tmp_path):
    sign_in(client)
    broken = tmp_path / "tpl"
    broken.mkdir()
    (broken / "welcome.html").write_text("{% extends 'base.html' %}{% block content %}{{ 1 / 0 }}{% endblock %}")
    env.setenv("TEMPLATES_DIR", str(broken))
    reset_settings()
    from flows import render

    render.reset()
    page = client.get("/admin/preview?flow=welcome", environ_base=LOCAL)
    frame = client.get("/admin/preview/email?flow=welcome", environ_base=LOCAL)  # what the page's frames load
    render.reset()
    assert page.status_code == 200 and "ZeroDivisionError" in page.get_data(as_text=True)
    assert frame.status_code == 422 and "ZeroDivisionError" in frame.get_data(as_text=True)


def test_a_template_that_cannot_load_is_reported_on_the_flows_page_and_its_flow_skipped(client, redis, env, tmp_path):
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "welcome.html").write_text('{% extends "base.html" %}{% block content %}<p>Hi</p>\n'
                                         '{% include "footer_typo.html" %}{% endblock %}')
    env.setenv("TEMPLATES_DIR", str(folder))
    reset_settings()
    from flows import render

    render.reset()
    from encore.store.ledger import get_or_create_shop

    with session_scope() as session:
        get_or_create_shop(session, "shopify", SHOP)
    try:
        page = client.get("/admin/", headers={"Authorization": f"Bearer {_token()}"}, environ_base=REMOTE)
    finally:
        render.reset()
    text = page.get_data(as_text=True)
    assert page.status_code == 200, text
    assert (f"welcome.yaml:18: template &#39;welcome.html&#39; cannot be used: {folder / 'welcome.html'}:2: "
            f"includes &#39;footer_typo.html&#39;, which does not exist") in text
    assert "Welcome, with a first-purchase code" not in text  # skipped
    assert "Birthday surprise" in text and "We miss you" in text  # the others are loaded


# ---- failures --------------------------------------------------------------------------------------

def test_failed_jobs_are_listed_and_requeued(client, redis):
    sign_in(client)
    from encore.queue import EVENTS, queue

    job = queue(EVENTS).enqueue_call("encore.jobs.process_event", args=({"id": "broken"},), job_id="broken-1")
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


# ---- the webhook archive ---------------------------------------------------------------------------

def test_accepted_webhooks_are_archived_without_signatures_and_purged(client, redis, env):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create", webhook_id="wh-1")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200  # a retry
    assert list(archive.deliveries()) == []  # the worker archives a delivery as it normalises it
    drain(redis)
    rows = list(archive.deliveries())
    assert [r.outcome for r in rows] == ["queued"]  # the duplicate was never queued, so is not archived twice
    row = rows[0]
    assert row.body.encode() == body and row.topic == "orders/create" and row.shop == SHOP
    assert row.delivery_id == "wh-1" and row.event_ids
    assert "X-Shopify-Hmac-Sha256" not in row.headers and row.headers["X-Shopify-Topic"] == "orders/create"
    assert archive.purge(now=datetime.now(UTC) + timedelta(days=29)) == 0
    env.setenv("WEBHOOK_RETENTION_DAYS", "7")
    reset_settings()
    assert archive.purge(now=datetime.now(UTC) + timedelta(days=8)) == 1
    assert list(archive.deliveries()) == []

    from encore.cron import declared_jobs

    assert any(job["func"] is archive.purge for job in declared_jobs())


# ---- observability ---------------------------------------------------------------------------------

def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@responses.activate
def test_metrics_count_emails_and_platform_errors(client, redis, woo_store):
    queued_before = _sample("encore_webhooks_total", platform="woocommerce", outcome="queued")
    sent_before = _sample("encore_emails_total", flow="welcome", outcome="sent")
    errors_before = _sample("encore_platform_api_errors_total", platform="woocommerce", kind="client")
    made = fake_woocommerce_coupons()
    post_woo(client, woo_customer(701, "ada@example.com", consent=True), "customer.created")
    drain(redis)
    assert len(made) == 1
    assert _sample("encore_emails_total", flow="welcome", outcome="sent") == sent_before + 1
    responses.replace(responses.POST, f"{API}/coupons", status=400,
                      json={"code": "woocommerce_rest_invalid", "message": "Invalid coupon", "data": {"status": 400}})
    post_woo(client, woo_customer(702, "bea@example.com", consent=True, first="Bea"), "customer.created")
    drain(redis)
    assert _sample("encore_platform_api_errors_total", platform="woocommerce", kind="client") == errors_before + 1
    refused_before = _sample("encore_emails_total", flow="loyalty_third_order", outcome="no consent")
    for number in range(3):  # a third order without consent: the loyalty email is suppressed
        post_woo(client, woo_order(9700 + number, 703, "cy@example.com", "20.00"), "order.created")
    drain(redis)
    assert _sample("encore_emails_total", flow="loyalty_third_order", outcome="no consent") == refused_before + 1
    text = client.get("/metrics").get_data(as_text=True)
    assert 'encore_emails_total{flow="welcome",outcome="sent"}' in text
    assert "encore_platform_api_errors_total" in text and "encore_queue_depth" in text
    assert _sample("encore_webhooks_total", platform="woocommerce", outcome="queued") == queued_before + 5
    assert f'encore_webhooks_total{{outcome="queued",platform="woocommerce"}} {queued_before + 5}' in text


ASK_THE_STORE = """
name: Ask the store whether the code was used
trigger: {event: customer.created}
steps:
  - create_discount: {as: welcome, percent: 10, expires_in: 14d, prefix: HELLO}
  - wait: 1d
  - if: welcome.redeemed
    then:
      - stop: the code was used
"""


@responses.activate
def test_run_id_is_on_every_log_line_of_a_run(client, redis, woo_store, env, tmp_path, caplog):
    """A step's log line does not name its run; the engine binds the run's id around every line of it."""
    import logging

    from encore.logs import ContextFilter
    from flows import dates
    from flows.models import FlowRun
    from tests.flows.helpers import walk_to

    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "ask.yaml").write_text(ASK_THE_STORE)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    fake_woocommerce_coupons()
    post_woo(client, woo_customer(801, "ada@example.com", consent=True), "customer.created")
    drain(redis)
    with session_scope() as session:
        (run,) = session.execute(select(FlowRun)).scalars().all()
    assert run.status == "waiting"
    responses.replace(responses.GET, f"{API}/coupons", status=401,  # the store no longer lets Encore read coupons
                      json={"code": "woocommerce_rest_cannot_view", "message": "Sorry, you cannot list resources.",
                            "data": {"status": 401}})
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO)
    try:
        walk_to(redis, datetime.now(UTC) + timedelta(days=1, minutes=2))
    finally:
        dates.set_now(None)
    with session_scope() as session:
        after = session.get(FlowRun, run.id)
        assert after is not None and after.status == "done"
    lines = [r for r in caplog.records if r.name.startswith(("flows.", "connectors."))]
    assert any(r.getMessage().startswith("could not ask the platform whether HELLO-") for r in lines)
    assert [getattr(r, "run_id", None) for r in lines] == [run.id] * len(lines)


def test_flow_results_on_sqlite_and_postgresql(db_url, env, redis):
    from encore.store.ledger import get_or_create_shop
    from encore.store.models import Order
    from flows.models import FlowEffect, FlowRun
    from tests.conftest import use_database
    from webhooks.admin import flow_stats

    use_database(env, db_url)
    now = datetime.now(UTC)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        other = get_or_create_shop(session, "shopify", "other.myshopify.com")
        session.flush()
        ada = Customer(shop_id=shop.id, platform_id="1", email="ada@example.com")
        session.add(ada)
        session.flush()
        for number, (status, when) in enumerate([("done", now - timedelta(days=2)), ("suppressed", now),
                                                 ("done", now - timedelta(days=45))]):
            run = FlowRun(run_key=f"k{number}", shop_id=shop.id, customer_id=ada.id, flow_key="welcome",
                          flow_name="Welcome", flow_digest="d", definition={}, trigger_key="once", status=status,
                          position=[0], context={}, started_at=when, updated_at=when)
            session.add(run)
            session.flush()
            if status == "done":
                session.add(FlowEffect(key=f"e{number}", run_id=run.id, shop_id=shop.id, customer_id=ada.id,
                                       kind="discount", status="done", result={"code": f"HELLO-AAA{number}"},
                                       created_at=when))
                session.add(FlowEffect(key=f"m{number}", run_id=run.id, shop_id=shop.id, customer_id=ada.id,
                                       kind="email", status="done", marketing=True, created_at=when))
        for number, (codes, total, shop_id) in enumerate([(["hello-aaa0"], "70.00", shop.id),
                                                          (["OTHER"], "20.00", shop.id),
                                                          (["HELLO-AAA0"], "99.00", other.id)]):
            session.add(Order(shop_id=shop_id, platform_id=f"o{number}", customer_id=ada.id if shop_id == shop.id
                              else None, placed_at=now - timedelta(days=1), total=Decimal(total), currency="EUR",
                              discount_codes=codes))
        shop_id = shop.id
    welcome = {s.key: s for s in flow_stats([shop_id])}["welcome"]
    # the 45-day-old run is outside the window; the other shop's order with the same code is not ours
    assert (welcome.runs, welcome.suppressed, welcome.emails, welcome.codes) == (1, 1, 1, 1)
    assert (welcome.redeemed, welcome.revenue, welcome.currency) == (1, Decimal("70.00"), "EUR")


# ---- the sandbox store and the samples -------------------------------------------------------------

def test_the_sandbox_store_answers_this_machine_only(client, redis, sandbox_key):
    base = "/sandbox/woocommerce/wp-json/wc/v3"
    assert client.get(f"{base}/coupons", environ_base=REMOTE, query_string=sandbox_key).status_code == 403
    assert client.get(f"{base}/coupons", environ_base=LOCAL, query_string=sandbox_key,
                      headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 403
    # a proxy on this machine that adds no header looks local: the sample store's key keeps it out
    wrong = sandbox_key["oauth_consumer_key"][:-1]
    for key in ({}, {"oauth_consumer_key": "ck_sandbox"}, {"oauth_consumer_key": wrong}, {"consumer_key": wrong}):
        assert client.get(f"{base}/coupons", environ_base=LOCAL, query_string=key).status_code == 403, key
    made = client.post(f"{base}/coupons", json={"code": "HELLO-AB12-CD34", "amount": "10.00",
                                                 "discount_type": "percent"}, environ_base=LOCAL,
                       query_string=sandbox_key)
    assert made.status_code == 201 and made.get_json()["code"] == "hello-ab12-cd34"
    again = client.post(f"{base}/coupons", json={"code": "HELLO-AB12-CD34"}, environ_base=LOCAL,
                        query_string=sandbox_key)
    assert again.status_code == 400 and again.get_json()["code"] == "woocommerce_rest_coupon_code_already_exists"
    found = client.get(f"{base}/coupons?code=HELLO-AB12-CD34", environ_base=LOCAL,
                       headers={"Authorization": "Basic " + base64.b64encode(
                           f"{sandbox_key['oauth_consumer_key']}:x".encode()).decode()}).get_json()
    assert [c["code"] for c in found] == ["hello-ab12-cd34"]


def test_samples_send_says_when_nothing_listens(env, redis):
    from click.testing import CliRunner

    from encore.cli import main

    result = CliRunner().invoke(main, ["samples", "send", "--url", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "is `make run` running?" in result.output
    # the sample store is registered once, with its own secret, pointing at the sandbox
    from encore.store.models import Shop
    from webhooks.woocommerce import store_domain

    with session_scope() as session:
        shops = session.execute(select(Shop)).scalars().all()
    assert [(s.platform, s.domain, s.url) for s in shops] == [
        ("woocommerce", store_domain("http://127.0.0.1:9/sandbox/woocommerce"),
         "http://127.0.0.1:9/sandbox/woocommerce")]
    assert shops[0].webhook_secret_enc
    with session_scope() as session:
        session.add(Customer(shop_id=shops[0].id, platform_id="101", email="ada@example.com"))
    forgot = CliRunner().invoke(main, ["samples", "forget", "--url", "http://127.0.0.1:9"])
    assert forgot.exit_code == 0, forgot.output
    with session_scope() as session:
        assert session.execute(select(Shop)).first() is None
        assert session.execute(select(Customer)).first() is None  # the store's rows went with it
    again = CliRunner().invoke(main, ["samples", "forget", "--url", "http://127.0.0.1:9"])
    assert again.exit_code != 0 and "no sample store" in again.output


def test_rq_dashboard_is_mounted_for_operators_only(client, redis):
    pytest.importorskip("rq_dashboard")
    from encore.queue import EVENTS, queue

    queue(EVENTS).enqueue_call("encore.jobs.process_event", args=({"id": "broken"},), job_id="broken-rq")
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
    from encore.store.ledger import get_or_create_shop
    from encore.store.models import EventRecord
    from flows.models import FlowEffect, FlowRun, FlowTrace
    from tests.conftest import use_database
    from webhooks import create_app

    use_database(env, db_url)
    now = datetime.now(UTC)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        session.flush()
        ada = Customer(shop_id=shop.id, platform_id="1", email="Ada@Example.com", first_name="Ada",
                       email_consent=True)
        session.add(ada)
        session.flush()
        session.add(EventRecord(id="ev-1", shop_id=shop.id, customer_id=ada.id, platform="shopify",
                                topic="orders/create", type="order.placed", occurred_at=now, received_at=now))
        run = FlowRun(run_key="k", shop_id=shop.id, customer_id=ada.id, flow_key="loyalty_third_order",
                      flow_name="Thank loyal customers", flow_digest="d", definition={}, trigger_key="once",
                      status="done", position=[2], context={}, started_at=now, updated_at=now)
        session.add(run)
        session.flush()
        session.add(FlowTrace(run_id=run.id, at=now, kind="suppressed", message="email not sent: frequency cap",
                              step="steps[2]", detail={"reason": "frequency cap"}))
        session.add(FlowEffect(key="m", run_id=run.id, shop_id=shop.id, customer_id=ada.id, kind="email",
                               status="done", result={"to": "Ada@Example.com", "subject": "Three orders!"},
                               created_at=now))
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
    from encore.store.ledger import get_or_create_shop

    with session_scope() as session:
        first = get_or_create_shop(session, "shopify", SHOP)
        second = get_or_create_shop(session, "woocommerce", "woo.example.com")
        session.flush()
        session.add(Customer(shop_id=first.id, platform_id="1", email="first@example.com"))
        session.add(Customer(shop_id=second.id, platform_id="2", email="second@example.com"))
        second_id = second.id
    page = client.get("/admin/customers", environ_base=LOCAL).get_data(as_text=True)
    assert "first@example.com" in page and "second@example.com" in page and 'name="store"' in page
    chosen = client.post("/admin/store", data={"store": str(second_id), "back": "/admin/customers",
                                               "csrf": _csrf(client)}, environ_base=LOCAL)
    assert chosen.status_code == 302 and chosen.headers["Location"].endswith("/admin/customers")
    page = client.get("/admin/customers", environ_base=LOCAL).get_data(as_text=True)
    assert "first@example.com" not in page and "second@example.com" in page
    client.post("/admin/store", data={"store": "", "csrf": _csrf(client)}, environ_base=LOCAL)
    assert "first@example.com" in client.get("/admin/customers", environ_base=LOCAL).get_data(as_text=True)
