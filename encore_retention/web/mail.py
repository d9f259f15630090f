"""`POST /webhooks/email/<provider>`: the sending services' delivery webhooks (bounces, complaints, deliveries).

The view every provider shares (`webhooks.mail`): size limit, the provider's own signature check, then the
events queued once under the provider's key for the worker (`encore_retention.jobs.process_mail_events`).
It never answers 500 for what a request holds: 400 malformed, 401 a signature that does not check out, 404 a
provider that does not exist or is not configured, 413 too large, 503 when Redis or the provider's
certificate can't be reached (the provider retries).
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, jsonify, request
from redis.exceptions import RedisError

from encore_retention.core.queue import PROCESS_MAIL_EVENTS, enqueue_once
from encore_retention.core.settings import get_settings
from encore_retention.webhooks import mail
from encore_retention.webhooks.base import Rejected

log = logging.getLogger("encore.webhooks.mail")

blueprint = Blueprint("mail_receivers", __name__)


@blueprint.post("/webhooks/email/<provider>")
def mail_webhook(provider: str):
    """Verify a sending service's delivery and queue its events."""
    found = mail.get_provider(provider)
    if found is None or not found.configured():
        abort(404)
    limit = get_settings().WEBHOOK_MAX_BYTES
    if (request.content_length or 0) > limit:
        return jsonify(error="too_large"), 413
    body = request.get_data(cache=True)
    try:
        received = found.receive(request.headers, body)
    except Rejected as exc:
        log.warning("mail webhook rejected", extra={"provider": provider, "reason": exc.reason, "status": exc.status})
        return jsonify(error=exc.reason, detail=exc.detail[:300]), exc.status
    except RedisError as exc:
        log.error("mail webhook: Redis unavailable", extra={"provider": provider, "error": type(exc).__name__})
        return jsonify(error="queue_unavailable"), 503
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a shape no check foresaw: still the body's fault
        log.warning(
            "mail webhook malformed", extra={"provider": provider, "error": f"{type(exc).__name__}: {exc}"[:300]}
        )
        return jsonify(error="malformed"), 400
    if not received.events:
        return jsonify(status=received.status), 200
    try:
        queued = enqueue_once(
            f"mail-{provider}-{received.key}",
            PROCESS_MAIL_EVENTS,
            (provider, [event.to_dict() for event in received.events]),
            f"mail {provider}",
        )
    except RedisError as exc:
        log.error("mail webhook: queue unavailable", extra={"provider": provider, "error": type(exc).__name__})
        return jsonify(error="queue_unavailable"), 503
    return jsonify(status="queued" if queued else "duplicate", events=len(received.events)), 200
