"""Shopify app install (OAuth authorization code grant): `GET /shopify/install` and `GET /shopify/callback`.

1. `/shopify/install?shop=NAME.myshopify.com` checks the domain (and the launch HMAC when Shopify
   sends one), stores a single-use `state`, and redirects to the shop's grant screen.
2. `/shopify/callback` checks the query-string HMAC with the app secret, the request's age, the
   domain and the `state` (consumed: a replayed callback fails), exchanges the code for an offline
   access token, stores it encrypted, reads the shop's name, currency and time zone, and subscribes
   the webhooks the flows need plus `app/uninstalled`. The privacy topics are declared in
   `shopify.app.toml`, as Shopify requires.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from typing import Any, cast

import requests
import shopify
from flask import Blueprint, redirect, render_template_string, request
from sqlalchemy import CursorResult, delete

from encore_retention.connectors import identity
from encore_retention.connectors.base import PlatformError
from encore_retention.connectors.models import OAuthState
from encore_retention.connectors.shopify import ShopifyConnector
from encore_retention.core.crypto import encrypt
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Shop, utcnow
from encore_retention.web.admin.auth import sign_in_shop
from encore_retention.webhooks import secrets as webhook_secrets
from encore_retention.webhooks.shopify import SHOP_DOMAIN

log = logging.getLogger("encore.oauth")

blueprint = Blueprint("shopify_oauth", __name__)

STATE_TTL = timedelta(minutes=15)
MAX_AGE_SECONDS = 24 * 3600

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}</style>
</head><body><h1>{{ title }}</h1><p>{{ message }}</p></body></html>"""


def _page(title: str, message: str, status: int):
    return render_template_string(PAGE, title=title, message=message), status


def app_session_class() -> type[shopify.Session]:
    """ShopifyAPI's Session bound to this app's key and secret (without touching its process-wide class)."""
    settings = get_settings()
    return type(
        "EncoreShopifySession",
        (shopify.Session,),
        {"api_key": settings.SHOPIFY_API_KEY, "secret": settings.SHOPIFY_API_SECRET},
    )


def hmac_valid(params: dict[str, Any]) -> bool:
    """The query string's `hmac` matches the app secret (ShopifyAPI's check, in constant time)."""
    try:
        return bool(app_session_class().validate_hmac(params))
    except (TypeError, ValueError):
        return False


def _fresh(params: dict[str, Any]) -> bool:
    try:
        return abs(time.time() - int(params.get("timestamp", 0))) <= MAX_AGE_SECONDS
    except (TypeError, ValueError):
        return False


def redirect_uri() -> str:
    """The callback address registered in the app's configuration."""
    return f"{get_settings().APP_URL.rstrip('/')}/shopify/callback"


def _configured() -> bool:
    settings = get_settings()
    return bool(settings.SHOPIFY_API_KEY and settings.SHOPIFY_API_SECRET)


@blueprint.get("/shopify/install")
def install():
    """Start the install: validate the shop, store a single-use state, redirect to the grant screen."""
    if not _configured():
        return _page("Shopify is not configured", "Set SHOPIFY_API_KEY and SHOPIFY_API_SECRET.", 503)
    params = request.args.to_dict()
    shop = (params.get("shop") or "").strip().lower()
    if not SHOP_DOMAIN.match(shop):
        return _page("Not a Shopify shop", "Expected a shop domain like example.myshopify.com.", 400)
    if "hmac" in params and not (hmac_valid(params) and _fresh(params)):
        return _page("Request not signed by Shopify", "Start the install again from the Shopify admin.", 401)

    nonce = secrets.token_urlsafe(32)
    with session_scope() as session:
        session.execute(delete(OAuthState).where(OAuthState.created_at < utcnow() - STATE_TTL))
        session.add(OAuthState(nonce=nonce, shop_domain=shop, created_at=utcnow()))
    scopes = [s.strip() for s in get_settings().SHOPIFY_SCOPES.split(",") if s.strip()]
    url = app_session_class()(shop, get_settings().SHOPIFY_API_VERSION).create_permission_url(
        scopes, redirect_uri(), state=nonce
    )
    return redirect(url, code=302)


def consume_state(nonce: str, shop: str) -> bool:
    """Use up a state: True once for a state issued for this shop within STATE_TTL, then never again."""

    if not nonce:
        return False
    with session_scope() as session:
        removed = cast(
            CursorResult[Any],
            session.execute(
                delete(OAuthState).where(  # a DELETE's result: a cursor's
                    OAuthState.nonce == nonce,
                    OAuthState.shop_domain == shop,
                    OAuthState.created_at >= utcnow() - STATE_TTL,
                )
            ),
        ).rowcount
    return removed == 1


def exchange_code(shop: str, code: str) -> dict[str, Any]:
    """Trade the authorization code for an offline access token: `{"access_token", "scope"}`."""
    settings = get_settings()
    response = requests.post(
        f"https://{shop}/admin/oauth/access_token",
        timeout=20,
        json={"client_id": settings.SHOPIFY_API_KEY, "client_secret": settings.SHOPIFY_API_SECRET, "code": code},
    )
    if response.status_code != 200:
        raise PlatformError(f"token exchange failed: HTTP {response.status_code}", status=response.status_code)
    body = response.json()
    if not body.get("access_token"):
        raise PlatformError("token exchange answered without an access token")
    return body


@blueprint.get("/shopify/callback")
def callback():
    """Finish the install: verify, exchange the code, store the token, subscribe the webhooks."""

    if not _configured():
        return _page("Shopify is not configured", "Set SHOPIFY_API_KEY and SHOPIFY_API_SECRET.", 503)
    params = request.args.to_dict()
    if not hmac_valid(params):
        log.warning("OAuth callback with a bad HMAC", extra={"shop": params.get("shop", "")[:255]})
        return _page("Request not signed by Shopify", "Start the install again from the Shopify admin.", 401)
    if not _fresh(params):
        return _page("Install link expired", "Start the install again from the Shopify admin.", 401)
    shop = (params.get("shop") or "").strip().lower()
    if not SHOP_DOMAIN.match(shop):
        return _page("Not a Shopify shop", "Expected a shop domain like example.myshopify.com.", 400)
    if not consume_state(params.get("state", ""), shop):
        log.warning("OAuth callback with an unknown, expired or used state", extra={"shop": shop})
        return _page("Install link already used", "Start the install again from the Shopify admin.", 403)
    try:
        grant = exchange_code(shop, params.get("code", ""))
    except (PlatformError, requests.RequestException, ValueError) as exc:
        log.error("OAuth token exchange failed", extra={"shop": shop, "error": str(exc)[:200]})
        return _page("Shopify did not complete the install", "Try installing again in a minute.", 502)
    with session_scope() as session:
        row = get_or_create_shop(session, "shopify", shop)
        row.url = f"https://{shop}"
        row.access_token_enc = encrypt(grant["access_token"])
        row.scopes = grant.get("scope")
        row.active, row.installed_at, row.uninstalled_at = True, utcnow(), None
        shop_id = row.id
    webhook_secrets.forget("shopify", shop)
    with session_scope() as session:
        row = session.get(Shop, shop_id)
        connector = ShopifyConnector(row, token=grant["access_token"])
        try:
            identity.fill(row, connector.identity())
            topics = connector.register_webhooks()
        except PlatformError as exc:
            log.error("webhook registration failed after install", extra={"shop": shop, "error": exc.message[:300]})
            return _page(
                "Installed, but not listening yet",
                f"Shopify refused the webhook subscriptions ({exc.message}). Open the app again to retry.",
                502,
            )
    sign_in_shop(shop)
    log.info("shop installed", extra={"shop": shop, "topics": len(topics)})
    refused = getattr(connector, "refused", {})
    if refused:
        return _page(
            "Encore is installed, with gaps",
            f"{shop} is connected, but Shopify refused these webhooks: {', '.join(sorted(refused))} "
            f"({'; '.join(sorted(set(refused.values())))}). Flows that need them wait until the app is "
            "granted access (protected customer data) and installed again.",
            200,
        )
    return _page("Encore is installed", f"{shop} is connected; its flows start with the next order.", 200)
