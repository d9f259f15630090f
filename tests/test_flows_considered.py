"""A customer's timeline says which flows an event was considered for and why none of them started."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from sqlalchemy import func, select

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer
from encore_retention.flows import controls, dates
from encore_retention.flows.models import FlowConsidered
from encore_retention.jobs import process_event
from tests.conftest import PAYLOADS, drain, fake_woocommerce_coupons, post_woo, sign_in, woo_order
from tests.flows.helpers import customer, event, fake_platform, order
from tests.test_admin import LOCAL
from tests.test_flows_engine import flow_dir, runs

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FIRST = """
name: First order
trigger: {event: order.placed}
conditions: [customer.orders_count == 1]
steps:
  - wait: 1h
"""
THIRD = FIRST.replace("First order", "Third order").replace("== 1", "== 3")
ONCE = """
name: Once
trigger: {event: order.placed}
entry: {once_per_customer: true}
steps:
  - wait: 1h
"""
COOL = """
name: Cool
trigger: {event: order.placed}
entry: {cooldown: 7d}
when_paused: skip
steps:
  - wait: 1h
"""


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any):  # type: ignore[no-untyped-def]
    with fake_platform(env, T0):
        yield env


def considered() -> list[tuple[str, str, str]]:
    with session_scope() as session:
        rows = session.execute(select(FlowConsidered).order_by(FlowConsidered.id)).scalars()
        return [(row.cause, row.flow_key, row.reason) for row in rows]


def test_each_flow_an_event_did_not_start_is_noted_once_with_its_reason(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, first=FIRST, third=THIRD, once=ONCE, cool=COOL)
    placed = event("order.placed", T0, customer("1"), order=order("1", T0), event_id="placed-1")
    process_event(placed)
    process_event(placed)  # a retried delivery adds nothing, and the runs it started are no reason
    assert considered() == [("placed-1", "third", "condition customer.orders_count == 3 -> false")]
    assert {run.flow_key for run in runs()} == {"first", "once", "cool"}

    dates.set_now(T0 + timedelta(days=1))
    process_event(event("order.placed", T0 + timedelta(days=1), customer("1"), order=order("2", T0), event_id="p-2"))
    assert sorted(considered()[1:]) == [
        ("p-2", "cool", "cool-down: its last run began less than 7d ago"),
        ("p-2", "first", "condition customer.orders_count == 1 -> false"),
        ("p-2", "once", "already ran (once per customer)"),
        ("p-2", "third", "condition customer.orders_count == 3 -> false"),
    ]
    with session_scope() as session:
        controls.pause(session, "cool", "test", "a pause")
    dates.set_now(T0 + timedelta(days=9))
    process_event(event("order.placed", T0 + timedelta(days=9), customer("1"), order=order("3", T0), event_id="p-3"))
    assert ("p-3", "cool", "flow paused: new entries are skipped") in considered()
    assert ("p-3", "third", "condition customer.orders_count == 3 -> false") not in considered()  # it started


def test_a_redacted_customer_takes_their_notes_along(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, third=THIRD)
    process_event(event("order.placed", T0, customer("7"), order=order("70", T0)))
    process_event(event("order.placed", T0, customer("8"), order=order("80", T0)))
    assert len(considered()) == 2
    process_event(event("customer.redact", T0, customer("7")))
    with session_scope() as session:
        assert session.execute(select(func.count()).select_from(Customer)).scalar() == 1
        left = session.execute(select(FlowConsidered.customer_id)).scalars().all()
        assert left == [session.execute(select(Customer.id)).scalar()]  # the other customer's stays


@responses.activate
def test_alans_timeline_says_which_flows_he_was_considered_for_and_why_none_started(client, redis, woo_store):
    sign_in(client)
    fake_woocommerce_coupons()
    alan = json.loads((Path(__file__).parents[1] / "encore/samples/woocommerce/03-customer_created.json").read_text())
    assert alan["first_name"] == "Alan" and PAYLOADS.is_dir()
    post_woo(client, alan, "customer.created")
    post_woo(client, woo_order(9301, alan["id"], alan["email"], "20.00"), "order.created")
    drain(redis)
    with session_scope() as session:
        alan_id = session.execute(select(Customer.id).where(Customer.email == alan["email"])).scalar_one()
    page = client.get(f"/admin/customers/{alan_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "Considered for, not started: <b>welcome</b> (condition customer.email_consent -&gt; false)" in page
    assert "<b>loyalty_third_order</b> (condition customer.orders_count == 3 -&gt; false)" in page
    assert "Thank you for your first order" in page  # the flow his order did start
