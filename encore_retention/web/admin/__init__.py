"""The merchant's page, `/admin`, one module per page: flows, customers, messages, previews, failures.

`auth` holds the blueprint and its gate; each page module adds its views to it.

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

from typing import Any

from encore_retention.core.settings import get_settings
from encore_retention.web.admin import customers, failures, flows, messages, previews
from encore_retention.web.admin.auth import IdConverter, blueprint, log

PAGES = (flows, customers, messages, previews, failures)  # imported for the views they add to the blueprint


def register(app: Any) -> None:
    """Mount the admin page (and RQ's dashboard when installed) on the web app."""
    if get_settings().APP_URL.startswith("https://"):  # the Shopify admin shows the page in a frame
        app.config.update(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="None")
    app.url_map.converters["id"] = IdConverter
    app.register_blueprint(blueprint)
    try:
        failures.mount_rq_dashboard(app)
    except Exception as exc:  # noqa: BLE001 - the optional dashboard must not stop the app
        log.warning("rq-dashboard not mounted", extra={"error": str(exc)[:200]})
