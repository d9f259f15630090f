"""The merchant's page, `/admin`: flows and their results, a customer's timeline, email previews, failures.

Sign-in, in order:
1. A Shopify embedded-app session token (`Authorization: Bearer …` or `?id_token=…`): a JWT signed
   HS256 with SHOPIFY_API_SECRET whose `aud` is SHOPIFY_API_KEY; its `dest` names the shop.
2. The shop whose OAuth install just completed (the install callback signs the browser in).
3. ADMIN_PASSWORD, entered on `/admin/login`; failed attempts are throttled per client and per account.
4. A one-time sign-in link (`/admin/sign-in?token=…`): `encore run` prints one, `encore admin link`
   makes another. That is how a laptop without ADMIN_PASSWORD gets in.
Nothing is let in for coming from this machine: a reverse proxy on the same host looks just like a
local browser. Each sign-in starts a server-side session (`encore.access`), and signing out ends it.
A shop's sign-in sees that shop only; the password and the link see every shop. Every page answers
only to APP_URL's host and this machine's own names, which turns DNS rebinding away.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, session, url_for
from markupsafe import escape
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select
from werkzeug.routing import BaseConverter, ValidationError

from encore_retention.core import access
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, EventRecord, Order, Shop, parse_id, utcnow
from encore_retention.webhooks import peers
from encore_retention.webhooks.app import unavailable

log = logging.getLogger("encore.admin")

blueprint = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
                      static_folder="static", static_url_path="/static")

SESSION_KEY = "encore_admin"
WINDOW = timedelta(days=30)
SAMPLE_CUSTOMER: dict[str, Any] = {
    "id": "sample", "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "orders_count": 1,
    "total_spent": "84.00", "email_consent": True, "birthday": "1990-12-10", "tags": ["vip"],
    "order": {"id": "1001", "number": "1001", "total": "84.00", "subtotal": "76.00", "currency": "EUR",
              "line_items": [{"title": "Linen shirt", "quantity": 1, "price": "56.00"},
                             {"title": "Canvas tote", "quantity": 1, "price": "20.00"}]},
    "checkout": {"token": "sample-checkout", "email": "ada@example.com", "total": "76.00", "currency": "EUR",
                 "recovery_url": "https://shop.example.com/checkouts/sample/recover",
                 "line_items": [{"title": "Linen shirt", "quantity": 1, "price": "56.00"}]},
}
WIDTHS = {"desktop": 680, "mobile": 375}


# ---- sign-in ---------------------------------------------------------------------------------------

@dataclass
class Viewer:
    """Who is looking: a shop (domain) or the operator (every shop)."""

    how: str
    shop: str | None = None
    shop_ids: list[int] = field(default_factory=list)
    shops: list[tuple[int, str]] = field(default_factory=list)
    chosen: int | None = None

    @property
    def everything(self) -> bool:
        """True when the viewer may see every shop."""
        return self.shop is None


def shop_from_session_token(token: str) -> str | None:
    """The shop domain of a valid Shopify session token, else None."""
    import jwt

    settings = get_settings()
    if not (settings.SHOPIFY_API_SECRET and settings.SHOPIFY_API_KEY):
        return None
    claims = None
    for secret in settings.shopify_secrets:
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], audience=settings.SHOPIFY_API_KEY, leeway=10,
                                options={"require": ["exp", "nbf", "dest", "aud"]})
            break
        except jwt.PyJWTError:
            continue
    if claims is None:
        return None
    from encore_retention.webhooks.shopify import SHOP_DOMAIN

    shop = (urlsplit(str(claims.get("dest", ""))).hostname or "").lower()
    issuer = (urlsplit(str(claims.get("iss", ""))).hostname or "").lower()
    if not SHOP_DOMAIN.match(shop) or (issuer and issuer != shop):
        return None
    return shop


class IdConverter(BaseConverter):
    """`<id:name>` in a route: a row id, as `parse_id` reads it; anything else matches no page (404)."""

    regex = r"[0-9]+"

    def to_python(self, value: str) -> int:
        number = parse_id(value)
        if number is None:
            raise ValidationError()
        return number

    def to_url(self, value: Any) -> str:
        return str(int(value))


def _lifetime() -> int:
    return int(current_app.permanent_session_lifetime.total_seconds())


def _session_id() -> str | None:
    stored = session.get(SESSION_KEY)
    session_id = stored.get("sid") if isinstance(stored, dict) else None
    return session_id if isinstance(session_id, str) else None


def _grant() -> dict[str, Any] | None:
    """Who this browser's session signed in as (read from Redis once per request), or None."""
    if "admin_grant" not in g:
        session_id = _session_id()
        g.admin_grant = access.session_grant(session_id, _lifetime()) if session_id else None
    grant = g.admin_grant
    return grant if isinstance(grant, dict) else None


def start_session(how: str, shop: str | None = None) -> None:
    """Sign this browser in: a new server-side session (the previous one ends) and a new form token."""
    previous = _session_id()
    if previous:
        access.end_session(previous)
    grant = {"how": how, "shop": shop}
    session.pop("encore_csrf", None)
    session[SESSION_KEY] = {"sid": access.start_session(grant, _lifetime())}
    session.permanent = True
    g.admin_grant = grant


def sign_in_shop(shop: str) -> None:
    """Sign this browser in as the shop `shop` (after OAuth or a session token); a session for it is kept."""
    grant = _grant()
    if grant and grant.get("how") == "shopify" and grant.get("shop") == shop:
        return
    start_session("shopify", shop)


def _viewer() -> Viewer | None:
    token = request.args.get("id_token")
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    if token:
        shop = shop_from_session_token(token)
        if shop is None:
            return None
        sign_in_shop(shop)
    grant = _grant()
    how = grant.get("how") if grant else None
    if how == "shopify" and grant and grant.get("shop"):
        return Viewer("shopify", str(grant["shop"]))
    if how == "password" and get_settings().ADMIN_PASSWORD:
        return Viewer("password")
    if how == "link":
        return Viewer("link")
    return None


def refuse_malformed() -> None:
    """Turn away what no admin page can answer: a `Host` that is not Encore's (DNS rebinding) and NUL
    characters (PostgreSQL can't compare text holding them)."""
    if not peers.known_host(request):
        log.warning("admin request for an unknown host refused", extra={"host": request.host[:200]})
        abort(400, "Encore's admin page answers only at APP_URL's host and localhost; "
                   "set APP_URL to the address you open it at.")
    texts = [request.path, *(key + value for key, value in request.args.items(multi=True))]
    if request.method == "POST":
        texts.extend(key + value for key, value in request.form.items(multi=True))
    if any("\x00" in text for text in texts):
        abort(400, "NUL characters are not allowed")


@blueprint.before_request
def require_sign_in():  # type: ignore[no-untyped-def]
    """Every page but the sign-in pages and the stylesheet needs a viewer; every page, a known host."""
    refuse_malformed()
    if request.endpoint in ("admin.login", "admin.sign_in", "admin.static"):
        return None
    viewer = _viewer()
    if viewer is None:
        if request.method == "GET" and not request.headers.get("Authorization"):
            return redirect(url_for("admin.login", next=request.full_path))
        abort(401)
    with session_scope() as db:
        query = select(Shop.id, Shop.name, Shop.domain).order_by(Shop.id)
        if viewer.shop:
            query = query.where(Shop.domain == viewer.shop)
        viewer.shops = [(row.id, row.name or row.domain) for row in db.execute(query)]
    viewer.shop_ids = [shop_id for shop_id, _ in viewer.shops]
    chosen = session.get("encore_store")
    if viewer.everything and chosen in viewer.shop_ids:
        viewer.chosen, viewer.shop_ids = chosen, [chosen]
    g.viewer = viewer
    if request.method == "POST":
        given = request.form.get("csrf", "")
        if not hmac.compare_digest(given, csrf_token()):
            abort(400, "the form expired; reload the page")
    return None


@blueprint.errorhandler(RedisError)
def redis_unavailable(exc: RedisError):  # type: ignore[no-untyped-def]
    """Sessions, sign-in links and the throttle live in Redis: without it, 503 and try again."""
    log.error("Redis unavailable", extra={"path": request.path, "error": type(exc).__name__})
    return unavailable("redis_unavailable", f"Redis unavailable ({type(exc).__name__}); try again in a few seconds")


@blueprint.after_request
def frame_policy(response: Response) -> Response:
    """Who may show these pages in a frame: the Shopify admin for a shop's sign-in, else only this site."""
    viewer = g.get("viewer")
    if "Content-Security-Policy" not in response.headers:
        ancestors = f"https://{viewer.shop} https://admin.shopify.com" if viewer and viewer.shop else "'self'"
        response.headers["Content-Security-Policy"] = f"frame-ancestors {ancestors}"
    return response


def csrf_token() -> str:
    """The session's token for forms."""
    token = session.get("encore_csrf")
    if not token:
        token = session["encore_csrf"] = secrets.token_urlsafe(24)
    return str(token)


@blueprint.app_context_processor
def _template_globals() -> dict[str, Any]:
    from encore_retention.flows.steps import position_label

    return {"csrf_token": csrf_token, "viewer": g.get("viewer"), "money": _money, "step_label": position_label}


def _money(value: Any, currency: str | None = None) -> str:
    from encore_retention.flows.steps import format_money

    return format_money(value or 0, currency)


LINK_REFUSALS = {
    "invalid": "That sign-in link is not valid.",
    "expired": "That sign-in link has expired.",
    "used": "That sign-in link was already used.",
}


def _render_sign_in(error: str | None, status: int, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    configured = bool(get_settings().ADMIN_PASSWORD)
    response = Response(render_template("admin/login.html", error=error, configured=configured), status=status,
                        headers=headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    """The password form (ADMIN_PASSWORD): 401 for a wrong password, 429 with Retry-After when throttled."""
    configured = get_settings().ADMIN_PASSWORD
    if request.method == "GET":
        return _render_sign_in(None, 200)
    client = peers.client_address(request)
    throttled = access.attempt(client)
    if throttled is not None:
        log.warning("admin sign-in throttled", extra={"client": client, "scope": throttled.scope,
                                                      "retry_after": throttled.retry_after})
        minutes = math.ceil(throttled.retry_after / 60)
        return _render_sign_in(f"Too many sign-in attempts; try again in {minutes} minute{'s' * (minutes != 1)}.",
                               429, {"Retry-After": str(throttled.retry_after)})
    given = request.form.get("password", "")
    if configured and hmac.compare_digest(given.encode(), configured.encode()):
        access.succeeded(client)
        start_session("password")
        log.info("admin signed in", extra={"client": client, "how": "password"})
        target = request.args.get("next") or url_for("admin.flows")
        return redirect(target if target.startswith("/admin") else url_for("admin.flows"))
    log.warning("admin sign-in refused", extra={"client": client})
    return _render_sign_in("That password is not right." if configured else "No ADMIN_PASSWORD is set on this server.",
                           401)


@blueprint.get("/sign-in")
def sign_in():  # type: ignore[no-untyped-def]
    """Spend a one-time sign-in link (`encore run` prints one, `encore admin link` makes another)."""
    outcome = access.redeem_link_token(request.args.get("token", ""))
    client = peers.client_address(request)
    if outcome != "ok":
        log.warning("admin sign-in link refused", extra={"client": client, "reason": outcome})
        return _render_sign_in(LINK_REFUSALS[outcome], 401)
    start_session("link")
    log.info("admin signed in", extra={"client": client, "how": "link"})
    response = redirect(url_for("admin.flows"))
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.post("/store")
def choose_store():  # type: ignore[no-untyped-def]
    """Look at one store (operators with several), or at all of them."""
    chosen = parse_id(request.form.get("store", ""))
    if chosen is not None and chosen in [shop_id for shop_id, _ in g.viewer.shops]:
        session["encore_store"] = chosen
    else:
        session.pop("encore_store", None)
    target = request.form.get("back") or url_for("admin.flows")
    return redirect(target if target.startswith("/admin") else url_for("admin.flows"))


@blueprint.post("/logout")
def logout():  # type: ignore[no-untyped-def]
    """Sign out: the server-side session ends, so no copy of the cookie works any more."""
    session_id = _session_id()
    if session_id:
        access.end_session(session_id)
    session.clear()
    return redirect(url_for("admin.login"))


# ---- flows -----------------------------------------------------------------------------------------

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
    from encore_retention.flows.schema import DateTrigger, format_duration

    if isinstance(trigger, DateTrigger):
        offset = f" {'+' if trigger.offset >= timedelta(0) else '-'}{format_duration(abs(trigger.offset))}" \
            if trigger.offset else ""
        every = " yearly" if trigger.yearly else ""
        return f"{trigger.date}{offset} at {trigger.at.strftime('%H:%M')}{every}"
    return str(trigger.event)


def email_steps(flow: Any) -> list[tuple[str, str]]:
    """(position label, template) of every `send_email` step, both sides of each `if`."""
    from encore_retention.flows.schema import IfStep, SendEmailStep
    from encore_retention.flows.steps import position_label

    found: list[tuple[str, str]] = []

    def walk(steps: list[Any], prefix: list[Any]) -> None:
        for index, step in enumerate(steps):
            if isinstance(step, IfStep):
                walk(step.then, [*prefix, index, "then"])
                walk(step.else_, [*prefix, index, "else"])
            elif isinstance(step, SendEmailStep):
                found.append((position_label([*prefix, index]), step.send_email.template))

    walk(flow.steps, [])
    return found


def flow_stats(shop_ids: list[int], now: Any = None) -> list[FlowStats]:
    """Every flow (loaded, or seen in runs) with runs, emails, codes, redemptions and revenue since WINDOW ago."""
    from encore_retention.flows import loader
    from encore_retention.flows.models import SUPPRESSED, FlowEffect, FlowRun

    since = (now or utcnow()) - WINDOW
    registry = loader.registry()
    stats: dict[str, FlowStats] = {}
    for key, flow_file in sorted(registry.flows.items()):
        flow = flow_file.flow
        stats[key] = FlowStats(key, flow.name, flow.enabled, describe_trigger(flow.trigger), flow.kind,
                               steps=[label for label, _ in email_steps(flow)])
    if not shop_ids:
        return list(stats.values())
    with session_scope() as db:
        runs = db.execute(select(FlowRun.flow_key, FlowRun.flow_name, FlowRun.status, func.count()).where(
            FlowRun.shop_id.in_(shop_ids), FlowRun.started_at >= since)
            .group_by(FlowRun.flow_key, FlowRun.flow_name, FlowRun.status)).all()
        for key, name, status, count in runs:
            item = stats.setdefault(key, FlowStats(key, name, False, "(no longer loaded)", loaded=False))
            if status == SUPPRESSED:
                item.suppressed += count
            else:
                item.runs += count
        effects = db.execute(select(FlowRun.flow_key, FlowEffect.kind, FlowEffect.result, FlowEffect.shop_id).join(
            FlowRun, FlowRun.id == FlowEffect.run_id).where(
            FlowEffect.shop_id.in_(shop_ids), FlowEffect.created_at >= since, FlowEffect.status == "done",
            FlowEffect.kind.in_(("email", "discount")))).all()
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
            orders = db.execute(select(Order.shop_id, Order.discount_codes, Order.total, Order.currency).where(
                Order.shop_id.in_(shop_ids), Order.placed_at >= since, Order.deleted.is_(False),
                Order.cancelled_at.is_(None))).all()
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
def flows():  # type: ignore[no-untyped-def]
    """The flows and their last 30 days."""
    from encore_retention.flows import loader

    viewer: Viewer = g.viewer
    items = flow_stats(viewer.shop_ids)
    problems = loader.registry().problems
    totals = {name: sum(getattr(item, name) for item in items) for name in ("runs", "emails", "codes", "redeemed")}
    revenue = sum((item.revenue for item in items), Decimal("0"))
    currency = next((item.currency for item in items if item.currency), None)
    return render_template("admin/flows.html", flows=items, problems=problems, totals=totals, revenue=revenue,
                           currency=currency, days=WINDOW.days)


@blueprint.get("/flows/<flow_key>")
def flow_runs(flow_key: str):  # type: ignore[no-untyped-def]
    """One flow's recent runs: who, when, how far, and why it stopped or was suppressed."""
    from encore_retention.flows import loader
    from encore_retention.flows.models import FlowRun, FlowTrace

    status = request.args.get("status") or None
    with session_scope() as db:
        query = select(FlowRun, Customer.email, Customer.id).outerjoin(Customer, Customer.id == FlowRun.customer_id) \
            .where(FlowRun.flow_key == flow_key, FlowRun.shop_id.in_(g.viewer.shop_ids))
        if status:
            query = query.where(FlowRun.status == status)
        rows = db.execute(query.order_by(FlowRun.started_at.desc()).limit(200)).all()
        counts = dict(db.execute(select(FlowRun.status, func.count()).where(
            FlowRun.flow_key == flow_key, FlowRun.shop_id.in_(g.viewer.shop_ids),
            FlowRun.started_at >= utcnow() - WINDOW).group_by(FlowRun.status)).all())
        reasons: dict[str, int] = defaultdict(int)
        for (detail,) in db.execute(select(FlowTrace.detail).join(FlowRun, FlowRun.id == FlowTrace.run_id).where(
                FlowRun.flow_key == flow_key, FlowRun.shop_id.in_(g.viewer.shop_ids), FlowTrace.kind == "suppressed",
                FlowTrace.at >= utcnow() - WINDOW)):
            reasons[str((detail or {}).get("reason") or "other")] += 1
    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None and not rows and not counts:
        abort(404)
    name = flow_file.flow.name if flow_file else (rows[0][0].flow_name if rows else flow_key)
    return render_template("admin/flow.html", key=flow_key, name=name, flow=flow_file, rows=rows, counts=counts,
                           status=status, days=WINDOW.days, reasons=sorted(reasons.items(), key=lambda kv: -kv[1]),
                           trigger=describe_trigger(flow_file.flow.trigger) if flow_file else None)


# ---- customers -------------------------------------------------------------------------------------

def _customer_or_404(db: Any, customer_id: int) -> Customer:
    customer = db.get(Customer, customer_id)
    if customer is None or customer.shop_id not in g.viewer.shop_ids:
        abort(404)
    return customer


@blueprint.get("/customers")
def customers():  # type: ignore[no-untyped-def]
    """Find a customer by email or name; the most recently active first."""
    q = (request.args.get("q") or "").strip()
    with session_scope() as db:
        query = select(Customer, Shop.domain).join(Shop, Shop.id == Customer.shop_id).where(
            Customer.shop_id.in_(g.viewer.shop_ids))
        if q:
            like = f"%{q.lower()}%"
            query = query.where(or_(func.lower(Customer.email).like(like), func.lower(Customer.first_name).like(like),
                                    func.lower(Customer.last_name).like(like), Customer.platform_id == q))
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


def timeline(db: Any, customer: Customer) -> list[TimelineItem]:
    """Events received and runs started (each with its trace: conditions, waits, sends, suppressions)."""
    from encore_retention.flows.models import FlowRun, FlowTrace

    items: list[TimelineItem] = []
    for record in db.execute(select(EventRecord).where(EventRecord.customer_id == customer.id)
                             .order_by(EventRecord.occurred_at.desc()).limit(200)).scalars():
        items.append(TimelineItem(record.occurred_at, "event", record.type,
                                  f"{record.platform} {record.topic}", run=record))
    runs = db.execute(select(FlowRun).where(FlowRun.customer_id == customer.id)
                      .order_by(FlowRun.started_at.desc()).limit(200)).scalars().all()
    traces: dict[int, list[FlowTrace]] = defaultdict(list)
    if runs:
        for line in db.execute(select(FlowTrace).where(FlowTrace.run_id.in_([r.id for r in runs]))
                               .order_by(FlowTrace.id)).scalars():
            traces[line.run_id].append(line)
    for run in runs:
        detail = run.status + (f": {run.reason}" if run.reason else "")
        items.append(TimelineItem(run.started_at, "run", run.flow_name, detail, run=run, trace=traces[run.id]))
    items.sort(key=lambda item: item.at, reverse=True)
    return items


@blueprint.get("/customers/<id:customer_id>")
def customer(customer_id: int):  # type: ignore[no-untyped-def]
    """A customer's ledger row and timeline."""
    from encore_retention.core.unsubscribe import is_suppressed
    from encore_retention.flows.models import FlowEffect

    with session_scope() as db:
        row = _customer_or_404(db, customer_id)
        shop = db.get(Shop, row.shop_id)
        items = timeline(db, row)
        emails = db.execute(select(FlowEffect).where(FlowEffect.customer_id == row.id, FlowEffect.kind == "email")
                            .order_by(FlowEffect.created_at.desc()).limit(100)).scalars().all()
        suppressed = is_suppressed(db, row.shop_id, row.email) if row.email else None
    return render_template("admin/customer.html", customer=row, shop=shop, items=items, emails=emails,
                           suppressed=suppressed, flows=_flow_choices(), outbox=outbox_folder() is not None)


# ---- messages --------------------------------------------------------------------------------------

@blueprint.get("/messages")
def messages():  # type: ignore[no-untyped-def]
    """The emails sent (and failed), newest first."""
    from encore_retention.flows.models import FlowEffect, FlowRun

    with session_scope() as db:
        rows = db.execute(select(FlowEffect, FlowRun.flow_name, Customer.email, Customer.id).join(
            FlowRun, FlowRun.id == FlowEffect.run_id).outerjoin(Customer, Customer.id == FlowEffect.customer_id).where(
            FlowEffect.shop_id.in_(g.viewer.shop_ids), FlowEffect.kind == "email")
            .order_by(FlowEffect.created_at.desc()).limit(200)).all()
    folder = outbox_folder()
    return render_template("admin/messages.html", rows=rows, outbox=str(folder.resolve()) if folder else None)


def outbox_folder() -> Path | None:
    """The file outbox's folder, when EMAIL_URL is a `file://` URL."""
    url = get_settings().EMAIL_URL
    if not url.startswith("file:"):
        return None
    from encore_retention.connectors.email.file import outbox_path

    return outbox_path(url)


@blueprint.get("/messages/<path:key>")
def message(key: str):  # type: ignore[no-untyped-def]
    """A sent email as it was written to the file outbox (its HTML part; scripts never run)."""
    import email
    import email.policy

    from encore_retention.connectors.email.file import file_name
    from encore_retention.flows.models import FlowEffect

    folder = outbox_folder()
    with session_scope() as db:
        effect = db.get(FlowEffect, key)
        if effect is None or effect.kind != "email" or effect.shop_id not in g.viewer.shop_ids or folder is None:
            abort(404)
    path = folder / file_name(key)
    if not path.is_file():
        abort(404, "the message is no longer in the outbox")
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    part = parsed.get_body(preferencelist=("html", "plain"))  # type: ignore[attr-defined]
    body = part.get_content() if part is not None else ""
    if part is not None and part.get_content_type() == "text/plain":
        from html import escape

        body = f"<pre>{escape(body)}</pre>"
    response = Response(body, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = "script-src 'none'; frame-ancestors 'self'"
    return response


# ---- previews --------------------------------------------------------------------------------------

def _flow_choices() -> list[tuple[str, str, list[tuple[str, str]]]]:
    from encore_retention.flows import loader

    return [(key, f.flow.name, email_steps(f.flow)) for key, f in sorted(loader.registry().flows.items())]


def customer_sample(customer: Customer, shop: Shop | None, db: Any) -> dict[str, Any]:
    """A preview sample from a real customer: ledger fields, their latest order, their shop."""
    data: dict[str, Any] = {
        "id": customer.platform_id, "email": customer.email, "first_name": customer.first_name,
        "last_name": customer.last_name, "locale": customer.locale, "timezone": customer.timezone,
        "birthday": customer.birthday.isoformat() if customer.birthday else None,
        "email_consent": bool(customer.email_consent), "tags": list(customer.tags or []),
        "orders_count": customer.orders_count or 0, "total_spent": str(customer.total_spent or 0),
        "first_order_at": customer.first_order_at.isoformat() if customer.first_order_at else None,
        "last_order_at": customer.last_order_at.isoformat() if customer.last_order_at else None,
    }
    latest = db.execute(select(Order).where(Order.customer_id == customer.id)
                        .order_by(Order.placed_at.desc()).limit(1)).scalar_one_or_none()
    if latest is not None:
        data["order"] = {"id": latest.platform_id, "number": latest.number, "total": str(latest.total or 0),
                         "currency": latest.currency, "created_at": latest.placed_at.isoformat()
                         if latest.placed_at else None, "discount_codes": list(latest.discount_codes or [])}
    else:
        data["order"] = SAMPLE_CUSTOMER["order"]
    data["checkout"] = {**SAMPLE_CUSTOMER["checkout"], "email": customer.email}
    if shop is not None:
        data["shop"] = {"domain": shop.domain, "name": shop.name or shop.domain, "email": shop.email,
                        "currency": shop.currency or "EUR", "timezone": shop.timezone}
    return data


def render_preview(flow_key: str, step: str | None, customer_id: int | None) -> tuple[Any, list[Any], Any]:
    """(the flow file, its rendered emails, the selected one) for a sample or a real customer."""
    from encore_retention.flows import loader
    from encore_retention.flows import preview as previews

    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None:
        abort(404, f"no flow {flow_key!r}")
    if customer_id is not None:
        with session_scope() as db:
            row = _customer_or_404(db, customer_id)
            data = customer_sample(row, db.get(Shop, row.shop_id), db)
    else:
        data = dict(SAMPLE_CUSTOMER)
        with session_scope() as db:
            shop = db.execute(select(Shop).where(Shop.id.in_(g.viewer.shop_ids or [-1])).order_by(Shop.id)
                              .limit(1)).scalar_one_or_none()
            if shop is not None:
                data["shop"] = {"domain": shop.domain, "name": shop.name or shop.domain, "email": shop.email,
                                "currency": shop.currency or "EUR", "timezone": shop.timezone}
    rendered = previews.render_flow(flow_file, data)
    selected = next((p for p in rendered if p.step == step), rendered[0] if rendered else None)
    return flow_file, rendered, selected


def _customer_arg() -> int | None:
    """The `customer` a preview is for: none (the sample customer), or a row id (else no such customer, 404)."""
    value = request.args.get("customer", "")
    if not value:
        return None
    customer_id = parse_id(value)
    if customer_id is None:
        abort(404, f"no customer {value[:40]!r}")
    return customer_id


@blueprint.get("/preview")
def preview():  # type: ignore[no-untyped-def]
    """A flow's email at desktop and mobile width, for the sample or a real customer."""
    choices = _flow_choices()
    flow_key = request.args.get("flow") or next((key for key, _, steps in choices if steps), None)
    if flow_key is None:
        return render_template("admin/preview.html", choices=choices, flow=None, rendered=[], selected=None,
                               widths=WIDTHS, customer_id=None, error=None)
    customer_id = _customer_arg()
    flow_file, rendered, selected, error = _render_preview(flow_key, customer_id)
    return render_template("admin/preview.html", choices=choices, flow=flow_file, flow_key=flow_key,
                           rendered=rendered, selected=selected, widths=WIDTHS, customer_id=customer_id, error=error)


def _render_preview(flow_key: str, customer_id: int | None) -> tuple[Any, list[Any], Any, str | None]:
    """`render_preview` for the request's step, with the error a template raised (shown to the marketer,
    never a 500) as the last item."""
    try:
        return (*render_preview(flow_key, request.args.get("step"), customer_id), None)
    except Exception as exc:
        if getattr(exc, "code", None) == 404:
            raise
        log.warning("preview failed", extra={"flow": flow_key, "error": str(exc)[:300]})
        return None, [], None, f"{type(exc).__name__}: {exc}"


@blueprint.get("/preview/email")
def preview_email():  # type: ignore[no-untyped-def]
    """The rendered HTML of one email (shown in the preview's frames; scripts never run there)."""
    _, _, selected, error = _render_preview(request.args.get("flow", ""), _customer_arg())
    if error is not None:
        return Response(f"<p>This email can't be rendered: {escape(error)}</p>", status=422,
                        content_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": "script-src 'none'; frame-ancestors 'self'"})
    if selected is None:
        abort(404, "this flow sends no email")
    response = Response(selected.html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = "script-src 'none'; frame-ancestors 'self'"
    return response


# ---- failures --------------------------------------------------------------------------------------

def exception_line(traceback: str) -> str:
    """The `Type: message` line of a traceback (not the notes some exceptions print after it)."""
    lines = traceback.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    for line in lines[start:]:
        if line.strip() and not line.startswith((" ", "\t")):
            return line
    return lines[-1] if lines else ""


def failed_jobs(limit: int = 100) -> list[dict[str, Any]]:
    """The failed jobs of every Encore queue, newest first, with their exception."""
    from rq.job import Job

    from encore_retention.core.queue import QUEUES, get_redis, queue

    found: list[dict[str, Any]] = []
    for name in QUEUES:
        q = queue(name)
        ids = q.failed_job_registry.get_job_ids(0, limit - 1)
        for job in Job.fetch_many(ids, connection=get_redis(), serializer=q.serializer):
            if job is None:
                continue
            result = job.latest_result()
            exc = (result.exc_string if result is not None else None) or ""
            last = exception_line(exc)
            found.append({"queue": name, "id": job.id, "func": job.func_name, "description": job.description,
                          "ended_at": job.ended_at, "error": last, "traceback": exc})
    found.sort(key=lambda item: item["ended_at"].timestamp() if item["ended_at"] else 0, reverse=True)
    return found[:limit]


@blueprint.get("/failures")
def failures():  # type: ignore[no-untyped-def]
    """Failed jobs (with a requeue button) and rejected webhooks (with the reason)."""
    from redis.exceptions import RedisError

    from encore_retention.core import archive

    error = None
    try:
        jobs, rejected = failed_jobs(), archive.rejections()
    except RedisError as exc:
        jobs, rejected, error = [], [], f"Redis does not answer: {type(exc).__name__}"
    if not g.viewer.everything:
        rejected = [r for r in rejected if r.get("shop") == g.viewer.shop]
    return render_template("admin/failures.html", jobs=jobs if g.viewer.everything else [], rejected=rejected,
                           error=error, dashboard=_dashboard_mounted())


@blueprint.post("/failures/<queue_name>/<job_id>/requeue")
def requeue(queue_name: str, job_id: str):  # type: ignore[no-untyped-def]
    """Put a failed job back on its queue."""
    from rq.exceptions import InvalidJobOperationError, NoSuchJobError

    from encore_retention.core.queue import QUEUES, queue

    if not g.viewer.everything:
        abort(403)
    if queue_name not in QUEUES:
        abort(404)
    try:
        queue(queue_name).failed_job_registry.requeue(job_id)
    except (NoSuchJobError, InvalidJobOperationError):
        abort(404, "no such failed job")
    log.info("failed job requeued from the admin page", extra={"job_id": job_id, "queue": queue_name})
    return redirect(url_for("admin.failures"))


# ---- RQ's own dashboard (optional) -----------------------------------------------------------------

def _dashboard_mounted() -> bool:
    return "rq_dashboard" in current_app.blueprints


def connection_url() -> str:
    """A URL for the Redis connection this process uses (RQ's dashboard wants one)."""
    from encore_retention.core.queue import get_redis

    kwargs = get_redis().connection_pool.connection_kwargs
    auth = f":{kwargs['password']}@" if kwargs.get("password") else ""
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if kwargs.get("ssl") else "redis"
    return f"{scheme}://{auth}{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


# The dashboard's pages and JSON reads; any other GET (its `requeue/<queue>` answers GET too) is refused.
RQ_DASHBOARD_READS = frozenset({"queues_overview", "workers_overview", "jobs_overview", "job_view", "list_queues",
                                "list_jobs", "job_info", "list_workers", "favicon", "static"})
RQ_DASHBOARD_NUMBERS = frozenset({"per_page", "page"})  # a page and its size: 1 or more
RQ_DASHBOARD_CSRF_COOKIE = "_csrf_token"  # the dashboard's script sends this cookie back as X-CSRFToken


def guard_rq_dashboard() -> None:
    """What the dashboard needs before any of its views run: a known host, an operator's session, reads
    only by GET, and every change (POST) carrying the session's CSRF token in `X-CSRFToken`."""
    refuse_malformed()
    viewer = _viewer()
    if viewer is None or not viewer.everything:
        abort(401)
    if request.method in ("GET", "HEAD"):
        if (request.endpoint or "").rpartition(".")[2] not in RQ_DASHBOARD_READS:
            abort(405)
    elif not hmac.compare_digest(request.headers.get("X-CSRFToken", ""), csrf_token()):
        log.warning("RQ dashboard change without the form token refused", extra={"path": request.path})
        abort(403, "the page expired; reload it")
    arguments = request.view_args or {}
    if arguments.get("instance_number", 0) != 0:  # one Redis is configured: instance 0
        abort(404)
    for name in RQ_DASHBOARD_NUMBERS & arguments.keys():
        if not parse_id(str(arguments[name])):
            abort(404)


def mount_rq_dashboard(app: Any) -> bool:
    """Mount `rq-dashboard` at /admin/rq for operators (password or link sign-in), when it is installed."""
    try:
        import rq_dashboard
        from rq.serializers import JSONSerializer
        from rq_dashboard import web
    except ImportError:
        return False
    web.config.serializer = JSONSerializer
    app.config.from_object(rq_dashboard.default_settings)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/admin/rq")

    @app.before_request
    def _rq_dashboard_for_operators():  # type: ignore[no-untyped-def]
        if request.blueprint != "rq_dashboard":
            return None
        try:
            guard_rq_dashboard()
        except RedisError as exc:
            return redis_unavailable(exc)
        if not hasattr(current_app, "redis_conn"):  # connect on first use, to the queue's own Redis
            current_app.config["RQ_DASHBOARD_REDIS_URL"] = connection_url()
            web.setup_rq_connection(current_app)
        return None

    @app.after_request
    def _rq_dashboard_form_token(response: Response) -> Response:
        if request.blueprint == "rq_dashboard" and g.get("admin_grant") and response.mimetype == "text/html":
            response.set_cookie(RQ_DASHBOARD_CSRF_COOKIE, csrf_token(), path="/admin/rq", samesite="Strict",
                                secure=current_app.config.get("SESSION_COOKIE_SECURE", False))
        return response

    return True


def register(app: Any) -> None:
    """Mount the admin page (and RQ's dashboard when installed) on the web app."""
    if get_settings().APP_URL.startswith("https://"):  # the Shopify admin shows the page in a frame
        app.config.update(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="None")
    app.url_map.converters["id"] = IdConverter
    app.register_blueprint(blueprint)
    from encore_retention.webhooks import sandbox

    app.register_blueprint(sandbox.blueprint)
    try:
        mount_rq_dashboard(app)
    except Exception as exc:  # noqa: BLE001 - the optional dashboard must not stop the app
        log.warning("rq-dashboard not mounted", extra={"error": str(exc)[:200]})
