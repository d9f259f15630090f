"""The admin's messages: the emails written to the file outbox, one by one."""

from __future__ import annotations

import email
import email.policy
import logging
from html import escape
from pathlib import Path

from flask import Response, abort, g, render_template
from sqlalchemy import select

from encore_retention.connectors.email.file import file_name, outbox_path
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer
from encore_retention.flows.models import FlowEffect, FlowRun
from encore_retention.web.admin.auth import blueprint

log = logging.getLogger("encore.admin")


@blueprint.get("/messages")
def messages():
    """The emails sent (and failed), newest first."""

    with session_scope() as db:
        rows = db.execute(
            select(FlowEffect, FlowRun.flow_name, Customer.email, Customer.id)
            .join(FlowRun, FlowRun.id == FlowEffect.run_id)
            .outerjoin(Customer, Customer.id == FlowEffect.customer_id)
            .where(FlowEffect.shop_id.in_(g.viewer.shop_ids), FlowEffect.kind == "email")
            .order_by(FlowEffect.created_at.desc())
            .limit(200)
        ).all()
    folder = outbox_folder()
    return render_template("admin/messages.html", rows=rows, outbox=str(folder.resolve()) if folder else None)


def outbox_folder() -> Path | None:
    """The file outbox's folder, when EMAIL_URL is a `file://` URL."""
    url = get_settings().EMAIL_URL
    if not url.startswith("file:"):
        return None

    return outbox_path(url)


@blueprint.get("/messages/<path:key>")
def message(key: str):
    """A sent email as it was written to the file outbox (its HTML part; scripts never run)."""

    folder = outbox_folder()
    with session_scope() as db:
        effect = db.get(FlowEffect, key)
        if effect is None or effect.kind != "email" or effect.shop_id not in g.viewer.shop_ids or folder is None:
            abort(404)
    path = folder / file_name(key)
    if not path.is_file():
        abort(404, "the message is no longer in the outbox")
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    part = parsed.get_body(preferencelist=("html", "plain"))
    body = part.get_content() if part is not None else ""
    if part is not None and part.get_content_type() == "text/plain":
        body = f"<pre>{escape(body)}</pre>"
    response = Response(body, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = "script-src 'none'; frame-ancestors 'self'"
    return response
