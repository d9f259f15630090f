"""The admin's customers: the list, and a customer's timeline (events, runs, emails)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from flask import abort, g, render_template, request
from sqlalchemy import func, or_, select

from encore_retention.core import consent
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import ConsentChange, Customer, EventRecord, Shop
from encore_retention.core.unsubscribe import is_suppressed
from encore_retention.flows.models import FlowConsidered, FlowEffect, FlowRun, FlowTrace
from encore_retention.web.admin.auth import blueprint
from encore_retention.web.admin.flows import flow_choices
from encore_retention.web.admin.messages import outbox_folder

log = logging.getLogger("encore.admin")


def customer_or_404(db: Any, customer_id: int) -> Customer:
    customer = db.get(Customer, customer_id)
    if customer is None or customer.shop_id not in g.viewer.shop_ids:
        abort(404)
    return customer


@blueprint.get("/customers")
def customers():
    """Find a customer by email or name; the most recently active first."""
    q = (request.args.get("q") or "").strip()
    with session_scope() as db:
        query = (
            select(Customer, Shop.domain)
            .join(Shop, Shop.id == Customer.shop_id)
            .where(Customer.shop_id.in_(g.viewer.shop_ids))
        )
        if q:
            like = f"%{q.lower()}%"
            query = query.where(
                or_(
                    func.lower(Customer.email).like(like),
                    func.lower(Customer.first_name).like(like),
                    func.lower(Customer.last_name).like(like),
                    Customer.platform_id == q,
                )
            )
        rows = db.execute(query.order_by(Customer.updated_at.desc()).limit(100)).all()
    return render_template("admin/customers.html", rows=rows, q=q)


@dataclass
class TimelineItem:
    """One line of a customer's timeline: an event received, a run (with its trace), an email sent."""

    at: Any
    kind: str
    title: str
    detail: str = ""
    run: Any = None
    trace: list[Any] = field(default_factory=list)
    considered: list[tuple[str, str]] = field(default_factory=list)
    """(flow, why it did not start) of each flow the event (or date) was considered for and started no run of."""
    platform: str = ""
    """A consent change's write-back: what the store's platform was told, or why nothing was."""


def considered_by_cause(db: Any, customer: Customer) -> dict[str, list[FlowConsidered]]:
    """The flows considered for the customer and not started, by cause (an event's id, a date trigger's key)."""
    found: dict[str, list[FlowConsidered]] = defaultdict(list)
    for row in db.execute(
        select(FlowConsidered)
        .where(FlowConsidered.customer_id == customer.id)
        .order_by(FlowConsidered.at.desc(), FlowConsidered.flow_key)
        .limit(200)
    ).scalars():
        found[row.cause].append(row)
    return found


def writeback_text(change: ConsentChange, platform: str) -> str:
    """What a consent change did on the store's platform, in words."""
    detail = change.writeback_detail
    tries = f" after {change.writeback_attempts} attempt{'s' * (change.writeback_attempts != 1)}"
    if change.writeback == consent.PENDING:
        return f"writing back to {platform}" + (f" ({detail})" if detail else "")
    if change.writeback == consent.DONE:
        return f"written back to {platform}{tries}: {detail}"
    if change.writeback == consent.FAILED:
        return f"not written back to {platform}{tries}: {detail}"
    return detail


def consent_items(db: Any, customer: Customer, platform: str) -> list[TimelineItem]:
    """The customer's consent changes: who, why, and what the store's platform was told."""
    items = []
    for change in consent.changes_of(db, customer.id):
        by = f"by {change.actor}" + (f" via {change.source}" if change.source and change.source != change.actor else "")
        detail = by + (f": {change.note}" if change.note else "")
        title = f"{change.action} ({change.reason})"
        platform_line = writeback_text(change, platform)
        items.append(TimelineItem(change.created_at, "consent", title, detail, run=change, platform=platform_line))
    return items


def timeline(db: Any, customer: Customer) -> list[TimelineItem]:
    """Events received (each with the flows it was considered for and why none of them started), runs started
    (each with its trace: conditions, waits, sends, suppressions), and consent changes (with their write-back)."""

    considered = considered_by_cause(db, customer)
    items: list[TimelineItem] = []
    for record in db.execute(
        select(EventRecord)
        .where(EventRecord.customer_id == customer.id)
        .order_by(EventRecord.occurred_at.desc())
        .limit(200)
    ).scalars():
        notes = [(row.flow_key, row.reason) for row in considered.pop(record.id, [])]
        items.append(
            TimelineItem(
                record.occurred_at,
                "event",
                record.type,
                f"{record.platform} {record.topic}",
                run=record,
                considered=notes,
            )
        )
    for cause, rows in considered.items():  # a date trigger's, or an event beyond the 200 shown
        notes = [(row.flow_key, row.reason) for row in rows]
        items.append(TimelineItem(rows[0].at, "considered", cause, considered=notes))
    runs = (
        db.execute(
            select(FlowRun).where(FlowRun.customer_id == customer.id).order_by(FlowRun.started_at.desc()).limit(200)
        )
        .scalars()
        .all()
    )
    traces: dict[int, list[FlowTrace]] = defaultdict(list)
    if runs:
        for line in db.execute(
            select(FlowTrace).where(FlowTrace.run_id.in_([r.id for r in runs])).order_by(FlowTrace.id)
        ).scalars():
            traces[line.run_id].append(line)
    for run in runs:
        detail = run.status + (f": {run.reason}" if run.reason else "")
        items.append(TimelineItem(run.started_at, "run", run.flow_name, detail, run=run, trace=traces[run.id]))
    shop = db.get(Shop, customer.shop_id)
    items.extend(consent_items(db, customer, shop.platform if shop else "the store"))
    items.sort(key=lambda item: item.at, reverse=True)
    return items


@blueprint.get("/customers/<id:customer_id>")
def customer(customer_id: int):
    """A customer's ledger row and timeline."""

    with session_scope() as db:
        row = customer_or_404(db, customer_id)
        shop = db.get(Shop, row.shop_id)
        items = timeline(db, row)
        emails = (
            db.execute(
                select(FlowEffect)
                .where(FlowEffect.customer_id == row.id, FlowEffect.kind == "email")
                .order_by(FlowEffect.created_at.desc())
                .limit(100)
            )
            .scalars()
            .all()
        )
        suppressed = is_suppressed(db, row.shop_id, row.email) if row.email else None
    return render_template(
        "admin/customer.html",
        customer=row,
        shop=shop,
        items=items,
        emails=emails,
        suppressed=suppressed,
        flows=flow_choices(),
        outbox=outbox_folder() is not None,
    )
