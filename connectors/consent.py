"""Consent back to the store: each withdrawal (`encore.consent.withdraw`) written to the platform by an RQ job.

`queue_write_backs(ids)` queues one `write_back(change_id)` job per change, after the change is committed,
with the change's id in the job id. The job is idempotent: a change whose write-back is finished is left as
it is, and the connectors' `withdraw_email_consent` reads the platform's state before changing it. A 429 or
5xx makes one attempt per run (`connectors.http.one_attempt`) and RQ's `Retry` is the backoff; each attempt
and its answer are noted on the change, which the customer's timeline shows. When Redis can't take the job,
the change stays `pending` and `requeue_pending` (every few minutes, from `encore cron`) queues it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from rq import Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import select

from encore_retention.connectors.base import PlatformError, get_connector
from encore_retention.connectors.http import one_attempt
from encore_retention.core import consent
from encore_retention.core.metrics import platform_error
from encore_retention.core.queue import FLOWS, MAINTENANCE, get_redis, queue
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import ConsentChange, Customer, Shop, utcnow
from encore_retention.core.store.unit import Unit

log = logging.getLogger(__name__)

WRITE_BACK = "encore_retention.connectors.consent.write_back"
# 30 s, 2 min, 10 min, 30 min, 1 h, 3 h: a platform down for an afternoon still hears of it.
WRITEBACK_RETRY = Retry(max=6, interval=[30, 120, 600, 1800, 3600, 3 * 3600])
REQUEUE_AFTER = timedelta(minutes=5)
LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def job_id(change_id: int) -> str:
    """The RQ job id of a change's write-back: one job per change."""
    return f"consent-writeback-{int(change_id)}"


def queue_write_backs(change_ids: Iterable[int]) -> int:
    """Queue the write-back of each committed change; returns how many were queued.

    Never raises for Redis: the local suppression already holds, and `requeue_pending` retries later.
    """
    queued = 0
    for change_id in change_ids:
        try:
            queue(FLOWS).enqueue_call(
                WRITE_BACK,
                args=(int(change_id),),
                job_id=job_id(change_id),
                retry=WRITEBACK_RETRY,
                result_ttl=600,
                failure_ttl=30 * 24 * 3600,
                description=f"consent write-back {change_id}",
            )
            queued += 1
        except RedisError as exc:
            log.warning("consent write-back not queued yet", extra={"change": change_id, "error": type(exc).__name__})
    return queued


def write_back(change_id: int) -> dict[str, Any]:
    """RQ job: tell the change's store that the customer withdrew consent; notes the attempt and its answer."""
    with session_scope() as session:
        change = session.get(ConsentChange, change_id)
        if change is None:  # its customer was redacted since: nothing left to write
            return {"change": change_id, "writeback": "gone"}
        if change.writeback in consent.FINISHED:
            return consent.summary(change)
        customer = _customer(session, change)
        state, detail = consent.writeback_plan(customer)
        shop = session.get(Shop, change.shop_id)
        if state == consent.SKIPPED or customer is None:
            consent.note_writeback(session, change, consent.SKIPPED, detail, attempt=False)
        elif shop is None or not shop.active:
            consent.note_writeback(session, change, consent.SKIPPED, "the store is not connected", attempt=False)
        else:
            _attempt(session, change, shop, customer)
        return consent.summary(change)


def _customer(session: Unit, change: ConsentChange) -> Customer | None:
    """The change's customer; for a change made by link (the hash only), found now and linked, consent set to no."""
    if change.customer_id is not None:
        return session.get(Customer, change.customer_id)
    customer = consent.customer_by_key(session, change.shop_id, change.email_hash)
    if customer is not None:
        change.customer_id = customer.id
        if customer.email_consent is not False:
            customer.email_consent = False
            customer.consent_updated_at = utcnow()
    return customer


def _attempt(session: Unit, change: ConsentChange, shop: Shop, customer: Customer) -> None:
    """One call to the platform; a transient failure is noted and committed, then raised for RQ to retry."""
    try:
        with one_attempt():
            answer = get_connector(shop).withdraw_email_consent(customer.platform_id)
    except NotImplementedError as exc:
        consent.note_writeback(session, change, consent.SKIPPED, str(exc), attempt=False)
    except PlatformError as exc:
        platform_error(shop.platform, exc)
        if exc.transient and not _last_attempt():
            consent.note_writeback(session, change, consent.PENDING, f"will retry: {exc.message}", attempt=True)
            session.commit()
            raise
        consent.note_writeback(session, change, consent.FAILED, exc.message, attempt=True)
        log.error("consent not written back", extra={"change": change.id, "error": exc.message[:300]})
    else:
        consent.note_writeback(session, change, consent.DONE, answer, attempt=True)
        log.info("consent written back", extra={"change": change.id, "platform": shop.platform})


def _last_attempt() -> bool:
    """Whether the running job has no retry left (outside RQ: not, so the error reaches the caller)."""
    job = get_current_job()
    return job is not None and not job.retries_left


def requeue_pending(now: Any = None) -> int:
    """Cron job: queue again the write-backs still pending after REQUEUE_AFTER whose job is gone; returns how many."""
    cutoff = (now or utcnow()) - REQUEUE_AFTER
    with session_scope() as session:
        ids = list(
            session.execute(
                select(ConsentChange.id)
                .where(ConsentChange.writeback == consent.PENDING, ConsentChange.created_at < cutoff)
                .order_by(ConsentChange.id)
                .limit(1000)
            ).scalars()
        )
    lost = [change_id for change_id in ids if not _job_alive(change_id)]
    return queue_write_backs(lost)


def _job_alive(change_id: int) -> bool:
    try:
        status = Job.fetch(job_id(change_id), connection=get_redis(), serializer=JSONSerializer).get_status()
    except NoSuchJobError:
        return False
    return status in LIVE


CRON_JOBS = [dict(func=requeue_pending, queue_name=MAINTENANCE, interval=5 * 60)]
