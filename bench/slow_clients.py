"""Slow clients against the web process: does /healthz (and a signed webhook) still answer?

    .venv/bin/python bench/slow_clients.py [--stalled 2,16,64,256] [--probes 10] [--only before|web] [--json]

For each gunicorn configuration (the old one, `--worker-class sync --workers 4`, and the web
process's own, `webhooks.server`), it starts the receivers on a free port against
the real Redis (a claimed database, like the test suite) and a migrated SQLite file, then for each
count K in `--stalled` opens K connections that stall:
  - half send a webhook's headers (Content-Length 15,000) and 100 bytes of body, then nothing;
  - half send half a request line and headers, then nothing (slowloris).
While they hold, it sends `--probes` GET /healthz and signed Shopify webhooks one after the other
and prints the p50 and max latency of each, and how long the server took to drop the stalled
connections. A probe that takes longer than 60 s counts as 60 s. The figures go in the README.
Exit status 1 when the web process's own configuration answered a probe slower than 2 s while
fewer clients stalled than it has threads (4 workers x `threads`); beyond that, new requests wait
their turn until the stalled ones time out (READ_TIMEOUT), which the figures show.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _load import percentile, sign  # bench/ is this script's directory
from _redis import redis_database
from ingest import PAYLOAD, ROOT, SECRET, gunicorn

PROBE_TIMEOUT = 60.0
GOAL_S = 2.0


def stall(port: int, count: int) -> list[socket.socket]:
    """Open `count` connections that stop sending halfway: bodies and headers by turns."""
    held = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2 == 0:
            sock.sendall(
                b"POST /webhooks/shopify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 15000\r\n\r\n" + b"{" * 100
            )
        else:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: local")
        held.append(sock)
    return held


def dropped_after(held: list[socket.socket], started: float, limit: float) -> float | None:
    """Seconds until the server closed every stalled connection (None if some still hold after `limit`)."""
    for sock in held:
        sock.settimeout(max(0.01, started + limit - time.monotonic()))
        try:
            while sock.recv(4096):
                pass
        except OSError:
            return None
    return time.monotonic() - started


def probe(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[float, int]:
    """One request on a new connection: (seconds, status), status 0 when it failed or timed out."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        answer = connection.getresponse()
        answer.read()
        status = answer.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return min(time.monotonic() - started, PROBE_TIMEOUT), status


def webhook_headers(body: bytes) -> dict[str, str]:
    """Headers of a signed Shopify orders/create delivery, a new delivery each time."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": sign(body, SECRET),
        "X-Shopify-Shop-Domain": "bench.myshopify.com",
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-API-Version": "2025-10",
    }


def measure(port: int, stalled: int, probes: int) -> dict:
    """Figures for one configuration with `stalled` slow clients holding on."""
    body = PAYLOAD.read_bytes()
    held = stall(port, stalled)
    started = time.monotonic()
    time.sleep(0.5)  # let the server take them in
    health, hooks, statuses = [], [], {}
    for _ in range(probes):
        seconds, status = probe(port, "GET", "/healthz")
        health.append(seconds)
        statuses[f"healthz {status}"] = statuses.get(f"healthz {status}", 0) + 1
        seconds, status = probe(port, "POST", "/webhooks/shopify", body, webhook_headers(body))
        hooks.append(seconds)
        statuses[f"webhook {status}"] = statuses.get(f"webhook {status}", 0) + 1
    dropped = dropped_after(held, started, 90.0)
    for sock in held:
        sock.close()
    health.sort()
    hooks.sort()
    return {
        "stalled": stalled,
        "healthz_p50_s": percentile(health, 0.5),
        "healthz_max_s": health[-1],
        "webhook_p50_s": percentile(hooks, 0.5),
        "webhook_max_s": hooks[-1],
        "statuses": statuses,
        "stalled_dropped_after_s": dropped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stalled", default="2,16,64,256", help="comma-separated counts of stalled clients")
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--only", choices=["before", "web"], help="measure one configuration only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from encore_retention.core.store import migrate
    from encore_retention.web import server
    from encore_retention.web.server import gunicorn_options

    configurations = {
        "sync x4 (before)": ["--worker-class", "sync", "--workers", "4", "--log-level", "critical"],
        "web process": [*gunicorn_options(workers=4), "--log-level", "critical"],
    }
    if args.only:
        configurations = {k: v for k, v in configurations.items() if (k == "web process") == (args.only == "web")}
    counts = [int(c) for c in args.stalled.split(",")]
    results = []
    with redis_database() as (redis_url, _redis), tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        cwd = Path(tmp)
        database = f"sqlite:///{cwd / 'encore.db'}"
        migrate(database)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPIFY_", "REDIS_", "DATABASE_"))}
        env |= {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database,
            "SHOPIFY_API_SECRET": SECRET,
            "SECRET_KEY": "bench-secret-key",
            "ENCORE_DATA_DIR": str(cwd / "data"),
            "EMAIL_URL": f"file://{cwd / 'outbox'}",
            "PYTHONPATH": str(ROOT),
        }
        for name, options in configurations.items():
            for count in counts:
                with gunicorn("webhooks:create_app()", options, env, cwd, cwd / "web.log") as (port, _pid):
                    figures = measure(port, count, args.probes)
                figures["configuration"] = name
                results.append(figures)
                if not args.json:
                    dropped = figures["stalled_dropped_after_s"]
                    print(
                        f"{name:<18} stalled {count:>3}: /healthz p50 {figures['healthz_p50_s']:.3f} s "
                        f"max {figures['healthz_max_s']:.3f} s; webhook p50 {figures['webhook_p50_s']:.3f} s "
                        f"max {figures['webhook_max_s']:.3f} s; stalled dropped after "
                        f"{'never (90 s)' if dropped is None else f'{dropped:.1f} s'}; {figures['statuses']}",
                        flush=True,
                    )
    capacity = 4 * server.threads  # stalled clients the web process's threads can hold at once
    own = [r for r in results if r["configuration"] == "web process" and r["stalled"] < capacity]
    passed = all(r["healthz_max_s"] < GOAL_S and r["webhook_max_s"] < GOAL_S for r in own)
    if args.json:
        print(json.dumps({"results": results, "pass": passed}, indent=2))
    else:
        print(
            "PASS"
            if passed
            else f"FAIL: with fewer than {capacity} clients stalled, the web process answered "
            f"a probe slower than {GOAL_S:g} s"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
