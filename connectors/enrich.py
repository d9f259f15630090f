"""Filling in a ledger customer the webhooks left incomplete, from what the platform's API allows.

Without Shopify's protected-customer-data approval, webhooks carry no name or email; the Admin API
may still answer with them (development stores, or once the approval is granted). Before giving up
on a customer without an address, the flow engine (or anything else) can call `complete_customer`:
one API call, whose answer goes through the ledger's own rules (newer versions win, consent keeps
its own timestamp). When there is still no address, the caller ends the run with that reason.
"""

from __future__ import annotations

import logging

from encore_retention.connectors.base import PlatformError, get_connector
from encore_retention.core.store.ledger import upsert_customer
from encore_retention.core.store.models import Customer, Shop, utcnow
from encore_retention.core.store.unit import Unit

log = logging.getLogger(__name__)


def complete_customer(session: Unit, shop: Shop, customer: Customer) -> bool:
    """Fetch a customer without an email address from the platform; True when the ledger row now has one."""
    if customer.email or customer.platform_id.startswith("email:"):
        return bool(customer.email)
    try:
        fetched = get_connector(shop).fetch_customer(customer.platform_id)
    except (PlatformError, NotImplementedError) as exc:
        log.warning("could not fetch the customer", extra={"shop": shop.domain, "error": str(exc)[:200]})
        return False
    if fetched is None:
        return False
    upsert_customer(session, shop, fetched, fetched.updated_at or utcnow())
    session.flush()
    return bool(customer.email)
