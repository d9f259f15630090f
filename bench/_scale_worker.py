"""One worker process for bench/scale.py: `python worker.py`'s start-up, then a burst drain on a signal.

    .venv/bin/python bench/_scale_worker.py --now 2026-03-02T12:00:00+00:00 [--count] [--cprofile FILE]

Does what `worker.main` does before taking jobs (JSON logs on stderr, migrate, load the flows,
`build_worker()`, `settle()`), with the bench's two substitutions from bench/flows.py: a fake
platform connector (tests/flows/helpers.py) and the flow clock frozen at `--now`. The environment
(DATABASE_URL, REDIS_URL, EMAIL_URL, …) is the parent's. Then, on stdout and stdin:

    -> ready                     loaded; nothing of the queue touched yet
    <- go                        start `build_worker().work(burst=True)` (RQ's scheduler is not started)
    -> done {json}               the queues are empty; this process's CPU seconds, jobs, and with
                                 `--count` the SQL statements, transactions and Redis round trips
    <- exit                      disconnect and exit (the parent reads the PostgreSQL backends' CPU first)

`--count` counts what the process sends: SQL statements by kind and their time (SQLAlchemy's
`before/after_cursor_execute`), the pool's checkouts and pre-pings (`SELECT 1`), transaction
commands and their time (psycopg's `BEGIN`/`COMMIT`/`ROLLBACK`, or SQLite's commits), and Redis
round trips and commands by name (redis-py's client and pipelines), with the time spent in them.
`--cprofile FILE` runs the drain under cProfile and writes the stats to FILE.

`--experiment NAME` (repeatable) changes this process the way a proposed change to the product
would, to measure what that change could gain; the product's files are not touched:
    lean-rq         the worker's own heartbeat at most once a second, and its busy/idle state not
                    written on its own round trip (as if folded into the job's pipelines)
    quiet-logs      the INFO log lines of every job and event not written (root logger at WARNING)
    no-pre-ping     the pool hands out connections without a `SELECT 1` first
    shop-cache      the ledger's shop row kept in the process (no SELECT shops per event)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/: the product's `flows` package, not bench/flows.py

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402


class Counts:
    """What one process sends to the database and to Redis, by kind, with the wall time spent waiting."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.statement_seconds: defaultdict[str, float] = defaultdict(float)
        self.rows: Counter[str] = Counter()  # parameter sets of executemany statements
        self.transaction: Counter[str] = Counter()
        self.transaction_seconds: defaultdict[str, float] = defaultdict(float)
        self.checkouts = 0
        self.redis_trips: Counter[str] = Counter()
        self.redis_commands: Counter[str] = Counter()
        self.redis_seconds = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "statements": dict(self.statements),
            "statement_seconds": dict(self.statement_seconds),
            "rows": dict(self.rows),
            "transaction": dict(self.transaction),
            "transaction_seconds": dict(self.transaction_seconds),
            "checkouts": self.checkouts,
            "redis_trips": dict(self.redis_trips),
            "redis_commands": dict(self.redis_commands),
            "redis_seconds": self.redis_seconds,
        }


_WORDS = re.compile(r"\s+")


def statement_kind(sql: str) -> str:
    """A statement's kind: its verb and table, the columns an UPDATE sets, `FOR UPDATE` and `RETURNING`."""
    text = _WORDS.sub(" ", sql).strip()
    upper = text.upper()
    verb = upper.split(" ", 1)[0]
    if verb == "SELECT":
        match = re.search(r" FROM (\w+)", text)
        kind = f"SELECT {match.group(1) if match else '?'}"
        if re.search(r"\bcount\(|\bsum\(|\bmin\(|\bmax\(", text):
            kind += " (aggregate)"
        if " FOR UPDATE" in upper:
            kind += " FOR UPDATE"
        return kind
    if verb == "INSERT":
        match = re.search(r"INTO (\w+)", text)
        kind = f"INSERT {match.group(1) if match else '?'}"
        if "ON CONFLICT" in upper:
            kind += " ON CONFLICT"
        return kind
    if verb == "UPDATE":
        match = re.match(r"UPDATE (\w+) SET (.*?)(?: WHERE |$)", text)
        if not match:
            return "UPDATE ?"
        columns = sorted(re.findall(r"(\w+)=", match.group(2)))
        return f"UPDATE {match.group(1)} SET {','.join(columns)}"
    if verb == "DELETE":
        match = re.search(r"FROM (\w+)", text)
        return f"DELETE {match.group(1) if match else '?'}"
    if verb == "WITH":
        match = re.search(r"\)\s*(UPDATE|SELECT|INSERT|DELETE)\s+(?:INTO\s+|FROM\s+)?(\w+)", text, re.I)
        return f"WITH … {match.group(1).upper()} {match.group(2)}" if match else "WITH ?"
    return text[:40]


def install_counts(counts: Counts) -> None:
    """Count statements, transactions and Redis round trips from now on, in every engine and client."""
    from redis.client import Pipeline, Redis
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    @event.listens_for(Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["bench_started"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        kind = statement_kind(statement)
        counts.statements[kind] += 1
        counts.statement_seconds[kind] += time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
        if executemany:
            counts.rows[kind] += len(parameters)

    @event.listens_for(Pool, "checkout")
    def checkout(dbapi_connection, record, proxy):  # type: ignore[no-untyped-def]
        counts.checkouts += 1

    from sqlalchemy.engine.default import DefaultDialect

    real_ping, real_commit = DefaultDialect._do_ping_w_event, DefaultDialect.do_commit

    def do_ping(self, dbapi_connection):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return real_ping(self, dbapi_connection)
        finally:
            counts.transaction["SELECT 1 (pre-ping)"] += 1
            counts.transaction_seconds["SELECT 1 (pre-ping)"] += time.perf_counter() - started

    def do_commit(self, dbapi_connection):  # type: ignore[no-untyped-def]
        if self.name != "sqlite":  # psycopg's COMMIT is counted with its other commands, below
            return real_commit(self, dbapi_connection)
        started = time.perf_counter()
        try:
            return real_commit(self, dbapi_connection)
        finally:
            counts.transaction["COMMIT"] += 1
            counts.transaction_seconds["COMMIT"] += time.perf_counter() - started

    DefaultDialect._do_ping_w_event, DefaultDialect.do_commit = do_ping, do_commit  # type: ignore[method-assign]

    try:  # psycopg: BEGIN, COMMIT, ROLLBACK are commands of their own, each a round trip
        from psycopg._connection_base import BaseConnection

        real_exec = BaseConnection._exec_command

        def exec_command(self, command, *more):  # type: ignore[no-untyped-def]
            name = (command.decode() if isinstance(command, bytes) else str(command)).split(" ", 1)[0].upper()
            counts.transaction[name] += 1
            started = time.perf_counter()
            try:
                return (yield from real_exec(self, command, *more))
            finally:
                counts.transaction_seconds[name] += time.perf_counter() - started

        BaseConnection._exec_command = exec_command  # type: ignore[method-assign]
    except ImportError:
        pass

    real_execute = Redis.execute_command

    def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
        name = str(args[0]).upper()
        counts.redis_trips[name] += 1
        counts.redis_commands[name] += 1
        started = time.perf_counter()
        try:
            return real_execute(self, *args, **options)
        finally:
            counts.redis_seconds += time.perf_counter() - started

    real_pipeline = Pipeline.execute
    real_immediate = Pipeline.immediate_execute_command

    def pipeline_execute(self, raise_on_error=True):  # type: ignore[no-untyped-def]
        stack = [str(c[0][0]).upper() for c in self.command_stack]
        counts.redis_trips["pipeline" + (" (MULTI)" if self.transaction else "")] += 1 if stack else 0
        for name in stack:
            counts.redis_commands[name] += 1
        started = time.perf_counter()
        try:
            return real_pipeline(self, raise_on_error)
        finally:
            counts.redis_seconds += time.perf_counter() - started

    def immediate(self, *args, **options):  # type: ignore[no-untyped-def]
        name = str(args[0]).upper()
        counts.redis_trips[name] += 1
        counts.redis_commands[name] += 1
        started = time.perf_counter()
        try:
            return real_immediate(self, *args, **options)
        finally:
            counts.redis_seconds += time.perf_counter() - started

    Redis.execute_command = execute_command  # type: ignore[method-assign]
    Pipeline.execute = pipeline_execute  # type: ignore[method-assign]
    Pipeline.immediate_execute_command = immediate  # type: ignore[method-assign]


EXPERIMENTS = ("lean-rq", "quiet-logs", "no-pre-ping", "shop-cache")


def apply_experiments(names: list[str], rq_worker: Any) -> None:
    """Change this process as the named proposals would change the product (see the module docstring)."""
    import logging

    if "lean-rq" in names:
        heartbeat, set_state = rq_worker.heartbeat, rq_worker.set_state
        last = [0.0]

        def lean_heartbeat(timeout=None, pipeline=None):  # type: ignore[no-untyped-def]
            if pipeline is None and time.monotonic() - last[0] < 1.0:
                return None
            last[0] = time.monotonic()
            return heartbeat(timeout, pipeline)

        def lean_state(state, pipeline=None):  # type: ignore[no-untyped-def]
            if pipeline is None:
                rq_worker._state = state
                return None
            return set_state(state, pipeline)

        rq_worker.heartbeat, rq_worker.set_state = lean_heartbeat, lean_state
    if "quiet-logs" in names:
        logging.getLogger().setLevel("WARNING")
        rq_worker.log.setLevel("WARNING")
    if "no-pre-ping" in names:
        from encore_retention.core.store import get_engine

        get_engine().pool._pre_ping = False
    if "shop-cache" in names:
        from encore_retention.core.store import ledger

        real, cache = ledger.get_or_create_shop, {}

        def cached_shop(session, platform, domain):  # type: ignore[no-untyped-def]
            shop = cache.get((platform, domain))
            if shop is None:
                shop = cache[(platform, domain)] = real(session, platform, domain)
                session.expunge(shop)
            return session.merge(shop, load=False)

        ledger.get_or_create_shop = cached_shop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--now", required=True, help="the flow clock (ISO 8601, aware)")
    parser.add_argument("--count", action="store_true")
    parser.add_argument("--cprofile", default=None)
    parser.add_argument("--experiment", action="append", default=[], choices=EXPERIMENTS)
    args = parser.parse_args()

    from encore_retention import worker
    from encore_retention.connectors import base as connector_registry
    from encore_retention.core import logs
    from encore_retention.core.store import migrate
    from encore_retention.flows import dates
    from encore_retention.flows.loader import registry
    from tests.flows.helpers import FakeConnector

    dates.set_now(datetime.fromisoformat(args.now))
    connector_registry.get_connector = lambda shop: FakeConnector(shop)  # never call a platform
    logs.setup()
    migrate()
    registry()
    import bench.flows  # noqa: F401 - the no-op job's module, loaded before the clock starts

    counts = Counts() if args.count else None
    if counts is not None:
        install_counts(counts)
    rq_worker = worker.build_worker()
    outcomes: Counter[bool] = Counter()
    perform_job = rq_worker.perform_job

    def counted(job, queue, execution):  # type: ignore[no-untyped-def]
        done = perform_job(job, queue, execution)
        outcomes[bool(done)] += 1
        return done

    rq_worker.perform_job = counted  # type: ignore[method-assign]
    apply_experiments(args.experiment, rq_worker)
    worker.settle()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    cpu, started = time.process_time(), time.perf_counter()
    if args.cprofile:
        import cProfile

        profile = cProfile.Profile()
        profile.runcall(rq_worker.work, burst=True, logging_level="INFO")
        profile.dump_stats(args.cprofile)
    else:
        rq_worker.work(burst=True, logging_level="INFO")
    report = {
        "cpu_s": time.process_time() - cpu,
        "busy_s": time.perf_counter() - started,
        "finished_at": time.time(),
        "jobs": outcomes[True],
        "failed_jobs": outcomes[False],
    }
    if counts is not None:
        report["counts"] = counts.as_dict()
    print("done " + json.dumps(report), flush=True)
    sys.stdin.readline()  # "exit": the parent has read the database backends' CPU
    return 0


if __name__ == "__main__":
    sys.exit(main())
