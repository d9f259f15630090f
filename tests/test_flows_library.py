"""Every built-in flow, walked through end to end (events through `process_event`, waits in fake time)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from encore_retention.connectors import base as connector_registry
from encore_retention.core import events as ev
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop
from encore_retention.flows import dates, engine, triggers
from encore_retention.flows.models import FlowRun
from encore_retention.jobs import process_event
from tests.flows.helpers import SHOP, FakeConnector, customer, event, order, outbox, walk_to

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def library(env: pytest.MonkeyPatch, redis: Any):  # type: ignore[no-untyped-def]
    """The built-in library, real Redis and SQLite, a fake platform, the clock frozen at T0."""

    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(T0)
    yield redis
    dates.set_now(None)


def sent(tmp_path: Path, flow_key: str) -> list[Any]:
    """Messages a flow sent (its key starts the idempotency key)."""
    return [m for m in outbox(tmp_path) if m["X-Encore-Idempotency-Key"].startswith(flow_key + "-")]


def text_of(message: Any) -> str:
    return message.get_body(("plain",)).get_content()


def html_of(message: Any) -> str:
    return message.get_body(("html",)).get_content()


def flow_runs(flow_key: str) -> list[FlowRun]:
    with session_scope() as session:
        return list(session.execute(select(FlowRun).where(FlowRun.flow_key == flow_key).order_by(FlowRun.id)).scalars())


def test_thank_you_after_the_first_order_only(library, tmp_path: Path) -> None:
    buyer = customer(email_consent=False)  # transactional: no consent needed
    process_event(event("order.placed", T0, buyer, order=order("5001", T0)))
    walk_to(library, T0 + timedelta(hours=1))
    assert sent(tmp_path, "thank_you_first_order") == []
    walk_to(library, T0 + timedelta(hours=2, minutes=1))
    (message,) = sent(tmp_path, "thank_you_first_order")
    assert message["Subject"] == "Thank you, Ada!"
    assert message["List-Unsubscribe"] is None  # transactional
    assert "#5001" in text_of(message)
    process_event(event("order.placed", T0 + timedelta(days=3), buyer, order=order("5002", T0 + timedelta(days=3))))
    walk_to(library, T0 + timedelta(days=4))
    assert len(sent(tmp_path, "thank_you_first_order")) == 1


def test_welcome_with_a_first_purchase_code(library, tmp_path: Path) -> None:
    process_event(event("customer.created", T0, customer()))
    (message,) = sent(tmp_path, "welcome")
    (request,) = FakeConnector.requests
    assert request.kind == "percent" and request.value == Decimal("10")
    assert request.minimum_subtotal == Decimal("30") and request.usage_limit == 1 and request.customer_id == "1001"
    assert request.ends_at == T0 + timedelta(days=14)
    code = FakeConnector.discounts[request.idempotency_key].code
    assert code.startswith("HELLO")
    assert code in text_of(message) and code in html_of(message)
    assert message["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
    assert "Unsubscribe (http://localhost:8000/unsubscribe/" in text_of(message)


def test_birthday_fourteen_days_ahead_with_ten_percent(library, tmp_path: Path) -> None:
    birthday = date(1990, 3, 20)
    process_event(event("customer.created", T0, customer(birthday=birthday, email_consent=True, orders_count=1)))
    FakeConnector.reset()
    send_day = date(2026, 3, 6)  # 20 March minus 14 days
    walk_to(library, datetime(2026, 3, 6, 0, 10, tzinfo=UTC))
    assert triggers.sweep()["queued"] == 1
    assert triggers.sweep()["queued"] == 0  # idempotent
    walk_to(library, datetime(2026, 3, 6, 8, 59, tzinfo=UTC))
    assert sent(tmp_path, "birthday") == []
    walk_to(library, datetime(2026, 3, 6, 9, 0, tzinfo=UTC))
    (message,) = sent(tmp_path, "birthday")
    assert message["Subject"] == "An early birthday gift for you, Ada"
    (request,) = FakeConnector.requests
    assert request.value == Decimal("10") and request.prefix == "BDAY"
    assert "10% off" in text_of(message)
    (run,) = flow_runs("birthday")
    assert run.trigger_key == "year:2026" and run.status == "done"
    # `encore sweep --date` for the same day again: no second run, no second email.
    triggers.sweep(send_day.isoformat())
    walk_to(library, datetime(2026, 3, 6, 9, 30, tzinfo=UTC))
    assert len(sent(tmp_path, "birthday")) == 1 and len(flow_runs("birthday")) == 1


def test_loyalty_reward_at_the_third_order(library, tmp_path: Path) -> None:
    buyer = customer(has_account=True)  # an account holder: no invitation to open one
    for n in range(3):
        at = T0 + timedelta(days=10 * n)
        walk_to(library, at)
        process_event(event("order.placed", at, buyer, order=order(f"70{n}", at)))
        assert len(sent(tmp_path, "loyalty_third_order")) == (1 if n == 2 else 0)
    (message,) = sent(tmp_path, "loyalty_third_order")
    assert message["Subject"] == "Three orders! Here is €10.00 off the next one"
    assert FakeConnector.tags == [("1001", ["loyal"])]
    (request,) = FakeConnector.requests
    assert request.kind == "fixed" and request.value == Decimal("10") and request.prefix == "LOYAL"


def _win_back_setup(library: Any) -> datetime:
    last = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    dates.set_now(last)
    process_event(event("order.placed", last, customer(has_account=True), order=order("801", last)))
    due = datetime(2026, 3, 6, 10, 0, tzinfo=UTC)  # 60 days later at 10:00
    walk_to(library, due - timedelta(hours=12))
    assert triggers.sweep()["queued"] == 1
    walk_to(library, due)
    return due


def test_win_back_after_sixty_quiet_days_with_a_reminder(library, tmp_path: Path) -> None:
    due = _win_back_setup(library)
    (first,) = sent(tmp_path, "win_back")
    assert first["Subject"] == "It's been a while: 15% off, just for you"
    walk_to(library, due + timedelta(days=7))
    messages = sent(tmp_path, "win_back")
    assert len(messages) == 2
    assert "Your 15% code expires in a week" in [m["Subject"] for m in messages]
    (run,) = flow_runs("win_back")
    assert run.status == "done"


def test_win_back_reminder_skipped_once_the_code_is_redeemed(library, tmp_path: Path) -> None:
    due = _win_back_setup(library)
    (code,) = [d.code for d in FakeConnector.discounts.values()]
    FakeConnector.redeemed.add(code)
    walk_to(library, due + timedelta(days=7))
    assert len(sent(tmp_path, "win_back")) == 1


def test_win_back_stops_when_an_order_arrives_during_the_wait(library, tmp_path: Path) -> None:
    due = _win_back_setup(library)
    assert len(sent(tmp_path, "win_back")) == 1
    back = due + timedelta(days=2)
    walk_to(library, back)
    process_event(event("order.placed", back, customer(), order=order("802", back)))
    walk_to(library, due + timedelta(days=8))
    assert len(sent(tmp_path, "win_back")) == 1
    (run,) = flow_runs("win_back")
    assert run.status == "exited" and run.reason == "exit on order.placed"
    with session_scope() as session:
        kinds = [t.kind for t in engine.trace_of(session, run.id)]
    assert kinds[-1] == "exit"


def test_check_in_after_fulfilment(library, tmp_path: Path) -> None:
    process_event(event("order.fulfilled", T0, customer(email_consent=None), order=order("901", T0)))
    walk_to(library, T0 + timedelta(days=2, hours=23))
    assert sent(tmp_path, "check_in_after_delivery") == []
    walk_to(library, T0 + timedelta(days=3))
    (message,) = sent(tmp_path, "check_in_after_delivery")
    assert message["Subject"] == "How is your order #901?"
    assert "reply to this email" in text_of(message)


def _checkout(token: str) -> ev.Checkout:
    return ev.Checkout(
        token=token,
        email="c1001@example.com",
        recovery_url=f"https://shop.example/recover/{token}",
        total=Decimal("42.00"),
        currency="EUR",
        line_items=[ev.LineItem(title="Green tea", quantity=1, price=Decimal("42.00"))],
    )


def test_abandoned_checkout_recovered_after_an_hour(library, tmp_path: Path) -> None:
    process_event(event("checkout.started", T0, customer(), checkout=_checkout("tok1")))
    walk_to(library, T0 + timedelta(minutes=59))
    assert sent(tmp_path, "abandoned_checkout") == []
    walk_to(library, T0 + timedelta(hours=1))
    (message,) = sent(tmp_path, "abandoned_checkout")
    assert "https://shop.example/recover/tok1" in text_of(message)
    assert "1 × Green tea (€42.00)" in text_of(message)


def test_abandoned_checkout_not_sent_when_the_order_follows(library, tmp_path: Path) -> None:
    process_event(event("checkout.started", T0, customer(), checkout=_checkout("tok2")))
    later = T0 + timedelta(minutes=20)
    walk_to(library, later)
    process_event(event("order.placed", later, customer(), order=order("950", later)))
    walk_to(library, T0 + timedelta(hours=2))
    assert sent(tmp_path, "abandoned_checkout") == []
    (run,) = flow_runs("abandoned_checkout")
    assert run.status == "exited"


def test_encore_sweep_command_catches_up_a_day(library, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from encore_retention.cli import main

    process_event(event("customer.created", T0, customer(birthday=date(1990, 3, 20), orders_count=1)))
    walk_to(library, datetime(2026, 3, 9, 12, 0, tzinfo=UTC))  # three days after the send day: the sweep was down
    assert CliRunner().invoke(main, ["sweep", "--date", "2026-03-32"]).exit_code == 2
    result = CliRunner().invoke(main, ["sweep", "--date", "2026-03-06"])
    assert result.exit_code == 0, result.output
    assert "1 due, 1 queued" in result.output
    walk_to(library, datetime(2026, 3, 9, 12, 0, tzinfo=UTC))
    assert len(sent(tmp_path, "birthday")) == 1
    CliRunner().invoke(main, ["sweep", "--date", "2026-03-06"])
    walk_to(library, datetime(2026, 3, 9, 12, 5, tzinfo=UTC))
    assert len(sent(tmp_path, "birthday")) == 1


def test_date_sweep_and_exit_on_sqlite_and_postgresql(library, tmp_path: Path, db_url: str, env) -> None:
    from tests.conftest import use_database

    use_database(env, db_url)
    process_event(event("customer.created", T0, customer("3003", birthday=date(1996, 2, 29), orders_count=1)))
    due = _win_back_setup(library)  # customer 1001: win-back due 6 March 10:00
    assert len(sent(tmp_path, "win_back")) == 1
    # 2027 is a common year: the 29 February birthday is celebrated on 28 February, 14 days early.
    walk_to(library, datetime(2027, 2, 14, 1, 0, tzinfo=UTC))
    assert triggers.sweep()["queued"] == 1
    walk_to(library, datetime(2027, 2, 14, 9, 0, tzinfo=UTC))
    (gift,) = sent(tmp_path, "birthday")
    assert gift["To"] == "c3003@example.com"
    assert due < datetime(2027, 2, 14, tzinfo=UTC)


def test_the_library_links_to_the_stores_own_url(env, tmp_path):
    """A sample store at http://localhost:PORT/sandbox/woocommerce is linked as such, not as https://."""
    from encore_retention.core.store.models import Shop
    from encore_retention.flows import render
    from encore_retention.flows.steps import shop_view

    shop = shop_view(
        Shop(id=1, domain="localhost:18351/sandbox/woocommerce", url="http://localhost:18351/sandbox/woocommerce")
    )
    html, _ = render.render_email("welcome.html", {"shop": shop, "customer": {"first_name": "Ada"}, "welcome": None})
    assert 'href="http://localhost:18351/sandbox/woocommerce/"' in html and "https://" not in html


# ---- guests become account holders -------------------------------------------------------------------


def test_a_guest_is_invited_to_open_an_account_with_a_code_only_they_can_use(library, tmp_path: Path) -> None:
    process_event(event("order.placed", T0, customer(has_account=False), order=order("5101", T0)))
    walk_to(library, T0 + timedelta(days=1, hours=23))
    assert sent(tmp_path, "guest_account_invite") == []
    walk_to(library, T0 + timedelta(days=2))
    (message,) = sent(tmp_path, "guest_account_invite")
    assert message["Subject"] == "Create your encore-test.myshopify.com account: 10% off your next order"
    text = text_of(message)
    assert "https://encore-test.myshopify.com/account/activate/1001" in text
    (request,) = [r for r in FakeConnector.requests if r.prefix == "ACCOUNT"]
    assert request.customer_id == "1001" and request.customer_email == "c1001@example.com"
    assert request.usage_limit == 1 and request.value == Decimal("10")
    assert FakeConnector.discounts[request.idempotency_key].code in text
    (run,) = flow_runs("guest_account_invite")
    assert run.status == "done"


def test_the_invitation_stops_when_the_guest_opens_an_account(library, tmp_path: Path) -> None:
    process_event(event("order.placed", T0, customer(has_account=False), order=order("5102", T0)))
    later = T0 + timedelta(days=1)
    walk_to(library, later)
    process_event(event("customer.updated", later, customer(has_account=True, updated_at=later)))
    walk_to(library, T0 + timedelta(days=3))
    assert sent(tmp_path, "guest_account_invite") == []
    assert [r for r in FakeConnector.requests if r.prefix == "ACCOUNT"] == []
    (run,) = flow_runs("guest_account_invite")
    assert run.status == "exited" and run.reason == "condition no longer holds"


def test_an_account_holder_is_not_invited(library, tmp_path: Path) -> None:
    process_event(event("order.placed", T0, customer(has_account=True), order=order("5103", T0)))
    walk_to(library, T0 + timedelta(days=3))
    assert sent(tmp_path, "guest_account_invite") == [] and flow_runs("guest_account_invite") == []


# ---- review requests and resolve fast ---------------------------------------------------------------


def _with_product(oid: str, at: datetime, product: str, status: str = "paid") -> ev.Order:
    placed = order(oid, at)
    placed.line_items = [ev.LineItem(product_id=product, title="Green tea", quantity=1, price=Decimal("60.00"))]
    placed.financial_status = status
    return placed


def test_review_request_two_weeks_after_fulfilment_links_the_product(library, tmp_path: Path) -> None:
    buyer = customer(has_account=True)
    process_event(event("order.fulfilled", T0, buyer, order=_with_product("5201", T0, "77")))
    walk_to(library, T0 + timedelta(days=13, hours=23))
    assert sent(tmp_path, "review_request") == []
    walk_to(library, T0 + timedelta(days=14))
    (message,) = sent(tmp_path, "review_request")
    assert message["Subject"] == "How do you like Green tea?"
    assert "https://encore-test.myshopify.com/products/p77" in text_of(message)
    assert message["List-Unsubscribe"] is not None  # marketing
    process_event(event("order.fulfilled", T0 + timedelta(days=15), buyer, order=_with_product("5201", T0, "77")))
    walk_to(library, T0 + timedelta(days=40))
    assert len(sent(tmp_path, "review_request")) == 1  # once per order


def test_no_review_request_for_a_refunded_order_and_the_other_order_still_gets_one(library, tmp_path: Path) -> None:
    buyer = customer(has_account=True)
    process_event(event("order.fulfilled", T0, buyer, order=_with_product("5301", T0, "81")))
    process_event(event("order.fulfilled", T0, buyer, order=_with_product("5302", T0, "82")))
    process_event(event("order.fulfilled", T0, buyer, order=_with_product("5303", T0, "83", status="refunded")))
    refund_at = T0 + timedelta(days=3)
    walk_to(library, refund_at)
    process_event(event("order.refunded", refund_at, buyer, order=_with_product("5301", T0, "81", status="refunded")))
    walk_to(library, T0 + timedelta(days=15))
    (message,) = sent(tmp_path, "review_request")
    assert "/products/p82" in text_of(message)
    runs = {run.trigger_key: (run.status, run.reason) for run in flow_runs("review_request")}
    assert runs == {"order:5301": ("exited", "exit on order.refunded"), "order:5302": ("done", "completed")}


def test_a_cancellation_alerts_the_staff_at_once_and_the_customer_gets_a_note(library, tmp_path: Path) -> None:
    buyer = customer(has_account=True)
    process_event(event("order.placed", T0, buyer, order=order("5401", T0)))
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        shop.email = "staff@shop.example"
    process_event(event("order.cancelled", T0 + timedelta(minutes=5), buyer, order=order("5401", T0)))
    (alert,) = sent(tmp_path, "resolve_fast")
    assert alert["To"] == "staff@shop.example" and alert["Subject"] == "Cancellation from Ada, order #5401"
    assert alert["Reply-To"] == "c1001@example.com"
    walk_to(library, T0 + timedelta(hours=1, minutes=5))
    alert, note = sent(tmp_path, "resolve_fast")
    assert note["To"] == "c1001@example.com" and note["Subject"] == "Your cancelled order #5401"
    assert "was cancelled" in text_of(note) and note["Reply-To"] == "staff@shop.example"


def test_resolve_fast_without_a_staff_email_stops_saying_why(library, tmp_path: Path) -> None:
    buyer = customer(has_account=True)
    process_event(event("order.refunded", T0, buyer, order=order("5501", T0)))
    walk_to(library, T0 + timedelta(hours=2))
    assert sent(tmp_path, "resolve_fast") == []
    (run,) = flow_runs("resolve_fast")
    assert run.status == "stopped" and run.reason.startswith("no staff email")


def test_a_refused_product_page_makes_the_review_link_the_stores(library, tmp_path: Path, env) -> None:
    from encore_retention.connectors.base import PlatformError

    def refuse(self: Any, product_id: str) -> str | None:
        raise PlatformError("Shopify product: Access denied for product field", status=200)

    env.setattr(FakeConnector, "product_url", refuse)
    process_event(event("order.fulfilled", T0, customer(has_account=True), order=_with_product("5601", T0, "91")))
    walk_to(library, T0 + timedelta(days=14))
    (message,) = sent(tmp_path, "review_request")
    assert "https://encore-test.myshopify.com" in text_of(message) and "/products/" not in text_of(message)
    (run,) = flow_runs("review_request")
    assert run.status == "done"
