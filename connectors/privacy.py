"""Shopify's privacy topics beyond the ledger: the `customers/data_request` export, and what a redaction
removes outside the ledger's tables.

The worker calls `record_export` in the same transaction that records the event, so a request is
answered exactly once. The export lives in `data_exports` (cascading with the customer and the
shop, so `customers/redact` and `shop/redact` remove it too); the merchant reads it with
`encore privacy show ID` and sends it to the customer, as Shopify asks of the store owner.

A redaction (`customers/redact`, `shop/redact`, or `encore privacy redact` for any store) first
deletes the ledger's rows (`encore.store.ledger.redact_customer`), which says whom it forgot; then
`forget` removes the rest, in the same job:
- archived deliveries that name the person, whatever event they carried (a data request's body);
- in Redis: queued and failed jobs of the shop about them with their raw bodies, finished jobs'
  copies of their events, and any other value naming them (rejected deliveries, caches);
- the email transport's copies of the messages sent to or about them (the file outbox's .eml files).
Only the suppression stays, as a keyed hash of the address that keeps a later email from them.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import orjson
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from encore_retention.connectors.base import receiver_of
from encore_retention.connectors.email import get_transport
from encore_retention.connectors.models import DataExport
from encore_retention.core import archive, consent, effects
from encore_retention.core import events as ev
from encore_retention.core.queue import BODY_PREFIX, PROCESS_DELIVERY, PROCESS_EVENT, current_path, get_redis
from encore_retention.core.store.ledger import Person, customers_named, export_customer, person_of
from encore_retention.core.store.models import Customer, Shop, Suppression, utcnow
from encore_retention.core.store.unit import Unit
from encore_retention.core.unsubscribe import address_key
from encore_retention.webhooks.base import Delivery

log = logging.getLogger(__name__)


def consent_changes(session: Session, shop: Shop, customer: Customer) -> list[dict[str, Any]]:
    """The customer's consent changes (who, why, what the platform was told), for a data request's export."""
    return [
        {
            "action": change.action,
            "reason": change.reason,
            "source": change.source,
            "by": change.actor,
            "note": change.note,
            "at": change.created_at.isoformat(),
            "written_back": change.writeback,
            "platform_answer": change.writeback_detail,
        }
        for change in consent.changes_of(session, customer.id)
    ]


# Other rooms that store personal data add a section: f(session, shop, customer) -> JSON-safe data.
SECTIONS: dict[str, Callable[[Session, Shop, Customer], Any]] = {"consent_changes": consent_changes}

HELD_AS = "a keyed hash (HMAC-SHA256) of the address, which is all a send is checked against; not the address"


def _customer_row(session: Session, shop: Shop, event: ev.Event) -> Customer | None:
    """The ledger row a request names: by its ledger key, then the platform id, then by address."""
    if event.customer is None:
        return None
    rows = customers_named(session, shop, person_of(shop, event))
    preferred = [event.customer.key, event.customer.id]
    rows.sort(key=lambda row: preferred.index(row.platform_id) if row.platform_id in preferred else len(preferred))
    return rows[0] if rows else None


def build_export(session: Session, shop: Shop, event: ev.Event) -> tuple[Customer | None, dict[str, Any]]:
    """The customer's ledger row (if any) and everything stored about them.

    A suppression is reported too, found by the address's keyed hash, even when the ledger holds
    nothing else (after a redaction): it is what is still held about them.
    """
    row = _customer_row(session, shop, event)
    data: dict[str, Any] = {
        "shop": shop.domain,
        "requested_at": event.occurred_at.isoformat(),
        "data_request_id": event.data.get("data_request_id"),
        "orders_requested": event.data.get("orders_requested") or [],
    }
    if row is None:
        data.update(customer=None, orders=[], events=[])
    else:
        data.update(export_customer(session, shop, row.platform_id))
    addresses = {
        a.strip().lower()
        for a in (row.email if row else None, event.customer.email if event.customer else None)
        if a and a.strip()
    }
    keys = sorted(address_key(shop.id, address) for address in addresses)
    data["suppressions"] = (
        [
            {"address": HELD_AS, "reason": s.reason, "source": s.source, "created_at": s.created_at.isoformat()}
            for s in session.execute(
                select(Suppression)
                .where(Suppression.shop_id == shop.id, Suppression.email_hash.in_(keys))
                .order_by(Suppression.id)
            ).scalars()
        ]
        if keys
        else []
    )
    if row is not None:
        for name, section in SECTIONS.items():
            data[name] = section(session, shop, row)
    return row, json.loads(json.dumps(data, default=str))


def record_export(session: Unit, shop: Shop, event: ev.Event) -> int | None:
    """Store the export answering a data request (once per event); returns its id."""

    request_id = str(event.data.get("data_request_id") or "") or None
    if request_id:  # the same request delivered again (a new delivery id): one export
        existing = (
            session.execute(
                select(DataExport.id).where(DataExport.shop_id == shop.id, DataExport.request_id == request_id)
            )
            .scalars()
            .first()
        )
        if existing is not None:
            return existing
    row, data = build_export(session, shop, event)
    values = {
        "shop_id": shop.id,
        "customer_id": row.id if row else None,
        "event_id": event.id,
        "request_id": request_id,
        "data": data,
        "created_at": utcnow(),
    }
    export_id = session.insert_new(DataExport, values, ["event_id"], attach=False)
    if export_id is None:  # this event's export is stored already
        export_id = session.execute(select(DataExport.id).where(DataExport.event_id == event.id)).scalar_one()
    log.info(
        "data request export recorded", extra={"shop": shop.domain, "export_id": export_id, "found": row is not None}
    )
    return export_id


# ---- redaction beyond the ledger --------------------------------------------------------------------


def forget(session: Session, person: Person, keep_jobs: Iterable[str] = ()) -> dict[str, int]:
    """Remove what the ledger's redaction left elsewhere: archive, Redis, outbox; returns counts by place.

    Runs inside the redaction's transaction, before it commits: should the commit fail, the job is
    retried and finds the ledger's rows (and everything else) again. `keep_jobs` are the RQ jobs
    not to touch (the one running this), whose raw bodies their job still needs.
    """
    counts = {
        "archived": archive.forget(
            session,
            person.platform,
            person.shop,
            person.needles(),
            lambda row: archived_names(person, row),
            whole_shop=person.whole_shop,
        ),
        "redis": (effects.current().forget_in_redis or forget_in_redis)(get_redis(), person, set(keep_jobs)),
        "outbox": forget_messages(person),
    }
    log.info("redaction: copies removed beyond the ledger", extra={"shop": person.shop, **counts})
    return counts


def archived_names(person: Person, row: archive.WebhookDelivery) -> bool:
    """Whether an archived delivery names the person."""
    return delivery_names(
        person, row.platform, {"shop": row.shop, "topic": row.topic, "delivery_id": row.delivery_id}, row.body
    )


def delivery_names(person: Person, platform: str, delivery: dict[str, Any], body: bytes | str) -> bool:
    """Whether a raw delivery names the person: in its text, or in the canonical events its platform reads in it."""
    if delivery.get("shop") != person.shop or platform != person.platform:
        return False
    if person.whole_shop:
        return True
    raw = body.encode() if isinstance(body, str) else body
    text = raw.decode("utf-8", errors="replace")
    lowered = text.lower()
    if not person.mentioned_in(lowered):
        return False  # neither their address, phone, nor one of their ids is in it: nothing to parse
    if person.named_in(text):
        return True

    receiver = receiver_of(platform)
    if receiver is None:
        return False
    try:
        events = receiver.parse(
            Delivery.from_dict({k: delivery[k] for k in ("shop", "topic", "delivery_id", "key") if k in delivery}),
            orjson.loads(raw),
            raw,
        )
    except Exception:  # noqa: BLE001 - a body its parser refuses names nobody it could find
        return False
    return any(person.named_by(event) for event in events)


# -- Redis ---------------------------------------------------------------------------------------------

JOB_PREFIX = "rq:job:"
SCAN_BATCH = 500
_READ = {"string": "get", "list": "lrange", "set": "smembers", "zset": "zrange", "hash": "hgetall", "stream": "xrange"}


def forget_in_redis(connection: Any, person: Person, keep_jobs: set[str] | None = None) -> int:
    """Remove from Redis every job, body and value of the person's shop naming them; returns how many went.

    Every key is looked at (SCAN, in batches of three pipelined round trips): an RQ job about them is
    deleted with RQ (queue and registries too) along with its raw body; in any other value the
    smallest part naming them goes (a list's item, a hash's field, a set's member, a stream's entry, a
    string). A value that says it belongs to another shop (a JSON object's `shop`) is left alone.
    """
    keep = keep_jobs or set()
    removed = 0
    for batch in _batches(connection.scan_iter(count=SCAN_BATCH), SCAN_BATCH):
        with connection.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.type(key)
            kinds = [_text(kind) for kind in pipe.execute()]
        wanted = [(_text(key), kind) for key, kind in zip(batch, kinds, strict=True) if kind in _READ]
        with connection.pipeline(transaction=False) as pipe:
            for name, kind in wanted:  # the value, and what decides about it: a job's body, a body's job
                if kind in ("list", "zset"):
                    getattr(pipe, _READ[kind])(name, 0, -1)
                elif kind == "stream":
                    pipe.xrange(name)
                else:
                    getattr(pipe, _READ[kind])(name)
                job_id = _job_id(name, kind)
                if job_id is not None:
                    pipe.get(BODY_PREFIX + job_id)
                elif name.startswith(BODY_PREFIX):
                    pipe.exists(JOB_PREFIX + name[len(BODY_PREFIX) :])
                else:
                    pipe.echo("")
            read = pipe.execute()
        for (name, kind), value, beside in zip(wanted, read[0::2], read[1::2], strict=True):
            removed += _forget_in_key(connection, person, name, kind, value, beside, keep)
    return removed


def _job_id(name: str, kind: str) -> str | None:
    """The id of the RQ job whose hash this key is (`rq:job:<id>`, not its dependents' set and such)."""
    if kind == "hash" and name.startswith(JOB_PREFIX) and ":" not in name[len(JOB_PREFIX) :]:
        return name[len(JOB_PREFIX) :]
    return None


def _forget_in_key(
    connection: Any, person: Person, name: str, kind: str, value: Any, beside: Any, keep: set[str]
) -> int:
    job_id = _job_id(name, kind)
    if job_id is not None:
        if job_id in keep or not _job_names(person, value, beside):
            return 0
        _delete_job(connection, job_id)
        return 1
    if name.startswith(BODY_PREFIX) and (beside or name[len(BODY_PREFIX) :] in keep):
        return 0  # its job decides (a delivery's body says which shop it is for only through its job)
    if not value:
        return 0
    if not person.whole_shop and person.named_in(name):
        connection.delete(name)
        return 1
    if kind == "string":
        if _names(person, value):
            connection.delete(name)
            return 1
        return 0
    if kind == "list":
        gone = [item for item in value if _names(person, item)]
        for item in gone:
            connection.lrem(name, 0, item)
        return len(gone)
    if kind in ("set", "zset"):
        gone = [item for item in value if _names(person, item)]
        if gone:
            (connection.srem if kind == "set" else connection.zrem)(name, *gone)
        return len(gone)
    if kind == "hash":
        gone = [f for f, v in value.items() if (not person.whole_shop and _names(person, f)) or _names(person, v)]
        if gone:
            connection.hdel(name, *gone)
        return len(gone)
    gone = [entry for entry, fields in value if any(_names(person, part) for pair in fields.items() for part in pair)]
    if gone:
        connection.xdel(name, *gone)
    return len(gone)


def _names(person: Person, value: Any) -> bool:
    """Whether a stored value names the person (or, for a whole shop, says it belongs to it)."""
    text = _text(_inflate(value))
    try:
        decoded = orjson.loads(text) if text[:1] in ("{", "[") else None
    except orjson.JSONDecodeError:
        decoded = None
    shop = decoded.get("shop") if isinstance(decoded, dict) else None
    if person.whole_shop:
        return shop == person.shop
    if isinstance(shop, str) and shop and shop != person.shop:
        return False
    return person.named_in(text)


def _job_names(person: Person, fields: dict[bytes, bytes], body: bytes | None) -> bool:
    """Whether an RQ job concerns the person: a delivery or event of their shop naming them, or any field that does.

    Another shop's delivery or event is kept whatever it says.
    """
    text = "\n".join(_text(_inflate(value)) for value in fields.values())
    try:
        func, _instance, args, _kwargs = orjson.loads(_inflate(fields.get(b"data", b"")))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        func, args = None, []
    func = current_path(func) if isinstance(func, str) else None  # queued before an upgrade: its old name
    if func == PROCESS_DELIVERY and len(args) >= 2 and isinstance(args[1], dict):
        platform, delivery = args[0], args[1]
        if delivery.get("shop") != person.shop or platform != person.platform:
            return False
        return (
            person.whole_shop
            or person.named_in(text)
            or (body is not None and delivery_names(person, platform, delivery, body))
        )
    if func == PROCESS_EVENT and args and isinstance(args[0], dict):
        try:
            event = ev.Event.from_dict(args[0])
        except ValueError:
            return not person.whole_shop and person.named_in(text)
        if event.platform != person.platform or event.shop != person.shop:
            return False
        return person.named_by(event) or person.named_in(text)
    return not person.whole_shop and person.named_in(text)


def _delete_job(connection: Any, job_id: str) -> None:
    """Delete an RQ job with RQ (its queue entry, registries and results too), and its raw body."""

    try:
        Job.fetch(job_id, connection=connection, serializer=JSONSerializer).delete(remove_from_queue=True)
    except Exception:  # noqa: BLE001 - a job RQ can't read back: its hash goes all the same
        connection.delete(JOB_PREFIX + job_id)
    connection.delete(BODY_PREFIX + job_id)


def _inflate(value: Any) -> Any:
    """RQ keeps a job's data and exception zlib-compressed (Encore's enqueue writes it plain)."""
    if isinstance(value, bytes) and value[:1] == b"\x78":
        try:
            return zlib.decompress(value)
        except zlib.error:
            return value
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# -- outbox --------------------------------------------------------------------------------------------


def forget_messages(person: Person) -> int:
    """Have the email transport drop its copies of the messages to or about the person; returns how many.

    A transport that keeps copies (the file outbox) has `forget(addresses, keys)`; SMTP keeps none.
    """

    transport = get_transport()
    remove = getattr(transport, "forget", None)
    if remove is None:
        return 0
    return int(remove(addresses=() if person.whole_shop else sorted(person.emails), keys=sorted(person.messages)))
