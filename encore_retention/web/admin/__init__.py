"""The merchant's page, `/admin`: a module per page (flows, customers, segments, messages, suppressions, previews…).

`auth` holds the blueprint and its gate; each page module adds its views to it.

How a merchant or an operator signs in, and what each sees, is `auth`'s docstring.
"""

from __future__ import annotations

from typing import Any

from encore_retention.core.settings import get_settings
from encore_retention.web.admin import customers, failures, flows, messages, previews, segments, suppressions, times
from encore_retention.web.admin.auth import IdConverter, blueprint, log

PAGES = (
    flows,
    customers,
    segments,
    messages,
    previews,
    suppressions,
    failures,
    times,
)  # imported for the views and filters they add


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
