"""`GET|POST /unsubscribe/<token>`: the signed unsubscribe link of every marketing email.

GET shows a confirmation page and changes nothing (mail scanners and link previews fetch links);
POST records the suppression at once, and queues its write-back to the store's platform
(`connectors.consent`), which never holds the answer up. The POST is also RFC 8058's one-click unsubscribe: a mail
client sends `List-Unsubscribe=One-Click` to the `List-Unsubscribe` URL, without cookies or a form
token, and expects a 2xx. A forged or mangled token, or a first-format link its shop no longer
honours, gets a 404 and records nothing. The token names the address only by its keyed hash, so
the page can't show it, and doesn't.
"""

from __future__ import annotations

import logging

from flask import Blueprint, render_template_string, request

from encore_retention.connectors.consent import queue_write_backs
from encore_retention.core import consent
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop
from encore_retention.core.unsubscribe import Recipient, honours_legacy, read_token, suppression_reason

log = logging.getLogger("encore.unsubscribe")

blueprint = Blueprint("unsubscribe", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}
button{font-size:1rem;padding:.6rem 1.2rem;border:0;border-radius:4px;background:#222;color:#fff;cursor:pointer}</style>
</head><body>
<h1>{{ title }}</h1>
{% if state == "confirm" %}
<p>Stop marketing emails from {{ shop }} to the address this email was sent to?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>
{% elif state == "done" %}
<p>The address this email was sent to will get no more marketing emails from {{ shop }}.</p>
<p>Order confirmations and other messages about your purchases still arrive.</p>
{% else %}
<p>This unsubscribe link is not valid. Use the link in the latest email you received, or reply to it.</p>
{% endif %}
</body></html>"""


def _shop_name(shop: Shop | None) -> str:
    return (shop.name or shop.domain) if shop else "this store"


def _invalid():
    return render_template_string(PAGE, title="Link not valid", state="invalid"), 404


def _refused(named: Recipient, shop: Shop | None) -> bool:
    """A first-format link its (existing) shop no longer honours."""
    return named.legacy and shop is not None and not honours_legacy(shop)


@blueprint.get("/unsubscribe/<token>")
def confirm(token: str):
    """The confirmation page (GET never unsubscribes)."""
    named = read_token(token)
    if named is None:
        return _invalid()
    with session_scope() as session:
        shop = session.get(Shop, named.shop_id)
        if _refused(named, shop):
            return _invalid()
        done = shop is not None and suppression_reason(session, named.shop_id, named.key) is not None
        name = _shop_name(shop)
    title = "You are unsubscribed" if done else "Unsubscribe"
    return render_template_string(PAGE, title=title, state="done" if done else "confirm", shop=name)


@blueprint.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    """Record the suppression now (the page's button and RFC 8058 one-click alike)."""
    named = read_token(token)
    if named is None:
        return _invalid()
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    changes: list[int] = []
    with session_scope() as session:
        shop = session.get(Shop, named.shop_id)
        if _refused(named, shop):
            return _invalid()
        # A deleted shop has nothing left to send from; a second click changes nothing.
        if shop is not None and suppression_reason(session, named.shop_id, named.key) is None:
            change = consent.withdraw(
                session,
                named.shop_id,
                named.key,
                customer=None,
                find_customer=True,
                reason="unsubscribed",
                source="one-click" if one_click else "link",
                actor="the customer",
            )
            if change.writeback == consent.PENDING:
                changes.append(change.id)
        name = _shop_name(shop)
    queue_write_backs(changes)  # after the commit: the suppression holds whatever the platform answers
    log.info("unsubscribed", extra={"shop_id": named.shop_id, "one_click": one_click, "legacy_link": named.legacy})
    return render_template_string(PAGE, title="You are unsubscribed", state="done", shop=name), 200
