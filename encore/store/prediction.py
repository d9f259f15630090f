"""When will a customer order next? A customer's own rhythm, shrunk toward the store's.

For a customer with two or more orders, the gaps between their consecutive orders (in days) are
their own evidence; the store's median gap is the prior. The predicted gap is the weighted mean

    (n · own median + k · store median) / (n + k)

with n the customer's number of gaps and k = SHRINK: a customer with one gap leans on the store,
one with ten gaps mostly on themselves. The next order is expected that many days after their last
one. Customers with a single order get no prediction (nothing says what their rhythm is).

The store's median is taken over the gaps whose later order falls in the WINDOW (a year) before
the start of a UTC day, so it is a function of the history and the day alone: computed at most once
a day per store (the first repeat order of a day does it) and kept on the shop row. The simulator
(`encore simulate`) computes the same figure from the same rule over the history it replays.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from encore_retention.core.store.models import Order, Shop, UTCDateTime

SHRINK = 3.0
"""How many of a customer's own gaps the store's median weighs as (k)."""
WINDOW = timedelta(days=365)
"""The store's median is over the gaps whose later order is at most this old."""
DAY = 86400.0


def gaps(placed: Sequence[datetime]) -> list[float]:
    """The days between consecutive order times (sorted first)."""
    ordered = sorted(placed)
    return [(later - earlier).total_seconds() / DAY for earlier, later in zip(ordered, ordered[1:], strict=False)]


def median(values: Iterable[float]) -> float | None:
    """The median of some numbers, None when there are none."""
    found = list(values)
    return float(statistics.median(found)) if found else None


def predicted_gap(own: Sequence[float], store: float | None, shrink: float = SHRINK) -> float | None:
    """The expected days to the next order: the customer's median gap shrunk toward the store's median."""
    mine = median(own)
    if mine is None:
        return None
    if store is None:
        return mine
    n = len(own)
    return (n * mine + shrink * store) / (n + shrink)


def predict_next(placed: Sequence[datetime], store: float | None, shrink: float = SHRINK) -> datetime | None:
    """When the next order is expected, from a customer's order times (None with fewer than two)."""
    if len(placed) < 2:
        return None
    gap = predicted_gap(gaps(placed), store, shrink)
    return None if gap is None else max(placed) + timedelta(days=gap)


def baseline_next(placed: Sequence[datetime], store: float | None) -> datetime | None:
    """The naive prediction the method is measured against: the last order plus the store's median gap."""
    if len(placed) < 2 or store is None:
        return None
    return max(placed) + timedelta(days=store)


def day_start(day: date) -> datetime:
    """Midnight UTC of a day: where the store's median of that day stops counting."""
    return datetime.combine(day, time(0), UTC)


def store_gaps(session: Session, shop_id: int, day: date) -> list[float]:
    """The store's gaps (days) whose later order is in the WINDOW before `day` starts (not cancelled, not deleted)."""
    until = day_start(day)
    previous = (
        func.lag(Order.placed_at, type_=UTCDateTime())
        .over(partition_by=Order.customer_id, order_by=(Order.placed_at, Order.id))
        .label("previous")
    )
    ordered = (
        select(Order.placed_at.label("placed"), previous)
        .where(
            Order.shop_id == shop_id,
            Order.customer_id.is_not(None),
            Order.placed_at.is_not(None),
            Order.placed_at < until,
            Order.deleted.is_(False),
            Order.cancelled_at.is_(None),
        )
        .subquery()
    )
    query = select(ordered.c.placed, ordered.c.previous).where(
        ordered.c.previous.is_not(None), ordered.c.placed >= until - WINDOW
    )
    return [(later - earlier).total_seconds() / DAY for later, earlier in session.execute(query)]


def store_gap(session: Session, shop: Shop, day: date) -> tuple[float | None, bool]:
    """The store's median gap as of `day` and whether it was computed now (the caller stores it on the shop).

    A figure kept for `day` or a later day is used as it is; an older one is computed again.
    """
    if shop.order_interval_on is not None and shop.order_interval_on >= day:
        return shop.order_interval_days, False
    return median(store_gaps(session, shop.id, day)), True
