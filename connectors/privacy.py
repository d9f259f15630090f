"""Shopify's `customers/data_request`: an export of everything Encore stores about the customer.

The worker calls `record_export` in the same transaction that records the event, so a request is
answered exactly once. The export lives in `data_exports` (cascading with the customer and the
shop, so `customers/redact` and `shop/redact` remove it too); the merchant reads it with
`encore privacy show ID` and sends it to the customer, as Shopify asks of the store owner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from encore import events as ev
from encore.store.ledger import export_customer, find_customer
from encore.store.models import Customer, Shop, Suppression, utcnow

log = logging.getLogger(__name__)

# Other rooms that store personal data add a section: f(session, shop, customer) -> JSON-safe data.
SECTIONS: dict[str, Callable[[Session, Shop, Customer], Any]] = {}


def _customer_row(session: Session, shop: Shop, customer: ev.Customer | None) -> Customer | None:
    if customer is None:
        return None
    for key in (customer.key, customer.id, f"email:{customer.email.strip().lower()}" if customer.email else None):
        if key:
            row = find_customer(session, shop.id, key)
            if row is not None:
                return row
    if customer.email:
        return session.execute(select(Customer).where(
            Customer.shop_id == shop.id, func.lower(Customer.email) == customer.email.strip().lower())
        ).scalars().first()
    return None


def build_export(session: Session, shop: Shop, event: ev.Event) -> tuple[Customer | None, dict[str, Any]]:
    """The customer's ledger row (if any) and everything stored about them."""
    row = _customer_row(session, shop, event.customer)
    data: dict[str, Any] = {
        "shop": shop.domain, "requested_at": event.occurred_at.isoformat(),
        "data_request_id": event.data.get("data_request_id"),
        "orders_requested": event.data.get("orders_requested") or [],
    }
    if row is None:
        data.update(customer=None, orders=[], events=[], suppressions=[])
        return None, data
    data.update(export_customer(session, shop, row.platform_id))
    data["suppressions"] = [
        {"email": s.email, "reason": s.reason, "source": s.source, "created_at": s.created_at.isoformat()}
        for s in session.execute(select(Suppression).where(
            Suppression.shop_id == shop.id, Suppression.email == (row.email or "").strip().lower())).scalars()
    ] if row.email else []
    for name, section in SECTIONS.items():
        data[name] = section(session, shop, row)
    return row, json.loads(json.dumps(data, default=str))


def record_export(session: Session, shop: Shop, event: ev.Event) -> int | None:
    """Store the export answering a data request (once per event); returns its id."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from connectors.models import DataExport

    request_id = str(event.data.get("data_request_id") or "") or None
    if request_id:  # the same request delivered again (a new delivery id): one export
        existing = session.execute(select(DataExport.id).where(
            DataExport.shop_id == shop.id, DataExport.request_id == request_id)).scalars().first()
        if existing is not None:
            return existing
    row, data = build_export(session, shop, event)
    builder = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(builder(DataExport).values(
        shop_id=shop.id, customer_id=row.id if row else None, event_id=event.id,
        request_id=request_id, data=data, created_at=utcnow(),
    ).on_conflict_do_nothing(index_elements=["event_id"]))
    export_id = session.execute(select(DataExport.id).where(DataExport.event_id == event.id)).scalar_one()
    log.info("data request export recorded", extra={"shop": shop.domain, "export_id": export_id,
                                                    "found": row is not None})
    return export_id
