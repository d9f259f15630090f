"""Bounces and complaints: what a failed delivery or a spam report does to an address, across a sender's stores.

Reputation belongs to the sending domain: a mailbox provider that sees complaints or mail to dead
addresses from `shop.example` holds it against every message from `shop.example`, whichever store of
this installation sent it. So one store's hard bounce or complaint suppresses the address at every
store of the same sender, where "the same sender" means: stores whose From address (their own
`email_from`, else EMAIL_FROM's address) is at the same domain, compared case-insensitively, as the
From of the message that bounced. Stores mailing from other domains are left alone: on an
installation serving unrelated merchants, one merchant's list never decides another's.

- A hard bounce (the address does not exist, the domain takes no mail) or a complaint (the recipient
  pressed "report spam") suppresses the address at once at each of those stores, sets the customer's
  consent to no and queues the write-back to the platform (`encore.consent.withdraw`).
- A soft bounce (mailbox full, greylisted, temporarily refused) is counted per store; the
  SOFT_BOUNCE_LIMIT-th in a row suppresses the address. A delivery the sending service reports
  resets the count.

Suppressions are keyed hashes per store (`encore.unsubscribe.address_key`), so each store's key is
computed here from the address the sending service reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from encore_retention.core import consent
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import ConsentChange, Shop, SoftBounce, utcnow
from encore_retention.core.store.unit import Unit
from encore_retention.core.unsubscribe import address_key, suppression_reason

BOUNCED = "bounced"
COMPLAINED = "complained"
SOFT_BOUNCED = "soft-bounced"


@dataclass(frozen=True)
class Outcome:
    """What one bounce, complaint or delivery did: the consent changes made (to write back) and the stores touched."""

    changes: tuple[int, ...] = ()
    """The consent changes made whose write-back is pending (to queue once committed)."""
    shops: tuple[int, ...] = ()
    suppressed: int = 0
    """How many stores suppressed the address now."""


def domain_of(address: str | None) -> str | None:
    """The domain of an address, written `a@b` or `Name <a@b>`, lower case; None when there is none."""
    if not address:
        return None
    _, parsed = parseaddr(address)
    local, at, domain = parsed.rpartition("@")
    return domain.strip().lower() or None if at and local else None


def sender_domain(shop: Shop) -> str | None:
    """The domain a store mails from: its own From's, else EMAIL_FROM's."""
    return domain_of(shop.email_from) or domain_of(get_settings().EMAIL_FROM)


def shops_of_sender(session: Session, sender: str | None, also: int | None = None) -> list[Shop]:
    """The connected stores that mail from the same domain as `sender` (a From address), and `also` (the store that
    sent the message, when known, whatever its domain)."""
    wanted = domain_of(sender)
    found = [
        shop
        for shop in session.execute(select(Shop).order_by(Shop.id)).scalars()
        if shop.id == also or (wanted is not None and sender_domain(shop) == wanted)
    ]
    return found


def hard_bounce(
    session: Unit,
    address: str,
    sender: str | None,
    *,
    reason: str = BOUNCED,
    source: str,
    detail: str = "",
    also: int | None = None,
) -> Outcome:
    """Suppress `address` at every store of `sender` (a hard bounce, or a complaint with reason `complained`).

    An address already suppressed at a store is left as it is there (a provider's repeated report changes nothing).
    """
    made: list[ConsentChange] = []
    shops: list[int] = []
    for shop in shops_of_sender(session, sender, also):
        key = address_key(shop.id, address)
        shops.append(shop.id)
        _reset(session, shop.id, key)
        if suppression_reason(session, shop.id, key) is not None:
            continue
        made.append(_withdraw(session, shop.id, key, address, reason, source, detail))
    return _outcome(made, shops)


def soft_bounce(
    session: Unit, address: str, sender: str | None, *, source: str, detail: str = "", also: int | None = None
) -> Outcome:
    """Count a soft bounce at every store of `sender`; where it is the SOFT_BOUNCE_LIMIT-th in a row, suppress."""
    limit = get_settings().SOFT_BOUNCE_LIMIT
    made: list[ConsentChange] = []
    shops: list[int] = []
    for shop in shops_of_sender(session, sender, also):
        key = address_key(shop.id, address)
        shops.append(shop.id)
        if suppression_reason(session, shop.id, key) is not None:
            continue
        if count(session, shop.id, key, detail) < limit:
            continue
        note = f"{limit} soft bounces in a row; the last: {detail}".strip()
        made.append(_withdraw(session, shop.id, key, address, SOFT_BOUNCED, source, note))
        _reset(session, shop.id, key)
    return _outcome(made, shops)


def _withdraw(
    session: Unit, shop_id: int, key: str, address: str, reason: str, source: str, note: str
) -> ConsentChange:
    """Suppress the address at one store and withdraw the consent of its customer there (if one has it)."""
    customer = consent.customer_by_address(session, shop_id, address)
    return consent.withdraw(
        session, shop_id, key, customer=customer, reason=reason, source=source, actor=source, note=note
    )


def _outcome(made: list[ConsentChange], shops: list[int]) -> Outcome:
    pending = tuple(change.id for change in made if change.writeback == consent.PENDING)
    return Outcome(pending, tuple(shops), len(made))


def count(session: Unit, shop_id: int, key: str, detail: str = "") -> int:
    """Add one soft bounce of the address at the shop; returns how many in a row now."""
    session.insert_new(
        SoftBounce,
        {"shop_id": shop_id, "email_hash": key, "count": 0, "detail": "", "updated_at": utcnow()},
        ["shop_id", "email_hash"],
        attach=False,
    )
    return int(
        session.execute(
            update(SoftBounce)
            .where(SoftBounce.shop_id == shop_id, SoftBounce.email_hash == key)
            .values(count=SoftBounce.count + 1, detail=detail[:2000], updated_at=utcnow())
            .returning(SoftBounce.count)
            .execution_options(synchronize_session=False)
        ).scalar_one()
    )


def delivered(session: Session, address: str, sender: str | None, also: int | None = None) -> Outcome:
    """A delivery the sending service reports: the address's soft bounces in a row start again from none."""
    shops = shops_of_sender(session, sender, also)
    for shop in shops:
        _reset(session, shop.id, address_key(shop.id, address))
    return Outcome((), tuple(shop.id for shop in shops))


def soft_bounces(session: Session, shop_id: int, address: str) -> int:
    """How many soft bounces in a row the address has at the shop."""
    found = session.execute(
        select(SoftBounce.count).where(
            SoftBounce.shop_id == shop_id, SoftBounce.email_hash == address_key(shop_id, address)
        )
    ).scalar_one_or_none()
    return int(found or 0)


def _reset(session: Session, shop_id: int, key: str) -> None:
    session.execute(
        delete(SoftBounce)
        .where(SoftBounce.shop_id == shop_id, SoftBounce.email_hash == key)
        .execution_options(synchronize_session=False)
    )
