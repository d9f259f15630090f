"""The admin's consent pages: withdraw a customer's marketing consent, the suppression list, and unsuppress.

Every change is a POST with the session's form token (`auth.require_sign_in` checks it) and is recorded as
a `ConsentChange` with who made it (the signed-in store, or the operator and how they signed in), when, and
why. A withdrawal is written back to the store's platform by the connectors' job; an unsuppress is not (only
the customer can subscribe again). Suppressions hold a keyed hash, not the address: the list shows the
customer's address where a consent change linked the hash to a customer still in the ledger, else the
hash's first characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import abort, g, redirect, render_template, request, url_for
from sqlalchemy import func, select

from encore_retention.connectors.consent import queue_write_backs
from encore_retention.core import consent
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import ConsentChange, Customer, Shop, Suppression
from encore_retention.core.unsubscribe import address_key, suppression_reason
from encore_retention.web.admin.auth import Viewer, blueprint
from encore_retention.web.admin.customers import customer_or_404

PAGE_SIZE = 50
HASH_SHOWN = 12  # characters of a hash the list shows when no customer is known for it
NOTE_MAX = 1000


def actor(viewer: Viewer) -> str:
    """Who is acting, as a consent change records it."""
    return f"admin: {viewer.shop}" if viewer.shop else f"admin: operator ({viewer.how})"


def note_of(form: Any) -> str:
    """The reason typed in a form, one paragraph, at most NOTE_MAX characters."""
    return " ".join(str(form.get("note", "")).split())[:NOTE_MAX]


@blueprint.post("/customers/<id:customer_id>/unsubscribe")
def withdraw_consent(customer_id: int):
    """Withdraw the customer's marketing consent: suppressed now, written back to the store's platform next."""
    changes = []
    with session_scope() as db:
        customer = customer_or_404(db, customer_id)
        if not customer.email:
            abort(400, "this customer has no email address")
        key = address_key(customer.shop_id, customer.email)
        if suppression_reason(db, customer.shop_id, key) is None or customer.email_consent is not False:
            change = consent.withdraw(
                db,
                customer.shop_id,
                key,
                customer=customer,
                reason="admin",
                source="admin",
                actor=actor(g.viewer),
                note=note_of(request.form),
            )
            if change.writeback == consent.PENDING:
                changes.append(change.id)
    queue_write_backs(changes)
    return redirect(url_for("admin.customer", customer_id=customer_id))


@dataclass
class Row:
    """One suppression as the list shows it."""

    suppression: Suppression
    shop: str
    shown: str
    customer_id: int | None
    by: str
    at: datetime


@blueprint.get("/suppressions")
def suppressions():
    """The stores' suppression lists with reasons, newest first, PAGE_SIZE at a time."""
    page = max(1, request.args.get("page", 1, type=int) or 1)
    reason = (request.args.get("reason") or "").strip()
    with session_scope() as db:
        query = select(Suppression).where(Suppression.shop_id.in_(g.viewer.shop_ids))
        if reason:
            query = query.where(Suppression.reason == reason)
        total = db.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        found = list(
            db.execute(
                query.order_by(Suppression.created_at.desc(), Suppression.id.desc())
                .offset((page - 1) * PAGE_SIZE)
                .limit(PAGE_SIZE)
            ).scalars()
        )
        rows = described(db, found)
        reasons = sorted(
            db.execute(
                select(Suppression.reason).where(Suppression.shop_id.in_(g.viewer.shop_ids)).distinct()
            ).scalars()
        )
    pages = max(1, -(-total // PAGE_SIZE))
    return render_template(
        "admin/suppressions.html", rows=rows, page=page, pages=pages, total=total, reason=reason, reasons=reasons
    )


def described(db: Any, found: list[Suppression]) -> list[Row]:
    """The rows of a page: each suppression with its store, what can be shown of the address, and who made it."""
    pairs = [(s.shop_id, s.email_hash) for s in found]
    linked = consent.known_customer_ids(db, pairs)
    emails = dict(
        db.execute(select(Customer.id, Customer.email).where(Customer.id.in_(set(linked.values())))).all()
        if linked
        else []
    )
    shops = dict(db.execute(select(Shop.id, Shop.domain).where(Shop.id.in_({s.shop_id for s in found}))).all())
    makers: dict[tuple[int, str], str] = {}
    if found:
        for shop_id, key, who in db.execute(
            select(ConsentChange.shop_id, ConsentChange.email_hash, ConsentChange.actor)
            .where(
                ConsentChange.email_hash.in_({key for _, key in pairs}),
                ConsentChange.action == consent.UNSUBSCRIBED,
            )
            .order_by(ConsentChange.id)
        ):
            makers[(shop_id, key)] = who
    rows = []
    for s in found:
        customer_id = linked.get((s.shop_id, s.email_hash))
        email = emails.get(customer_id) if customer_id is not None else None
        shown = email or f"{s.email_hash[:HASH_SHOWN]}…"
        by = makers.get((s.shop_id, s.email_hash)) or s.source
        rows.append(Row(s, shops.get(s.shop_id, "?"), shown, customer_id if email else None, by, s.created_at))
    return rows


@blueprint.post("/suppressions/<id:suppression_id>/remove")
def unsuppress(suppression_id: int):
    """Take an address off a store's suppression list; the form must say why."""
    note = note_of(request.form)
    if not note:
        abort(400, "say why the address may be mailed again")
    with session_scope() as db:
        found = db.get(Suppression, suppression_id)
        if found is None or found.shop_id not in g.viewer.shop_ids:
            abort(404)
        consent.lift(db, found, actor=actor(g.viewer), note=note)
    return redirect(url_for("admin.suppressions"))
