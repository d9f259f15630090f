"""What one round trip or one per-job step costs on this machine, for bench/scale.py's profile.

    .venv/bin/python bench/_scale_ops.py [--count 3000]     (DATABASE_URL and REDIS_URL from the environment)

Each operation is timed over `--count` repetitions, in alternating rounds (the best round kept), as
the worker does it: wall time per operation, this process's CPU per operation, and the server's CPU
per operation (the PostgreSQL backend's from /proc, Redis's from INFO cpu). Prints one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/: the product's `flows` package, not bench/flows.py

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


def backend_cpu(pid: int | None) -> float:
    """CPU seconds of a local process (a PostgreSQL backend) so far; 0.0 where /proc can't tell."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    operations: dict[str, Callable[[], Any]], count: int, rounds: int, server: Callable[[], float]
) -> dict[str, dict[str, float]]:
    """Per operation: the best round's wall µs, this process's CPU µs and the server's CPU µs per call."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, operation in operations.items():
            operation()  # warm
            served, cpu, started = server(), time.process_time(), time.perf_counter()
            for _ in range(count):
                operation()
            wall = time.perf_counter() - started
            figures = {
                "wall_us": 1e6 * wall / count,
                "cpu_us": 1e6 * (time.process_time() - cpu) / count,
                "server_cpu_us": 1e6 * (server() - served) / count,
            }
            if name not in best or figures["wall_us"] < best[name]["wall_us"]:
                best[name] = figures
    return {name: {key: round(value, 1) for key, value in figures.items()} for name, figures in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from sqlalchemy import event, text

    from encore_retention.core import logs
    from encore_retention.core.queue import get_redis
    from encore_retention.core.store import get_engine, migrate, session_scope
    from encore_retention.core.store.ledger import _SHOP, get_or_create_shop

    migrate()
    redis = get_redis()
    info = redis.info

    def redis_cpu() -> float:
        cpu = info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def pipeline3() -> None:
        with redis.pipeline(transaction=False) as pipe:
            pipe.hset("bench:ops", "last_heartbeat", "x")
            pipe.expire("bench:ops", 480)
            pipe.expire("bench:ops:executions", 480)
            pipe.execute()

    def separate3() -> None:
        redis.hset("bench:ops", "last_heartbeat", "x")
        redis.expire("bench:ops", 480)
        redis.expire("bench:ops:executions", 480)

    def thread_per_job() -> None:  # as worker.EncoreWorker.execute_job beats while a job runs
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(10):
                pass

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        stop.set()
        thread.join()

    wake = threading.Event()
    idle = threading.Event()

    def beater() -> None:
        while True:
            wake.wait()
            wake.clear()
            idle.set()

    threading.Thread(target=beater, daemon=True).start()

    def long_lived_thread() -> None:  # one beating thread per process, told when a job starts
        idle.clear()
        wake.set()
        idle.wait()

    logs.setup()
    log = logging.getLogger("encore.jobs")
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger().handlers:
        handler.setStream(sink)  # type: ignore[attr-defined]

    def log_line() -> None:
        log.info("event applied to the ledger", extra={"new": True, "customer_id": 12345})

    redis_ops = measure(
        {
            "Redis: one command (HSET), its own round trip": lambda: redis.hset("bench:ops", "f", "v"),
            "Redis: HSET + 2 EXPIRE, three round trips (a worker heartbeat)": separate3,
            "Redis: HSET + 2 EXPIRE in one pipeline": pipeline3,
            "a thread started and joined per job": thread_per_job,
            "a long-lived thread woken per job": long_lived_thread,
            "a JSON log line at INFO (encore.logs)": log_line,
        },
        args.count,
        args.rounds,
        redis_cpu,
    )
    redis.delete("bench:ops")

    engine = get_engine()
    backends: set[int] = set()
    event.listen(engine, "connect", lambda dbapi, _record: backends.add(dbapi.info.backend_pid))
    engine.dispose()  # every connection from now on is a known backend
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS bench_ops (id serial PRIMARY KEY, v text)"))
    with session_scope() as session:
        get_or_create_shop(session, "shopify", "bench.myshopify.com")

    def pg_cpu() -> float:
        return sum(backend_cpu(pid) for pid in backends)

    def session_with_select(pre_ping: bool) -> Callable[[], None]:
        def run() -> None:
            engine.pool._pre_ping = pre_ping
            with session_scope() as session:
                session.execute(_SHOP, {"platform": "shopify", "domain": "bench.myshopify.com"}).scalar_one()

        return run

    def commit_insert(synchronous: bool) -> Callable[[], None]:
        def run() -> None:
            with engine.begin() as connection:
                if not synchronous:
                    connection.execute(text("SET LOCAL synchronous_commit = off"))
                connection.execute(text("INSERT INTO bench_ops (v) VALUES ('x')"))

        return run

    database_ops = measure(
        {
            "PostgreSQL: a session with one SELECT shops (ORM), pre-ping on": session_with_select(True),
            "PostgreSQL: a session with one SELECT shops (ORM), pre-ping off": session_with_select(False),
            "PostgreSQL: BEGIN, INSERT, COMMIT (synchronous_commit on)": commit_insert(True),
            "PostgreSQL: BEGIN, SET LOCAL synchronous_commit off, INSERT, COMMIT": commit_insert(False),
        },
        args.count,
        args.rounds,
        pg_cpu,
    )
    engine.pool._pre_ping = True
    with session_scope() as session:  # one statement inside an open transaction, as the ledger sends them
        session.execute(text("SELECT 1"))

        def select_shop() -> None:
            session.execute(_SHOP, {"platform": "shopify", "domain": "bench.myshopify.com"}).scalar_one()

        def select_one() -> None:
            session.connection().exec_driver_sql("SELECT 1").scalar()

        database_ops.update(
            measure(
                {
                    "PostgreSQL: SELECT shops (ORM) inside a transaction": select_shop,
                    "PostgreSQL: SELECT 1 inside a transaction (driver)": select_one,
                },
                args.count,
                args.rounds,
                pg_cpu,
            )
        )
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE bench_ops"))
    print(json.dumps({**redis_ops, **database_ops}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
