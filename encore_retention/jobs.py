"""RQ jobs of the ingest pipeline: module-level functions that take JSON and are idempotent."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from rq import get_current_job
from sqlalchemy.exc import DataError

from encore_retention.connectors.base import get_platform
from encore_retention.connectors.consent import queue_write_backs
from encore_retention.connectors.privacy import forget, record_export
from encore_retention.core import archive, bounces, logs
from encore_retention.core.events import MALFORMED_ERRORS, Event, EventType, parse_datetime, problem
from encore_retention.core.metrics import EVENTS_PROCESSED, JOB_LATENCY
from encore_retention.core.queue import delivery_body, forget_delivery_body
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import LedgerResult, apply_event
from encore_retention.core.store.models import utcnow
from encore_retention.flows.engine import EventNotCommitted, handle_event
from encore_retention.webhooks import mail
from encore_retention.webhooks.base import Delivery

log = logging.getLogger(__name__)


def process_event(data: dict[str, Any]) -> dict[str, Any]:
    """Apply an event to the ledger, then hand it to the flow engine.

    Safe to run twice: the ledger ignores an event id it has seen, and the flow engine keys its runs
    and side effects, so a retried job neither double-counts an order nor sends twice.
    """
    return _apply(Event.from_dict(data))


def _apply(event: Event, archived: tuple[str, Delivery, bytes] | None = None) -> dict[str, Any]:
    with logs.bind(event_id=event.id, event_type=event.type.value, shop=event.shop):
        try:
            result, customer_id = _apply_once(event, archived, defer_commit=True)
        except EventNotCommitted as exc:  # nothing of it was kept: once more, committing before the runs act
            log.warning(
                "a flow run failed before the event was committed; applying it again", extra={"error": str(exc)[:300]}
            )
            result, customer_id = _apply_once(event, archived, defer_commit=False)
    EVENTS_PROCESSED.labels(type=event.type.value, new=str(result.new).lower()).inc()
    if result.new:
        JOB_LATENCY.labels(type=event.type.value).observe(max(0.0, (utcnow() - event.received_at).total_seconds()))
    return {"event": event.id, "type": event.type.value, "new": result.new, "customer_id": customer_id}


def _apply_once(
    event: Event, archived: tuple[str, Delivery, bytes] | None, *, defer_commit: bool
) -> tuple[LedgerResult, int | None]:
    """The ledger, the archive and the flows for one event, in one transaction (see `handle_event`); the ledger's
    answer and the customer's id (read while the session is open: a failed run's rollback expires the row)."""

    with session_scope() as session:
        result = apply_event(session, event)
        if result.new and result.shop is not None and event.type == EventType.CUSTOMER_DATA_REQUEST:
            record_export(session, result.shop, event)
        customer_id = result.customer.id if result.customer else None
        log.info("event applied to the ledger", extra={"new": result.new, "customer_id": customer_id})
        if archived is not None and result.new and not (result.redacted and result.redacted.whole_shop):
            platform, delivery, body = archived
            outcome = "queued"
            if result.redacted is not None:  # a redaction's own body names whom it forgets: only its record stays
                body, outcome = archive.REDACTED_BODY, "redacted"
            archive.record_delivery(
                platform,
                delivery.shop,
                delivery.topic,
                delivery.delivery_id,
                delivery.http_headers.items(),
                body,
                outcome,
                [event.id],
                session=session,
            )
        if result.redacted is not None:
            forget(session, result.redacted, keep_jobs=_running_jobs(event))
        handle_event(
            event,
            shop=result.shop,
            customer=result.customer,
            new=result.new,
            session=session,
            defer_commit=defer_commit,
        )
    return result, customer_id


def _running_jobs(event: Event) -> set[str]:
    """The RQ jobs a redaction must leave alone: the one running it (its raw body is still needed)."""

    job = get_current_job()
    return {event.id} | ({job.id} if job is not None else set())


def process_delivery(platform: str, data: dict[str, Any]) -> dict[str, Any]:
    """Normalise a queued webhook delivery into canonical events, archive it, and apply each event.

    The receiver ran the same parser before its 200, so a refusal here is rare (a delivery queued
    before an upgrade, or by a parser changed since). A data error fails the same way on every
    attempt, so it is recorded as rejected (the admin page's rejected webhooks, the log) and not
    retried: a delivery the parser refuses, or an event whose values the database refuses (the
    delivery's other events are still applied). Anything else, such as Redis or the database not
    answering, fails the job and RQ retries it.
    """
    delivery = Delivery.from_dict(data)
    key = delivery.key or ""
    body = delivery_body(key)
    if body is None:
        raise LookupError(f"the body of delivery {key} is no longer in Redis")

    try:
        events = get_platform(platform).receiver.parse(delivery, orjson.loads(body), body)
    except MALFORMED_ERRORS as exc:
        return _reject(platform, delivery, problem(exc))
    received = parse_datetime(delivery.received_at)
    results = []
    for event in events:
        if received is not None:
            event.received_at = received
        try:
            results.append(_apply(event, (platform, delivery, body)))
        except DataError as exc:  # nothing of this event was kept: its transaction rolled back
            reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]  # no SQL, no values
            results.append(
                _reject(
                    platform, delivery, f"the database refused a value: {reason[:200]}", event_id=event.id, forget=False
                )
            )
    forget_delivery_body(key)
    return results[0] if len(results) == 1 else {"event": key, "results": results}


def _reject(
    platform: str, delivery: Delivery, why: str, *, event_id: str | None = None, forget: bool = True
) -> dict[str, Any]:
    """Record a delivery (or one of its events) the worker can't take, so that it is not retried."""
    key = delivery.key or ""
    detail = f"{delivery.topic}: {why}"
    archive.record_rejection(
        platform, "malformed", 400, detail, delivery.topic, delivery.shop, delivery_id=delivery.delivery_id
    )
    log.error(
        "delivery could not be normalised",
        extra={"platform": platform, "topic": delivery.topic, "event_id": event_id or key, "error": why[:300]},
    )
    if forget:
        forget_delivery_body(key)
    return {"event": event_id or key, "rejected": why[:300]}


def process_mail_events(provider: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply a sending service's delivery events (`webhooks.mail`): bounces and complaints suppress, deliveries reset
    the soft-bounce count; then queue the consent write-backs of the suppressions made.

    Safe to run twice: an address already suppressed is left as it is; the receiver queues each delivery once.
    """
    changes: list[int] = []
    done: dict[str, int] = {}
    with session_scope() as session:
        for data in events:
            event = mail.MailEvent.from_dict(data)
            outcome = MAIL_EVENT_RULES[event.kind](session, event)
            changes.extend(outcome.changes)
            done[event.kind] = done.get(event.kind, 0) + 1
    queued = queue_write_backs(changes)
    log.info("mail events applied", extra={"provider": provider, "kinds": done, "suppressed": len(changes)})
    return {"provider": provider, "events": done, "suppressed": len(changes), "write_backs": queued}


def _hard_bounce(session: Any, event: mail.MailEvent) -> bounces.Outcome:
    return bounces.hard_bounce(session, event.recipient, event.sender, source=event.provider, detail=event.detail)


def _complaint(session: Any, event: mail.MailEvent) -> bounces.Outcome:
    return bounces.hard_bounce(
        session, event.recipient, event.sender, reason=bounces.COMPLAINED, source=event.provider, detail=event.detail
    )


def _soft_bounce(session: Any, event: mail.MailEvent) -> bounces.Outcome:
    return bounces.soft_bounce(session, event.recipient, event.sender, source=event.provider, detail=event.detail)


def _delivered(session: Any, event: mail.MailEvent) -> bounces.Outcome:
    return bounces.delivered(session, event.recipient, event.sender)


MAIL_EVENT_RULES = {
    mail.HARD_BOUNCE: _hard_bounce,
    mail.COMPLAINT: _complaint,
    mail.SOFT_BOUNCE: _soft_bounce,
    mail.DELIVERED: _delivered,
}
