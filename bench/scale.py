"""Scale-out on PostgreSQL: queued webhook deliveries drained by 1, 2 and 4 worker processes.

    .venv/bin/python bench/scale.py [--deliveries 2400] [--workers 1,2,4] [--database-url URL]
                                    [--profile] [--dir bench/out] [--json]

The workload is bench/flows.py's (its `make_events`: per new customer `customer.created`,
`checkout.started`, `order.placed`, `order.fulfilled`, so the whole built-in library runs) sent as
the signed Shopify webhooks that carry those events (customers/create, checkouts/create,
orders/create, orders/fulfilled, built on the documented examples in tests/payloads/shopify/), in
waves of `--wave` customers: each wave's customers are created, then check out, then order, then
their orders are fulfilled. Every delivery is posted to the receivers (`webhooks.create_app()`'s
test client) while no worker runs, so the queue holds them all, each with its raw body.

Per worker count, against a fresh PostgreSQL database and a fresh Redis database:
1. N worker processes (bench/_scale_worker.py: `python worker.py`'s start-up, then
   `build_worker().work(burst=True)`; the fake connector and the file outbox of bench/flows.py,
   the flow clock frozen at T0) load, then start together and drain the queue. events/s =
   deliveries / wall time from the start signal until every process has found the queue empty.
2. The clock moves four days on and the wake jobs due by then are queued (as bench/flows.py does;
   RQ's scheduler would); N processes drain them. "with waits" = deliveries / (1's + 2's time).
CPU per event: the worker processes' own (process time), PostgreSQL's (the postmaster's children
serving this database, and its WAL writer, checkpointer and background writer, from /proc),
Redis's (INFO cpu). Checks: "deadlock detected", UniqueViolation, IntegrityError or a traceback in
the workers' logs; failed RQ jobs; jobs left queued; a customer emailed twice from one flow (the
side-effect records and the outbox files); the ledger (customers, orders, events, archived
deliveries, every customer's orders_count and total). Baseline, in the same run: as many no-op RQ
jobs drained by one worker process (the ratio events/s : no-op jobs/s, as bench/flows.py prints).

`--profile` adds, for one worker on PostgreSQL and on SQLite (a file under `--dir`): its rate and
CPU split, the SQL statements by kind, transactions, pool checkouts and Redis round trips per event
(with the time waited on each), and cProfile's top functions; one worker on PostgreSQL with no
flows at all (the ledger's share); and what one round trip or per-job step costs on this machine
(bench/_scale_ops.py). `--experiments` runs what-if rounds: the worker processes changed as a
proposed change to the product would change them (bench/_scale_worker.py), each also on no-op jobs.
`--database-url` uses that PostgreSQL database as it is: it is migrated and every Encore table in
it is EMPTIED before each round (give it a scratch database).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import email
import email.policy
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from _redis import redis_database  # bench/ is this script's directory
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # before bench/: the product's `flows` package, not bench/flows.py

from _scale_worker import EXPERIMENTS  # noqa: E402

from bench.flows import T0, make_events  # noqa: E402 - the flows benchmark's customers and events

PAYLOADS = ROOT / "tests" / "payloads" / "shopify"
SHOP = "bench.myshopify.com"
SECRET = "shpss_bench_secret_0123456789abcdef"
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LOG_PROBLEMS = ("deadlock detected", "UniqueViolation", "IntegrityError", "Traceback")
WAITS_OVER = timedelta(days=4)  # every wait of the library's event flows has ended by then
SYNC_COMMIT_OFF = "sync-commit-off"  # what-if: the database's sessions commit without waiting for the WAL flush
TOPICS = {
    "customer.created": "customers/create",
    "checkout.started": "checkouts/create",
    "order.placed": "orders/create",
    "order.fulfilled": "orders/fulfilled",
}


# ---- the deliveries ---------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One signed webhook delivery, as Shopify would post it."""

    topic: str
    body: bytes
    headers: dict[str, str]


def _example(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def _customer_payload(base: dict[str, Any], person: Any, at: str) -> dict[str, Any]:
    payload = copy.deepcopy(base)
    payload.update(
        id=int(person.id),
        admin_graphql_api_id=f"gid://shopify/Customer/{person.id}",
        email=person.email,
        first_name=person.first_name,
        last_name="Lovelace",
        created_at=at,
        updated_at=at,
    )
    payload["default_address"].update(customer_id=int(person.id), first_name=person.first_name, last_name="Lovelace")
    return payload


def shopify_payload(event: Any, examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Shopify webhook body that carries `event` (the documented example with this event's fields)."""
    at = event.occurred_at.isoformat()
    person = event.customer
    if event.type.value == "customer.created":
        payload = _customer_payload(examples["customers_create"], person, at)
        payload.update(
            birthday=person.birthday.isoformat(),
            orders_count=0,
            total_spent="0.00",
            email_marketing_consent={
                "state": "subscribed" if person.email_consent else "not_subscribed",
                "opt_in_level": "single_opt_in",
                "consent_updated_at": at,
            },
        )
        return payload
    nested = _customer_payload(examples["orders_create"]["customer"], person, at)
    if event.type.value == "checkout.started":
        checkout = event.checkout
        payload = copy.deepcopy(examples["checkouts_create"])
        item = {**payload["line_items"][0], "title": "Tea", "quantity": 2, "price": "32.00"}
        payload.update(
            token=checkout.token,
            cart_token=f"cart-{checkout.token}",
            email=checkout.email,
            abandoned_checkout_url=checkout.recovery_url,
            currency=checkout.currency,
            presentment_currency=checkout.currency,
            total_price=str(checkout.total),
            subtotal_price=str(checkout.total),
            created_at=at,
            updated_at=at,
            completed_at=None,
            line_items=[item],
            customer=nested,
        )
        return payload
    order = event.order
    payload = copy.deepcopy(examples["orders_create"])
    item = {**payload["line_items"][0], "title": "Tea", "name": "Tea", "quantity": 2, "price": "32.00"}
    fulfilled = event.type.value == "order.fulfilled"
    payload.update(
        id=order.id,
        admin_graphql_api_id=f"gid://shopify/Order/{order.id}",
        name=f"#{order.number}",
        order_number=order.number,
        number=order.number,
        email=person.email,
        contact_email=person.email,
        created_at=order.created_at.isoformat(),
        updated_at=at,
        processed_at=at,
        currency=order.currency,
        presentment_currency=order.currency,
        total_price=str(order.total),
        subtotal_price=str(order.total),
        financial_status=order.financial_status,
        fulfillment_status="fulfilled" if fulfilled else None,
        checkout_token=f"t{person.id}",
        discount_codes=[],
        cancelled_at=None,
        line_items=[item],
        customer=nested,
    )
    return payload


def make_deliveries(count: int, wave: int) -> tuple[list[Delivery], int]:
    """`count` deliveries (rounded down to whole customers) of distinct new customers; and how many customers."""
    from encore_retention.webhooks.base import sign

    customers = count // 4
    events = make_events(customers)  # four per customer, in order
    examples = {name: _example(name) for name in ("customers_create", "checkouts_create", "orders_create")}
    deliveries = []
    for start in range(0, customers, wave):
        for kind in range(4):  # a wave's customers are created, check out, order, then are fulfilled
            for n in range(start, min(start + wave, customers)):
                event = events[4 * n + kind]
                if event.type.value == "order.fulfilled":
                    event.occurred_at += timedelta(hours=1)
                body = json.dumps(shopify_payload(event, examples), separators=(",", ":")).encode()
                topic = TOPICS[event.type.value]
                deliveries.append(
                    Delivery(
                        topic,
                        body,
                        {
                            "X-Shopify-Topic": topic,
                            "X-Shopify-Shop-Domain": SHOP,
                            "X-Shopify-Hmac-Sha256": sign(body, SECRET),
                            "X-Shopify-Webhook-Id": str(uuid.uuid5(uuid.NAMESPACE_URL, event.id)),
                            "X-Shopify-Event-Id": str(uuid.uuid4()),
                            "X-Shopify-API-Version": "2026-04",
                            "X-Shopify-Triggered-At": event.occurred_at.isoformat(),
                        },
                    )
                )
    return deliveries, customers


def enqueue(deliveries: list[Delivery]) -> float:
    """Post every delivery to the receivers (no worker runs meanwhile); the seconds it took."""
    from encore_retention.web import create_app

    client = create_app().test_client()
    started = time.perf_counter()
    for delivery in deliveries:
        answer = client.post(
            "/webhooks/shopify", data=delivery.body, headers=delivery.headers, content_type="application/json"
        )
        if answer.status_code != 200 or answer.get_json().get("status") != "queued":
            raise RuntimeError(f"{delivery.topic} answered {answer.status_code}: {answer.get_data(as_text=True)}")
    return time.perf_counter() - started


# ---- databases, and the CPU of the servers ----------------------------------------------------------


def _admin() -> Any:
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True)


@contextmanager
def fresh_database(given: str | None, settings: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database (created here, dropped afterwards), or `given` emptied of Encore's rows.

    `settings` are set on a fresh database (`ALTER DATABASE … SET`), for its sessions.
    """
    from sqlalchemy import text

    from encore_retention.core.store import dispose_all, get_engine, migrate
    from encore_retention.core.store.models import Base

    if given:
        migrate(given)
        import encore_retention.core.archive  # noqa: F401 - every table in the metadata
        import encore_retention.flows.models  # noqa: F401

        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with get_engine(given).begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        dispose_all()
        yield given
        dispose_all()
        return
    name = f"encore_scale_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        for setting, value in (settings or {}).items():
            admin.execute(f'ALTER DATABASE "{name}" SET {setting} = {value}')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        dispose_all()
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PostgresCPU:
    """The CPU of the PostgreSQL processes that work for one database: its backends and the shared writers."""

    def __init__(self, url: str) -> None:
        self.database = url.rsplit("/", 1)[1].split("?")[0]
        self.postmaster: int | None = None
        try:
            with _admin() as admin:
                backend = admin.execute("SELECT pg_backend_pid()").fetchone()[0]
            found = _stat(str(backend))
            self.postmaster = found[0] if found else None
        except Exception:  # noqa: BLE001 - not a local server: its CPU is not measured
            self.postmaster = None

    def sample(self) -> dict[int, float]:
        """CPU seconds so far of each process counted (a dict by pid; empty where /proc can't tell)."""
        if self.postmaster is None:
            return {}
        result = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            found = _stat(pid)
            if found is None or found[0] != self.postmaster:
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            client = re.search(r"\S+ (\S+) (?:\d[\d.:a-f]*\(\d+\)|\[local\])", title)  # "user database host(port)"
            if client is None or client.group(1) == self.database:  # a shared process (WAL writer…), or ours
                result[int(pid)] = found[1]
        return result

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds between two samples (a process started in between counts from zero)."""
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy so far (every process, from /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest time is in user already)
    return busy / os.sysconf("SC_CLK_TCK")


def redis_cpu(connection: Redis) -> float:
    """CPU seconds the Redis server has used so far."""
    info = connection.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# ---- worker processes --------------------------------------------------------------------------------


@dataclass
class Drain:
    """What N worker processes did in one drain."""

    workers: int
    seconds: float
    jobs: int
    failed_jobs: int
    worker_cpu_s: float
    postgres_cpu_s: float | None
    redis_cpu_s: float
    reports: list[dict[str, Any]] = field(default_factory=list)
    start_s: float = 0.0  # the processes' start-up until all were ready (not in `seconds`)
    machine_cpu_s: float = 0.0  # every process's CPU meanwhile: what is not ours above ran beside the bench


def drain(
    workers: int,
    now: Any,
    env: dict[str, str],
    logs: Path,
    connection: Redis,
    pg: PostgresCPU | None,
    extra: list[str] | None = None,
) -> Drain:
    """Start `workers` worker processes, let them load, then drain the queues together; the figures."""
    command = [sys.executable, str(BENCH / "_scale_worker.py"), "--now", now.isoformat(), *(extra or [])]
    started = time.perf_counter()
    processes = []
    for index in range(workers):
        log = (logs.parent / f"{logs.name}-{index}.log").open("ab")
        processes.append(
            (
                subprocess.Popen(
                    command, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
                ),
                log,
            )
        )

    def expect(process: subprocess.Popen, word: str) -> str:
        while True:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"a worker process exited ({process.wait()}) before '{word}'; see {logs}-*.log")
            if line.startswith(word):
                return line[len(word) :].strip()

    try:
        for process, _ in processes:
            expect(process, "ready")
        ready = time.perf_counter() - started
        pg_before = pg.sample() if pg else {}
        redis_before = redis_cpu(connection)
        machine_before = machine_cpu()
        go = time.time()
        for process, _ in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = [json.loads(expect(process, "done")) for process, _ in processes]
        machine_after = machine_cpu()
        pg_after = pg.sample() if pg else {}
        redis_after = redis_cpu(connection)
        for process, _ in processes:
            process.stdin.write("exit\n")
            process.stdin.flush()
    finally:
        for process, log in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
    return Drain(
        workers=workers,
        seconds=max(r["finished_at"] for r in reports) - go,
        jobs=sum(r["jobs"] for r in reports),
        failed_jobs=sum(r["failed_jobs"] for r in reports),
        worker_cpu_s=sum(r["cpu_s"] for r in reports),
        postgres_cpu_s=PostgresCPU.used(pg_before, pg_after) if pg and pg.postmaster else None,
        redis_cpu_s=redis_after - redis_before,
        reports=reports,
        start_s=ready,
        machine_cpu_s=machine_after - machine_before,
    )


def release_waits(connection: Redis, when: Any) -> int:
    """Queue the scheduled jobs due by `when` (RQ's scheduler would); how many."""
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry
    from rq.serializers import JSONSerializer

    from encore_retention.core.queue import QUEUES, queue

    moved = 0
    for name in QUEUES:
        registry = ScheduledJobRegistry(name, connection=connection, serializer=JSONSerializer)
        q = queue(name, connection)
        for job_id in registry.get_jobs_to_schedule(int(when.timestamp()), chunk_size=1_000_000):
            registry.remove(job_id)
            q.enqueue_job(Job.fetch(job_id, connection=connection, serializer=JSONSerializer))
            moved += 1
    return moved


def queue_state(connection: Redis) -> dict[str, int]:
    """Jobs still queued, started, scheduled, or failed, over Encore's queues."""
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
    from rq.serializers import JSONSerializer

    from encore_retention.core.queue import QUEUES, queue

    state = Counter()
    for name in QUEUES:
        q = queue(name, connection)
        state["queued"] += q.count
        for label, registry in (
            ("started", StartedJobRegistry),
            ("scheduled", ScheduledJobRegistry),
            ("failed", FailedJobRegistry),
        ):
            state[label] += registry(name, connection=connection, serializer=JSONSerializer).count
    return dict(state)


# ---- one round ---------------------------------------------------------------------------------------


def environment(database: str, redis_url: str, tmp: Path, flows_dir: Path | None = None) -> dict[str, str]:
    """The environment of this process and of the worker processes for one round."""
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench-secret",
        "ENCORE_DATA_DIR": str(tmp / "data"),
        "EMAIL_URL": f"file://{tmp / 'outbox'}",
        "SHOPIFY_API_SECRET": SECRET,
        "PYTHONPATH": str(ROOT),
    }
    for name in ("FLOWS_DIR", "TEMPLATES_DIR", "ENCORE_WORKER_CLASS", "SHOPIFY_API_SECRET_PREVIOUS"):
        env.pop(name, None)
    if flows_dir is not None:
        env["FLOWS_DIR"] = str(flows_dir)
    return env


def use(env: dict[str, str], connection: Redis) -> None:
    """Point this process's settings, store and queue at a round's database and Redis."""
    from encore_retention.core import queue as encore_queue
    from encore_retention.core.settings import reset_settings
    from encore_retention.core.store import dispose_all
    from encore_retention.webhooks import secrets

    os.environ.clear()
    os.environ.update(env)
    reset_settings()
    dispose_all()
    secrets.forget()
    encore_queue.set_redis(connection)


def run_round(
    workers: int,
    deliveries: list[Delivery],
    customers: int,
    args: argparse.Namespace,
    connection: Redis,
    redis_url: str,
    label: str,
    *,
    database: str | None = None,
    flows_dir: Path | None = None,
    extra: list[str] | None = None,
    waits: bool = True,
    pg_settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Queue every delivery, drain with `workers` processes, then their waits; figures and checks."""
    from encore_retention.core.store import migrate

    saved = dict(os.environ)
    with (
        tempfile.TemporaryDirectory(prefix=f"encore-bench-scale-{label}-", dir=args.dir) as name,
        fresh_database(args.database_url, pg_settings) if database is None else _as_is(database) as url,
    ):
        tmp = Path(name)
        connection.flushdb()
        env = environment(url, redis_url, tmp, flows_dir)
        use(env, connection)
        migrate()
        enqueue_s = enqueue(deliveries)
        state = queue_state(connection)
        assert state["queued"] == len(deliveries), state
        pg = PostgresCPU(url) if url.startswith("postgres") else None
        logs = tmp / "worker"
        first = drain(workers, T0, env, logs, connection, pg, _phase(extra, tmp / "events.prof"))
        result: dict[str, Any] = {
            "label": label,
            "workers": workers,
            "deliveries": len(deliveries),
            "enqueue_s": round(enqueue_s, 2),
            "events": first,
        }
        if waits:
            moved = release_waits(connection, T0 + WAITS_OVER)
            second = drain(workers, T0 + WAITS_OVER, env, logs, connection, pg, _phase(extra, tmp / "waits.prof"))
            result.update(wait_jobs=moved, waits=second)
        result["queues"] = queue_state(connection)
        result["checks"] = checks(tmp, customers, len(deliveries), flows_dir is None and waits)
        result["checks"]["log_problems"] = log_problems(tmp)
        result["checks"]["failed_jobs"] = (
            result["queues"].get("failed", 0) + first.failed_jobs + (result["waits"].failed_jobs if waits else 0)
        )
        for path in tmp.glob("*.prof"):
            kept = args.dir / "scale-profiles" / f"{label}-{path.name}"
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, kept)
            result.setdefault("profiles", {})[path.stem] = {"file": str(kept), **profile_summary(kept, len(deliveries))}
    os.environ.clear()
    os.environ.update(saved)
    return result


@contextmanager
def _as_is(url: str) -> Iterator[str]:
    yield url


def _phase(extra: list[str] | None, profile_path: Path) -> list[str]:
    """A phase's worker arguments: `--cprofile {tmp}` names that phase's stats file."""
    return [str(profile_path) if arg == "{tmp}" else arg for arg in extra or []]


def log_problems(tmp: Path) -> dict[str, int]:
    """How many lines of the workers' logs name a deadlock, a unique violation, an integrity error or a traceback."""
    found: Counter[str] = Counter()
    for path in tmp.glob("worker-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            for word in LOG_PROBLEMS:
                if word in line:
                    found[word] += 1
    return {word: found[word] for word in LOG_PROBLEMS}


EXPECTED_EMAILS = {"welcome": "consenting", "thank_you_first_order": "all", "check_in_after_delivery": "all"}


def checks(tmp: Path, customers: int, deliveries: int, library: bool) -> dict[str, Any]:
    """The ledger's counts, emails per (customer, flow) from the side-effect records and the outbox files."""
    from sqlalchemy import func, select

    from encore_retention.core.archive import WebhookDelivery
    from encore_retention.core.store import session_scope
    from encore_retention.core.store.models import Customer, EventRecord, Order
    from encore_retention.flows.models import FlowEffect, FlowRun

    with session_scope() as session:
        ledger = {
            "customers": session.scalar(select(func.count()).select_from(Customer)),
            "orders": session.scalar(select(func.count()).select_from(Order)),
            "events": session.scalar(select(func.count()).select_from(EventRecord)),
            "archived_deliveries": session.scalar(select(func.count()).select_from(WebhookDelivery)),
            "customers_not_one_order": session.scalar(
                select(func.count())
                .select_from(Customer)
                .where((Customer.orders_count != 1) | (Customer.total_spent != 64))
            ),
        }
        sent = session.execute(
            select(FlowRun.customer_id, FlowRun.flow_key, func.count())
            .join(FlowEffect, FlowEffect.run_id == FlowRun.id)
            .where(FlowEffect.kind == "email", FlowEffect.status == "done")
            .group_by(FlowRun.customer_id, FlowRun.flow_key)
        ).all()
        effects = dict(
            session.execute(
                select(FlowEffect.kind + ":" + FlowEffect.status, func.count()).group_by(
                    FlowEffect.kind, FlowEffect.status
                )
            ).all()
        )
        runs = dict(
            session.execute(
                select(FlowRun.flow_key + ":" + FlowRun.status, func.count()).group_by(FlowRun.flow_key, FlowRun.status)
            ).all()
        )
    emails = Counter()
    for _customer, flow_key, count in sent:
        emails[flow_key] += count
    duplicates = sum(1 for _, _, count in sent if count > 1)
    files = sorted((tmp / "outbox").glob("*.eml")) if (tmp / "outbox").exists() else []
    seen = Counter()
    for path in files:
        with path.open("rb") as handle:
            message = email.message_from_binary_file(handle, policy=email.policy.default)
        seen[(str(message["To"]), str(message["Subject"]))] += 1
    consenting = sum(1 for n in range(customers) if n % 5 != 0)  # make_events: every fifth withholds consent
    expected = {
        "customers": customers,
        "orders": customers,
        "events": deliveries,
        "archived_deliveries": deliveries,
        "customers_not_one_order": 0,
    }
    result: dict[str, Any] = {
        "ledger": ledger,
        "ledger_ok": ledger == expected,
        "emails_by_flow": dict(emails),
        "duplicate_emails": duplicates,
        "outbox_files": len(files),
        "outbox_duplicates": sum(1 for count in seen.values() if count > 1),
        "effects": effects,
        "runs": runs,
    }
    if library:
        want = {flow: consenting if who == "consenting" else customers for flow, who in EXPECTED_EMAILS.items()}
        result["emails_expected"] = want
        got = {flow: emails.get(flow, 0) for flow in want}
        result["emails_ok"] = got == want and sum(emails.values()) == len(files)
    return result


def noop_round(
    jobs: int, args: argparse.Namespace, connection: Redis, redis_url: str, extra: list[str] | None = None
) -> Drain:
    """As many no-op RQ jobs as deliveries, drained by one worker process: RQ's own cost per job."""
    from encore_retention.core.queue import FLOWS, queue
    from encore_retention.core.store import migrate

    saved = dict(os.environ)
    with (
        tempfile.TemporaryDirectory(prefix="encore-bench-scale-noop-", dir=args.dir) as name,
        fresh_database(args.database_url) as url,
    ):
        tmp = Path(name)
        connection.flushdb()
        env = environment(url, redis_url, tmp)
        use(env, connection)
        migrate()
        q = queue(FLOWS, connection)
        with connection.pipeline() as pipe:
            for _ in range(jobs):
                q.enqueue_call("bench.flows.noop", result_ttl=600, pipeline=pipe)
            pipe.execute()
        result = drain(1, T0, env, tmp / "worker", connection, PostgresCPU(url), extra)
    os.environ.clear()
    os.environ.update(saved)
    return result


# Where a worker's time goes, by the functions that stand for each part (cumulative time, cProfile; where a
# file has several functions of the name, the one with the most time).
BREAKDOWN = (
    ("RQ: the work loop, all of it", "rq/worker/base.py", "work"),
    ("RQ: one job performed (perform_job)", "rq/worker/base.py", "perform_job"),
    ("the job's function", "rq/job.py", "_execute"),
    ("  process_delivery", "encore_retention/jobs.py", "process_delivery"),
    ("    the raw body from Redis (GET)", "encore/queue.py", "delivery_body"),
    ("    the raw body dropped (DEL)", "encore/queue.py", "forget_delivery_body"),
    ("    the receiver's parse", "webhooks/shopify.py", "parse"),
    ("    ledger: apply_event", "encore/store/ledger.py", "apply_event"),
    ("    archive: record_delivery", "encore/archive.py", "record_delivery"),
    ("    flows: handle_event", "flows/engine.py", "handle_event"),
    ("      start_and_drive", "flows/engine.py", "start_and_drive"),
    ("      _admit (conditions, entry rules)", "flows/engine.py", "_admit"),
    ("      exit_runs", "flows/engine.py", "exit_runs"),
    ("      advance (runs at a side effect)", "flows/engine.py", "advance"),
    ("      schedule (wake jobs)", "flows/engine.py", "schedule"),
    ("  wake_due", "flows/engine.py", "wake_due"),
    ("send_email step", "flows/steps.py", "step_send_email"),
    ("  render_email", "flows/render.py", "render_email"),
    ("  connectors.email.send (MIME, outbox file)", "connectors/email/__init__.py", "send"),
    ("create_discount step", "flows/steps.py", "step_create_discount"),
    ("a side effect's claim (_claim, with its commit)", "flows/steps.py", "_claim"),
    ("Session.commit (all)", "sqlalchemy/orm/session.py", "commit"),
    ("Session.flush (unit of work)", "sqlalchemy/orm/session.py", "flush"),
    ("Connection.execute (SQLAlchemy core, all)", "sqlalchemy/engine/base.py", "execute"),
    ("psycopg: waiting on the server", "psycopg/connection.py", "wait"),
    ("pool checkout (with pre-ping)", "sqlalchemy/pool/base.py", "checkout"),
    ("redis-py: commands", "redis/client.py", "execute_command"),
    ("redis-py: pipelines", "redis/client.py", "execute"),
    ("logging: records handled", "logging/__init__.py", "handle"),
    ("  JSON log formatting", "encore/logs.py", "format"),
    ("prometheus metrics", "prometheus_client/metrics.py", "inc"),
    ("Event.to_dict", "encore/events.py", "to_dict"),
)


def profile_summary(path: Path, events: int, limit: int = 25) -> dict[str, Any]:
    """A cProfile file as figures per event: the parts above, and the top functions by own time."""
    stats = pstats.Stats(str(path))
    parts = []
    for label, file, function in BREAKDOWN:
        calls, cumulative = 0, 0.0
        for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if name == function and filename.endswith(file):
                if ct > cumulative:  # same-named functions of one file nest (Session.commit, Logger.handle): the outer
                    calls, cumulative = nc, ct
        if calls:
            parts.append(
                {
                    "part": label,
                    "ms_per_event": round(1000 * cumulative / events, 3),
                    "calls_per_event": round(calls / events, 2),
                }
            )
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).strip_dirs().sort_stats("tottime").print_stats(limit)
    top = [line for line in out.getvalue().splitlines() if re.match(r"\s+\d", line)]
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).strip_dirs().sort_stats("cumulative").print_stats(limit + 15)
    cumulative = [line for line in out.getvalue().splitlines() if re.match(r"\s+\d", line)]
    return {
        "total_s": round(stats.total_tt, 3),
        "parts": parts,
        "top_own_time": top,  # type: ignore[attr-defined]
        "top_cumulative": cumulative,
    }


# ---- figures -----------------------------------------------------------------------------------------


def figures(result: dict[str, Any], cores: int) -> dict[str, Any]:
    """Rates and CPU per event of one round."""
    n = result["deliveries"]
    first: Drain = result["events"]
    out: dict[str, Any] = {
        "workers": result["workers"],
        "events_per_s": round(n / first.seconds, 1),
        "seconds": round(first.seconds, 2),
        "start_s": round(first.start_s, 2),
    }

    def per_event(drains: list[Drain]) -> dict[str, Any]:
        worker = sum(d.worker_cpu_s for d in drains)
        postgres = (
            sum(d.postgres_cpu_s or 0.0 for d in drains) if all(d.postgres_cpu_s is not None for d in drains) else None
        )
        redis = sum(d.redis_cpu_s for d in drains)
        total = worker + (postgres or 0.0) + redis
        wall = sum(d.seconds for d in drains)
        others = sum(d.machine_cpu_s for d in drains) - total
        return {
            "worker_ms": round(1000 * worker / n, 2),
            "postgres_ms": round(1000 * postgres / n, 2) if postgres is not None else None,
            "redis_ms": round(1000 * redis / n, 2),
            "total_ms": round(1000 * total / n, 2),
            "cpu_busy": round(total / (wall * cores), 2),
            "others_cores": round(max(others, 0.0) / wall, 2),
        }  # other processes' CPU, in cores

    out["cpu_per_event"] = per_event([first])
    if "waits" in result:
        second: Drain = result["waits"]
        out.update(
            wait_jobs=result["wait_jobs"],
            wait_seconds=round(second.seconds, 2),
            with_waits_per_s=round(n / (first.seconds + second.seconds), 1),
            cpu_per_event_with_waits=per_event([first, second]),
        )
    return out


def counts_per_event(result: dict[str, Any]) -> dict[str, Any]:
    """The `--count` reports of a round's processes, per delivery, phases apart and together."""
    n = result["deliveries"]

    def merged(drains: list[Drain]) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for drain_ in drains:
            for report in drain_.reports:
                for key, value in report["counts"].items():
                    if isinstance(value, dict):
                        bucket = total.setdefault(key, Counter())
                        for name, amount in value.items():
                            bucket[name] += amount
                    else:
                        total[key] = total.get(key, 0) + value
        statements = sum(total["statements"].values())
        transaction = total["transaction"]
        redis_trips = sum(total["redis_trips"].values())
        wall = sum(d.seconds for d in drains)
        sql_s = sum(total["statement_seconds"].values())
        tx_s = sum(total["transaction_seconds"].values())
        return {
            "statements": round(statements / n, 2),
            "statements_by_kind": {k: round(v / n, 3) for k, v in total["statements"].most_common()},
            "statement_ms_by_kind": {
                k: round(1000 * total["statement_seconds"][k] / n, 3) for k, _ in total["statements"].most_common()
            },
            "executemany_rows": {k: round(v / n, 3) for k, v in total["rows"].items()},
            "transaction_commands": {k: round(v / n, 2) for k, v in transaction.items()},
            "transaction_ms": {k: round(1000 * v / n, 3) for k, v in total["transaction_seconds"].items()},
            "pool_checkouts": round(total["checkouts"] / n, 2),
            "database_round_trips": round((statements + sum(transaction.values())) / n, 2),
            "redis_round_trips": round(redis_trips / n, 2),
            "redis_round_trips_by_command": {k: round(v / n, 2) for k, v in total["redis_trips"].most_common()},
            "redis_commands": round(sum(total["redis_commands"].values()) / n, 2),
            "redis_commands_by_name": {k: round(v / n, 2) for k, v in total["redis_commands"].most_common()},
            "ms_per_event": round(1000 * wall / n, 3),
            "sql_ms": round(1000 * sql_s / n, 3),
            "transaction_control_ms": round(1000 * tx_s / n, 3),
            "redis_ms": round(1000 * total["redis_seconds"] / n, 3),
        }

    out = {"events": merged([result["events"]])}
    if "waits" in result:
        out["waits"] = merged([result["waits"]])
        out["together"] = merged([result["events"], result["waits"]])
    return out


def all_ok(result: dict[str, Any]) -> bool:
    c = result["checks"]
    return (
        not any(c["log_problems"].values())
        and not c["failed_jobs"]
        and not c["duplicate_emails"]
        and not c["outbox_duplicates"]
        and c["ledger_ok"]
        and c.get("emails_ok", True)
        and not result["queues"].get("queued")
        and not result["queues"].get("started")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=2400)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a scratch PostgreSQL database to use (emptied before each round); "
        "default: a fresh database per round on 127.0.0.1:5432, dropped afterwards",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per worker count (and per what-if), alternating; each figure is the best",
    )
    parser.add_argument("--wave", type=int, default=50, help="customers per wave of the delivery order")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one worker on PostgreSQL and on SQLite (statements, round trips, cProfile)",
    )
    parser.add_argument("--no-scale", action="store_true", help="no scale rounds (with --profile or --experiments)")
    parser.add_argument(
        "--experiments",
        default="",
        help="what-if rounds, comma-separated, each one or more of "
        f"{', '.join((*EXPERIMENTS, SYNC_COMMIT_OFF))} joined by '+' (see bench/_scale_worker.py)",
    )
    parser.add_argument("--experiment-workers", default="1,4", help="worker counts of the what-if rounds")
    parser.add_argument(
        "--dir",
        type=Path,
        default=ROOT / "bench" / "out",
        help="where outboxes, logs and the SQLite file go (default bench/out, the project's disk)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.database_url:
        from encore_retention.core.store import normalise_url

        args.database_url = normalise_url(args.database_url).replace("postgresql+psycopg://", "postgresql://")
    args.dir.mkdir(parents=True, exist_ok=True)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    cores = os.cpu_count() or 1
    deliveries, customers = make_deliveries(args.deliveries, args.wave)
    output: dict[str, Any] = {"deliveries": len(deliveries), "customers": customers, "cores": cores}
    ok = True
    with redis_database() as (redis_url, connection):
        if not args.no_scale:
            baseline = noop_round(len(deliveries), args, connection, redis_url)
            noop_rate = len(deliveries) / baseline.seconds
            output["noop_jobs_per_s"] = round(noop_rate, 1)
            output["noop_cpu_ms_per_job"] = {
                "worker": round(1000 * baseline.worker_cpu_s / len(deliveries), 3),
                "redis": round(1000 * baseline.redis_cpu_s / len(deliveries), 3),
            }
            rounds = []
            tries: dict[int, list[dict[str, Any]]] = {workers: [] for workers in counts}
            for _ in range(args.repeat):  # alternating, so that a busy moment of the machine hits every count alike
                for workers in counts:
                    result = run_round(workers, deliveries, customers, args, connection, redis_url, f"w{workers}")
                    row = figures(result, cores)
                    row["ratio_vs_noop"] = round(row["events_per_s"] / noop_rate, 3)
                    row["checks"] = result["checks"]
                    row["queues"] = result["queues"]
                    row["ok"] = all_ok(result)
                    ok &= row["ok"]
                    tries[workers].append(row)
            rounds = []
            for rows in tries.values():
                row = max(rows, key=lambda r: r["events_per_s"])
                row["events_per_s_tries"] = [r["events_per_s"] for r in rows]
                if "with_waits_per_s" in row:
                    row["with_waits_per_s_tries"] = [r["with_waits_per_s"] for r in rows]
                row["ok"] = all(r["ok"] for r in rows)
                rounds.append(row)
            base = next((r for r in rounds if r["workers"] == 1), rounds[0])
            for row in rounds:
                row["scaling"] = round(row["events_per_s"] / base["events_per_s"], 2)
                if "with_waits_per_s" in row:
                    row["scaling_with_waits"] = round(row["with_waits_per_s"] / base["with_waits_per_s"], 2)
            output["rounds"] = rounds
            best = max(rounds, key=lambda r: r["events_per_s"])
            output["best_workers"] = best["workers"]
        if args.experiments:
            output["experiments"] = experiments(deliveries, customers, args, connection, redis_url, cores)
            ok &= all(row["ok"] for row in output["experiments"])
        if args.profile:
            output["profile"] = profile(deliveries, customers, args, connection, redis_url, cores)
            ok &= all(p.get("ok", True) for p in output["profile"].values() if isinstance(p, dict))
    output["ok"] = ok
    if args.json:
        print(json.dumps(output, indent=2, default=str))
    else:
        report(output)
    return 0 if ok else 1


def experiments(
    deliveries: list[Delivery], customers: int, args: argparse.Namespace, connection: Redis, redis_url: str, cores: int
) -> list[dict[str, Any]]:
    """The what-if rounds: the product as it is ("none"), then with each set of proposed changes simulated."""
    sets = ["none", *[name.strip() for name in args.experiments.split(",") if name.strip()]]
    tries: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for workers in [int(w) for w in args.experiment_workers.split(",") if w.strip()]:
            for what in sets:
                names = [] if what == "none" else what.split("+")
                unknown = set(names) - {*EXPERIMENTS, SYNC_COMMIT_OFF}
                if unknown:
                    raise SystemExit(f"unknown experiment {', '.join(sorted(unknown))}")
                extra = [arg for name in names if name != SYNC_COMMIT_OFF for arg in ("--experiment", name)]
                settings = {"synchronous_commit": "off"} if SYNC_COMMIT_OFF in names else None
                result = run_round(
                    workers,
                    deliveries,
                    customers,
                    args,
                    connection,
                    redis_url,
                    f"x{workers}",
                    extra=extra,
                    pg_settings=settings,
                )
                row = figures(result, cores)
                row.update(experiment=what, ok=all_ok(result))
                if workers == 1:  # RQ's own cost per job, changed the same way
                    noop = noop_round(len(deliveries), args, connection, redis_url, extra)
                    row["noop_jobs_per_s"] = round(len(deliveries) / noop.seconds, 1)
                    row["noop_cpu_ms_per_job"] = {
                        "worker": round(1000 * noop.worker_cpu_s / len(deliveries), 3),
                        "redis": round(1000 * noop.redis_cpu_s / len(deliveries), 3),
                    }
                tries.setdefault((workers, what), []).append(row)
    rows = []
    for group in tries.values():
        row = max(group, key=lambda r: r["events_per_s"])
        row["events_per_s_tries"] = [r["events_per_s"] for r in group]
        row["median_events_per_s"] = sorted(row["events_per_s_tries"])[len(group) // 2]
        if "noop_jobs_per_s" in row:
            row["noop_jobs_per_s_tries"] = [r["noop_jobs_per_s"] for r in group]
            row["noop_worker_cpu_ms_tries"] = [r["noop_cpu_ms_per_job"]["worker"] for r in group]
        row["ok"] = all(r["ok"] for r in group)
        rows.append(row)
    return rows


def profile(
    deliveries: list[Delivery], customers: int, args: argparse.Namespace, connection: Redis, redis_url: str, cores: int
) -> dict[str, Any]:
    """One worker on PostgreSQL and on SQLite: rates, round trips per event, cProfile; and PostgreSQL without flows."""
    out: dict[str, Any] = {}
    sqlite_dir = Path(tempfile.mkdtemp(prefix="encore-bench-scale-sqlite-", dir=args.dir))
    empty = sqlite_dir / "no-flows"
    empty.mkdir()
    try:
        for backend in ("postgresql", "sqlite"):
            database = None if backend == "postgresql" else f"sqlite:///{sqlite_dir / 'encore.db'}"
            runs = {}
            for mode, extra in (("plain", []), ("count", ["--count"]), ("cprofile", ["--cprofile", "{tmp}"])):
                if database is not None:
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(sqlite_dir / "encore.db") + suffix).unlink(missing_ok=True)
                runs[mode] = run_round(
                    1,
                    deliveries,
                    customers,
                    args,
                    connection,
                    redis_url,
                    f"{backend}-{mode}",
                    database=database,
                    extra=extra,
                )
            plain = runs["plain"]
            out[backend] = {
                "figures": figures(plain, cores),
                "ok": all(all_ok(r) for r in runs.values()),
                "counts": counts_per_event(runs["count"]),
                "cprofile": runs["cprofile"].get("profiles", {}),
                "checks": plain["checks"],
            }
        ledger = run_round(
            1, deliveries, customers, args, connection, redis_url, "ledger", flows_dir=empty, waits=False
        )
        out["postgresql_no_flows"] = {"figures": figures(ledger, cores), "ok": all_ok(ledger)}
        out["operations"] = operations(args, connection, redis_url)
    finally:
        shutil.rmtree(sqlite_dir, ignore_errors=True)
    return out


def operations(args: argparse.Namespace, connection: Redis, redis_url: str) -> dict[str, Any]:
    """bench/_scale_ops.py against a fresh database and the Redis database: what each round trip costs here."""
    saved = dict(os.environ)
    with (
        tempfile.TemporaryDirectory(prefix="encore-bench-scale-ops-", dir=args.dir) as name,
        fresh_database(args.database_url) as url,
    ):
        connection.flushdb()
        env = environment(url, redis_url, Path(name))
        done = subprocess.run(
            [sys.executable, str(BENCH / "_scale_ops.py")], env=env, cwd=ROOT, capture_output=True, text=True
        )
        connection.flushdb()
    os.environ.clear()
    os.environ.update(saved)
    if done.returncode:
        raise RuntimeError(f"bench/_scale_ops.py failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(output: dict[str, Any]) -> None:
    """The figures as text."""
    print(f"{output['deliveries']} webhook deliveries of {output['customers']} new customers, {output['cores']} cores")
    if "rounds" in output:
        print(
            f"baseline: {output['deliveries']} no-op RQ jobs, one worker process: {output['noop_jobs_per_s']} jobs/s "
            f"(CPU per job: worker {output['noop_cpu_ms_per_job']['worker']} ms, "
            f"Redis {output['noop_cpu_ms_per_job']['redis']} ms)"
        )
        for row in output["rounds"]:
            cpu = row["cpu_per_event"]
            tries = f" (of {row['events_per_s_tries']})" if len(row.get("events_per_s_tries", [])) > 1 else ""
            print(
                f"{row['workers']} worker(s): {row['events_per_s']} events/s{tries} ({row['seconds']} s), scaling "
                f"{row['scaling']}x, {row['ratio_vs_noop']} x no-op; CPU per event: workers {cpu['worker_ms']} ms, "
                f"PostgreSQL {cpu['postgres_ms']} ms, Redis {cpu['redis_ms']} ms = {cpu['total_ms']} ms "
                f"({cpu['cpu_busy']:.0%} of the cores; other processes meanwhile {cpu['others_cores']} cores)"
            )
            if "with_waits_per_s" in row:
                cpu = row["cpu_per_event_with_waits"]
                tries = (
                    f" (of {row['with_waits_per_s_tries']})" if len(row.get("with_waits_per_s_tries", [])) > 1 else ""
                )
                print(
                    f"    then {row['wait_jobs']} wake jobs in {row['wait_seconds']} s: with waits "
                    f"{row['with_waits_per_s']} events/s{tries}, scaling {row['scaling_with_waits']}x; CPU per event "
                    f"{cpu['worker_ms']} + {cpu['postgres_ms']} + {cpu['redis_ms']} = {cpu['total_ms']} ms"
                )
            c = row["checks"]
            print(
                f"    checks: {'PASS' if row['ok'] else 'FAIL'}; log problems {c['log_problems']}, failed jobs "
                f"{c['failed_jobs']}, left {row['queues']}, duplicate emails {c['duplicate_emails']} "
                f"(outbox {c['outbox_duplicates']} of {c['outbox_files']} files), emails {c['emails_by_flow']}"
                f"{'' if c.get('emails_ok', True) else ' expected ' + str(c.get('emails_expected'))}, "
                f"ledger {'ok' if c['ledger_ok'] else c['ledger']}"
            )
        print(f"best: {output['best_workers']} worker(s)")
    if "experiments" in output:
        print("\nwhat-if rounds (bench/_scale_worker.py --experiment; the product's files unchanged):")
        for row in output["experiments"]:
            cpu, both = row["cpu_per_event"], row.get("cpu_per_event_with_waits", {})
            tries = f" (of {row['events_per_s_tries']})" if len(row.get("events_per_s_tries", [])) > 1 else ""
            print(
                f"  {row['workers']} worker(s), {row['experiment']:<40} {row['events_per_s']:6.1f} events/s{tries}, "
                f"with waits {row.get('with_waits_per_s')}; CPU per event {cpu['worker_ms']} + "
                f"{cpu['postgres_ms']} + {cpu['redis_ms']} = {cpu['total_ms']} ms (with waits "
                f"{both.get('total_ms')} ms); others {cpu['others_cores']} cores"
                f"{'' if row['ok'] else '  CHECKS FAILED'}"
            )
            if "noop_jobs_per_s" in row:
                print(
                    f"      no-op RQ jobs, one process: {row['noop_jobs_per_s_tries']} jobs/s, worker CPU per job "
                    f"{row['noop_worker_cpu_ms_tries']} ms"
                )
    if "profile" in output:
        for backend in ("postgresql", "sqlite"):
            p = output["profile"][backend]
            f, cpu = p["figures"], p["figures"]["cpu_per_event"]
            print(
                f"\n== one worker on {backend}: {f['events_per_s']} events/s, with waits {f.get('with_waits_per_s')}"
                f"; CPU per event: worker {cpu['worker_ms']} ms, database {cpu['postgres_ms']} ms, "
                f"Redis {cpu['redis_ms']} ms"
            )
            for phase, c in p["counts"].items():
                print(
                    f"  [{phase}] per event: {c['statements']} SQL statements + {c['transaction_commands']} "
                    f"({c['pool_checkouts']} pool checkouts) = {c['database_round_trips']} database calls; "
                    f"{c['redis_round_trips']} Redis round trips ({c['redis_commands']} commands); wall "
                    f"{c['ms_per_event']} ms, of which waiting on: SQL {c['sql_ms']} ms, "
                    f"BEGIN/COMMIT/pre-ping {c['transaction_control_ms']} ms, Redis {c['redis_ms']} ms"
                )
                if phase != "together":
                    for kind, count in c["statements_by_kind"].items():
                        print(f"      {count:7.3f}  {c['statement_ms_by_kind'][kind]:7.3f} ms  {kind}")
                    print("      Redis: " + ", ".join(f"{k} {v}" for k, v in c["redis_round_trips_by_command"].items()))
            for phase, summary in p["cprofile"].items():
                print(f"  cProfile [{phase}] (times under the profiler, per event; {summary['file']}):")
                for part in summary["parts"]:
                    print(f"      {part['ms_per_event']:8.3f} ms  {part['calls_per_event']:6.2f} calls  {part['part']}")
                print("    top functions by cumulative time: ncalls tottime percall cumtime percall")
                print("\n".join("    " + line for line in summary["top_cumulative"][:40]))
                print("    top functions by own time: ncalls tottime percall cumtime percall")
                print("\n".join("    " + line for line in summary["top_own_time"][:15]))
        f = output["profile"]["postgresql_no_flows"]["figures"]
        print(
            f"\n== one worker on PostgreSQL with no flows (ledger and archive only): {f['events_per_s']} events/s; "
            f"CPU per event {f['cpu_per_event']}"
        )
        print("\n== one operation as a worker does it (bench/_scale_ops.py): wall, this process's CPU, server CPU, µs")
        for name, cost in output["profile"]["operations"].items():
            print(f"  {cost['wall_us']:8.1f} {cost['cpu_us']:8.1f} {cost['server_cpu_us']:8.1f}  {name}")
    print("PASS" if output["ok"] else "FAIL")


if __name__ == "__main__":
    sys.exit(main())
