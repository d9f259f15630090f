""" "How was your order?": the signed 1-to-5 links, the landing page (GET confirms, POST records once), the answer
as a customer fact and a `feedback.received` event through the pipeline, the flows it starts, and its redaction."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from itsdangerous import URLSafeSerializer
from sqlalchemy import func, select

from encore_retention.connectors import base as connector_registry
from encore_retention.core import events as ev
from encore_retention.core import feedback
from encore_retention.core import queue as queue_module
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import export_customer, find_customer
from encore_retention.core.store.models import Customer, EventRecord, Feedback, Shop
from encore_retention.flows import dates
from encore_retention.flows.models import FlowRun
from encore_retention.jobs import process_event
from tests.conftest import drain, sign_in
from tests.flows.helpers import SHOP, FakeConnector, customer, event, order, outbox, walk_to

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LINK = re.compile(r"http://localhost:8000/feedback/([A-Za-z0-9_.-]+)")


@pytest.fixture
def store(client, env: pytest.MonkeyPatch, redis: Any):  # type: ignore[no-untyped-def]
    """The web app with the built-in library, a fake platform, the flow clock at T0, and a store with a staff email."""
    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(T0)
    process_event(event("customer.created", T0, customer(has_account=True)))
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        shop.name, shop.email = "Tea Corner", "staff@tea.example"
    FakeConnector.reset()  # the welcome flow's code for the new customer
    yield client
    dates.set_now(None)


def _ids() -> tuple[int, int]:
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        row = find_customer(session, shop.id, "1001")
        assert row is not None
        return shop.id, row.id


def _asked(score: int = 2, order_id: str | None = "5001", run_id: int = 0) -> tuple[str, feedback.Asked]:
    shop_id, customer_id = _ids()
    asked = feedback.Asked(shop_id, customer_id, order_id, run_id, score)
    return feedback.make_token(asked), asked


def _answers() -> list[tuple[int, str | None, bool]]:
    with session_scope() as session:
        return [
            (f.score, f.comment, f.queued) for f in session.execute(select(Feedback).order_by(Feedback.id)).scalars()
        ]


def _confirm(page: str) -> str:
    found = re.search(r'name="confirm" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def _queued_events(redis: Any) -> int:
    return queue_module.queue(queue_module.EVENTS, redis).count


# ---- the links ---------------------------------------------------------------------------------------


def test_a_token_names_the_answer_and_nothing_else(env):
    asked = feedback.Asked(3, 41, "5001", 77, 4)
    token = feedback.make_token(asked)
    assert feedback.read_token(token) == asked
    assert asked.subject == "order:5001" and asked._replace(order_id=None).subject == "run:77"
    assert feedback.read_token(token[:-2] + "xx") is None  # tampered
    forged = URLSafeSerializer("another-key", salt=feedback.SALT).dumps([3, 41, "5001", 77, 4])
    assert feedback.read_token(forged) is None
    for bad in ([3, 41, "5001", 77, 6], [3, 41, "5001", 77, True], ["3", 41, None, 77, 1], [3, 41, 5001, 77, 1]):
        assert feedback.read_token(URLSafeSerializer("test-secret-key", salt=feedback.SALT).dumps(bad)) is None
    links = feedback.FeedbackLinks(3, 41, "5001", 77)
    assert feedback.read_token(links(5).rsplit("/", 1)[1]) == asked._replace(score=5)
    with pytest.raises(ValueError):
        links(0)


def test_a_comment_is_kept_clean_and_bounded():
    assert feedback.clean_comment("  fine\x00 thanks \n") == "fine thanks"
    assert feedback.clean_comment("   ") is None and feedback.clean_comment(None) is None
    assert len(feedback.clean_comment("x" * 5000) or "") == feedback.COMMENT_MAX


# ---- the landing page --------------------------------------------------------------------------------


def test_get_shows_the_score_and_a_comment_box_and_records_nothing(store, redis):
    token, _ = _asked(score=4)
    before = _queued_events(redis)
    for _ in range(2):  # a mail scanner, then the customer
        page = store.get(f"/feedback/{token}")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "How was your order?" in text and "Tea Corner" in text and "#5001" in text
        assert re.search(r'value="4"\s+checked', text) and "<textarea" in text and 'method="post"' in text
    assert _answers() == [] and _queued_events(redis) == before


def test_a_post_records_once_and_queues_one_event(store, redis):
    token, _ = _asked(score=2)
    confirm = _confirm(store.get(f"/feedback/{token}").get_data(as_text=True))
    before = _queued_events(redis)
    first = store.post(f"/feedback/{token}", data={"confirm": confirm, "score": "1", "comment": "Box was crushed"})
    assert first.status_code == 200 and "1 out of 5" in first.get_data(as_text=True)
    again = store.post(f"/feedback/{token}", data={"confirm": confirm, "score": "5", "comment": "changed my mind"})
    assert again.status_code == 200 and "1 out of 5" in again.get_data(as_text=True)  # the first answer stands
    assert _answers() == [(1, "Box was crushed", True)]
    assert _queued_events(redis) == before + 1
    page = store.get(f"/feedback/{token}").get_data(as_text=True)
    assert "Thank you" in page and "Box was crushed" in page and "<textarea" not in page


def test_a_post_without_the_pages_field_records_nothing(store, redis):
    token, _ = _asked()
    for data in ({}, {"confirm": "nope"}, {"confirm": _confirm(store.get(f"/feedback/{_asked(3)[0]}").text)}):
        answer = store.post(f"/feedback/{token}", data={**data, "score": "2"})
        assert answer.status_code == 400 and "Please confirm" in answer.get_data(as_text=True)
    assert _answers() == []


def test_forged_links_and_erased_customers_get_a_404(store):
    token, asked = _asked()
    assert store.get("/feedback/not-a-token").status_code == 404
    assert store.post("/feedback/not-a-token", data={"score": "1"}).status_code == 404
    stranger = feedback.make_token(asked._replace(customer_id=asked.customer_id + 99))
    assert store.get(f"/feedback/{stranger}").status_code == 404
    assert _answers() == []


def test_an_unreachable_queue_keeps_the_answer_and_the_next_post_queues_it(store, redis, env):
    token, _ = _asked(score=1)
    confirm = _confirm(store.get(f"/feedback/{token}").text)

    def refuse(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("Redis is down")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("encore_retention.web.feedback.enqueue_event", refuse)
        down = store.post(f"/feedback/{token}", data={"confirm": confirm})
    assert down.status_code == 503 and "try again" in down.text
    assert _answers() == [(1, None, False)]
    before = _queued_events(redis)
    assert store.post(f"/feedback/{token}", data={"confirm": confirm}).status_code == 200
    assert _answers() == [(1, None, True)] and _queued_events(redis) == before + 1


# ---- the answer through the pipeline -----------------------------------------------------------------


def _fulfilled_and_asked(store: Any, redis: Any, tmp_path: Any) -> dict[int, str]:
    """Order 5001 fulfilled at T0; the feedback email a week later: its links by score."""
    process_event(event("order.fulfilled", T0, customer(has_account=True), order=order("5001", T0)))
    walk_to(redis, T0 + timedelta(days=7))
    (message,) = [m for m in outbox(tmp_path) if m["X-Encore-Idempotency-Key"].startswith("feedback_request-")]
    assert message["Subject"] == "How was your order #5001?"
    body = message.get_body(("plain",)).get_content()
    links = {feedback.read_token(t).score: t for t in LINK.findall(body)}  # type: ignore[union-attr]
    assert sorted(links) == [1, 2, 3, 4, 5]
    return links


def test_a_low_score_is_a_customer_fact_an_event_and_resolve_fast(store, redis, tmp_path):
    links = _fulfilled_and_asked(store, redis, tmp_path)
    token = links[2]
    assert feedback.read_token(token).subject == "order:5001"  # type: ignore[union-attr]
    confirm = _confirm(store.get(f"/feedback/{token}").text)
    assert store.post(f"/feedback/{token}", data={"confirm": confirm, "comment": "Arrived late"}).status_code == 200
    drain(redis)
    with session_scope() as session:
        shop_id, _ = _ids()
        row = find_customer(session, shop_id, "1001")
        assert row is not None and row.feedback_score == 2 and row.feedback_at is not None
        (record,) = session.execute(select(EventRecord).where(EventRecord.type == "feedback.received")).scalars()
        assert record.customer_id == row.id and record.payload["data"]["comment"] == "Arrived late"
        (run,) = session.execute(select(FlowRun).where(FlowRun.flow_key == "resolve_fast")).scalars()
        assert run.trigger_key == "order:5001" and run.context["event"]["score"] == 2
        assert run.context["order"]["line_items"][0]["title"] == "Tea"  # the asking run's order, with its lines
    mails = [m for m in outbox(tmp_path) if m["X-Encore-Idempotency-Key"].startswith("resolve_fast-")]
    (alert,) = mails
    assert alert["To"] == "staff@tea.example" and alert["Subject"].startswith("Low score (2/5) from Ada")
    assert "Arrived late" in alert.get_body(("plain",)).get_content()
    walk_to(redis, dates.now() + timedelta(hours=1))
    note = [m for m in outbox(tmp_path) if m["X-Encore-Idempotency-Key"].startswith("resolve_fast-")][-1]
    assert note["To"] == "c1001@example.com" and note["Reply-To"] == "staff@tea.example"
    assert "reply to this email" in note.get_body(("plain",)).get_content().lower()
    assert FakeConnector.requests == []  # no discount by reflex
    sign_in(store)  # the customer's page in the admin: the score, the event and the run it started
    _, customer_id = _ids()
    page = store.get(f"/admin/customers/{customer_id}", environ_base={"REMOTE_ADDR": "127.0.0.1"}).text
    assert "2/5" in page and "feedback.received" in page and "Resolve fast" in page
    # a refund of the same order afterwards: the same run's key, no second alert
    process_event(event("order.refunded", dates.now(), customer(has_account=True), order=order("5001", T0)))
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(FlowRun).where(FlowRun.flow_key == "resolve_fast")) == 1


def test_a_top_score_invites_a_public_review_on_the_stores_review_page(store, redis, tmp_path):
    links = _fulfilled_and_asked(store, redis, tmp_path)
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        shop.settings = {**(shop.settings or {}), "review_url": "https://reviews.example/tea-corner"}
    token = links[5]
    store.post(f"/feedback/{token}", data={"confirm": _confirm(store.get(f"/feedback/{token}").text)})
    drain(redis)
    (invite,) = [m for m in outbox(tmp_path) if m["X-Encore-Idempotency-Key"].startswith("review_after_top_score-")]
    assert "https://reviews.example/tea-corner" in invite.get_body(("plain",)).get_content()
    assert [m for m in outbox(tmp_path) if m["X-Encore-Idempotency-Key"].startswith("resolve_fast-")] == []


def test_an_answer_arriving_late_does_not_replace_a_newer_one(store):
    shop_id, customer_id = _ids()
    for score, at in ((4, T0 + timedelta(days=2)), (1, T0 + timedelta(days=1))):
        answer = ev.Event(
            id=f"encore-feedback-test-{score}",
            type=ev.EventType.FEEDBACK_RECEIVED,
            platform="shopify",
            shop=SHOP,
            topic=feedback.TOPIC,
            occurred_at=at,
            customer=ev.Customer(id="1001"),
            data={"score": score},
        )
        process_event(answer.to_dict())
    with session_scope() as session:
        row = session.get_one(Customer, customer_id)
        assert (row.feedback_score, row.feedback_at) == (4, T0 + timedelta(days=2))
        assert row.total_spent == Decimal("0") and row.orders_count == 0  # an answer is not an order


def test_redaction_deletes_the_answers_and_the_export_lists_them(store, redis):
    token, _ = _asked(score=3)
    store.post(f"/feedback/{token}", data={"confirm": _confirm(store.get(f"/feedback/{token}").text), "comment": "ok"})
    drain(redis)
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        exported = export_customer(session, shop, "1001")
    assert [(a["score"], a["comment"]) for a in exported["feedback"]] == [(3, "ok")]
    redact = ev.Event(
        id="redact-1001",
        type=ev.EventType.CUSTOMER_REDACT,
        platform="shopify",
        shop=SHOP,
        topic="customers/redact",
        occurred_at=T0,
        customer=ev.Customer(id="1001", email="c1001@example.com"),
    )
    process_event(redact.to_dict())
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 0
        assert (
            session.scalar(select(func.count()).select_from(EventRecord).where(EventRecord.type == "feedback.received"))
            == 0
        )
    assert store.get(f"/feedback/{token}").status_code == 404
