"""RQ jobs of the ingest pipeline: module-level functions that take JSON and are idempotent."""

from __future__ import annotations

import logging
from typing import Any

from encore import logs
from encore.events import Event, EventType
from encore.metrics import EVENTS_PROCESSED, JOB_LATENCY
from encore.store import session_scope
from encore.store.ledger import apply_event
from encore.store.models import utcnow

log = logging.getLogger(__name__)


def process_event(data: dict[str, Any]) -> dict[str, Any]:
    """Apply an event to the ledger, then hand it to the flow engine.

    Safe to run twice: the ledger ignores an event id it has seen, and the flow engine keys its runs
    and side effects, so a retried job neither double-counts an order nor sends twice.
    """
    from flows.engine import handle_event

    event = Event.from_dict(data)
    with logs.bind(event_id=event.id, event_type=event.type.value, shop=event.shop):
        with session_scope() as session:
            result = apply_event(session, event)
            if result.new and result.shop is not None and event.type == EventType.CUSTOMER_DATA_REQUEST:
                from connectors.privacy import record_export

                record_export(session, result.shop, event)
            shop_id = result.shop.id if result.shop else None
            customer_id = result.customer.id if result.customer else None
        log.info("event applied to the ledger", extra={"new": result.new, "customer_id": customer_id})
        handle_event(event, shop_id=shop_id, customer_id=customer_id, new=result.new)
    EVENTS_PROCESSED.labels(type=event.type.value, new=str(result.new).lower()).inc()
    if result.new:
        JOB_LATENCY.labels(type=event.type.value).observe(max(0.0, (utcnow() - event.received_at).total_seconds()))
    return {"event": event.id, "type": event.type.value, "new": result.new, "customer_id": customer_id}
