"""Date-based and periodic jobs through RQ's cron scheduler (`encore cron`, also inside `encore run`).

Rooms declare their jobs in a module-level `CRON_JOBS` list (see `CRON_MODULES`); each entry is the
keyword arguments of `CronScheduler.register` (`func`, `queue_name`, `cron` or `interval`, …).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from redis import Redis
from rq import cron_job_registry
from rq.cron import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL, CronJob, CronScheduler

from encore_retention.core.queue import MAINTENANCE, queue

log = logging.getLogger(__name__)

CRON_MODULES = (
    "encore_retention.flows.cron",
    "encore_retention.connectors.cron",
    "encore_retention.connectors.consent",
    "encore_retention.core.archive",
)


class JSONCronJob(CronJob):
    """A CronJob whose jobs use Encore's JSON serializer, like every other job the worker runs."""

    def enqueue(self, connection: Redis):
        if not self.func:
            raise ValueError("CronJob has no function to enqueue")
        with connection.pipeline() as pipeline:
            job = queue(self.queue_name, connection).enqueue(
                self.func, args=self.args, kwargs=self.kwargs, **self.job_options, pipeline=pipeline
            )
            assert job.enqueued_at is not None
            pipeline.zadd(self.job_history_key, {job.id: job.enqueued_at.timestamp()})
            pipeline.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipeline.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(self.name, pipeline, enqueue_timestamp=job.enqueued_at.timestamp())
            pipeline.execute()
        return job


class Scheduler(CronScheduler):
    """RQ's CronScheduler, registering JSON-serialized jobs."""

    def register(self, func, queue_name: str = MAINTENANCE, **options: Any) -> CronJob:  # type: ignore[override]
        job = JSONCronJob(queue_name=queue_name, func=func, **options)
        self._cron_jobs.append(job)
        log.info("cron job %s.%s registered on %s", func.__module__, func.__name__, queue_name)
        return job


def declared_jobs() -> list[dict[str, Any]]:
    """Every `CRON_JOBS` entry of the rooms that declare some."""
    jobs: list[dict[str, Any]] = []
    for name in CRON_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        jobs.extend(getattr(module, "CRON_JOBS", []))
    return jobs


def build_scheduler(connection: Redis) -> Scheduler:
    """A scheduler with every declared job registered."""
    scheduler = Scheduler(connection=connection)
    for spec in declared_jobs():
        scheduler.register(**spec)
    return scheduler
