"""The simulation agrees with the real engine: the same history through both, the same emails and suppressions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from encore_retention import simulate
from encore_retention.connectors import base as connector_registry
from encore_retention.core import events as ev
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer
from encore_retention.flows import dates, loader, rules, steps
from encore_retention.flows.models import FlowRun, FlowTrace
from encore_retention.flows.schema import FlowModel, StepModel
from encore_retention.jobs import process_event
from tests.flows.helpers import FakeConnector, customer, event, order, walk_to

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STEP = timedelta(hours=1)

# (at, kind, customer id, consent, order id or None)
HISTORY: list[tuple[datetime, str, str, bool, str | None]] = [
    (T0, "customer.created", "1001", True, None),
    (T0 + timedelta(minutes=1), "order.placed", "1001", True, "5001"),
    (T0 + timedelta(minutes=10), "customer.created", "1002", False, None),
    (T0 + timedelta(minutes=20), "order.placed", "1002", False, "5002"),
    (T0 + timedelta(days=1), "order.fulfilled", "1001", True, "5001"),
    (T0 + timedelta(days=2), "order.placed", "1002", False, "5003"),
    (T0 + timedelta(days=3), "order.placed", "1001", True, "5004"),
    (T0 + timedelta(days=4), "order.placed", "1002", False, "5005"),
    (T0 + timedelta(days=5), "order.placed", "1001", True, "5006"),
]
END = T0 + timedelta(days=9)


@pytest.fixture
def engine_env(env: pytest.MonkeyPatch, redis: Any):  # type: ignore[no-untyped-def]

    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(T0)
    yield redis
    dates.set_now(None)


def _order(order_id: str, at: datetime) -> ev.Order:
    return order(order_id, at, total="60.00")


def real_engine(redis: Any) -> tuple[list[tuple[str, str, datetime]], list[tuple[str, str, str]]]:
    """Play the history through process_event, walking the clock an hour at a time between events."""
    clock = T0
    placed: dict[str, datetime] = {}
    for at, kind, cid, consent, order_id in HISTORY:
        while clock + STEP <= at:
            clock += STEP
            walk_to(redis, clock)
        dates.set_now(at)
        if order_id and kind == "order.placed":
            placed[order_id] = at
        body = _order(order_id, placed.get(order_id, at)) if order_id else None
        process_event(event(kind, at, customer(cid, email_consent=consent), order=body))
    while clock + STEP <= END:
        clock += STEP
        walk_to(redis, clock)
    with session_scope() as session:
        rows = session.execute(
            select(FlowRun.flow_key, Customer.email, FlowTrace.kind, FlowTrace.at, FlowTrace.detail)
            .join(FlowRun, FlowRun.id == FlowTrace.run_id)
            .join(Customer, Customer.id == FlowRun.customer_id)
            .where(FlowTrace.kind.in_(("sent", "suppressed")))
        ).all()
    sent = sorted((flow, email, at) for flow, email, kind, at, _ in rows if kind == "sent")
    suppressed = sorted(
        (flow, email, (detail or {}).get("reason", "")) for flow, email, kind, _, detail in rows if kind == "suppressed"
    )
    return sent, suppressed


def simulated() -> simulate.Simulation:
    """The same history as exports: orders (with their fulfilment) and customers (with creation and consent)."""
    fulfilled = {order_id: at for at, kind, _, _, order_id in HISTORY if kind == "order.fulfilled" and order_id}
    orders = [
        simulate.HistoricalOrder(
            order=_order(order_id, at),
            customer_key=cid,
            email=f"c{cid}@example.com",
            first_name="Ada",
            consent=consent,
            fulfilled_at=fulfilled.get(order_id),
        )
        for at, kind, cid, consent, order_id in HISTORY
        if kind == "order.placed" and order_id
    ]
    known = [
        simulate.KnownCustomer(key=cid, email=f"c{cid}@example.com", first_name="Ada", consent=consent, created_at=at)
        for at, kind, cid, consent, _ in HISTORY
        if kind == "customer.created"
    ]
    flows = {f.key: f for f in loader.load_dir(loader.LIBRARY)[0]}
    return simulate.run_simulation(orders, known, flows, T0 - timedelta(days=1), END, dates.zone("UTC"))


def test_the_simulation_sends_what_the_engine_sends(engine_env):
    sent, suppressed = real_engine(engine_env)
    sim = simulated()
    sim_sent = sorted((o.flow, o.customer, o.at) for o in sim.outcomes if o.action == "email")
    sim_suppressed = sorted((o.flow, o.customer, o.reason) for o in sim.outcomes if o.action == "suppressed")
    assert [(f, e) for f, e, _ in sent] == [(f, e) for f, e, _ in sim_sent]
    # the engine's sends happen when the clock walks past the wake-up (hourly here); the simulation's at it
    for (_, _, real_at), (_, _, sim_at) in zip(sent, sim_sent, strict=True):
        assert sim_at <= real_at < sim_at + STEP
    assert suppressed == sim_suppressed
    # the history means something: welcome, thank-yous, a check-in, a loyalty reward, and Bob's refusals
    flows = {f for f, _, _ in sent}
    assert {"welcome", "thank_you_first_order", "check_in_after_delivery", "loyalty_third_order"} <= flows
    assert ("loyalty_third_order", "c1002@example.com", "no consent") in suppressed
    assert sum(Decimal(1) for f, _, _ in sent if f == "thank_you_first_order") == 2


class Require(FlowModel):
    """A tiny step kind: go on only if an expression holds."""

    expression: str


class RequireStep(StepModel):
    require: Require


def step_require(runner: steps.Runner, step: Any) -> rules.Outcome:
    held, _ = rules.condition_holds(step.require.expression, runner.context())
    return rules.NEXT if held else rules.Outcome("stop", reason="requirement not met")


REQUIRE_FLOW = """
name: Only for Ada
kind: transactional
trigger:
  event: order.placed
steps:
  - require:
      expression: "customer.first_name == 'Ada'"
  - send_email:
      template: thank_you_first_order.html
      subject: "Thank you, {{ customer.first_name }}"
"""


@pytest.fixture
def require_kind():  # type: ignore[no-untyped-def]
    steps.register("require", RequireStep, step_require, pure=True)
    yield
    steps.unregister("require")


def test_a_new_step_kind_is_one_model_and_one_handler(engine_env, env, tmp_path, require_kind):
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "only_ada.yaml").write_text(REQUIRE_FLOW)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    for cid, name in (("1001", "Ada"), ("1002", "Bob")):
        process_event(event("order.placed", T0, customer(cid, first_name=name), order=_order(f"5{cid}", T0)))
    with session_scope() as session:
        sent = session.execute(select(FlowTrace.detail).where(FlowTrace.kind == "sent")).scalars().all()
        stopped = session.execute(select(FlowRun.reason).where(FlowRun.status == "stopped")).scalars().all()
    assert [d["subject"] for d in sent] == ["Thank you, Ada"] and stopped == ["requirement not met"]

    flows = {f.key: f for f in loader.load_dir(folder)[0]}
    orders = [
        simulate.HistoricalOrder(
            order=_order(f"5{cid}", T0), customer_key=cid, email=f"c{cid}@example.com", first_name=n
        )
        for cid, n in (("1001", "Ada"), ("1002", "Bob"))
    ]
    sim = simulate.run_simulation(orders, [], flows, T0 - timedelta(days=1), END, dates.zone("UTC"))
    assert [(o.action, o.subject) for o in sim.outcomes] == [("email", "Thank you, Ada")]
