"""The flow engine's cost per event, and the date sweep over a million customers.

    .venv/bin/python bench/flows.py [--events 800] [--rounds 3] [--customers 1000000] [--dir bench/out]
                                    [--flows DIR] [--json]

1. Throughput. On one worker process, in the same run and against the same Redis:
   - no-op RQ jobs through `SimpleWorker` and through the forking `Worker` (RQ's own per-job cost);
   - canonical events through the real pipeline (`encore.jobs.process_event`: ledger, then every
     built-in flow): for each customer `customer.created` (welcome: a code and an email),
     `checkout.started` (abandoned checkout: a wait), `order.placed` (thank-you: a wait; the
     abandoned checkout exits; loyalty checks its condition) and `order.fulfilled` (check-in: a
     wait); then the clock moves four days on and the wake jobs run (the waits' emails go out). A
     fake platform connector makes the codes; emails go to the file outbox.
   events/s = events / (time to process them + time to run their waits). The SimpleWorker no-op
   rate and the event rate are measured in alternating rounds (fresh customers each round) and
   each is the best of `--rounds`. Target: >= 0.5 x the SimpleWorker no-op jobs/s.
   The store and the outbox are in a folder under `--dir` (default bench/out, on the project's disk
   like `make run`'s encore.db and outbox/).
2. The date sweep: N customers in SQLite (birthdays and last orders spread over the year), the
   library's birthday and win-back flows; `flows.triggers.sweep` for one day, timed, with the peak
   Python memory it allocates (tracemalloc) at N/4 and at N to show it stays flat. Target: < 2 s.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from _redis import redis_database  # bench/ is this script's directory
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_RATIO = 0.5
TARGET_SWEEP_SECONDS = 2.0
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


FLOWS: list[str | None] = [None]  # the flows measured: the built-in library unless `--flows DIR`


def noop() -> None:
    """A job that does nothing (RQ's own per-job overhead)."""


def setup_env(tmp: Path, redis_url: str) -> None:
    os.environ.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp / 'encore.db'}",
            "ENCORE_DATA_DIR": str(tmp / "data"),
            "SECRET_KEY": "bench-secret",
            "EMAIL_URL": f"file://{tmp / 'outbox'}",
            "REDIS_URL": redis_url,
        }
    )
    os.environ.pop("FLOWS_DIR", None)
    if FLOWS[0] is not None:  # `--flows`: another folder of flows (say, the library of the commit compared with)
        os.environ["FLOWS_DIR"] = FLOWS[0]
    os.environ.pop("TEMPLATES_DIR", None)
    from encore_retention.core.settings import reset_settings

    reset_settings()


def drain(connection: Redis, worker_class: type) -> int:
    """Run every queued job with a worker of `worker_class`; returns the number of jobs done."""
    from rq.serializers import JSONSerializer

    from encore_retention.core.queue import QUEUES, queue

    queues = [queue(name, connection) for name in QUEUES]
    before = sum(q.count for q in queues)
    worker_class(queues, connection=connection, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
    return before


def noop_rate(connection: Redis, worker_class: type, jobs: int) -> float:
    from encore_retention.core.queue import FLOWS, queue

    q = queue(FLOWS, connection)
    with connection.pipeline() as pipe:
        for _ in range(jobs):
            q.enqueue_call("bench.flows.noop", result_ttl=600, pipeline=pipe)
        pipe.execute()
    start = time.perf_counter()
    drain(connection, worker_class)
    return jobs / (time.perf_counter() - start)


def make_events(customers: int, first: int = 10_000, t0: datetime = T0) -> list:
    from encore_retention.core import events as ev

    events = []
    for n in range(customers):
        cid = str(first + n)
        person = ev.Customer(
            id=cid,
            email=f"c{cid}@example.com",
            first_name="Ada",
            email_consent=n % 5 != 0,
            birthday=date(1990, 1 + n % 12, 1 + n % 28),
        )
        at = t0 + timedelta(seconds=n)
        order = ev.Order(
            id=f"o{cid}",
            number=cid,
            created_at=at,
            updated_at=at,
            total=Decimal("64.00"),
            currency="EUR",
            line_items=[ev.LineItem(title="Tea", quantity=2, price=Decimal("32.00"))],
            financial_status="paid",
        )
        checkout = ev.Checkout(
            token=f"t{cid}",
            email=person.email,
            recovery_url=f"https://shop.example/r/{cid}",
            total=Decimal("64.00"),
            currency="EUR",
        )
        for kind, extra in (
            ("customer.created", {}),
            ("checkout.started", {"checkout": checkout}),
            ("order.placed", {"order": order}),
            ("order.fulfilled", {"order": order}),
        ):
            event_id = f"bench-{kind.replace('.', '_')}-{cid}"
            events.append(
                ev.Event(
                    id=event_id,
                    type=ev.EventType(kind),
                    platform="shopify",
                    shop="bench.myshopify.com",
                    topic=kind,
                    occurred_at=at,
                    received_at=at,
                    customer=person,
                    **extra,
                )
            )
    return events


def library_round(connection: Redis, customers: int, first: int, t0: datetime) -> dict:
    """One round through the library: the events of `customers` new customers at `t0`, then their waits."""
    from rq import SimpleWorker
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry
    from rq.serializers import JSONSerializer

    from encore_retention.core.queue import FLOWS, enqueue_event, queue
    from encore_retention.flows import dates

    dates.set_now(t0)
    events = make_events(customers, first=first, t0=t0)
    for event in events:
        enqueue_event(event, connection)
    start = time.perf_counter()
    drain(connection, SimpleWorker)
    handled = time.perf_counter() - start
    # Four days later: every wait is over; the scheduler would move these jobs, we do it here.
    later = t0 + timedelta(days=4)
    dates.set_now(later)
    registry = ScheduledJobRegistry(FLOWS, connection=connection, serializer=JSONSerializer)
    q = queue(FLOWS, connection)
    waits = registry.get_jobs_to_schedule(int(later.timestamp()), chunk_size=1_000_000)
    for job_id in waits:
        registry.remove(job_id)
        q.enqueue_job(Job.fetch(job_id, connection=connection, serializer=JSONSerializer))
    start = time.perf_counter()
    drain(connection, SimpleWorker)
    resumed = time.perf_counter() - start
    dates.set_now(None)
    return {
        "events": len(events),
        "event_seconds": handled,
        "wait_jobs": len(waits),
        "wait_seconds": resumed,
        "rate": len(events) / (handled + resumed),
    }


def throughput(connection: Redis, event_count: int, rounds: int) -> dict:
    """RQ's no-op rate and the library's event rate, each the best of `rounds` alternating rounds."""
    from rq import SimpleWorker, Worker

    from encore_retention.connectors import base as connector_registry
    from encore_retention.core.queue import enqueue_event
    from encore_retention.core.store import migrate
    from encore_retention.flows import dates
    from tests.flows.helpers import FakeConnector

    migrate()
    connector_registry.get_connector = lambda shop: FakeConnector(shop)  # never call a platform
    import encore_retention.connectors.email as email_api

    real_send, email_seconds = email_api.send, [0.0]

    def timed_send(message, transport=None):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return real_send(message, transport)
        finally:
            email_seconds[0] += time.perf_counter() - start

    email_api.send = timed_send  # the MIME building and the outbox write, counted apart
    from encore_retention import worker

    worker.settle()  # as Encore's worker does once it has loaded everything
    forking = noop_rate(connection, Worker, 300)

    # The same pipeline with no flows at all (an empty FLOWS_DIR): the ledger's share of each event.
    from encore_retention.core.settings import reset_settings

    empty = Path(os.environ["ENCORE_DATA_DIR"]) / "no-flows"
    empty.mkdir(parents=True, exist_ok=True)
    os.environ["FLOWS_DIR"] = str(empty)
    reset_settings()
    dates.set_now(T0)
    bare_events = make_events(event_count // 4, first=900_000)
    for event in bare_events:
        enqueue_event(event, connection)
    start = time.perf_counter()
    drain(connection, SimpleWorker)
    ledger_rate = len(bare_events) / (time.perf_counter() - start)
    dates.set_now(None)
    os.environ.pop("FLOWS_DIR")
    if FLOWS[0] is not None:
        os.environ["FLOWS_DIR"] = FLOWS[0]
    reset_settings()

    simple_rates, results = [], []
    for n in range(rounds):  # alternating, so that a busy moment of the machine hits both sides alike
        simple_rates.append(noop_rate(connection, SimpleWorker, max(event_count, 1000)))
        email_seconds[0] = 0.0
        result = library_round(connection, event_count // 4, first=10_000 + 100_000 * n, t0=T0 + timedelta(days=30 * n))
        result["email_seconds"] = email_seconds[0]
        results.append(result)
    best = max(results, key=lambda r: r["rate"])
    simple = max(simple_rates)
    from sqlalchemy import func, select

    from encore_retention.core.store import session_scope
    from encore_retention.flows.models import FlowRun

    with session_scope() as session:
        statuses = dict(session.execute(select(FlowRun.status, func.count()).group_by(FlowRun.status)).all())
    emails = len(list((Path(os.environ["EMAIL_URL"][7:])).glob("*.eml")))
    rate = best["rate"]
    flow_ms = 1000 / rate - 1000 / ledger_rate  # what the flows add to each event, waits included
    email_ms = 1000 * best["email_seconds"] / best["events"]
    return {
        "email_ms_per_event": round(email_ms, 2),
        "engine_ms_per_event": round(flow_ms - email_ms, 2),
        "engine_cost_vs_rq_job": round((flow_ms - email_ms) / (1000 / simple), 2),
        "ledger_only_events_per_s": round(ledger_rate, 1),
        "flow_ms_per_event": round(flow_ms, 2),
        "rq_ms_per_job": round(1000 / simple, 2),
        "flow_cost_vs_rq_job": round(flow_ms / (1000 / simple), 2),
        "rounds": rounds,
        "events": best["events"],
        "event_seconds": round(best["event_seconds"], 3),
        "wait_jobs": best["wait_jobs"],
        "wait_seconds": round(best["wait_seconds"], 3),
        "events_per_s": round(rate, 1),
        "events_per_s_rounds": [round(r["rate"], 1) for r in results],
        "noop_simple_jobs_per_s_rounds": [round(r, 1) for r in simple_rates],
        "emails": emails,
        "runs": statuses,
        "noop_simple_jobs_per_s": round(simple, 1),
        "noop_fork_jobs_per_s": round(forking, 1),
        "ratio_vs_simple": round(rate / simple, 3),
        "ratio_vs_fork": round(rate / forking, 3),
    }


def fill_customers(path: Path, count: int) -> None:
    """`count` customers in one shop: birthdays over the year, last orders over the past 400 days."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute(
        "INSERT INTO shops (id, platform, domain, name, active, settings, created_at) "
        "VALUES (1, 'shopify', 'bench.myshopify.com', 'Bench', 1, '{}', '2026-01-01 00:00:00')"
    )
    rng = random.Random(7)
    base = datetime(2025, 1, 1)

    def rows() -> Iterator[tuple]:
        for n in range(count):
            birthday = date(1960 + n % 45, 1, 1) + timedelta(days=rng.randrange(366))
            last = base + timedelta(minutes=rng.randrange(430 * 24 * 60))
            yield (
                1,
                f"p{n}",
                f"c{n}@example.com",
                birthday.isoformat(),
                birthday.month,
                birthday.day,
                1,
                "[]",
                1,
                "10.00",
                last.isoformat(sep=" "),
                last.isoformat(sep=" "),
                "2026-01-01 00:00:00",
                "2026-01-01 00:00:00",
            )

    connection.executemany(
        "INSERT INTO customers (shop_id, platform_id, email, birthday, birthday_month, birthday_day, email_consent, "
        "tags, orders_count, total_spent, first_order_at, last_order_at, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows(),
    )
    connection.commit()
    connection.execute("ANALYZE")
    connection.close()


def sweep_time(tmp: Path, connection: Redis, count: int) -> dict:
    from encore_retention.core.settings import reset_settings
    from encore_retention.core.store import dispose_all, migrate
    from encore_retention.flows import dates, triggers

    db = tmp / f"sweep-{count}.db"
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    reset_settings()
    dispose_all()
    migrate()
    fill_customers(db, count)
    connection.flushdb()
    dates.set_now(datetime(2026, 3, 6, 0, 30, tzinfo=UTC))
    start = time.perf_counter()
    counts = triggers.sweep()
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    again = triggers.sweep()  # an hour later the cron sweeps again: nothing new to queue
    repeat = time.perf_counter() - start
    connection.flushdb()  # the same sweep once more, under tracemalloc (slower), for its peak memory
    tracemalloc.start()
    triggers.sweep()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dates.set_now(None)
    return {
        "customers": count,
        "due": counts["due"],
        "queued": counts["queued"],
        "jobs": counts["jobs"],
        "seconds": round(elapsed, 3),
        "peak_mib": round(peak / 2**20, 2),
        "repeat_seconds": round(repeat, 3),
        "repeat_queued": again["queued"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=800)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="each rate is the best of this many rounds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--dir",
        type=Path,
        default=ROOT / "bench" / "out",
        help="where the store and the outbox go (default bench/out: the project's disk, like "
        "`make run`'s encore.db and outbox/; pass /tmp to measure a tmp folder instead)",
    )
    parser.add_argument(
        "--flows",
        type=Path,
        default=None,
        help="a folder of flows to run instead of the built-in library (to compare commits on the same flows)",
    )
    args = parser.parse_args()
    FLOWS[0] = str(args.flows.resolve()) if args.flows else None
    args.dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="encore-bench-flows-", dir=args.dir) as name,
        redis_database() as (url, connection),
    ):
        tmp = Path(name)
        setup_env(tmp, url)
        from encore_retention.core import queue as encore_queue

        encore_queue.set_redis(connection)
        result = {"throughput": throughput(connection, args.events, args.rounds)}
        result["sweep_quarter"] = sweep_time(tmp, connection, args.customers // 4)
        result["sweep"] = sweep_time(tmp, connection, args.customers)
    ok = result["throughput"]["ratio_vs_simple"] >= TARGET_RATIO and result["sweep"]["seconds"] < TARGET_SWEEP_SECONDS
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        t, s, q = result["throughput"], result["sweep"], result["sweep_quarter"]
        print(
            f"no-op RQ jobs, one process: SimpleWorker {t['noop_simple_jobs_per_s']}/s, "
            f"Worker (fork) {t['noop_fork_jobs_per_s']}/s"
        )
        print(
            f"events through the whole library: {t['events']} events in {t['event_seconds']} s "
            f"+ {t['wait_jobs']} wake jobs in {t['wait_seconds']} s = {t['events_per_s']} events/s "
            f"(best of {t['rounds']}: {t['events_per_s_rounds']}; "
            f"no-op rounds {t['noop_simple_jobs_per_s_rounds']}); "
            f"{t['emails']} emails; runs {t['runs']}"
        )
        print(
            f"ratio vs SimpleWorker no-op: {t['ratio_vs_simple']} (target >= {TARGET_RATIO}); "
            f"vs Worker no-op: {t['ratio_vs_fork']}"
        )
        print(
            f"the same events with no flows (ledger only): {t['ledger_only_events_per_s']} events/s; the flows add "
            f"{t['flow_ms_per_event']} ms per event, "
            f"{t['flow_cost_vs_rq_job']} x RQ's {t['rq_ms_per_job']} ms per job: "
            f"{t['email_ms_per_event']} ms building and writing emails (connectors.email.send), "
            f"{t['engine_ms_per_event']} ms the engine itself "
            f"({t['engine_cost_vs_rq_job']} x)"
        )
        print(
            f"date sweep over {q['customers']:,} customers: {q['seconds']} s, {q['due']} due, peak {q['peak_mib']} MiB"
        )
        print(
            f"date sweep over {s['customers']:,} customers: {s['seconds']} s (target < {TARGET_SWEEP_SECONDS}), "
            f"{s['due']} due, {s['queued']} queued in {s['jobs']} jobs, peak {s['peak_mib']} MiB; "
            f"sweeping again: {s['repeat_seconds']} s, {s['repeat_queued']} queued"
        )
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
