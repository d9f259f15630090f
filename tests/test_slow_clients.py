"""Slow clients against the Procfile's web process: they are dropped, and everyone else is answered.

The web process is started with the Procfile's own `web` command (on a free port, 2 workers), the
way a platform starts it. Clients that stall halfway through their headers or their body hold a
thread each until READ_TIMEOUT, not a worker, so /healthz and the receivers keep answering.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from redis import Redis

from encore_retention.web.server import READ_TIMEOUT
from encore_retention.webhooks.base import sign
from tests.conftest import SHOPIFY_SECRET, free_port, http_status, payload, redis_url_of, stop_group, wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
STALLED = 40  # more than two sync workers, or than a gthread worker's default 1 thread, could carry


def _web_command(port: int) -> list[str]:
    """The Procfile's web command, with its worker count and port set for this test."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    words = shlex.split(line.removeprefix("web:").replace("${PORT:-8000}", str(port)))
    assert words[0] == "gunicorn"
    words[words.index("--workers") + 1] = str(WORKERS)
    return [sys.executable, "-m", *words]


def _stall(port: int, body: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT * 4)
    if body:
        sock.sendall(
            b"POST /webhooks/shopify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 15000\r\n\r\n" + b'{"id": 1' + b" " * 100
        )
    else:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_stalled_clients_are_dropped_while_health_and_receivers_answer(tmp_path, redis: Redis):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_PASSWORD"}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'encore.db'}",
        REDIS_URL=redis_url_of(redis),
        SHOPIFY_API_SECRET=SHOPIFY_SECRET,
        SECRET_KEY="test-secret-key",
        PYTHONPATH=str(ROOT),
        ENCORE_DATA_DIR=str(tmp_path / "data"),
        EMAIL_URL=f"file://{tmp_path / 'outbox'}",
    )
    web = subprocess.Popen(
        _web_command(port),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    held: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: http_status(f"{url}/healthz") == 200, timeout=60), "the web process never answered"
        held = [_stall(port, body=i % 2 == 0) for i in range(STALLED)]
        time.sleep(0.5)  # the server has taken them in

        assert http_status(f"{url}/healthz", timeout=3) == 200
        order = payload("shopify", "orders_create")
        body = json.dumps(order).encode()
        request = urllib.request.Request(
            f"{url}/webhooks/shopify",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Topic": "orders/create",
                "X-Shopify-Shop-Domain": "encore-test.myshopify.com",
                "X-Shopify-Webhook-Id": "slow-clients-1",
                "X-Shopify-Hmac-Sha256": sign(body, SHOPIFY_SECRET),
            },
        )
        with urllib.request.urlopen(request, timeout=3) as answer:
            assert answer.status == 200

        answers = [_answer(sock) for sock in held]  # each recv waits at most READ_TIMEOUT * 4
        for i, received in enumerate(answers):
            if i % 2 == 0:  # a body cut short: the receiver says so
                assert received.startswith(b"HTTP/1.1 400"), received[:200]
            else:  # headers cut short: the connection is closed
                assert received == b"", received[:200]
        assert _queued(redis) == 1  # the cut-short bodies queued nothing
    finally:
        for sock in held:
            sock.close()
        stop_group(web)
    errors = web.stderr.read().decode() if web.stderr else ""
    assert "Traceback" not in errors, errors[-2000:]
    assert "WORKER TIMEOUT" not in errors, errors[-2000:]


def _queued(redis: Redis) -> int:
    from encore_retention.core.queue import EVENTS, queue

    return queue(EVENTS, redis).count
