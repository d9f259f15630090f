"""`/healthz` (Redis, the database, its schema at head; Redis durability warnings) and `/metrics`."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify

from encore_retention.core import health, queue
from encore_retention.core.metrics import exposition

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    failing = check(current_app.extensions["encore.schema"])
    found = warnings() if "redis" not in failing else {}
    status = 503 if failing else 200
    return jsonify(status="ok" if not failing else "failing", failing=failing, warnings=found), status


@blueprint.get("/metrics")
def metrics():
    body, content_type = exposition()
    return Response(body, content_type=content_type)


PERSISTENCE_TTL_SECONDS = 60.0
_persistence: tuple[float, int, str | None] | None = None  # (checked until, Redis generation, warning)


def check(schema: health.SchemaWatch | None = None) -> dict[str, str]:
    """The failing parts with a short reason; empty when all is well."""
    failing: dict[str, str] = {}
    reason = health.check_redis()
    if reason:
        failing["redis"] = reason
    reason = health.check_database()
    if reason:
        failing["database"] = reason
    elif schema is not None:
        problem = schema.ensure()
        if problem:
            failing["schema"] = problem
    return failing


def warnings() -> dict[str, str]:
    """What is not failing but puts the promises at risk (Redis that may lose queued webhooks)."""
    warning = persistence()
    return {"redis_persistence": warning} if warning else {}


def persistence() -> str | None:
    """`encore.health.redis_persistence` of the queue's Redis, asked at most once a minute."""
    global _persistence
    now = time.monotonic()
    if _persistence is None or _persistence[0] <= now or _persistence[1] != queue.generation:
        _persistence = (now + PERSISTENCE_TTL_SECONDS, queue.generation, health.redis_persistence(queue.get_redis()))
    return _persistence[2]
