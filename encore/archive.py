"""The webhook archive: every accepted delivery kept for WEBHOOK_RETENTION_DAYS, and the rejected ones' reasons.

An accepted delivery is stored as it came (raw body, headers without their signatures, time), so
`encore replay` can send it through the receivers, the ledger and the flows again, and `encore export
webhooks` can write it to a JSON-lines file. A rejected delivery keeps only its reason, in a capped
Redis list for the admin page: no body, never a signature or a secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Index, Select, String, Text, delete, false, func, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from encore_retention.core.queue import get_redis
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Base, IdType, JSONType, UTCDateTime, utcnow

log = logging.getLogger(__name__)

REJECTED_KEY = "encore:webhooks:rejected"
# What is archived of a redaction's own delivery (outcome "redacted"): its record, not the body naming the person.
REDACTED_BODY = b"{}"
REJECTED_KEEP = 500
# Never stored: anything that authenticates a request (and each platform's own signature headers, which the
# receivers' view names: `Platform.signature_headers`).
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


class WebhookDelivery(Base):
    """One accepted webhook delivery, kept for replay."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_received", "received_at"),
        Index("ix_webhook_deliveries_shop", "platform", "shop"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    shop: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(128))
    delivery_id: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(32))
    event_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    headers: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_record(self) -> dict[str, Any]:
        """The JSON-lines form `encore export webhooks` writes and `encore replay` reads."""
        return {
            "platform": self.platform,
            "shop": self.shop,
            "topic": self.topic,
            "delivery_id": self.delivery_id,
            "received_at": self.received_at.isoformat(),
            "headers": self.headers,
            "body": self.body,
        }


def safe_headers(headers: Iterable[tuple[str, str]], secret: Iterable[str] = ()) -> dict[str, str]:
    """The request headers worth keeping: cookies, credentials and the `secret` ones (signatures) removed."""
    drop = SECRET_HEADERS.union(name.lower() for name in secret)
    return {name: value for name, value in headers if name.lower() not in drop}


def record_delivery(
    platform: str,
    shop: str,
    topic: str,
    delivery_id: str | None,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    outcome: str,
    event_ids: list[str],
    session: Session | None = None,
) -> None:
    """Keep an accepted delivery; a failure here is logged, never passed on (the event is already queued).

    With `session`, the row joins the caller's transaction (the worker archives a delivery together
    with the ledger's changes); otherwise it is written in a transaction of its own.
    """

    row = WebhookDelivery(
        platform=platform,
        shop=shop[:255],
        topic=topic[:128],
        delivery_id=(delivery_id or "")[:255] or None,
        outcome=outcome,
        event_ids=event_ids,
        headers=safe_headers(headers),
        body=body.decode("utf-8", errors="replace"),
        received_at=utcnow(),
    )
    if session is not None:
        session.add(row)
        return
    try:
        with session_scope() as own:
            own.add(row)
    except Exception as exc:  # noqa: BLE001 - the archive must never fail a delivery
        log.warning("webhook not archived", extra={"platform": platform, "topic": topic, "error": str(exc)[:200]})


# Text filters OR-ed in one statement at most: SQLite refuses an expression deeper than 1000, and a
# redaction of a customer with hundreds of orders has several filters per order.
NEEDLES_PER_QUERY = 100


def narrowed(query: Select, text: Any, needles: list[str]) -> Select:
    """`query` narrowed to the rows whose `text` holds one of `needles` (lower-case fragments), when few.

    Up to NEEDLES_PER_QUERY needles filter in the database (one LIKE each, in one query). More are
    not: the rows are then read once and the caller's Python check decides, since a redaction naming
    thousands of orders would otherwise scan the table once for every hundred of them.
    """
    if not needles:
        return query.where(false())
    if len(needles) > NEEDLES_PER_QUERY:
        return query
    return query.where(or_(*(text.contains(needle, autoescape=True) for needle in needles)))


def forget(
    session: Session,
    platform: str,
    shop: str,
    needles: list[str],
    names: Callable[[WebhookDelivery], bool],
    *,
    whole_shop: bool = False,
) -> int:
    """Delete a shop's archived deliveries that name a person (a redaction); returns how many.

    The bodies that may hold one of `needles` (lower-case fragments; see `narrowed`) are read once,
    and those `names` confirms are deleted. `whole_shop`: all of them.
    """
    query = select(WebhookDelivery).where(WebhookDelivery.platform == platform, WebhookDelivery.shop == shop)
    if whole_shop:
        doomed = [row.id for row in session.execute(query.execution_options(yield_per=200)).scalars()]
    else:
        found = narrowed(query, func.lower(WebhookDelivery.body), needles)
        doomed = [row.id for row in session.execute(found.execution_options(yield_per=200)).scalars() if names(row)]
    for start in range(0, len(doomed), 500):
        session.execute(
            delete(WebhookDelivery)
            .where(WebhookDelivery.id.in_(doomed[start : start + 500]))
            .execution_options(synchronize_session=False)
        )
    return len(doomed)


def record_rejection(
    platform: str,
    reason: str,
    status: int,
    detail: str,
    topic: str | None = None,
    shop: str | None = None,
    remote_addr: str | None = None,
    delivery_id: str | None = None,
) -> None:
    """Remember why a delivery was refused (the newest REJECTED_KEEP, in Redis; no body is kept).

    The platform's delivery id, when there is one, finds the delivery in the platform's own log.
    """

    entry = {
        "at": utcnow().isoformat(),
        "platform": platform,
        "reason": reason,
        "status": status,
        "detail": detail[:300],
        "topic": topic,
        "shop": (shop or "")[:255] or None,
        "remote_addr": remote_addr,
        "delivery_id": (delivery_id or "")[:255] or None,
    }
    try:
        with get_redis().pipeline() as pipe:
            pipe.lpush(REJECTED_KEY, json.dumps(entry))
            pipe.ltrim(REJECTED_KEY, 0, REJECTED_KEEP - 1)
            pipe.execute()
    except Exception as exc:  # noqa: BLE001 - Redis down: the 401/400 answer still goes out
        log.warning("rejection not recorded", extra={"platform": platform, "error": type(exc).__name__})


def rejections(limit: int = 100) -> list[dict[str, Any]]:
    """The newest rejected deliveries, newest first."""

    return [json.loads(item) for item in get_redis().lrange(REJECTED_KEY, 0, limit - 1)]


def retention() -> timedelta:
    """How long accepted deliveries are kept (WEBHOOK_RETENTION_DAYS)."""

    return timedelta(days=get_settings().WEBHOOK_RETENTION_DAYS)


def purge(now: datetime | None = None) -> int:
    """Cron job: delete the deliveries older than the retention period; returns how many."""

    cutoff = (now or utcnow()) - retention()
    with session_scope() as session:
        result = session.execute(delete(WebhookDelivery).where(WebhookDelivery.received_at < cutoff))
        removed = int(getattr(result, "rowcount", 0) or 0)
    if removed:
        log.info("purged %d archived webhooks older than %s", removed, cutoff.date().isoformat())
    return removed


def deliveries(
    since: datetime | None = None,
    until: datetime | None = None,
    platform: str | None = None,
    shop: str | None = None,
    topic: str | None = None,
) -> Iterator[WebhookDelivery]:
    """Archived deliveries, oldest first, filtered."""

    query = select(WebhookDelivery).order_by(WebhookDelivery.received_at, WebhookDelivery.id)
    if since is not None:
        query = query.where(WebhookDelivery.received_at >= since)
    if until is not None:
        query = query.where(WebhookDelivery.received_at < until)
    for column, value in (
        (WebhookDelivery.platform, platform),
        (WebhookDelivery.shop, shop),
        (WebhookDelivery.topic, topic),
    ):
        if value:
            query = query.where(column == value)
    with session_scope() as session:
        yield from session.execute(query.execution_options(yield_per=500)).scalars()


CRON_JOBS: list[dict[str, Any]] = [dict(func=purge, queue_name="maintenance", cron="17 3 * * *")]
