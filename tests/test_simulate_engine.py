"""The simulation agrees with the real engine: the same history through both, the same emails and suppressions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import select

from encore_retention import simulate
from encore_retention.connectors import base as connector_registry
from encore_retention.core import events as ev
from encore_retention.core.queue import FLOWS
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import dates, loader, rules, steps, triggers
from encore_retention.flows.models import FlowRun, FlowTrace
from encore_retention.flows.schema import FlowModel, StepModel
from encore_retention.jobs import process_event
from tests.conftest import drain
from tests.flows.helpers import SHOP, FakeConnector, customer, event, order, walk_to

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


def _outcomes() -> tuple[list[tuple[str, str, datetime]], list[tuple[str, str, str]]]:
    """The engine's emails (flow, address, when) and suppressions (flow, address, reason), from the run traces."""
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
    return _outcomes()


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


# ---- the date triggers and checkouts: birthdays, win-backs, abandoned checkouts ----------------------

# customer id -> (consent, birthday)
PEOPLE: dict[str, tuple[bool, date | None]] = {
    "2001": (True, date(1990, 3, 20)),  # a birthday gift on 6 March (two weeks early)
    "2002": (True, None),  # one order, then nothing: won back after 60 days, reminded a week later
    "2003": (True, None),  # ordered again after 20 days: not won back within the span
    "2004": (False, date(1985, 3, 25)),  # a birthday without consent: suppressed
    "2005": (True, None),  # a checkout left: the reminder an hour later
    "2006": (True, None),  # a checkout completed by an order half an hour later: no reminder
    "2007": (True, None),  # a second order after 30 days: a refill reminder before the predicted third
}
# (at, kind, customer id, order id or checkout token); customer 2005 is known by its checkout only
DATED: list[tuple[datetime, str, str, str | None]] = [
    (T0, "customer.created", "2001", None),
    (T0 + timedelta(minutes=5), "order.placed", "2001", "6001"),
    (T0 + timedelta(minutes=20), "customer.created", "2002", None),
    (T0 + timedelta(minutes=30), "order.placed", "2002", "6002"),
    (T0 + timedelta(minutes=50), "customer.created", "2003", None),
    (T0 + timedelta(hours=1), "order.placed", "2003", "6003"),
    (T0 + timedelta(hours=2), "customer.created", "2004", None),
    (T0 + timedelta(hours=3), "checkout.started", "2005", "ck-2005"),
    (T0 + timedelta(hours=4, minutes=59), "customer.created", "2006", None),
    (T0 + timedelta(hours=5), "checkout.started", "2006", "ck-2006"),
    (T0 + timedelta(hours=5, minutes=30), "order.placed", "2006", "6006"),
    (T0 + timedelta(hours=5, minutes=40), "customer.created", "2007", None),
    (T0 + timedelta(hours=5, minutes=45), "order.placed", "2007", "6007"),
    (T0 + timedelta(days=20), "order.placed", "2003", "6004"),
    (T0 + timedelta(days=30), "order.placed", "2007", "6008"),
]
DATED_END = T0 + timedelta(days=70)


def _person(cid: str) -> ev.Customer:
    consent, birthday = PEOPLE[cid]
    return customer(cid, email_consent=consent, birthday=birthday)


def _checkout(token: str, cid: str, at: datetime) -> ev.Checkout:
    return ev.Checkout(token=token, email=f"c{cid}@example.com", total=Decimal("45.00"), currency="EUR", created_at=at)


def _next_job(redis: Any) -> datetime | None:
    """When the first job the scheduler holds is due."""
    registry = ScheduledJobRegistry(FLOWS, connection=redis, serializer=JSONSerializer)
    first = redis.zrange(registry.key, 0, 0, withscores=True)
    return datetime.fromtimestamp(first[0][1], UTC) if first else None


def dated_engine(redis: Any) -> tuple[list[tuple[str, str, datetime]], list[tuple[str, str, str]]]:
    """Play DATED through process_event while the clock walks to each event, each scheduled job and each day's
    date sweep (the cron's `flows.triggers.sweep`), until DATED_END."""
    pending = list(DATED)
    sweep_at, clock = T0, T0
    for _ in range(10_000):
        stops = [at for at in (sweep_at, pending[0][0] if pending else None, _next_job(redis)) if at is not None]
        clock = max(clock, min(stops))
        if clock > DATED_END:
            break
        walk_to(redis, clock)  # the jobs due by now run
        while pending and pending[0][0] <= clock:
            at, kind, cid, ref = pending.pop(0)
            body = _order(ref, at) if ref and kind == "order.placed" else None
            started = _checkout(ref, cid, at) if ref and kind == "checkout.started" else None
            process_event(event(kind, at, _person(cid), order=body, checkout=started))
        if sweep_at <= clock:
            triggers.sweep()
            drain(redis)
            sweep_at += timedelta(days=1)
    else:
        raise AssertionError("the clock did not reach the end")
    return _outcomes()


def dated_simulation() -> simulate.Simulation:
    """DATED as exports (orders; customers with consent, birthday and creation) and the checkouts as such."""
    created = {cid: at for at, kind, cid, _ in DATED if kind == "customer.created"}
    orders = [
        simulate.HistoricalOrder(order=_order(ref, at), customer_key=cid, email=f"c{cid}@example.com", first_name="Ada")
        for at, kind, cid, ref in DATED
        if kind == "order.placed" and ref
    ]
    known = [
        simulate.KnownCustomer(
            key=cid,
            email=f"c{cid}@example.com",
            first_name="Ada",
            consent=consent,
            birthday=birthday,
            created_at=created.get(cid),
        )
        for cid, (consent, birthday) in PEOPLE.items()
    ]
    checkouts = [
        (at, cid, _checkout(ref, cid, at)) for at, kind, cid, ref in DATED if kind == "checkout.started" and ref
    ]
    flows = {f.key: f for f in loader.load_dir(loader.LIBRARY)[0]}
    return simulate.run_simulation(
        orders, known, flows, T0 - timedelta(days=1), DATED_END, dates.zone("UTC"), checkouts=checkouts
    )


def test_the_simulation_agrees_on_date_triggers_and_checkouts(engine_env):
    sent, suppressed = dated_engine(engine_env)
    sim = dated_simulation()
    sim_sent = sorted((o.flow, o.customer, o.at) for o in sim.outcomes if o.action == "email")
    sim_suppressed = sorted((o.flow, o.customer, o.reason) for o in sim.outcomes if o.action == "suppressed")
    assert [(f, e) for f, e, _ in sent] == [(f, e) for f, e, _ in sim_sent]
    for (_, _, real_at), (_, _, sim_at) in zip(sent, sim_sent, strict=True):
        assert sim_at <= real_at <= sim_at + timedelta(minutes=1)  # a wait ends on the engine's next minute
    assert suppressed == sim_suppressed
    # every flow of the library that the history calls for did its part, on both sides
    emails = [(f, e) for f, e, _ in sent]
    assert ("birthday", "c2001@example.com") in emails
    assert emails.count(("win_back", "c2002@example.com")) == 2  # the offer, then the reminder
    assert ("win_back", "c2003@example.com") not in emails
    assert ("birthday", "c2004@example.com", "no consent") in suppressed
    assert ("abandoned_checkout", "c2005@example.com") in emails
    assert ("abandoned_checkout", "c2006@example.com") not in emails
    # the refill reminders: 2003 on their own 20-day rhythm (the store had no figure yet), 2007 on theirs (30
    # days) shrunk toward the store's (2003's 20), three days before the predicted next order
    assert ("replenishment", "c2003@example.com") in emails and ("replenishment", "c2007@example.com") in emails
    refill = {e: at for f, e, at in sent if f == "replenishment"}
    assert refill["c2003@example.com"].date() == (T0 + timedelta(days=20 + 20 - 3, hours=1)).date()
    seventh = T0 + timedelta(days=30) + timedelta(days=(1 * 29.76 + 3 * 19.96) / 4 - 3)
    assert abs(refill["c2007@example.com"] - seventh) < timedelta(days=1)
    assert {"welcome", "thank_you_first_order", "birthday", "win_back", "abandoned_checkout"} <= {f for f, _ in emails}


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


# ---- guests, feedback, refunds and cancellations: the flows of the loop around the emails ---------------

# customer id -> (consent, has an account)
LOOP_PEOPLE: dict[str, tuple[bool, bool]] = {
    "3001": (True, True),  # fulfilled; asked a week later; answers 1: resolve fast
    "3002": (True, False),  # a guest: invited to open an account; cancels: resolve fast
    "3003": (True, True),  # fulfilled, then refunded: no feedback or review request, resolve fast
    "3004": (True, True),  # fulfilled; answers 5: invited to review; the review request two weeks on
    "3005": (False, False),  # a guest without consent: the invitation is suppressed
}
# (at, kind, customer id, order id, score of a feedback.received)
LOOP_CREATED = T0 - timedelta(hours=1)
LOOP: list[tuple[datetime, str, str, str, int | None]] = [
    *[(LOOP_CREATED + timedelta(minutes=n), "customer.created", cid, "", None) for n, cid in enumerate(LOOP_PEOPLE)],
    (T0, "order.placed", "3001", "7001", None),
    (T0 + timedelta(minutes=10), "order.placed", "3002", "7002", None),
    (T0 + timedelta(minutes=20), "order.placed", "3003", "7003", None),
    (T0 + timedelta(minutes=30), "order.placed", "3004", "7004", None),
    (T0 + timedelta(minutes=40), "order.placed", "3005", "7005", None),
    (T0 + timedelta(hours=2), "order.fulfilled", "3001", "7001", None),
    (T0 + timedelta(hours=2), "order.fulfilled", "3003", "7003", None),
    (T0 + timedelta(hours=2), "order.fulfilled", "3004", "7004", None),
    (T0 + timedelta(days=1), "order.cancelled", "3002", "7002", None),
    (T0 + timedelta(days=2), "order.refunded", "3003", "7003", None),
    (T0 + timedelta(days=8), "feedback.received", "3001", "7001", 1),
    (T0 + timedelta(days=8, hours=3), "feedback.received", "3004", "7004", 5),
]
LOOP_END = T0 + timedelta(days=20)


def _loop_order(order_id: str, at: datetime, status: str = "paid") -> ev.Order:
    placed = order(order_id, at, total="60.00")
    placed.line_items = [ev.LineItem(product_id=f"p{order_id}", title="Tea", quantity=1, price=Decimal("60.00"))]
    placed.financial_status = status
    return placed


def _loop_placed() -> dict[str, datetime]:
    return {oid: at for at, kind, _, oid, _ in LOOP if kind == "order.placed"}


def _loop_event(at: datetime, kind: str, cid: str, oid: str, score: int | None) -> dict[str, Any]:
    consent, account = LOOP_PEOPLE[cid]
    who = customer(cid, email_consent=consent, has_account=account)
    if kind == "customer.created":
        return event(kind, at, who)
    placed = _loop_order(oid, _loop_placed()[oid], "refunded" if kind == "order.refunded" else "paid")
    if kind != "feedback.received":
        return event(kind, at, who, order=placed)
    return ev.Event(
        id=f"encore-feedback-{cid}-{oid}",
        type=ev.EventType.FEEDBACK_RECEIVED,
        platform="shopify",
        shop=SHOP,
        topic="encore/feedback",
        occurred_at=at,
        received_at=at,
        customer=ev.Customer(id=cid),
        order=placed,
        data={"score": score, "order_id": oid},
    ).to_dict()


def _addressed() -> list[tuple[str, str]]:
    """The engine's emails as (flow, To), staff alerts to the staff's address: from the run traces."""
    with session_scope() as session:
        rows = session.execute(
            select(FlowRun.flow_key, FlowTrace.detail)
            .join(FlowRun, FlowRun.id == FlowTrace.run_id)
            .where(FlowTrace.kind == "sent")
        ).all()
    return sorted((flow, (detail or {})["to"]) for flow, detail in rows)


def test_the_simulation_agrees_on_guests_feedback_refunds_and_cancellations(engine_env):
    redis = engine_env
    pending = list(LOOP)
    clock = LOOP_CREATED
    dates.set_now(clock)
    for at, kind, cid, oid, score in pending[:1]:
        process_event(_loop_event(at, kind, cid, oid, score))
    with session_scope() as session:  # the store's staff, whom the alerts go to
        shop = session.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        shop.email = simulate.STAFF_ADDRESS
    for at, kind, cid, oid, score in pending[1:]:
        while clock + STEP <= at:
            clock += STEP
            walk_to(redis, clock)
        dates.set_now(at)
        process_event(_loop_event(at, kind, cid, oid, score))
    while clock + STEP <= LOOP_END:
        clock += STEP
        walk_to(redis, clock)
    engine_sent = _addressed()
    _, engine_suppressed = _outcomes()

    placed = _loop_placed()
    dated = {(kind, oid): at for at, kind, _, oid, _ in LOOP}
    orders = [
        simulate.HistoricalOrder(
            order=_loop_order(oid, at),
            customer_key=cid,
            email=f"c{cid}@example.com",
            first_name="Ada",
            fulfilled_at=dated.get(("order.fulfilled", oid)),
            cancelled_at=dated.get(("order.cancelled", oid)),
            refunded_at=dated.get(("order.refunded", oid)),
        )
        for at, kind, cid, oid, _ in LOOP
        if kind == "order.placed"
    ]
    known = [
        simulate.KnownCustomer(
            key=cid,
            email=f"c{cid}@example.com",
            first_name="Ada",
            consent=consent,
            has_account=account,
            created_at=LOOP_CREATED + timedelta(minutes=n),
        )
        for n, (cid, (consent, account)) in enumerate(LOOP_PEOPLE.items())
    ]
    answers = [(at, cid, score or 0, _loop_order(oid, placed[oid])) for at, kind, cid, oid, score in LOOP if score]
    flows = {f.key: f for f in loader.load_dir(loader.LIBRARY)[0]}
    sim = simulate.run_simulation(
        orders, known, flows, LOOP_CREATED - timedelta(days=1), LOOP_END, dates.zone("UTC"), feedback=answers
    )
    sim_sent = sorted(
        (o.flow, simulate.STAFF_ADDRESS if o.action == "notify" else o.customer)
        for o in sim.outcomes
        if o.action in ("email", "notify")
    )
    sim_suppressed = sorted((o.flow, o.customer, o.reason) for o in sim.outcomes if o.action == "suppressed")
    assert engine_sent == sim_sent
    assert engine_suppressed == sim_suppressed
    staff = simulate.STAFF_ADDRESS
    # what each person's history calls for, on both sides
    assert ("guest_account_invite", "c3002@example.com") in engine_sent
    assert [f for f, to in engine_sent if f == "guest_account_invite"] == ["guest_account_invite"]
    assert ("guest_account_invite", "c3005@example.com", "no consent") in engine_suppressed
    assert engine_sent.count(("resolve_fast", staff)) == 3  # the low score, the cancellation, the refund
    assert {to for f, to in engine_sent if f == "resolve_fast"} == {
        staff,
        "c3001@example.com",
        "c3002@example.com",
        "c3003@example.com",
    }
    assert {to for f, to in engine_sent if f == "feedback_request"} == {"c3001@example.com", "c3004@example.com"}
    assert [to for f, to in engine_sent if f == "review_after_top_score"] == ["c3004@example.com"]
    assert {to for f, to in engine_sent if f == "review_request"} == {"c3001@example.com", "c3004@example.com"}
