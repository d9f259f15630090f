"""The admin's flows page: each flow's runs, emails, conversions and revenue, and a flow's runs."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from flask import abort, g, render_template, request
from sqlalchemy import func, select

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Order, utcnow
from encore_retention.flows import loader
from encore_retention.flows.models import SUPPRESSED, FlowEffect, FlowRun, FlowTrace
from encore_retention.flows.schema import DateTrigger, SendEmailStep, format_duration
from encore_retention.flows.steps import position_label, walk
from encore_retention.web.admin.auth import Viewer, blueprint

log = logging.getLogger("encore.admin")
WINDOW = timedelta(days=30)  # the flows page's figures cover this long


@dataclass
class FlowStats:
    """A flow's results over the window."""

    key: str
    name: str
    enabled: bool
    trigger: str
    kind: str = "marketing"
    runs: int = 0
    suppressed: int = 0
    emails: int = 0
    codes: int = 0
    redeemed: int = 0
    revenue: Decimal = Decimal("0")
    currency: str | None = None
    loaded: bool = True
    steps: list[str] = field(default_factory=list)


def describe_trigger(trigger: Any) -> str:
    """`order.placed`, or `customer.birthday -14d at 09:00`."""

    if isinstance(trigger, DateTrigger):
        offset = (
            f" {'+' if trigger.offset >= timedelta(0) else '-'}{format_duration(abs(trigger.offset))}"
            if trigger.offset
            else ""
        )
        every = " yearly" if trigger.yearly else ""
        return f"{trigger.date}{offset} at {trigger.at.strftime('%H:%M')}{every}"
    return str(trigger.event)


def email_steps(flow: Any) -> list[tuple[str, str]]:
    """(position label, template) of every `send_email` step, both sides of each `if`."""
    return [
        (position_label(position), step.send_email.template)
        for position, step in walk(flow.steps)
        if isinstance(step, SendEmailStep)
    ]


def flow_stats(shop_ids: list[int], now: Any = None) -> list[FlowStats]:
    """Every flow (loaded, or seen in runs) with runs, emails, codes, redemptions and revenue since WINDOW ago."""

    since = (now or utcnow()) - WINDOW
    registry = loader.registry()
    stats: dict[str, FlowStats] = {}
    for key, flow_file in sorted(registry.flows.items()):
        flow = flow_file.flow
        stats[key] = FlowStats(
            key,
            flow.name,
            flow.enabled,
            describe_trigger(flow.trigger),
            flow.kind,
            steps=[label for label, _ in email_steps(flow)],
        )
    if not shop_ids:
        return list(stats.values())
    with session_scope() as db:
        runs = db.execute(
            select(FlowRun.flow_key, FlowRun.flow_name, FlowRun.status, func.count())
            .where(FlowRun.shop_id.in_(shop_ids), FlowRun.started_at >= since)
            .group_by(FlowRun.flow_key, FlowRun.flow_name, FlowRun.status)
        ).all()
        for key, name, status, count in runs:
            item = stats.setdefault(key, FlowStats(key, name, False, "(no longer loaded)", loaded=False))
            if status == SUPPRESSED:
                item.suppressed += count
            else:
                item.runs += count
        effects = db.execute(
            select(FlowRun.flow_key, FlowEffect.kind, FlowEffect.result, FlowEffect.shop_id)
            .join(FlowRun, FlowRun.id == FlowEffect.run_id)
            .where(
                FlowEffect.shop_id.in_(shop_ids),
                FlowEffect.created_at >= since,
                FlowEffect.status == "done",
                FlowEffect.kind.in_(("email", "discount")),
            )
        ).all()
        codes: dict[tuple[int, str], str] = {}
        for key, kind, result, shop_id in effects:
            item = stats.setdefault(key, FlowStats(key, key, False, "(no longer loaded)", loaded=False))
            if kind == "email":
                item.emails += 1
            else:
                item.codes += 1
                if result and result.get("code"):
                    codes[(shop_id, str(result["code"]).upper())] = key
        if codes:
            orders = db.execute(
                select(Order.shop_id, Order.discount_codes, Order.total, Order.currency).where(
                    Order.shop_id.in_(shop_ids),
                    Order.placed_at >= since,
                    Order.deleted.is_(False),
                    Order.cancelled_at.is_(None),
                )
            ).all()
            for shop_id, order_codes, total, currency in orders:
                for code in order_codes or []:
                    maker = codes.get((shop_id, str(code).upper()))
                    if maker is not None:
                        stats[maker].redeemed += 1
                        stats[maker].revenue += total or Decimal("0")
                        stats[maker].currency = stats[maker].currency or currency
                        break
    return list(stats.values())


@blueprint.get("/")
def flows():
    """The flows and their last 30 days."""

    viewer: Viewer = g.viewer
    items = flow_stats(viewer.shop_ids)
    problems = loader.registry().problems
    totals = {name: sum(getattr(item, name) for item in items) for name in ("runs", "emails", "codes", "redeemed")}
    revenue = sum((item.revenue for item in items), Decimal("0"))
    currency = next((item.currency for item in items if item.currency), None)
    return render_template(
        "admin/flows.html",
        flows=items,
        problems=problems,
        totals=totals,
        revenue=revenue,
        currency=currency,
        days=WINDOW.days,
    )


@blueprint.get("/flows/<flow_key>")
def flow_runs(flow_key: str):
    """One flow's recent runs: who, when, how far, and why it stopped or was suppressed."""

    status = request.args.get("status") or None
    with session_scope() as db:
        query = (
            select(FlowRun, Customer.email, Customer.id)
            .outerjoin(Customer, Customer.id == FlowRun.customer_id)
            .where(FlowRun.flow_key == flow_key, FlowRun.shop_id.in_(g.viewer.shop_ids))
        )
        if status:
            query = query.where(FlowRun.status == status)
        rows = db.execute(query.order_by(FlowRun.started_at.desc()).limit(200)).all()
        counts = dict(
            db.execute(
                select(FlowRun.status, func.count())
                .where(
                    FlowRun.flow_key == flow_key,
                    FlowRun.shop_id.in_(g.viewer.shop_ids),
                    FlowRun.started_at >= utcnow() - WINDOW,
                )
                .group_by(FlowRun.status)
            ).all()
        )
        reasons: dict[str, int] = defaultdict(int)
        for (detail,) in db.execute(
            select(FlowTrace.detail)
            .join(FlowRun, FlowRun.id == FlowTrace.run_id)
            .where(
                FlowRun.flow_key == flow_key,
                FlowRun.shop_id.in_(g.viewer.shop_ids),
                FlowTrace.kind == "suppressed",
                FlowTrace.at >= utcnow() - WINDOW,
            )
        ):
            reasons[str((detail or {}).get("reason") or "other")] += 1
    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None and not rows and not counts:
        abort(404)
    name = flow_file.flow.name if flow_file else (rows[0][0].flow_name if rows else flow_key)
    return render_template(
        "admin/flow.html",
        key=flow_key,
        name=name,
        flow=flow_file,
        rows=rows,
        counts=counts,
        status=status,
        days=WINDOW.days,
        reasons=sorted(reasons.items(), key=lambda kv: -kv[1]),
        trigger=describe_trigger(flow_file.flow.trigger) if flow_file else None,
    )


def flow_choices() -> list[tuple[str, str, list[tuple[str, str]]]]:
    return [(key, f.flow.name, email_steps(f.flow)) for key, f in sorted(loader.registry().flows.items())]
