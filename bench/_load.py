"""Load generator for bench/ingest.py: signed Shopify deliveries from N threads, timed one by one.

Run as its own process so that it doesn't share an interpreter with the server. Every request is
built up front (raw HTTP/1.1 bytes: the same body and signature, a unique `X-Shopify-Webhook-Id`),
so the timed loop only writes bytes and reads the answer. Connections are kept alive when the server
allows it and reopened when it closes them (gunicorn's sync workers close after every answer); the
connect time then counts in that request's latency. Prints one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import math
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

SHOP = "encore-bench.myshopify.com"


def sign(body: bytes, secret: str) -> str:
    """base64(HMAC-SHA256(body, secret)), as Shopify signs a delivery."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def build_requests(body: bytes, count: int, *, host: str, path: str, topic: str, secret: str) -> list[bytes]:
    """`count` raw POST requests, each a new delivery of the same signed body."""
    signature = sign(body, secret)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Shopify-Topic: {topic}\r\nX-Shopify-Shop-Domain: {SHOP}\r\n"
        f"X-Shopify-Hmac-Sha256: {signature}\r\nX-Shopify-API-Version: 2026-04\r\n"
        "X-Shopify-Triggered-At: 2026-11-20T10:00:00.000Z\r\n"
    )
    return [
        (head + f"X-Shopify-Webhook-Id: {uuid.uuid4()}\r\nX-Shopify-Event-Id: {uuid.uuid4()}\r\n\r\n").encode() + body
        for _ in range(count)
    ]


class ServerClosed(Exception):
    """The server closed a kept-alive connection before answering."""


def read_response(sock: socket.socket) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; (status, whether the server will close the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ServerClosed
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ServerClosed
        rest += chunk
    closing = headers.get("connection") == "close" or version == "HTTP/1.0"
    return int(status), closing


def run(address: tuple[str, int], requests: list[bytes], concurrency: int) -> dict:
    """Send every request from `concurrency` threads; the figures as a dict."""
    latencies: list[float] = [0.0] * len(requests)
    statuses: list[int] = [0] * len(requests)
    errors: list[str] = []
    reconnects = itertools.count()
    order = itertools.count()  # next() is atomic under the GIL: each index is taken once

    def connect() -> socket.socket:
        sock = socket.create_connection(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        next(reconnects)
        return sock

    def client() -> None:
        sock: socket.socket | None = None
        while (index := next(order)) < len(requests):
            for attempt in range(2):
                started = time.perf_counter()
                try:
                    fresh = sock is None
                    if sock is None:
                        sock = connect()
                    sock.sendall(requests[index])
                    status, closing = read_response(sock)
                except (ServerClosed, ConnectionResetError, BrokenPipeError) as exc:
                    if sock is not None:
                        sock.close()
                    sock = None
                    if fresh or attempt:  # a new connection failing is an error, not an idle keep-alive
                        errors.append(f"{type(exc).__name__}: {exc}")
                        statuses[index] = -1
                        break
                    continue
                latencies[index] = time.perf_counter() - started
                statuses[index] = status
                if closing:
                    sock.close()
                    sock = None
                break
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    cpu = time.process_time()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    done = sorted(lat for lat, status in zip(latencies, statuses, strict=True) if status > 0)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {
        "requests": len(requests),
        "concurrency": concurrency,
        "elapsed_s": elapsed,
        "throughput": len(requests) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(done, 0.50) * 1000,
        "p99_ms": percentile(done, 0.99) * 1000,
        "max_ms": (done[-1] if done else 0.0) * 1000,
        "statuses": counts,
        "errors": errors[:5],
        "connections": next(reconnects),
        "load_cpu": cpu / elapsed if elapsed else 0.0,
        "latencies_ms": [lat * 1000 for lat in done],
    }


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of an ordered list (0.0 for an empty one)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, send the load, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/webhooks/shopify")
    parser.add_argument("--topic", default="orders/create")
    parser.add_argument("--body", type=Path, required=True, help="the JSON payload file")
    parser.add_argument("--secret", required=True, help="the Shopify app secret to sign with")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    body = args.body.read_bytes()
    requests = build_requests(
        body, args.requests, host=f"{args.host}:{args.port}", path=args.path, topic=args.topic, secret=args.secret
    )
    json.dump(run((args.host, args.port), requests, args.concurrency), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
