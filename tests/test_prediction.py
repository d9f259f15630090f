"""The predicted next order: the method, the ledger keeping it as orders arrive (SQLite and PostgreSQL),
the date trigger's sweep, and its measure in the simulator."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from encore_retention import simulate
from encore_retention.core import events as ev
from encore_retention.core.store import prediction, session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import dates, loader, triggers
from encore_retention.jobs import process_event
from tests.conftest import use_database
from tests.flows.helpers import SHOP, customer, event, order

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def test_the_own_median_is_shrunk_toward_the_stores() -> None:
    assert prediction.gaps([T0 + timedelta(days=10), T0, T0 + timedelta(days=30)]) == [10.0, 20.0]
    assert prediction.predicted_gap([], 30.0) is None
    assert prediction.predicted_gap([10.0], None) == 10.0  # no store figure yet: their own
    assert prediction.predicted_gap([10.0], 30.0) == pytest.approx((1 * 10 + 3 * 30) / 4)  # one gap: mostly the store
    many = [10.0] * 30
    assert prediction.predicted_gap(many, 30.0) == pytest.approx((30 * 10 + 3 * 30) / 33)  # many: mostly theirs
    assert prediction.predict_next([T0], 30.0) is None
    assert prediction.predict_next([T0, T0 + timedelta(days=10)], None) == T0 + timedelta(days=20)
    assert prediction.baseline_next([T0, T0 + timedelta(days=10)], 7.0) == T0 + timedelta(days=17)


def _stored(platform_id: str) -> Customer:
    with session_scope() as db:
        row = db.execute(select(Customer).where(Customer.platform_id == platform_id)).scalar_one()
        db.expunge(row)
        return row


def test_the_ledger_predicts_as_orders_arrive_and_are_cancelled(env: pytest.MonkeyPatch, redis: Any, db_url: str):
    use_database(env, db_url)
    # Bob's gaps make the store's figure: 20 days, then 40 (median 30) before Ada's second order's day.
    for n, days in enumerate((0, 20, 60)):
        at = T0 + timedelta(days=days)
        process_event(event("order.placed", at, customer("bob"), order=order(f"b{n}", at)))
    ada = [T0 + timedelta(days=70), T0 + timedelta(days=80)]
    process_event(event("order.placed", ada[0], customer("ada"), order=order("a0", ada[0])))
    assert _stored("ada").predicted_next_order is None  # one order: no rhythm yet
    process_event(event("order.placed", ada[1], customer("ada"), order=order("a1", ada[1])))
    expected = ada[1] + timedelta(days=(1 * 10 + 3 * 30) / 4)
    assert _stored("ada").predicted_next_order == expected
    with session_scope() as db:
        shop = db.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        assert (shop.order_interval_days, shop.order_interval_on) == (30.0, ada[1].date())
    # a third order moves it; cancelling that order puts it back
    third = ada[1] + timedelta(days=12)
    placed = order("a2", third)
    process_event(event("order.placed", third, customer("ada"), order=placed))
    assert _stored("ada").predicted_next_order == third + timedelta(days=(2 * 11 + 3 * 20) / 5)
    # the store's figure was made on this day again: Ada's 10-day gap joined Bob's two (median 20)
    with session_scope() as db:
        assert db.execute(select(Shop.order_interval_days)).scalar_one() == 20.0
    later = third + timedelta(hours=1)
    cancelled = placed.model_copy(update={"cancelled_at": later, "updated_at": later})
    process_event(event("order.cancelled", later, customer("ada"), order=cancelled))
    assert _stored("ada").predicted_next_order == ada[1] + timedelta(days=(1 * 10 + 3 * 20) / 4)


def test_the_sweep_finds_who_is_due_three_days_before_their_next_order(env: pytest.MonkeyPatch, redis: Any):
    for n, days in enumerate((0, 30)):
        at = T0 + timedelta(days=days)
        process_event(event("order.placed", at, customer("ada"), order=order(f"a{n}", at)))
    predicted = _stored("ada").predicted_next_order
    assert predicted == T0 + timedelta(days=60)  # one gap, no store figure before that day: her own
    flow_file = loader.registry().flows["replenishment"]
    due = predicted.date() - timedelta(days=3)
    with session_scope() as db:
        shop = db.execute(select(Shop).where(Shop.domain == SHOP)).scalar_one()
        found = list(triggers.candidates(db, shop, flow_file, [due - timedelta(days=1), due, due + timedelta(days=1)]))
        assert [(day, key) for _, _, day, key in found] == [(due, f"customer.predicted_next_order:{predicted.date()}")]
        assert list(triggers.candidates(db, shop, flow_file, [due + timedelta(days=5)])) == []


# ---- how good it is: the simulator's measure ----------------------------------------------------------


def rhythmic_history(customers: int = 300, seed: int = 11) -> list[simulate.HistoricalOrder]:
    """Customers who each reorder on a rhythm of their own (7 to 90 days, give or take 20%)."""
    chance = random.Random(seed)
    orders = []
    for n in range(customers):
        rhythm = chance.uniform(7, 90)
        at = T0 + timedelta(days=chance.uniform(0, 60))
        for k in range(chance.randint(2, 8)):
            placed = at
            orders.append(
                simulate.HistoricalOrder(
                    order=ev.Order(id=f"{n}-{k}", created_at=placed, updated_at=placed, total=Decimal("20")),
                    customer_key=str(n),
                    email=f"c{n}@example.com",
                    consent=True,
                )
            )
            at = placed + timedelta(days=rhythm * chance.uniform(0.8, 1.2))
    return orders


def test_the_simulator_measures_the_prediction_against_the_orders_that_followed() -> None:
    orders = rhythmic_history()
    end = max(o.order.created_at for o in orders if o.order.created_at) + timedelta(days=1)
    sim = simulate.run_simulation(orders, [], {}, T0 - timedelta(days=1), end, dates.zone("UTC"))
    score = sim.predictions
    repeat_orders = len(orders) - 300
    assert 0 < score.count <= repeat_orders
    assert score.mae is not None and score.baseline_mae is not None
    assert score.mae < score.baseline_mae * 0.7, (score.mae, score.baseline_mae)  # own rhythms beat one median
    assert "mean absolute error" in score.summary() and "store-median baseline" in score.summary()


def test_a_store_where_everyone_keeps_the_same_rhythm_gains_nothing_and_loses_nothing() -> None:
    orders = [
        simulate.HistoricalOrder(
            order=ev.Order(id=f"{n}-{k}", created_at=T0 + timedelta(days=n + 30 * k), total=Decimal("5")),
            customer_key=str(n),
            email=None,
        )
        for n in range(10)
        for k in range(4)
    ]
    sim = simulate.run_simulation(orders, [], {}, T0, T0 + timedelta(days=200), dates.zone("UTC"))
    assert sim.predictions.count > 0
    assert sim.predictions.mae == pytest.approx(0.0, abs=1e-6)
    assert sim.predictions.baseline_mae == pytest.approx(0.0, abs=1e-6)


def test_predictions_need_two_orders(env: pytest.MonkeyPatch, redis: Any) -> None:
    process_event(event("order.placed", T0, customer("solo"), order=order("s0", T0)))
    assert _stored("solo").predicted_next_order is None
    assert date(2026, 1, 5) == T0.date()
