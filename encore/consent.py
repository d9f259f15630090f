"""Consent changes: an address withdrawn from a shop's marketing (or a suppression lifted), by whom, and why.

Local first. `withdraw` puts the address on the shop's suppression list, sets the ledger's consent of the
customer to no, and records a `ConsentChange` whose `writeback` is `pending`, all in the caller's
transaction: from its commit on, no marketing email goes to the address, whatever the platform says later.
The connectors' job (`connectors.consent.write_back`) then tells the store's platform, so that the store's
own emails and its other apps respect the withdrawal too, and notes each attempt on the same row, which the
customer's timeline shows. A customer known only by an email address (a guest checkout, a platform id
`email:…`) has no platform record to change: the row says so (`skipped`) and no job is queued.

`lift` takes an address off the suppression list (the admin's unsuppress), recorded the same way; it never
re-subscribes anyone on the platform: only the customer can give consent again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from encore_retention.core.store.models import ConsentChange, Customer, SoftBounce, Suppression, utcnow
from encore_retention.core.store.unit import Unit
from encore_retention.core.unsubscribe import address_key, normalise_address, suppress_key

UNSUBSCRIBED = "unsubscribed"
UNSUPPRESSED = "unsuppressed"

PENDING, DONE, FAILED, SKIPPED, NONE = "pending", "done", "failed", "skipped", "none"
FINISHED = frozenset({DONE, FAILED, SKIPPED, NONE})
"""Write-back states a job never changes again."""

EMAIL_ONLY_PREFIX = "email:"
EMAIL_ONLY_DETAIL = "known only by email address: there is no customer on the platform to write back to"
NO_CUSTOMER_DETAIL = "no customer of the store has this address: nothing to write back"


def writeback_plan(customer: Customer | None) -> tuple[str, str]:
    """The write-back state a new withdrawal starts in, with the reason when there is nothing to write back."""
    if customer is None:
        return SKIPPED, NO_CUSTOMER_DETAIL
    if customer.platform_id.startswith(EMAIL_ONLY_PREFIX):
        return SKIPPED, EMAIL_ONLY_DETAIL
    return PENDING, ""


def withdraw(
    session: Unit,
    shop_id: int,
    key: str,
    *,
    customer: Customer | None,
    reason: str,
    source: str,
    actor: str,
    note: str = "",
    find_customer: bool = False,
) -> ConsentChange:
    """Suppress the address (its keyed hash `key`) at the shop now, mark the customer as not consenting, and record
    the change, its write-back `pending` unless there is nothing to write back to. Returns the change (flushed).

    `find_customer`: the customer is not known yet (an unsubscribe link names only the hash); the write-back job
    finds them (`customer_by_key`), off the request's path.
    """
    now = utcnow()
    suppress_key(session, shop_id, key, reason=reason, source=source)
    if customer is not None and customer.email_consent is not False:
        session.stage(customer, email_consent=False, consent_updated_at=now)
    state, detail = (PENDING, "") if customer is None and find_customer else writeback_plan(customer)
    change = ConsentChange(
        shop_id=shop_id,
        customer_id=customer.id if customer is not None else None,
        email_hash=key,
        action=UNSUBSCRIBED,
        reason=reason[:32],
        source=source[:255],
        actor=actor[:255],
        note=note,
        created_at=now,
        writeback=state,
        writeback_detail=detail,
        writeback_attempts=0,
    )
    session.add(change)
    session.flush()
    return change


def lift(session: Unit, suppression: Suppression, *, actor: str, note: str) -> ConsentChange:
    """Take an address off a shop's suppression list (and forget its soft bounces), recorded with who and why."""
    known = known_customer_ids(session, [(suppression.shop_id, suppression.email_hash)])
    change = ConsentChange(
        shop_id=suppression.shop_id,
        customer_id=known.get((suppression.shop_id, suppression.email_hash)),
        email_hash=suppression.email_hash,
        action=UNSUPPRESSED,
        reason=suppression.reason,
        source="admin",
        actor=actor[:255],
        note=note,
        created_at=utcnow(),
        writeback=NONE,
        writeback_detail="an unsuppress is not written back: only the customer can subscribe again",
        writeback_attempts=0,
    )
    session.add(change)
    session.execute(
        delete(SoftBounce).where(
            SoftBounce.shop_id == suppression.shop_id, SoftBounce.email_hash == suppression.email_hash
        )
    )
    session.delete(suppression)
    session.flush()
    return change


def customer_by_address(session: Session, shop_id: int, address: str) -> Customer | None:
    """The shop's customer with this address, a platform customer before one known by email only."""
    wanted = normalise_address(address)
    rows = session.execute(
        select(Customer).where(Customer.shop_id == shop_id, func.lower(Customer.email) == wanted)
    ).scalars()
    return _preferred(rows)


def customer_by_key(session: Session, shop_id: int, key: str) -> Customer | None:
    """The shop's customer whose address has the keyed hash `key` (what an unsubscribe link carries).

    The hash can't be reversed, so the shop's addresses are hashed until one matches: linear in the shop's
    customers (about a second per million), which is why it runs in the write-back job, never in a request.
    """
    for customer_id, email in session.execute(
        select(Customer.id, Customer.email).where(Customer.shop_id == shop_id, Customer.email.is_not(None))
    ):
        if email and address_key(shop_id, email) == key:
            customer = session.get(Customer, customer_id)
            if customer is not None and customer.email:
                return customer_by_address(session, shop_id, customer.email) or customer
    return None


def _preferred(rows: Iterable[Customer]) -> Customer | None:
    """Of the rows for one address, a platform customer (whose consent can be written back) first."""
    found = sorted(rows, key=lambda row: (row.platform_id.startswith(EMAIL_ONLY_PREFIX), row.id))
    return found[0] if found else None


def known_customer_ids(session: Session, pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """The customer id a consent change linked to each (shop id, keyed hash), where one did."""
    wanted = set(pairs)
    if not wanted:
        return {}
    found: dict[tuple[int, str], int] = {}
    rows = session.execute(
        select(ConsentChange.shop_id, ConsentChange.email_hash, ConsentChange.customer_id)
        .where(
            ConsentChange.customer_id.is_not(None),
            ConsentChange.email_hash.in_(sorted({key for _, key in wanted})),
        )
        .order_by(ConsentChange.id)
    )
    for shop_id, key, customer_id in rows:
        if (shop_id, key) in wanted and customer_id is not None:
            found[(shop_id, key)] = customer_id
    return found


def note_writeback(session: Session, change: ConsentChange, state: str, detail: str, *, attempt: bool) -> None:
    """Record how writing a change back went (`attempt`: one more call to the platform was made)."""
    change.writeback = state
    change.writeback_detail = detail[:2000]
    change.writeback_at = utcnow()
    if attempt:
        change.writeback_attempts = (change.writeback_attempts or 0) + 1


def changes_of(session: Session, customer_id: int, limit: int = 200) -> list[ConsentChange]:
    """A customer's consent changes, newest first (the timeline's)."""
    return list(
        session.execute(
            select(ConsentChange)
            .where(ConsentChange.customer_id == customer_id)
            .order_by(ConsentChange.created_at.desc(), ConsentChange.id.desc())
            .limit(limit)
        ).scalars()
    )


def summary(change: ConsentChange) -> dict[str, Any]:
    """A change as a log line or a job's answer shows it (no address: the hash's prefix)."""
    return {
        "change": change.id,
        "shop_id": change.shop_id,
        "action": change.action,
        "reason": change.reason,
        "writeback": change.writeback,
        "address": change.email_hash[:12],
    }
