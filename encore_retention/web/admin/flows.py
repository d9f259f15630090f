"""The admin's flows page: each flow's runs, emails, conversions and revenue, and a flow's runs."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from flask import abort, g, redirect, render_template, request, url_for
from markupsafe import Markup
from sqlalchemy import func, select

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Shop, parse_id, utcnow
from encore_retention.flows import controls, dates, loader
from encore_retention.flows.engine import release
from encore_retention.flows.models import SUPPRESSED, FlowEffect, FlowRun, FlowTrace
from encore_retention.flows.render import format_money
from encore_retention.flows.results import branch_results, by_split, redemptions
from encore_retention.flows.schema import PRIORITIES, DateTrigger, NotifyStep, SendEmailStep, format_duration
from encore_retention.flows.steps import position_label, walk
from encore_retention.web.admin.auth import Viewer, blueprint
from encore_retention.web.admin.charts import Series, small_multiples
from encore_retention.web.admin.times import viewer_zone

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


def describe_trigger(trigger: Any, written: Any = None) -> str:
    """`order.placed`, or `customer.birthday -14d at 09:00`: the offset as the flow file writes it.

    `written` is the trigger as the file has it (`FlowFile.data["trigger"]`); without it the offset is
    written in days, hours and minutes (`60d`, `-14d`).
    """

    if isinstance(trigger, DateTrigger):
        text = written.get("offset") if isinstance(written, dict) else None
        if not isinstance(text, str) or not text.strip():
            text = format_duration(trigger.offset)
        offset = f" {text.strip()}" if trigger.offset else ""
        every = " yearly" if trigger.yearly else ""
        return f"{trigger.date}{offset} at {trigger.at.strftime('%H:%M')}{every}"
    return ", ".join(trigger.events)


def email_steps(flow: Any) -> list[tuple[str, str]]:
    """(position label, template) of every `send_email` and `notify` (staff alert) step, both sides of each `if`."""
    return [
        (position_label(position), step.send_email.template)
        if isinstance(step, SendEmailStep)
        else (position_label(position), f"{step.notify.template} (to staff)")
        for position, step in walk(flow.steps)
        if isinstance(step, SendEmailStep | NotifyStep)
    ]


def _emails_and_codes(shop_ids: list[int], since: datetime, *where: Any) -> Any:
    """The emails sent and codes made since `since` in the shops: (flow, kind, result, shop id, when)."""
    return (
        select(FlowRun.flow_key, FlowEffect.kind, FlowEffect.result, FlowEffect.shop_id, FlowEffect.created_at)
        .join(FlowRun, FlowRun.id == FlowEffect.run_id)
        .where(
            FlowEffect.shop_id.in_(shop_ids),
            FlowEffect.created_at >= since,
            FlowEffect.status == "done",
            FlowEffect.kind.in_(("email", "discount")),
            *where,
        )
    )


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
            describe_trigger(flow.trigger, flow_file.data.get("trigger")),
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
        effects = db.execute(_emails_and_codes(shop_ids, since)).all()
        codes: dict[tuple[int, str], str] = {}
        for key, kind, result, shop_id, _ in effects:
            item = stats.setdefault(key, FlowStats(key, key, False, "(no longer loaded)", loaded=False))
            if kind == "email":
                item.emails += 1
            else:
                item.codes += 1
                if result and result.get("code"):
                    codes[(shop_id, str(result["code"]).upper())] = key
        for redemption in redemptions(db, shop_ids, since, codes):
            item = stats[redemption.owner]
            item.redeemed += 1
            item.revenue += redemption.total
            item.currency = item.currency or redemption.currency
    return list(stats.values())


HELD = ("suppressed", "deferred")  # the trace kinds of an email held back: not sent, or sent later


@dataclass
class Daily:
    """A flow's (or every flow's) figures a day over the window's days, in one time zone."""

    days: list[date]
    zone: str
    entries: list[int]
    emails: list[int]
    held: list[int]
    redeemed: list[int]
    revenue: list[Decimal]
    currency: str | None = None

    def series(self) -> list[Series]:
        """The charts' series: entries, emails sent, held back, codes redeemed, revenue."""
        return [
            Series("entries", "Entries", self.entries),
            Series("emails", "Emails sent", self.emails),
            Series("held", "Suppressed or deferred", self.held),
            Series("redeemed", "Codes redeemed", self.redeemed),
            Series("revenue", "Revenue", self.revenue, lambda value: format_money(value, self.currency)),
        ]


def daily(shop_ids: list[int], flow_key: str | None = None, tz: tzinfo = UTC, now: datetime | None = None) -> Daily:
    """Day by day over the last WINDOW.days days of `tz` (today included), for one flow or all of them:
    runs started, emails sent, emails suppressed or deferred (their trace lines: a run suppressed for no
    consent counts too), codes redeemed and those orders' revenue. Four narrow selects, bucketed here (so
    any zone's days work alike on SQLite and PostgreSQL), and the stores' currency when nothing was redeemed."""

    today = (now or utcnow()).astimezone(tz).date()
    days = [today - timedelta(days=back) for back in range(WINDOW.days - 1, -1, -1)]
    since = dates.local_instant(days[0], time(0), tz)
    index = {day: position for position, day in enumerate(days)}
    zeros = [0] * len(days)
    result = Daily(days, str(tz), zeros[:], zeros[:], zeros[:], zeros[:], [Decimal("0")] * len(days))

    def bucket(moment: datetime | None) -> int | None:
        return index.get(moment.astimezone(tz).date()) if moment is not None else None

    if not shop_ids:
        return result
    one_flow = [FlowRun.flow_key == flow_key] if flow_key is not None else []
    with session_scope() as db:
        for (started_at,) in db.execute(
            select(FlowRun.started_at).where(FlowRun.shop_id.in_(shop_ids), FlowRun.started_at >= since, *one_flow)
        ):
            if (at := bucket(started_at)) is not None:
                result.entries[at] += 1
        codes: dict[tuple[int, str], str] = {}
        for key, kind, made, shop_id, created_at in db.execute(_emails_and_codes(shop_ids, since, *one_flow)):
            if kind == "email":
                if (at := bucket(created_at)) is not None:
                    result.emails[at] += 1
            elif made and made.get("code"):
                codes[(shop_id, str(made["code"]).upper())] = key
        for (traced_at,) in db.execute(
            select(FlowTrace.at)
            .join(FlowRun, FlowRun.id == FlowTrace.run_id)
            .where(FlowRun.shop_id.in_(shop_ids), FlowTrace.kind.in_(HELD), FlowTrace.at >= since, *one_flow)
        ):
            if (at := bucket(traced_at)) is not None:
                result.held[at] += 1
        for redemption in redemptions(db, shop_ids, since, codes):
            if (at := bucket(redemption.placed_at)) is not None:
                result.redeemed[at] += 1
                result.revenue[at] += redemption.total
                result.currency = result.currency or redemption.currency
        if result.currency is None:  # nothing redeemed: the stores' own currency, when they share one
            currencies = set(db.scalars(select(Shop.currency).where(Shop.id.in_(shop_ids))))
            result.currency = currencies.pop() if len(currencies) == 1 else None
    return result


def daily_chart(shop_ids: list[int], flow_key: str | None = None) -> Markup:
    """The charts of `daily`, in the viewed store's days (DEFAULT_TIMEZONE's when several are in view)."""
    figures = daily(shop_ids, flow_key, viewer_zone())
    caption = f"A bar a day, days in {figures.zone}; the last {WINDOW.days} days, today included."
    return small_multiples(figures.days, figures.series(), caption)


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
        chart=daily_chart(viewer.shop_ids),
    )


@blueprint.get("/flows/<flow_key>")
def flow_runs(flow_key: str):
    """One flow's recent runs: who, when, how far, and why it stopped or was suppressed."""

    status = request.args.get("status") or None
    flow_file = loader.registry().flows.get(flow_key)
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
        deferrals: dict[str, int] = defaultdict(int)
        for kind, detail in db.execute(
            select(FlowTrace.kind, FlowTrace.detail)
            .join(FlowRun, FlowRun.id == FlowTrace.run_id)
            .where(
                FlowRun.flow_key == flow_key,
                FlowRun.shop_id.in_(g.viewer.shop_ids),
                FlowTrace.kind.in_(HELD),
                FlowTrace.at >= utcnow() - WINDOW,
            )
        ):
            (reasons if kind == "suppressed" else deferrals)[str((detail or {}).get("reason") or "other")] += 1
        held_now = db.scalar(
            select(func.count()).where(
                FlowRun.flow_key == flow_key,
                FlowRun.shop_id.in_(g.viewer.shop_ids),
                FlowRun.status == "waiting",
                FlowRun.deferred_since.is_not(None),
            )
        )
        branches = branch_results(
            db, g.viewer.shop_ids, flow_key, utcnow() - WINDOW, flow_file.flow if flow_file else None
        )
        control = controls.control_of(db, flow_key)
        paused = (control.paused, control.changed_by, control.changed_at, control.reason) if control else None
        done = [(a.at, a.actor, a.action, a.runs, a.run_id, a.reason) for a in controls.actions(db, flow_key, 20)]
    if flow_file is None and not rows and not counts:
        abort(404)
    name = flow_file.flow.name if flow_file else (rows[0][0].flow_name if rows else flow_key)
    return render_template(
        "admin/flow.html",
        control=paused,
        actions=done,
        can_pause=g.viewer.everything,
        key=flow_key,
        name=name,
        flow=flow_file,
        emails=email_steps(flow_file.flow) if flow_file else [],
        rows=rows,
        counts=counts,
        status=status,
        days=WINDOW.days,
        reasons=sorted(reasons.items(), key=lambda kv: -kv[1]),
        deferrals=sorted(deferrals.items(), key=lambda kv: -kv[1]),
        held_now=held_now or 0,
        priority=priority_name(flow_file.flow.priority) if flow_file else None,
        max_delay=format_duration(flow_file.flow.max_delay) if flow_file and flow_file.flow.max_delay else "off",
        splits=by_split(branches),
        chart=daily_chart(g.viewer.shop_ids, flow_key),
        trigger=describe_trigger(flow_file.flow.trigger, flow_file.data.get("trigger")) if flow_file else None,
    )


def priority_name(priority: int) -> str:
    """A flow's priority as a flow file names it (`high`), else its number."""
    names = {value: name for name, value in PRIORITIES.items()}
    return names.get(priority, str(priority))


def flow_choices() -> list[tuple[str, str, list[tuple[str, str]]]]:
    return [(key, f.flow.name, email_steps(f.flow)) for key, f in sorted(loader.registry().flows.items())]


def _actor() -> str:
    """Who acts from the admin: the operator, or the signed-in shop."""
    viewer: Viewer = g.viewer
    return "admin:operator" if viewer.everything else f"admin:{viewer.shop}"


def _reason(required: bool) -> str | None:
    reason = (request.form.get("reason") or "").strip()[:500]
    if required and not reason:
        abort(400, "say why: a reason is kept with the action")
    return reason or None


@blueprint.post("/flows/<flow_key>/pause")
def pause_flow(flow_key: str):
    """Pause a flow (every store's: the operator only)."""
    if not g.viewer.everything:
        abort(403)
    with session_scope() as db:
        controls.pause(db, flow_key, _actor(), _reason(False))
    return redirect(url_for("admin.flow_runs", flow_key=flow_key))


@blueprint.post("/flows/<flow_key>/resume")
def resume_flow(flow_key: str):
    """Resume a flow and release the runs it held."""
    if not g.viewer.everything:
        abort(403)
    with session_scope() as db:
        released = controls.resume(db, flow_key, _actor(), _reason(False))
    release(released)
    return redirect(url_for("admin.flow_runs", flow_key=flow_key))


@blueprint.post("/flows/<flow_key>/cancel")
def cancel_runs(flow_key: str):
    """Cancel one run (`run`) or every waiting and held run of the flow in the viewer's stores, with a reason."""
    run = request.form.get("run") or None
    run_id = parse_id(run) if run else None
    if run is not None and run_id is None:
        abort(400, "not a run id")
    with session_scope() as db:
        controls.cancel(db, flow_key, _actor(), _reason(True) or "", run_id, g.viewer.shop_ids)
    return redirect(url_for("admin.flow_runs", flow_key=flow_key))
