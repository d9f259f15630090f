"""The admin page's gate: sessions, sign-in, the CSRF token, frame policy; the blueprint every page joins.

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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, session, url_for
from redis.exceptions import RedisError
from sqlalchemy import select
from werkzeug.routing import BaseConverter, ValidationError

from encore_retention.core import access
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop, parse_id
from encore_retention.flows.render import format_money
from encore_retention.flows.steps import position_label
from encore_retention.web import peers
from encore_retention.web.answers import unavailable
from encore_retention.webhooks.shopify import SHOP_DOMAIN

log = logging.getLogger("encore.admin")

blueprint = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

SESSION_KEY = "encore_admin"


@dataclass
class Viewer:
    """Who is looking: a shop (domain) or the operator (every shop)."""

    how: str
    shop: str | None = None
    shop_ids: list[int] = field(default_factory=list)
    shops: list[tuple[int, str]] = field(default_factory=list)
    chosen: int | None = None
    zones: dict[int | str, str | None] = field(default_factory=dict)  # by shop id and by domain

    def zone_name(self, shop: int | str | None = None) -> str | None:
        """The time zone of `shop` (an id or a domain), else of the one store in view; None: DEFAULT_TIMEZONE."""
        if shop is not None and shop in self.zones:
            return self.zones[shop]
        if len(self.shop_ids) == 1:
            return self.zones.get(self.shop_ids[0])
        return None

    @property
    def everything(self) -> bool:
        """True when the viewer may see every shop."""
        return self.shop is None


def shop_from_session_token(token: str) -> str | None:
    """The shop domain of a valid Shopify session token, else None."""

    settings = get_settings()
    if not (settings.SHOPIFY_API_SECRET and settings.SHOPIFY_API_KEY):
        return None
    claims = None
    for secret in settings.shopify_secrets:
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                audience=settings.SHOPIFY_API_KEY,
                leeway=10,
                options={"require": ["exp", "nbf", "dest", "aud"]},
            )
            break
        except jwt.PyJWTError:
            continue
    if claims is None:
        return None

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


def current_viewer() -> Viewer | None:
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
        abort(
            400,
            "Encore's admin page answers only at APP_URL's host and localhost; "
            "set APP_URL to the address you open it at.",
        )
    texts = [request.path, *(key + value for key, value in request.args.items(multi=True))]
    if request.method == "POST":
        texts.extend(key + value for key, value in request.form.items(multi=True))
    if any("\x00" in text for text in texts):
        abort(400, "NUL characters are not allowed")


@blueprint.before_request
def require_sign_in():
    """Every page but the sign-in pages and the stylesheet needs a viewer; every page, a known host."""
    refuse_malformed()
    if request.endpoint in ("admin.login", "admin.sign_in", "admin.static"):
        return None
    viewer = current_viewer()
    if viewer is None:
        if request.method == "GET" and not request.headers.get("Authorization"):
            return redirect(url_for("admin.login", next=request.full_path))
        abort(401)
    with session_scope() as db:
        query = select(Shop.id, Shop.name, Shop.domain, Shop.timezone).order_by(Shop.id)
        if viewer.shop:
            query = query.where(Shop.domain == viewer.shop)
        for row in db.execute(query):
            viewer.shops.append((row.id, row.name or row.domain))
            viewer.zones[row.id] = viewer.zones[row.domain] = row.timezone
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
def redis_unavailable(exc: RedisError):
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
    return {"csrf_token": csrf_token, "viewer": g.get("viewer"), "money": _money, "step_label": position_label}


def _money(value: Any, currency: str | None = None) -> str:
    return format_money(value or 0, currency)


LINK_REFUSALS = {
    "invalid": "That sign-in link is not valid.",
    "expired": "That sign-in link has expired.",
    "used": "That sign-in link was already used.",
}


def _render_sign_in(error: str | None, status: int, headers: dict[str, str] | None = None):
    configured = bool(get_settings().ADMIN_PASSWORD)
    response = Response(
        render_template("admin/login.html", error=error, configured=configured), status=status, headers=headers or {}
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    """The password form (ADMIN_PASSWORD): 401 for a wrong password, 429 with Retry-After when throttled."""
    configured = get_settings().ADMIN_PASSWORD
    if request.method == "GET":
        return _render_sign_in(None, 200)
    client = peers.client_address(request)
    throttled = access.attempt(client)
    if throttled is not None:
        log.warning(
            "admin sign-in throttled",
            extra={"client": client, "scope": throttled.scope, "retry_after": throttled.retry_after},
        )
        minutes = math.ceil(throttled.retry_after / 60)
        return _render_sign_in(
            f"Too many sign-in attempts; try again in {minutes} minute{'s' * (minutes != 1)}.",
            429,
            {"Retry-After": str(throttled.retry_after)},
        )
    given = request.form.get("password", "")
    if configured and hmac.compare_digest(given.encode(), configured.encode()):
        access.succeeded(client)
        start_session("password")
        log.info("admin signed in", extra={"client": client, "how": "password"})
        target = request.args.get("next") or url_for("admin.flows")
        return redirect(target if target.startswith("/admin") else url_for("admin.flows"))
    log.warning("admin sign-in refused", extra={"client": client})
    return _render_sign_in(
        "That password is not right." if configured else "No ADMIN_PASSWORD is set on this server.", 401
    )


@blueprint.get("/sign-in")
def sign_in():
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
def choose_store():
    """Look at one store (operators with several), or at all of them."""
    chosen = parse_id(request.form.get("store", ""))
    if chosen is not None and chosen in [shop_id for shop_id, _ in g.viewer.shops]:
        session["encore_store"] = chosen
    else:
        session.pop("encore_store", None)
    target = request.form.get("back") or url_for("admin.flows")
    return redirect(target if target.startswith("/admin") else url_for("admin.flows"))


@blueprint.post("/logout")
def logout():
    """Sign out: the server-side session ends, so no copy of the cookie works any more."""
    session_id = _session_id()
    if session_id:
        access.end_session(session_id)
    session.clear()
    return redirect(url_for("admin.login"))
