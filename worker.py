"""The RQ worker with its scheduler: events -> ledger -> flows, and the delayed steps of flow runs.

`python worker.py` (the Procfile's `worker`) and `encore worker` run the same thing.
"""

from __future__ import annotations

import gc
import logging
import os

from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from encore import logs
from encore.queue import QUEUES, get_redis, queue
from encore.store import migrate

log = logging.getLogger("encore.worker")

WORKER_CLASSES: dict[str, type[BaseWorker]] = {"simple": SimpleWorker, "fork": Worker}


def build_worker(name: str | None = None, worker_class: str | None = None) -> BaseWorker:
    """A worker on every Encore queue, JSON-serialized.

    `SimpleWorker` (the default) runs jobs in-process, reusing database connections; set
    ENCORE_WORKER_CLASS=fork for RQ's forking worker, which isolates each job in a child process.
    """
    cls = WORKER_CLASSES[worker_class or os.environ.get("ENCORE_WORKER_CLASS", "simple")]
    connection = get_redis()
    return cls([queue(q, connection) for q in QUEUES], connection=connection, serializer=JSONSerializer,
               name=name)


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
    from flows.loader import registry

    loaded = registry()  # a bad flow file is reported now, and skipped while the others run
    log.info("flows loaded", extra={"flows": sorted(loaded.flows), "problems": len(loaded.problems)})
    worker = build_worker()
    settle()
    worker.work(burst=burst, with_scheduler=True, logging_level="INFO")


if __name__ == "__main__":
    main()
