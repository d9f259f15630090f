"""The customer ledger: what every event changes in the store.

Applying an event is idempotent and order-independent:
- the event's id is inserted into `events` first; a second delivery finds it and changes nothing;
- an order row keeps the platform's `updated_at` and ignores older versions of itself, so an
  `orders/updated` that overtakes `orders/create` is not undone by it;
- a customer's counts and dates are recomputed from the order rows, never incremented, and the
  platform's own figures (Shopify's purchasing summary, WooCommerce's customer) are a floor;
- profile fields follow the newest version seen (the customer's `updated_at`, else the event's
  time); consent follows its own `consent_updated_at`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import String, Table, bindparam, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from encore_retention.core import events as ev
from encore_retention.core.archive import WebhookDelivery, narrowed
from encore_retention.core.store import prediction
from encore_retention.core.store.models import Base, Customer, EventRecord, Feedback, Order, Shop, utcnow
from encore_retention.core.store.unit import Unit


@dataclass
class Person:
    """Whom a redaction forgets, gathered before their rows go: whatever a trace of them elsewhere could carry.

    For `customers/redact`, the customer's platform ids and ledger keys, addresses (normalised),
    phone numbers (digits), orders and ledger rows; `whole_shop` for `shop/redact`, where everything
    of the shop goes. `messages` are the idempotency keys of the emails sent to or about them (the
    rooms in BEFORE_REDACT add what they know), so copies kept outside the store can be found.
    """

    platform: str
    shop: str
    shop_id: int | None = None
    whole_shop: bool = False
    platform_ids: set[str] = dataclasses.field(default_factory=set)
    keys: set[str] = dataclasses.field(default_factory=set)
    emails: set[str] = dataclasses.field(default_factory=set)
    phones: set[str] = dataclasses.field(default_factory=set)
    phone_texts: set[str] = dataclasses.field(default_factory=set)
    order_ids: set[str] = dataclasses.field(default_factory=set)
    customer_ids: set[int] = dataclasses.field(default_factory=set)
    event_ids: set[str] = dataclasses.field(default_factory=set)
    messages: set[str] = dataclasses.field(default_factory=set)

    def add(self, customer: ev.Customer | Customer) -> None:
        """Take in what a customer (from an event, or a ledger row) says about who they are."""
        if isinstance(customer, Customer):
            self.customer_ids.add(customer.id)
            key = customer.platform_id
            self.keys.add(key)
            if not key.startswith("email:"):
                self.platform_ids.add(key)
        else:
            if customer.id:
                self.platform_ids.add(customer.id)
            if customer.key:
                self.keys.add(customer.key)
        if customer.email and customer.email.strip():
            address = customer.email.strip().lower()
            self.emails.add(address)
            self.keys.add("email:" + address)
        if customer.phone and len(_digits(customer.phone)) >= MIN_PHONE_DIGITS:
            self.phones.add(_digits(customer.phone))
            self.phone_texts.add(customer.phone.strip())

    def named_in(self, text: str) -> bool:
        """Whether a text holds one of their addresses (in any case, not inside a longer one) or phone numbers
        (however written)."""
        lowered = text.lower()
        for address in self.emails:
            if address in lowered and re.search(rf"(?<![\w.%+-]){re.escape(address)}(?!\.?[\w-])", lowered):
                return True
        if not any(phone[-4:] in text for phone in self.phones):  # however written, it ends in these digits
            return False
        return any(self._phone(found) for found in _PHONE_LIKE.findall(text))

    def named_by(self, event: ev.Event) -> bool:
        """Whether a canonical event of their shop is about them: their customer, address, phone or order."""
        if event.platform != self.platform or event.shop != self.shop:
            return False
        if self.whole_shop:
            return True
        customer = event.customer
        if customer is not None and (
            (customer.id is not None and customer.id in self.platform_ids)
            or (customer.key is not None and customer.key in self.keys)
            or (customer.email is not None and customer.email.strip().lower() in self.emails)
            or (customer.phone is not None and self._phone(customer.phone))
        ):
            return True
        if event.order is not None and event.order.id in self.order_ids:
            return True
        checkout = event.checkout
        return checkout is not None and checkout.email is not None and checkout.email.strip().lower() in self.emails

    def mentioned_in(self, lowered: str) -> bool:
        """Whether a lower-cased text may name them: one of their addresses, a phone's last four digits,
        or one of their ids as a whole word. One pass over the text (a coarse filter before the exact check)."""
        if any(address in lowered for address in self.emails):
            return True
        if any(phone[-4:] in lowered for phone in self.phones):
            return True
        ids = {value.lower() for value in self.platform_ids | self.order_ids}
        return bool(ids) and any(word in ids for word in _WORD.findall(lowered))

    def needles(self) -> list[str]:
        """Lower-case fragments one of which any JSON text naming them contains (a coarse first filter)."""
        found = set(self.emails) | {text.lower() for text in self.phone_texts}
        for value in self.platform_ids | self.order_ids:
            found.update(f"{sep}{value}{end}" for sep in ('":', '": ') for end in (",", "}"))
            found.update((f'":"{value}"', f'": "{value}"', f'/{value}"'))
        return sorted(found)

    def _phone(self, text: str) -> bool:
        digits = _digits(text)
        if len(digits) < MIN_PHONE_DIGITS:
            return False
        return any(digits.endswith(known) or known.endswith(digits) for known in self.phones)


MIN_PHONE_DIGITS = 7
_PHONE_LIKE = re.compile(r"\+?\d[\d ().-]{5,}\d")
_WORD = re.compile(r"[\w-]+")  # an id in JSON text: a number, a string's content, a gid's last part


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# Rooms that keep more about a customer beside the ledger add to the Person before the rows go:
# f(session, person) -> None. The flows add the keys of the emails sent to or about them.
BEFORE_REDACT: list[Callable[[Session, Person], None]] = []


@dataclass
class LedgerResult:
    """What applying one event did; `redacted` says whom a `customers/redact` or `shop/redact` forgot."""

    new: bool
    shop: Shop | None
    customer: Customer | None = None
    order: Order | None = None
    redacted: Person | None = None


def cast_table(model: type[Base]) -> Table:
    """The Table behind a mapped class."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


# The ledger's hot statements, built once: SQLAlchemy then skips building and coercing them per event.
_SHOP = select(Shop).where(Shop.platform == bindparam("platform"), Shop.domain == bindparam("domain"))
_CUSTOMER = select(Customer).where(Customer.shop_id == bindparam("shop_id"), Customer.platform_id == bindparam("key"))
_CUSTOMER_LOCKED = _CUSTOMER.with_for_update()
_ORDER_LOCKED = (
    select(Order).where(Order.shop_id == bindparam("shop_id"), Order.platform_id == bindparam("key")).with_for_update()
)
_EVENT_CUSTOMER = select(EventRecord.customer_id).where(EventRecord.id == bindparam("event_id"))
_TOTALS_EXCEPT = select(
    func.count(Order.id), func.coalesce(func.sum(Order.total), 0), func.min(Order.placed_at), func.max(Order.placed_at)
).where(
    Order.customer_id == bindparam("customer_id"),
    Order.id != bindparam("order_id"),
    Order.deleted.is_(False),
    Order.cancelled_at.is_(None),
)
_TOTALS = select(
    func.count(Order.id), func.coalesce(func.sum(Order.total), 0), func.min(Order.placed_at), func.max(Order.placed_at)
).where(Order.customer_id == bindparam("customer_id"), Order.deleted.is_(False), Order.cancelled_at.is_(None))


_PLACED = select(Order.placed_at).where(
    Order.customer_id == bindparam("customer_id"),
    Order.deleted.is_(False),
    Order.cancelled_at.is_(None),
    Order.placed_at.is_not(None),
)
_PLACED_EXCEPT = _PLACED.where(Order.id != bindparam("order_id"))


def get_or_create_shop(session: Unit, platform: str, domain: str) -> Shop:
    """The shop row for (platform, domain), created on first sight."""
    where = {"platform": platform, "domain": domain}
    shop = session.execute(_SHOP, where).scalar_one_or_none()
    if shop is None:
        values = {**where, "settings": {}, "active": True, "created_at": utcnow()}
        session.insert_new(Shop, values, ["platform", "domain"], attach=False)
        shop = session.execute(_SHOP, where).scalar_one()
    return shop


def find_customer(session: Session, shop_id: int, key: str, *, lock: bool = False) -> Customer | None:
    """The ledger row of a customer by platform id (or `email:` key)."""
    stmt = _CUSTOMER_LOCKED if lock else _CUSTOMER
    return session.execute(stmt, {"shop_id": shop_id, "key": key}).scalar_one_or_none()


def apply_event(session: Unit, event: ev.Event) -> LedgerResult:
    """Apply one canonical event to the ledger inside the caller's transaction.

    The common case costs few statements: the shop, the customer (read before the event's insert,
    the idempotency gate, so that the event row carries it), the order (inserted whole when new),
    the recompute of the customer's figures when the order changed, and the customer's changes as
    one UPDATE when the transaction commits (`Unit.stage`).
    """
    privacy = event.type.is_privacy
    payload = None if privacy else event.to_dict(raw=False)  # the raw body is in the webhook archive
    shop = get_or_create_shop(session, event.platform, event.shop)
    # The customer's row, when there is one, is read before the gate so that the event row carries it.
    key = event.customer.key if event.customer is not None and not privacy else None
    known: Any = _LOOK_UP
    if key is not None and event.type != ev.EventType.CUSTOMER_CREATED:
        known = find_customer(session, shop.id, key, lock=True)
    known_id = known.id if known is not None and known is not _LOOK_UP else None
    record = {
        "id": event.id,
        "shop_id": None if event.type == ev.EventType.SHOP_REDACT else shop.id,
        "platform": event.platform,
        "topic": event.topic,
        "type": event.type.value,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "processed_at": utcnow(),
        "payload": payload,
        "customer_id": known_id,
    }
    new = session.insert_new(EventRecord, record, ["id"], attach=False) is not None
    if not new:
        customer_id = session.connection().execute(_EVENT_CUSTOMER, {"event_id": event.id}).scalar()
        customer = session.get(Customer, customer_id) if customer_id else None
        return LedgerResult(new=False, shop=shop, customer=customer)

    if event.type == ev.EventType.SHOP_REDACT:
        return LedgerResult(new=True, shop=None, redacted=redact_shop(session, shop))
    if event.type == ev.EventType.APP_UNINSTALLED:
        uninstall_shop(session, shop)
        return LedgerResult(new=True, shop=shop)
    if event.type == ev.EventType.CUSTOMER_REDACT:
        return LedgerResult(new=True, shop=shop, redacted=redact_customer(session, shop, event))
    if event.type == ev.EventType.CUSTOMER_DATA_REQUEST:
        return LedgerResult(new=True, shop=shop)
    if event.type == ev.EventType.FEEDBACK_RECEIVED:  # Encore's own event: the customer's answer, nothing else
        answered = known if known is not _LOOK_UP else None
        if answered is not None:
            record_feedback(session, answered, event)
        return LedgerResult(new=True, shop=shop, customer=answered)

    customer = upsert_customer(session, shop, event.customer, event.occurred_at, known) if event.customer else None
    order = None
    if event.order is not None:
        order, changed = upsert_order(
            session,
            shop,
            event.order,
            customer,
            deleted=event.type == ev.EventType.ORDER_DELETED,
            likely_new=event.type == ev.EventType.ORDER_PLACED,
        )
        customer_id = order.customer_id
        if customer_id is not None:
            if customer is None or customer.id != customer_id:
                customer = session.get(Customer, customer_id)
            if customer is not None and changed:
                recompute(session, customer, order)
    elif customer is not None and event.type == ev.EventType.CUSTOMER_PURCHASING_SUMMARY:
        recompute(session, customer)
    if customer is not None and customer.id != known_id:
        session.connection().execute(_SET_EVENT_CUSTOMER, {"event_id": event.id, "customer_id": customer.id})
    return LedgerResult(new=True, shop=shop, customer=customer, order=order)


_SET_EVENT_CUSTOMER = (
    cast_table(EventRecord)
    .update()
    .where(cast_table(EventRecord).c.id == bindparam("event_id"))
    .values(customer_id=bindparam("customer_id"))
)


_PROFILE_FIELDS = ("email", "first_name", "last_name", "phone", "locale", "has_account")


_LOOK_UP = object()  # upsert_customer's `row` default: select the row first


@dataclass(frozen=True)
class _BlankProfile:
    """A new customer's row as `_profile_changes` reads it: nothing stored yet."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    locale: str | None = None
    has_account: bool | None = None
    birthday: date | None = None
    platform_created_at: datetime | None = None
    profile_version: datetime | None = None
    consent_updated_at: datetime | None = None
    reported_at: datetime | None = None


_BLANK_PROFILE = _BlankProfile()


def upsert_customer(
    session: Unit, shop: Shop, incoming: ev.Customer, seen_at: datetime, row: Any = _LOOK_UP
) -> Customer | None:
    """Create or update a customer's ledger row from what an event says about them.

    `row` is the customer's row when the caller looked it up already (None: not there yet). A new
    customer is inserted with their whole profile and put in the session without selecting it back.
    """
    key = incoming.key
    if key is None:
        return None
    if row is _LOOK_UP:
        row = find_customer(session, shop.id, key, lock=True)
    if row is None:
        now = utcnow()
        blank: dict[str, Any] = {column.key: None for column in cast_table(Customer).columns if column.key != "id"}
        blank.update(
            shop_id=shop.id,
            platform_id=key,
            tags=[],
            orders_count=0,
            total_spent=Decimal("0"),
            created_at=now,
            updated_at=now,
        )
        blank.update(_profile_changes(_BLANK_PROFILE, incoming, seen_at))
        created = session.insert_new(Customer, blank, ["shop_id", "platform_id"])
        if created is not None:
            return created
        row = find_customer(session, shop.id, key, lock=True)  # a concurrent first event's
    assert row is not None
    _stage_changed(session, row, _profile_changes(row, incoming, seen_at))
    return row


def feedback_score(event: ev.Event) -> int | None:
    """The score (1 to 5) a `feedback.received` event carries, None when it carries none that fits."""
    score = ev.integer(event.data.get("score"))
    return score if score is not None and 1 <= score <= 5 else None


def record_feedback(session: Unit, customer: Customer, event: ev.Event) -> None:
    """Keep a customer's latest answer to "How was your order?" (an older answer arriving late changes nothing)."""
    score = feedback_score(event)
    if score is None:
        return
    if customer.feedback_at is None or event.occurred_at >= customer.feedback_at:
        _stage_changed(session, customer, {"feedback_score": score, "feedback_at": event.occurred_at})


def _profile_changes(row: Customer | _BlankProfile, incoming: ev.Customer, seen_at: datetime) -> dict[str, Any]:
    """The columns an event's view of a customer changes: the newer version wins, consent by its own time."""
    version = incoming.updated_at or seen_at
    newer = row.profile_version is None or version >= row.profile_version
    changes: dict[str, Any] = {}
    for field in _PROFILE_FIELDS:
        value = getattr(incoming, field)
        if field == "email" and value:
            value = value.strip()
        if value is not None and (newer or getattr(row, field) is None):
            changes[field] = value
    if incoming.tags is not None and newer:
        changes["tags"] = sorted(set(incoming.tags))
    if incoming.birthday is not None and (newer or row.birthday is None):
        changes.update(
            birthday=incoming.birthday, birthday_month=incoming.birthday.month, birthday_day=incoming.birthday.day
        )
    if incoming.created_at and row.platform_created_at is None:
        changes["platform_created_at"] = incoming.created_at
    if newer:
        changes["profile_version"] = version
    if incoming.email_consent is not None:
        consent_at = incoming.consent_updated_at or version
        if row.consent_updated_at is None or consent_at >= row.consent_updated_at:
            changes.update(email_consent=incoming.email_consent, consent_updated_at=consent_at)
    if incoming.orders_count is not None or incoming.total_spent is not None:
        if row.reported_at is None or version >= row.reported_at:
            if incoming.orders_count is not None:
                changes["reported_orders_count"] = incoming.orders_count
            if incoming.total_spent is not None:
                changes["reported_total_spent"] = incoming.total_spent
            changes["reported_at"] = version
    return changes


def upsert_order(
    session: Unit,
    shop: Shop,
    incoming: ev.Order,
    customer: Customer | None,
    *,
    deleted: bool = False,
    likely_new: bool = False,
) -> tuple[Order, bool]:
    """Create or update an order row, ignoring versions older than the one stored.

    Returns the row and whether anything the customer's figures depend on changed (its total, date,
    cancellation, deletion or customer), so an unchanged order spares the recompute. With
    `likely_new` (an order's creation) the insert is tried first.
    """
    where = {"shop_id": shop.id, "key": incoming.id}
    row = None if likely_new else session.execute(_ORDER_LOCKED, where).scalar_one_or_none()
    if row is None:  # inserted as this version says, and put in the session without selecting it back
        fresh: dict[str, Any] = {
            "shop_id": shop.id,
            "platform_id": incoming.id,
            "number": incoming.number,
            "placed_at": incoming.created_at,
            "total": incoming.total,
            "currency": incoming.currency,
            "financial_status": incoming.financial_status,
            "fulfillment_status": incoming.fulfillment_status,
            "cancelled_at": incoming.cancelled_at,
            "discount_codes": list(incoming.discount_codes or []),
            "platform_updated_at": incoming.updated_at,
            "deleted": deleted,
            "customer_id": customer.id if customer is not None else None,
            "created_at": utcnow(),
        }
        row = session.insert_new(Order, fresh, ["shop_id", "platform_id"])
        if row is not None:
            return row, True
        row = session.execute(_ORDER_LOCKED, where).scalar_one()  # there already (a concurrent event's)
    before = (row.total, row.placed_at, row.cancelled_at, row.deleted, row.customer_id)
    newer = incoming.updated_at is not None and (
        row.platform_updated_at is None or incoming.updated_at >= row.platform_updated_at
    )
    values: dict[str, Any] = {
        "number": incoming.number,
        "placed_at": incoming.created_at,
        "total": incoming.total,
        "currency": incoming.currency,
        "financial_status": incoming.financial_status,
        "fulfillment_status": incoming.fulfillment_status,
        "cancelled_at": incoming.cancelled_at,
    }
    changes: dict[str, Any] = {}
    for field, value in values.items():
        if newer and field == "cancelled_at":
            changes["cancelled_at"] = incoming.cancelled_at  # a newer version without it: the order was restored
        elif value is not None and (newer or getattr(row, field) is None):
            changes[field] = value
    if incoming.discount_codes and (newer or not row.discount_codes):
        changes["discount_codes"] = list(incoming.discount_codes)
    if newer:
        changes["platform_updated_at"] = incoming.updated_at
    if deleted:
        changes["deleted"] = True
    if customer is not None and row.customer_id is None:
        changes["customer_id"] = customer.id
    _stage_changed(session, row, changes)
    return row, (row.total, row.placed_at, row.cancelled_at, row.deleted, row.customer_id) != before


def _stage_changed(session: Unit, row: Base, changes: dict[str, Any]) -> None:
    """Stage the columns whose value differs from the row's (nothing when the event changes nothing)."""
    changed = {key: value for key, value in changes.items() if getattr(row, key) != value}
    if changed:
        session.stage(row, **changed)


def recompute(session: Unit, customer: Customer, changed: Order | None = None) -> None:
    """Recompute a customer's order count, total and first/last order dates from the order rows.

    With `changed` (an order modified in this session), the other orders are summed in the database
    and that one is added here, so its changes need not be flushed first: the customer's new figures
    and the order's changes then go out in the transaction's one flush.
    """
    if changed is None:  # a read through the unit: the orders' staged changes are written first
        count, total, first, last = session.execute(_TOTALS, {"customer_id": customer.id}).one()
    else:
        count, total, first, last = (
            session.connection().execute(_TOTALS_EXCEPT, {"customer_id": customer.id, "order_id": changed.id}).one()
        )
        if changed.customer_id == customer.id and not changed.deleted and changed.cancelled_at is None:
            count += 1
            total = Decimal(str(total)) + (changed.total or Decimal("0"))
            if changed.placed_at is not None:
                first = min(first, changed.placed_at) if first is not None else changed.placed_at
                last = max(last, changed.placed_at) if last is not None else changed.placed_at
    # The sum of amounts that each fit the Money column may not: a lifetime over it is kept at its largest.
    total = min(max(Decimal(str(total)), -ev.MONEY_MAX), ev.MONEY_MAX).quantize(Decimal("0.01"))
    _stage_changed(
        session,
        customer,
        {
            "orders_count": max(count, customer.reported_orders_count or 0),
            "total_spent": max(total, customer.reported_total_spent or Decimal("0")),
            "first_order_at": first,
            "last_order_at": last,
            "predicted_next_order": predict(session, customer, changed) if count >= 2 else None,
        },
    )


def predict(session: Unit, customer: Customer, changed: Order | None = None) -> datetime | None:
    """The customer's predicted next order from their orders' times (`changed` as in `recompute`).

    The store's median gap, the prior, is read from the shop row, and computed again (and kept there)
    when it is older than the day of the customer's last order: once a day per store.
    """
    found: list[datetime | None]
    if changed is None:
        found = list(session.execute(_PLACED, {"customer_id": customer.id}).scalars())
    else:
        where = {"customer_id": customer.id, "order_id": changed.id}
        found = list(session.connection().execute(_PLACED_EXCEPT, where).scalars())
        if changed.customer_id == customer.id and not changed.deleted and changed.cancelled_at is None:
            found.append(changed.placed_at)
    placed = [moment if moment.tzinfo else moment.replace(tzinfo=UTC) for moment in found if moment is not None]
    if len(placed) < 2:
        return None
    shop = session.get(Shop, customer.shop_id)
    if shop is None:
        return prediction.predict_next(placed, None)
    day = max(placed).astimezone(UTC).date()
    store, fresh = prediction.store_gap(session, shop, day)
    if fresh:
        session.stage(shop, order_interval_days=store, order_interval_on=day)
    return prediction.predict_next(placed, store)


def person_of(shop: Shop, event: ev.Event) -> Person:
    """Who a `customers/redact` names, as its payload says (before the ledger is asked)."""
    person = Person(platform=shop.platform, shop=shop.domain, shop_id=shop.id)
    if event.customer is not None:
        person.add(event.customer)
    person.order_ids.update(str(o) for o in event.data.get("orders_to_redact") or [] if o)
    return person


def customers_named(session: Session, shop: Shop, person: Person) -> list[Customer]:
    """The shop's ledger rows of a person: by platform id or ledger key, or by address in any case."""
    rows: dict[int, Customer] = {}
    if person.keys:
        for row in session.execute(
            select(Customer).where(Customer.shop_id == shop.id, Customer.platform_id.in_(sorted(person.keys)))
        ).scalars():
            rows[row.id] = row
    if person.emails:
        for row in session.execute(
            select(Customer).where(Customer.shop_id == shop.id, func.lower(Customer.email).in_(sorted(person.emails)))
        ).scalars():
            rows[row.id] = row
    return list(rows.values())


def redact_customer(session: Session, shop: Shop, event: ev.Event) -> Person:
    """Delete everything the store holds about one customer (Shopify `customers/redact`); returns whom it forgot.

    Their ledger rows (and with them, by cascade, their flow runs, traces, emails' records and data
    exports), their orders, the events that named them, and the archived deliveries of those events.
    Their suppression, a keyed hash of the address, stays: it still keeps marketing email from them.
    """
    person = person_of(shop, event)
    rows = customers_named(session, shop, person)
    for row in rows:
        person.add(row)
    ids = sorted(person.customer_ids)
    if ids:
        person.order_ids.update(session.execute(select(Order.platform_id).where(Order.customer_id.in_(ids))).scalars())
        person.event_ids.update(
            session.execute(select(EventRecord.id).where(EventRecord.customer_id.in_(ids))).scalars()
        )
    person.event_ids.update(_unlinked_events_naming(session, shop, person))
    for hook in BEFORE_REDACT:
        hook(session, person)
    event_ids = sorted(person.event_ids)
    forget_deliveries(session, shop, event_ids)
    for start in range(0, len(event_ids), 500):
        session.execute(delete(EventRecord).where(EventRecord.id.in_(event_ids[start : start + 500])))
    if ids:
        session.execute(delete(Order).where(Order.customer_id.in_(ids)))
    if person.order_ids:
        session.execute(delete(Order).where(Order.shop_id == shop.id, Order.platform_id.in_(sorted(person.order_ids))))
    for row in rows:
        session.delete(row)
    session.flush()
    return person


def _unlinked_events_naming(session: Session, shop: Shop, person: Person) -> list[str]:
    """Events of the shop linked to no customer that still name the person (a refund of their order, say)."""

    text = func.lower(cast(EventRecord.payload, String))
    query = select(EventRecord.id, EventRecord.payload).where(
        EventRecord.shop_id == shop.id, EventRecord.customer_id.is_(None)
    )
    found = []
    for event_id, payload in session.execute(narrowed(query, text, person.needles())):
        try:
            named = person.named_by(ev.Event.from_dict(payload))
        except ValueError:
            named = person.named_in(json.dumps(payload))
        if named:
            found.append(event_id)
    return found


def forget_deliveries(session: Session, shop: Shop, event_ids: Sequence[str]) -> None:
    """Delete the archived webhook bodies that carried these events (they hold personal data)."""

    text_ids = cast(WebhookDelivery.event_ids, String)
    for start in range(0, len(event_ids), 200):
        chunk = event_ids[start : start + 200]
        session.execute(
            delete(WebhookDelivery)
            .where(
                WebhookDelivery.platform == shop.platform,
                WebhookDelivery.shop == shop.domain,
                or_(*(text_ids.like(f'%"{event_id}"%') for event_id in chunk)),
            )
            .execution_options(synchronize_session=False)
        )


def redact_shop(session: Session, shop: Shop) -> Person:
    """Delete a shop and everything stored about it (Shopify `shop/redact`), archived webhooks included."""

    person = Person(platform=shop.platform, shop=shop.domain, shop_id=shop.id, whole_shop=True)
    for hook in BEFORE_REDACT:
        hook(session, person)
    session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.platform == shop.platform, WebhookDelivery.shop == shop.domain)
    )
    session.execute(update(EventRecord).where(EventRecord.shop_id == shop.id).values(customer_id=None))
    for model in (EventRecord, Order, Customer):
        session.execute(delete(model).where(model.shop_id == shop.id))
    session.delete(shop)
    session.flush()
    return person


def uninstall_shop(session: Session, shop: Shop) -> None:
    """Drop the shop's tokens and stop its flows; its data goes at `shop/redact`, 48 hours later."""
    shop.access_token_enc = None
    shop.active = False
    shop.uninstalled_at = utcnow()
    session.flush()


def export_customer(session: Session, shop: Shop, key: str) -> dict[str, Any]:
    """Everything stored about one customer, as JSON-safe data (Shopify `customers/data_request`)."""
    row = find_customer(session, shop.id, key)
    if row is None:
        return {"shop": shop.domain, "customer": None, "orders": [], "events": []}
    columns = [c.key for c in Customer.__table__.columns]
    orders = session.execute(select(Order).where(Order.customer_id == row.id)).scalars().all()
    records = session.execute(select(EventRecord).where(EventRecord.customer_id == row.id)).scalars().all()
    answers = session.execute(select(Feedback).where(Feedback.customer_id == row.id)).scalars().all()
    data = {
        "shop": shop.domain,
        "customer": {c: getattr(row, c) for c in columns},
        "orders": [{c.key: getattr(o, c.key) for c in Order.__table__.columns} for o in orders],
        "events": [
            {"id": r.id, "type": r.type, "topic": r.topic, "occurred_at": r.occurred_at, "payload": r.payload}
            for r in records
        ],
        "feedback": [
            {"order_id": f.order_id, "score": f.score, "comment": f.comment, "created_at": f.created_at}
            for f in answers
        ],
    }
    return json.loads(json.dumps(data, default=str))
