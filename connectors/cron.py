"""Periodic connector jobs (run by `encore cron` through rq.cron).

WooCommerce sends each webhook once, with no retries, and disables a webhook after repeated
failures, so events can be missed while Encore or the network is down. `reconcile_woocommerce`
fetches the orders and customers changed since the newest change it has seen and feeds the ones
the ledger doesn't know yet through the same pipeline as a webhook (`enqueue_event`), keyed as
the webhook would have been, so the flows see each change once: a change the webhook delivered is
skipped (the ledger already has that version), and one found twice has the same event id twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import select

from encore_retention.connectors.base import get_connector
from encore_retention.connectors.models import SyncCursor
from encore_retention.core import archive
from encore_retention.core import events as ev
from encore_retention.core.queue import MAINTENANCE, enqueue_event
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import find_customer
from encore_retention.core.store.models import Order, Shop, utcnow

log = logging.getLogger(__name__)

# A first run looks back this far (not to the beginning: old orders must not start flows now).
FIRST_LOOKBACK = timedelta(days=1)
# Re-read a little before the cursor: a store's clock and commit order are not exact.
OVERLAP = timedelta(minutes=5)


def _cursor(shop_id: int, resource: str) -> datetime | None:
    with session_scope() as session:
        row = session.get(SyncCursor, (shop_id, resource))
        return row.cursor if row else None


def _save_cursor(shop_id: int, resource: str, cursor: datetime | None, error: str | None = None) -> None:
    with session_scope() as session:
        row = session.get(SyncCursor, (shop_id, resource))
        if row is None:
            row = SyncCursor(shop_id=shop_id, resource=resource)
            session.add(row)
        if cursor is not None and (row.cursor is None or cursor > row.cursor):
            row.cursor = cursor
        row.last_run_at = utcnow()
        row.last_error = error[:1000] if error else None


def _known_version(shop_id: int, resource: str, payload: dict[str, Any]) -> tuple[bool, datetime | None]:
    """Whether the ledger has this resource, and the version it has."""
    key = str(payload.get("id"))
    with session_scope() as session:
        if resource == "orders":
            row = session.execute(
                select(Order).where(Order.shop_id == shop_id, Order.platform_id == key)
            ).scalar_one_or_none()
            return row is not None, row.platform_updated_at if row else None
        customer = find_customer(session, shop_id, key)
        return customer is not None, customer.profile_version if customer else None


def _refuse(shop: str, topic: str, payload: Any, why: str) -> None:
    """A payload the store returned that the receiver's parser refuses: recorded as a webhook refused would be.

    It fails the same way on every run, so the run goes on past it (and its cursor with it) instead of
    stopping the store's reconciliation for good; the admin page's rejected webhooks show it.
    """
    resource_id = str(payload.get("id")) if isinstance(payload, dict) else None
    archive.record_rejection(
        "woocommerce",
        "malformed",
        400,
        f"{topic} (reconciliation): {why}",
        topic,
        shop,
        delivery_id=f"reconcile-{resource_id}" if resource_id else None,
    )
    log.warning(
        "woocommerce reconciliation skipped a payload it can't take",
        extra={"shop": shop, "topic": topic, "id": resource_id, "error": why[:300]},
    )


def reconcile_shop(
    shop_id: int, *, connector: Any = None, now: datetime | None = None, connection: Redis | None = None
) -> dict[str, int]:
    """Queue the changes of one WooCommerce store that no webhook brought; returns counts by resource.

    A payload the parser refuses is recorded (`<resource>_refused` in the counts) and passed over.
    """

    now = now or utcnow()
    with session_scope() as session:
        shop = session.get(Shop, shop_id)
        if shop is None or not shop.active:
            return {}
        connector = connector or get_connector(shop)
        start = shop.installed_at or now - FIRST_LOOKBACK
        shop_domain = shop.domain
    counts: dict[str, int] = {}
    for resource, fetch, created, updated in (
        ("orders", connector.order_payloads, "order.created", "order.updated"),
        ("customers", connector.customer_payloads, "customer.created", "customer.updated"),
    ):
        cursor = _cursor(shop_id, resource)
        since = (cursor - OVERLAP) if cursor else max(start, now - FIRST_LOOKBACK)
        newest, queued, refused = cursor, 0, 0
        try:
            for payload in fetch(since):
                if not isinstance(payload, dict):  # this payload only: the others go on
                    refused += 1
                    _refuse(shop_domain, updated, payload, "not a JSON object")
                    continue
                try:
                    modified = ev.parse_datetime(payload.get("date_modified_gmt"))
                    known, version = _known_version(shop_id, resource, payload)
                    if modified is not None:
                        newest = modified if newest is None or modified > newest else newest
                        if version is not None and version >= modified:
                            continue  # a webhook brought this change already
                    events = connector.events_for(updated if known else created, payload)
                except ev.MALFORMED_ERRORS as exc:
                    refused += 1
                    _refuse(shop_domain, updated, payload, ev.problem(exc))
                    continue
                for event in events:
                    queued += enqueue_event(event, connection)
        except Exception as exc:
            _save_cursor(shop_id, resource, None, error=f"{type(exc).__name__}: {exc}")  # read it all again
            raise
        _save_cursor(shop_id, resource, newest)
        counts[resource] = queued
        if refused:
            counts[f"{resource}_refused"] = refused
    log.info("woocommerce reconciled", extra={"shop_id": shop_id, **counts})
    return counts


def reconcile_woocommerce() -> dict[str, Any]:
    """Reconcile every active WooCommerce store; one failing store doesn't stop the others."""
    with session_scope() as session:
        shop_ids = (
            session.execute(
                select(Shop.id).where(
                    Shop.platform == "woocommerce", Shop.active.is_(True), Shop.consumer_key_enc.is_not(None)
                )
            )
            .scalars()
            .all()
        )
    results: dict[str, Any] = {}
    for shop_id in shop_ids:
        try:
            results[str(shop_id)] = reconcile_shop(shop_id)
        except Exception as exc:  # noqa: BLE001 - recorded on the cursor and logged; the next run retries
            log.error("woocommerce reconciliation failed", extra={"shop_id": shop_id, "error": str(exc)[:300]})
            results[str(shop_id)] = {"error": str(exc)[:300]}
    return results


CRON_JOBS = [dict(func=reconcile_woocommerce, queue_name=MAINTENANCE, interval=15 * 60)]
