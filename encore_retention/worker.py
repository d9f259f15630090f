"""The RQ worker with its scheduler: events -> ledger -> flows, and the delayed steps of flow runs.

`python worker.py` (the Procfile's `worker`) and `encore worker` run the same thing.

RQ's workers, as they come, break Encore's promises in a few places; `Resilient` mends them:
- a job is taken with LMOVE from every queue (`ReliableQueue`), and one taken but never started
  (the worker died in between) is put back on its queue within seconds (`requeue_stranded`);
- a SimpleWorker sends heartbeats while a job runs, so a killed worker's job is known abandoned
  (and retried) in under a minute instead of after the job's whole timeout;
- the scheduler (delayed jobs, retries, waits) is looked after every few seconds: a lock left by
  a scheduler that stopped beating (its worker was killed) is broken, and a scheduler process
  that died (Redis went away) is started again, so scheduled work resumes within seconds;
- a Redis outage is ridden out with backoff instead of quitting;
- SIGTERM finishes the current job, then stops (RQ's warm shutdown);
- a job and its delivery's raw body are read in one round trip, and the body is deleted in the
  transaction that records the job's success.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.serializers import JSONSerializer
from rq.utils import as_text, utcparse
from rq.utils import now as rq_now
from rq.worker import BaseWorker

from encore_retention.connectors.base import platforms
from encore_retention.core import logs
from encore_retention.core.health import redis_persistence
from encore_retention.core.queue import (
    QUEUES,
    EncoreJob,
    ReliableQueue,
    collect_finished_bodies,
    finished_bodies,
    get_redis,
    queue,
    requeue_stranded,
)
from encore_retention.core.store import migrate
from encore_retention.flows.loader import registry

log = logging.getLogger("encore.worker")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
MAINTENANCE_SECONDS = 10  # registries cleaned, abandoned and stranded jobs recovered (RQ's default: 600)
SCHEDULER_CHECK_SECONDS = 2  # how often a worker makes sure some scheduler is alive
SCHEDULER_STALE_SECONDS = 10  # a scheduler lock whose holder has not beaten for this long is broken
HEARTBEAT_SECONDS = 10  # a running job's heartbeat; it is abandoned 30 s after the last one
BOOKKEEPING_SECONDS = 1.0  # RQ's worker heartbeat and suspension check, at most this often
DEQUEUE_SECONDS = 5  # the longest a worker blocks for a job before its own upkeep
BACKOFF_MAX = 5.0

T = TypeVar("T")


class Resilient(BaseWorker):
    """What Encore's workers add to RQ's (see the module's docstring); mixed into SimpleWorker and Worker."""

    queue_class = ReliableQueue
    job_class = EncoreJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_SECONDS)
        super().__init__(*args, **kwargs)
        self._scheduler_checked = 0.0
        self._burst = False
        self._beaten = self._suspension_checked = -BOOKKEEPING_SECONDS
        self._state_written: str | None = None

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_SECONDS

    # -- riding out Redis outages --------------------------------------------------------------------
    def _through_outage(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, again and again with backoff while Redis can't be reached (a stop request ends it)."""
        delay = 0.5
        while True:
            try:
                return call()
            except REDIS_DOWN as exc:
                if self._stop_requested:
                    raise StopRequested() from exc
                log.warning("Redis unreachable (%s: %s); worker waits %.1f s", what, type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    # -- RQ's bookkeeping, at most once a second ---------------------------------------------------------
    # RQ beats for the worker three times per job (three round trips each), writes its idle state twice
    # and checks for `rq suspend` once: about half of a job's Redis round trips. A worker's key lives
    # for minutes, so a beat and a suspension check once a second say the same, and an unchanged state
    # needs no write.
    def check_for_suspension(self, burst: bool) -> None:
        now = time.monotonic()
        if now - self._suspension_checked < BOOKKEEPING_SECONDS:
            return
        self._suspension_checked = now
        self._through_outage("suspension check", lambda: super(Resilient, self).check_for_suspension(burst))

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # only queues commands
            return super().heartbeat(timeout, pipeline)
        now = time.monotonic()
        if timeout is None and now - self._beaten < BOOKKEEPING_SECONDS:
            return
        self._through_outage("heartbeat", lambda: super(Resilient, self).heartbeat(timeout))
        self._beaten = now

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == self._state_written:
            self._state = state
            return
        super().set_state(state, pipeline)
        self._state_written = state

    def execute_job(self, job: Any, queue: Any) -> None:
        collect_finished_bodies(True)
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            # The job's end could not be recorded: it stays registered as started, stops beating, and
            # is retried as abandoned (its steps are idempotent) once Redis is back.
            log.error("Redis went away while job %s ran (%s); it will be retried", job.id, type(exc).__name__)
            self._through_outage("after a job", lambda: self.connection.ping())
        finally:
            collect_finished_bodies(False)

    def handle_execution_ended(self, job: Any, queue: Any, heartbeat_ttl: int) -> None:
        """The job's end time, without RQ's own round trip to stamp its hash's `last_heartbeat`.

        RQ writes that stamp between the job's return and the transaction that records its outcome;
        nothing reads it (abandoned jobs are found through the started registry), and the outcome's
        transaction follows at once.
        """
        job.ended_at = job.last_heartbeat = rq_now()

    # -- a delivery's raw body goes with its job's success, in the same transaction ----------------------
    def cleanup_execution(self, job: Any, pipeline: Any, execution: Any = None) -> None:
        bodies = finished_bodies()
        if bodies:
            pipeline.delete(*bodies)
        super().cleanup_execution(job, pipeline, execution)

    def handle_job_failure(self, *args: Any, **kwargs: Any) -> None:
        finished_bodies().clear()  # a failed job keeps its body for the retry
        super().handle_job_failure(*args, **kwargs)

    def handle_job_retry(self, *args: Any, **kwargs: Any) -> None:
        finished_bodies().clear()
        super().handle_job_retry(*args, **kwargs)

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN as exc:
            log.warning("could not record the worker's stop in Redis: %s", type(exc).__name__)

    # -- upkeep: registries, stranded jobs, the scheduler -------------------------------------------------
    @property
    def should_run_maintenance_tasks(self) -> bool:
        return super().should_run_maintenance_tasks or self._scheduler_due()

    def run_maintenance_tasks(self) -> None:
        def upkeep() -> None:
            if self._scheduler_due():
                self.ensure_scheduler()
            if super(Resilient, self).should_run_maintenance_tasks:
                for q in self.queues:
                    requeue_stranded(q)
                self.clean_registries()
                self.clean_group_registries()

        self._through_outage("maintenance", upkeep)

    def _scheduler_due(self) -> bool:
        return (
            self.scheduler is not None
            and not self._burst
            and not self._stop_requested
            and time.monotonic() - self._scheduler_checked >= SCHEDULER_CHECK_SECONDS
        )

    def _start_scheduler(self, burst: bool = False, *args: Any, **kwargs: Any) -> None:
        self._burst = burst  # a burst worker moves the due jobs once, and starts no scheduler process

        def start() -> None:
            break_stale_scheduler_locks(self.connection, [q.name for q in self.queues])
            self.scheduler = Scheduler(
                self.queues,
                connection=self.connection,
                serializer=self.serializer,
                logging_level=self.log.level or logging.INFO,
            )
            self.scheduler.acquire_locks()
            if not self.scheduler.acquired_locks:
                return
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()

        self._through_outage("scheduler start", start)
        self._scheduler_checked = time.monotonic()

    def ensure_scheduler(self) -> None:
        """Start this worker's scheduler when no live scheduler holds the queues' locks."""
        self._scheduler_checked = time.monotonic()
        scheduler = self.scheduler
        if scheduler is None:
            return
        names = [q.name for q in self.queues]
        running = scheduler._process is not None and scheduler._process.is_alive()
        holders = self.connection.mget([RQScheduler.get_locking_key(name) for name in names])
        if running and all(holder is not None and as_text(holder) == scheduler.name for holder in holders):
            return
        if break_stale_scheduler_locks(self.connection, names, holders) or not running:
            if running:  # it holds some locks but not all: start it again, to take them all
                self.stop_scheduler()
                scheduler.release_locks()
            if scheduler.acquire_locks(auto_start=True):
                log.info("scheduler started for %s", ", ".join(sorted(scheduler.acquired_locks)))

    # -- taking and running a job -------------------------------------------------------------------
    def prepare_job_execution(self, job: Any, remove_from_intermediate_queue: bool = False) -> None:
        """Register the job as started and take it out of its intermediate list, in one transaction."""
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        """A running job is abandoned (and retried) when its heartbeats stop for this long."""
        return self.job_monitoring_interval + 30


class Scheduler(RQScheduler):
    """RQ's scheduler (a child process of the worker), which also stops when its worker is gone.

    A worker killed outright would otherwise leave its scheduler running on, orphaned; stopping,
    it releases its locks, and another worker's scheduler takes over at once.
    """

    def work(self) -> None:
        self._worker_pid = os.getppid()
        super().work()

    def heartbeat(self) -> None:
        if os.getppid() != self._worker_pid:
            self.log.warning("the worker that started this scheduler is gone; stopping")
            self._stop_requested = True
        super().heartbeat()


def break_stale_scheduler_locks(connection: Any, queue_names: list[str], holders: list[Any] | None = None) -> int:
    """Release scheduler locks whose holder has stopped beating; returns how many were released.

    A scheduler refreshes its lock and its `last_heartbeat` every second; RQ lets a lock live 61 s,
    so a worker killed with its scheduler would leave delayed work stalled for that long (and RQ
    tries again only every 10 minutes). A holder silent for SCHEDULER_STALE_SECONDS is dead.
    """
    keys = [RQScheduler.get_locking_key(name) for name in queue_names]
    if holders is None:
        holders = connection.mget(keys)
    released = 0
    now = rq_now()
    for key, holder in zip(keys, holders, strict=True):
        if holder is None:
            continue
        name = as_text(holder)
        beat = connection.hget(SCHEDULER_KEY_TEMPLATE % name, "last_heartbeat")
        if beat is not None:
            age = (now - utcparse(beat.decode())).total_seconds()
            if age < SCHEDULER_STALE_SECONDS:
                continue
        if release_lock(connection, key, name):
            log.warning(
                "released the scheduler lock %s of scheduler %s, silent for %s",
                key,
                name,
                "ever" if beat is None else f"{age:.0f} s",
            )
            released += 1
    return released


class EncoreWorker(Resilient, SimpleWorker):
    """RQ's SimpleWorker (jobs in-process), with Encore's upkeep and a heartbeat while a job runs.

    One thread per worker, started with its first job, beats for the job running at the time (RQ's
    forking worker does the same from its parent process); a job costs it two attribute writes.
    """

    _running: tuple[Any, float] | None = None
    _beater: threading.Thread | None = None

    def execute_job(self, job: Any, queue: Any) -> None:
        if self._beater is None:
            self._beater = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)
            self._beater.start()
        self._running = (job, time.monotonic())
        try:
            super().execute_job(job, queue)
        finally:
            self._running = None

    def _beat(self) -> None:
        interval = self.job_monitoring_interval
        while True:
            time.sleep(interval / 2)
            running = self._running
            if running is None or time.monotonic() - running[1] < interval / 2:
                continue
            try:
                execution = next(iter(list(self.executions.values())), None)
                if execution is not None and self._running is running:
                    self.maintain_heartbeats(running[0], execution)
            except Exception as exc:  # noqa: BLE001 - a missed beat is tried again; the job goes on
                log.debug("heartbeat of job %s failed: %s", running[0].id, exc)


class EncoreForkWorker(Resilient, Worker):
    """RQ's forking Worker (each job in a child process), with Encore's upkeep."""


WORKER_CLASSES: dict[str, type[BaseWorker]] = {"simple": EncoreWorker, "fork": EncoreForkWorker}


def build_worker(name: str | None = None, worker_class: str | None = None) -> BaseWorker:
    """A worker on every Encore queue, JSON-serialized.

    `EncoreWorker` (the default) runs jobs in-process, reusing database connections; set
    ENCORE_WORKER_CLASS=fork for RQ's forking worker, which isolates each job in a child process.
    """
    cls = WORKER_CLASSES[worker_class or os.environ.get("ENCORE_WORKER_CLASS", "simple")]
    connection = get_redis()
    return cls([queue(q, connection) for q in QUEUES], connection=connection, serializer=JSONSerializer, name=name)


def settle() -> None:
    """After start-up: keep the garbage collector off what was loaded (`gc.freeze`).

    Modules, the flows, the store's metadata and compiled templates live as long as the process;
    frozen, they are no longer walked by every full collection while jobs run.
    """
    gc.collect()
    gc.freeze()


def main(burst: bool = False) -> None:
    """Migrate the store, then work until stopped (with RQ's scheduler for delayed steps)."""
    logs.setup()
    migrate()

    loaded = registry()  # a bad flow file is reported now, and skipped while the others run
    log.info("flows loaded", extra={"flows": sorted(loaded.flows), "problems": len(loaded.problems)})
    # The platforms' plug-ins, loaded once before any job (a forking worker's jobs inherit them); a broken one
    # is reported now, and left out while the others work.
    log.info("platforms loaded", extra={"platforms": sorted(platforms())})
    worker = build_worker()

    warning = redis_persistence(worker.connection)
    if warning:
        log.warning("Redis may lose queued work: %s", warning)
    settle()
    worker.work(burst=burst, with_scheduler=True, logging_level="INFO")


if __name__ == "__main__":
    main()
