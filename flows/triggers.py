"""Date triggers: the sweep that starts the runs of date-triggered flows (birthdays, win-backs).

The sweep finds each shop's due customers for the date-triggered flows with indexed queries
(birthday month and day; a range over last_order_at, first_order_at or predicted_next_order) and queues
a start job at each customer's local send time. Runs are keyed, so sweeping twice, or `encore sweep --date` after
downtime, never starts a run twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from encore_retention.core.queue import FLOWS, get_redis, queue
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import dates, loader, rules
from encore_retention.flows.engine import advance, start_run
from encore_retention.flows.loader import FlowFile
from encore_retention.flows.rules import date_trigger_key, due_day
from encore_retention.flows.schema import DateTrigger

log = logging.getLogger(__name__)

START = "encore_retention.flows.triggers.start_date_runs"
MARK_PREFIX = "encore:due:"
CATCH_UP = timedelta(hours=24)
LOOK_AHEAD = timedelta(hours=36)
ANNIVERSARY_YEARS = 50
BATCH = 1000


# ---- dates -----------------------------------------------------------------------------------------


def _field(trigger: DateTrigger) -> str:
    return trigger.date.split(".", 1)[1]


def _local_value(customer_tz: str | None, shop_tz: str | None, value: Any) -> date:
    if isinstance(value, datetime):
        return value.astimezone(dates.zone(customer_tz, shop_tz)).date()
    return value


def candidates(
    session: Session, shop: Shop, flow_file: FlowFile, days: list[date]
) -> Iterator[tuple[int, str | None, date, str]]:
    """(customer id, customer time zone, due local day, trigger key) for customers due on any of `days`.

    Birthdays are found through the (month, day) index; other date fields by a range over their
    (shop, date) index, a little wider than the days so that every time zone is covered.
    """
    trigger = flow_file.flow.trigger
    assert isinstance(trigger, DateTrigger)
    field = _field(trigger)
    wanted = set(days)
    if field == "birthday":
        pairs = {pair for day in days for pair in dates.month_days_on(day - trigger.offset)}
        clause = or_(*(and_(Customer.birthday_month == m, Customer.birthday_day == d) for m, d in sorted(pairs)))
        stmt = select(Customer.id, Customer.timezone, Customer.birthday).where(clause, Customer.shop_id == shop.id)
        queries = [stmt]
    else:
        column = getattr(Customer, field)
        years = range(1, ANNIVERSARY_YEARS + 1) if trigger.yearly else [0]
        queries = []
        for years_back in years:
            low_day, high_day = min(days) - trigger.offset, max(days) - trigger.offset
            if years_back:
                low_day = _years_back(low_day, years_back) - timedelta(days=1)
                high_day = _years_back(high_day, years_back) + timedelta(days=1)
            low = datetime.combine(low_day, time(0), UTC) - timedelta(hours=15)
            high = datetime.combine(high_day + timedelta(days=1), time(0), UTC) + timedelta(hours=15)
            queries.append(
                select(Customer.id, Customer.timezone, column).where(
                    Customer.shop_id == shop.id, column >= low, column < high
                )
            )
    for stmt in queries:
        for row in session.execute(stmt.execution_options(yield_per=BATCH)):
            customer_id, customer_tz, raw = row
            if raw is None:
                continue
            value = _local_value(customer_tz, shop.timezone, raw)
            for day in wanted:
                year = (day - trigger.offset).year if trigger.yearly else None
                if due_day(trigger, value, year) == day:
                    yield customer_id, customer_tz, day, date_trigger_key(flow_file.flow.entry, trigger, value, day)
                    break


def _years_back(day: date, years: int) -> date:
    return dates.anniversary(day, day.year - years)


def send_instant(trigger: DateTrigger, day: date, customer_tz: str | None, shop_tz: str | None) -> datetime:
    """When a run due on local `day` starts: the trigger's `at` in the customer's zone (else the shop's)."""
    return dates.local_instant(day, trigger.at, dates.zone(customer_tz, shop_tz))


def sweep(day: str | None = None, shop_id: int | None = None) -> dict[str, int]:
    """Cron job (and `encore sweep`): queue the date-triggered runs due around now, or on local `day`.

    Without `day`, the days from yesterday to tomorrow are considered and runs whose send time is
    within the catch-up window or the next 36 hours are queued for that time. With `day`, every run
    due that day is queued (those past start now): idempotent, to catch up after downtime. Due
    customers are grouped by send time, one start job per group of up to BATCH customers.
    """

    registry = loader.registry()
    dated = registry.dated()
    counts = {"due": 0, "queued": 0, "jobs": 0}
    if not dated:
        return counts
    now = dates.now()
    explicit = date.fromisoformat(day) if day else None
    days = [explicit] if explicit else [now.date() + timedelta(days=n) for n in (-1, 0, 1)]
    connection = get_redis()
    flows_queue = queue(FLOWS, connection)
    with session_scope() as session:
        shops = (
            session.execute(select(Shop).where(Shop.active.is_(True), *([Shop.id == shop_id] if shop_id else [])))
            .scalars()
            .all()
        )
        for shop in shops:
            for flow_file in dated:
                trigger = flow_file.flow.trigger
                assert isinstance(trigger, DateTrigger)
                groups: dict[datetime, list[list[Any]]] = {}
                for customer_id, customer_tz, due, key in candidates(session, shop, flow_file, days):
                    when = send_instant(trigger, due, customer_tz, shop.timezone)
                    if explicit is None and not (now - CATCH_UP <= when <= now + LOOK_AHEAD):
                        continue
                    group = groups.setdefault(when, [])
                    group.append([customer_id, key])
                    counts["due"] += 1
                    if len(group) >= BATCH:  # a full batch goes out now: memory stays flat
                        _add(
                            counts,
                            _queue_groups(
                                connection, flows_queue, shop, flow_file, {when: group}, now, force=explicit is not None
                            ),
                        )
                        groups[when] = []
                _add(
                    counts,
                    _queue_groups(connection, flows_queue, shop, flow_file, groups, now, force=explicit is not None),
                )
    log.info("date sweep: %d due, %d newly queued in %d jobs", counts["due"], counts["queued"], counts["jobs"])
    return counts


def _add(counts: dict[str, int], result: tuple[int, int]) -> None:
    counts["jobs"] += result[0]
    counts["queued"] += result[1]


def _queue_groups(
    connection: Any,
    flows_queue: Any,
    shop: Shop,
    flow_file: FlowFile,
    groups: dict[datetime, list[list[Any]]],
    now: datetime,
    force: bool = False,
) -> tuple[int, int]:
    """One start job per send time and batch; a Redis mark per job keeps a re-sweep from queueing it again.

    `force` (an explicit `--date`) queues even marked jobs: they may have been lost, and starting a run
    twice is impossible anyway (its key is unique).
    """
    planned = []
    for when, items in sorted(groups.items()):
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            digest = hashlib.sha256(json.dumps([shop.id, flow_file.key, when.isoformat(), chunk]).encode())
            planned.append(("flowstart-" + digest.hexdigest()[:32], when, chunk))
    if not planned:
        return 0, 0
    ttl = int((CATCH_UP + LOOK_AHEAD).total_seconds()) + 3600
    with connection.pipeline(transaction=False) as pipe:
        for job_id, _, _ in planned:
            pipe.set(MARK_PREFIX + job_id, 1, nx=True, ex=ttl)
        fresh = pipe.execute()
    jobs = queued = 0
    with connection.pipeline() as pipe:
        for (job_id, when, chunk), is_new in zip(planned, fresh, strict=True):
            if not is_new and not force:
                continue
            args = (shop.id, flow_file.key, when.isoformat(), chunk)
            if when <= now:
                flows_queue.enqueue_call(START, args=args, job_id=job_id, result_ttl=600, pipeline=pipe)
            else:
                flows_queue.enqueue_at(when, START, *args, job_id=job_id, result_ttl=600, pipeline=pipe)
            jobs += 1
            queued += len(chunk)
        pipe.execute()
    return jobs, queued


def start_date_runs(shop_id: int, flow_key: str, due_at: str, items: list[list[Any]]) -> int:
    """RQ job: start the date-triggered runs of a group of customers due at `due_at`; returns runs started."""
    started = 0
    for customer_id, trigger_key in items:
        if start_date_run(shop_id, flow_key, int(customer_id), str(trigger_key), due_at) is not None:
            started += 1
    return started


def start_date_run(shop_id: int, flow_key: str, customer_id: int, trigger_key: str, due_at: str) -> int | None:
    """Start one date-triggered run if the customer is still due (their date may have changed since the sweep)."""

    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None or not flow_file.flow.enabled or not isinstance(flow_file.flow.trigger, DateTrigger):
        log.info("flow %s is gone or disabled; date run for customer %s not started", flow_key, customer_id)
        return None
    trigger = flow_file.flow.trigger
    with session_scope() as session:
        shop = session.get(Shop, shop_id)
        customer = session.get(Customer, customer_id)
        if shop is None or customer is None or not shop.active:
            return None
        raw = getattr(customer, _field(trigger))
        if raw is None:
            return None
        value = _local_value(customer.timezone, shop.timezone, raw)
        due = datetime.fromisoformat(due_at)
        day = due.astimezone(dates.zone(customer.timezone, shop.timezone)).date()
        year = (day - trigger.offset).year if trigger.yearly else None
        key = date_trigger_key(flow_file.flow.entry, trigger, value, day)
        if rules.before_its_cause(trigger, due, customer.last_order_at):
            log.info("customer %s: %s fell due before their last order", customer_id, flow_key)
            return None
        if due_day(trigger, value, year) != day or key != trigger_key:
            log.info("customer %s no longer due for %s on %s", customer_id, flow_key, day)
            return None
        context = {
            "event": {"type": "date", "field": trigger.date, "occurred_at": due.isoformat(), "day": day.isoformat()},
            "order": None,
            "checkout": None,
            "vars": {},
        }
        started = start_run(session, flow_file, shop, customer, trigger_key, context)
        session.commit()
        if started is None:
            return None
        advance(started[0], started[1], session if started[1] else None)
    return started[0]
