"""The receivers' blueprint: `POST /webhooks/<platform>`, the view every platform's receiver shares."""

from __future__ import annotations

import logging

from flask import Blueprint, Request, abort, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from encore_retention.connectors.base import Platform, platforms
from encore_retention.core import archive
from encore_retention.core.events import MALFORMED_ERRORS, problem
from encore_retention.core.queue import enqueue_delivery
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import utcnow
from encore_retention.webhooks import metrics
from encore_retention.webhooks.base import Delivery, Rejected, parse_json

log = logging.getLogger("encore.webhooks")

blueprint = Blueprint("receivers", __name__)


@blueprint.post("/webhooks/<platform>")
def webhook(platform: str):
    found = platforms().get(platform)
    if found is None:
        abort(404)
    return receive(found)


def _read_body(req: Request) -> bytes:
    limit = get_settings().WEBHOOK_MAX_BYTES
    if req.content_length is not None and req.content_length > limit:
        raise Rejected(413, "too_large", f"body over {limit} bytes")
    try:
        body = req.get_data(cache=True)
    except RequestEntityTooLarge as exc:
        raise Rejected(413, "too_large", f"body over {limit} bytes") from exc
    if len(body) > limit:
        raise Rejected(413, "too_large", f"body over {limit} bytes")
    return body


def receive(entry: Platform):
    """The Flask view body shared by every platform's receiver.

    It does the least that makes a delivery safe to acknowledge: size, signature, JSON, the event
    key, and a trial run of the platform's `parse`, so that a value the event model refuses (out of
    range for the store, of the wrong type) is answered 400 now rather than failing in the worker
    after a 200. The raw body and the delivery go to Redis in one transaction with the RQ job; the
    worker normalises them again (`encore.jobs.process_delivery`), so a 200 costs little more than
    the signature check, the parse (about 0.1 ms of CPU for a 15 KB order) and two Redis round trips.
    """
    platform, receiver = entry.name, entry.receiver
    delivery: Delivery | None = None
    try:
        body = _read_body(request)
        delivery = receiver.verify(request.headers, body)
        if delivery.ping:
            metrics.received(platform, "ping")
            return jsonify(status="ok"), 200
        payload = parse_json(request.mimetype, body)
        try:
            key = receiver.key(delivery, payload, body)
            if key is not None:  # normalised now only to be checked: the worker's run of it must not fail
                delivery.key = key
                receiver.parse(delivery, payload, body)
        except MALFORMED_ERRORS as exc:
            raise Rejected(400, "malformed", f"{delivery.topic}: {problem(exc)}") from exc
    except Rejected as exc:
        metrics.received(platform, exc.reason)
        archive.record_rejection(
            platform,
            exc.reason,
            exc.status,
            exc.detail,
            delivery.topic if delivery else None,
            delivery.shop if delivery else None,
            request.remote_addr,
            delivery.delivery_id if delivery else None,
        )
        log.warning(
            "webhook rejected",
            extra={
                "platform": platform,
                "reason": exc.reason,
                "status": exc.status,
                "detail": exc.detail[:300],
                "topic": delivery.topic if delivery else None,
            },
        )
        return jsonify(error=exc.reason, detail=exc.detail[:300]), exc.status

    if key is None:
        metrics.received(platform, "ignored")
        log.info(
            "webhook topic not handled",
            extra={"platform": platform, "topic": delivery.topic, "delivery_id": delivery.delivery_id},
        )
        return jsonify(status="ignored", topic=delivery.topic), 200
    delivery.received_at = utcnow().isoformat()
    delivery.http_headers = archive.safe_headers(request.headers.items(), entry.signature_headers)
    try:
        queued = enqueue_delivery(platform, delivery.to_dict(), body, key)
    except RedisError as exc:
        metrics.received(platform, "queue_unavailable")
        log.error(
            "queue unavailable; answering 503 so the platform retries",
            extra={"platform": platform, "topic": delivery.topic, "error": type(exc).__name__},
        )
        return jsonify(error="queue_unavailable"), 503
    status = "queued" if queued else "duplicate"
    metrics.received(platform, status)
    log.debug(
        "webhook %s",
        status,
        extra={"platform": platform, "topic": delivery.topic, "delivery_id": delivery.delivery_id, "event_id": key},
    )
    return jsonify(status=status, events=[key]), 200
