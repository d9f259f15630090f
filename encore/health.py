"""Health checks any process can run: Redis, the database, its schema against the shipped migrations, Redis durability.

Each check answers None when all is well, else a short reason. `SchemaWatch` keeps a process's
view of the schema: checked until it is seen at head (then remembered, so a health probe costs
no query for it), and brought there by `migrate` when it is behind, at most every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Any

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import text

from encore_retention.core.queue import get_redis
from encore_retention.core.store import alembic_config, get_engine, migrate

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


def check_redis(connection: Redis | None = None) -> str | None:
    """None when Redis answers a PING, else the error's name."""
    try:
        (connection or get_redis()).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return type(exc).__name__
    return None


def check_database(url: str | None = None) -> str | None:
    """None when the database at `url` (default DATABASE_URL) answers a query, else the error's name."""
    try:
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__
    return None


# ---- the schema --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _script() -> tuple[tuple[str, ...], frozenset[str]]:
    """The shipped migrations' heads and every revision they know (read once per process)."""

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return tuple(sorted(script.get_heads())), frozenset(rev.revision for rev in script.walk_revisions())


def revisions(url: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The database's current revisions and the shipped migrations' heads."""

    with get_engine(url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    return tuple(sorted(current)), _script()[0]


def schema_behind(current: tuple[str, ...], heads: tuple[str, ...]) -> str | None:
    """`behind: at X, head is Y` when the database lacks migrations this code ships; else None.

    A revision this code does not know was written by a newer version (during a rolling deploy, the
    new release migrated first): that is not "behind", and the old processes carry on.
    """
    if set(current) == set(heads):
        return None
    unknown = set(current) - _script()[1]
    if unknown:
        log.warning("database schema is newer than this code", extra={"current": sorted(unknown), "head": list(heads)})
        return None
    return f"behind: at {', '.join(current) or 'none'}, head is {', '.join(heads)}"


def check_schema(url: str | None = None) -> str | None:
    """None when the database's schema is at head; `behind: …`, or `unavailable: <error>` when it can't say."""
    try:
        current, heads = revisions(url)
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {type(exc).__name__}"
    return schema_behind(current, heads)


class SchemaWatch:
    """One process's view of the schema: remembered once at head; until then migrated at most every `retry_seconds`."""

    def __init__(self, url: str | None = None, retry_seconds: float = RETRY_SECONDS) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self.at_head = False
        self.problem: str | None = "unavailable: not checked yet"
        self._tried = float("-inf")
        self._lock = threading.Lock()

    @property
    def unavailable(self) -> bool:
        """True when the last look found no database to ask, rather than a schema behind head."""
        return bool(self.problem and self.problem.startswith("unavailable"))

    def check(self) -> str | None:
        """Look at the schema now (no query once it was seen at head); None when at head."""
        if self.at_head:
            return None
        self.problem = check_schema(self.url)
        self.at_head = self.problem is None
        return self.problem

    def ensure(self) -> str | None:
        """Bring the schema to head if it is not there and the last try is `retry_seconds` old; None when at head.

        Between tries, and while another thread is trying, the last answer is given without asking
        the database, so an outage is not hammered by every request.
        """
        if self.at_head:
            return None
        if time.monotonic() - self._tried < self.retry_seconds or not self._lock.acquire(blocking=False):
            return self.problem
        try:
            self._tried = time.monotonic()
            if self.check() is None or self.unavailable:
                return self.problem
            try:
                migrate(self.url)
            except Exception as exc:  # noqa: BLE001 - reported by check() below, tried again later
                log.error(
                    "database schema not brought up to date; trying again later",
                    extra={"problem": self.problem, "error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            return self.check()
        finally:
            self._lock.release()

    def forget(self) -> None:
        """Look again on the next call (the database lost tables it had)."""
        self.at_head = False
        self._tried = float("-inf")


# ---- Redis durability --------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value if value is not None else "")


def redis_persistence(connection: Redis) -> str | None:
    """A warning when Redis may lose what it acknowledged: neither AOF nor RDB snapshots, or an eviction policy.

    Read with CONFIG GET; where CONFIG is not permitted (managed services), INFO tells whether AOF is
    on and the eviction policy, but not the snapshots: with AOF off that is unknown, logged at debug.
    """
    aof: bool | None
    snapshots: bool | None
    try:
        config: dict[str, Any] = {}
        for name in ("appendonly", "save", "maxmemory-policy"):
            config.update({_text(key): value for key, value in connection.config_get(name).items()})
        aof = _text(config.get("appendonly")).lower() == "yes"
        snapshots = bool(_text(config.get("save")).strip())
        policy = _text(config.get("maxmemory-policy")).lower() or None
    except ResponseError as exc:  # CONFIG renamed, disabled or not permitted
        try:
            aof = bool(int(connection.info("persistence").get("aof_enabled", 0)))
            policy = _text(connection.info("memory").get("maxmemory_policy")).lower() or None
        except (RedisError, ValueError) as info_exc:
            log.debug(
                "Redis persistence unknown: neither CONFIG nor INFO answered",
                extra={"error": f"{type(exc).__name__}; {type(info_exc).__name__}"},
            )
            return None
        snapshots = True if aof else None
        if snapshots is None:
            log.debug(
                "Redis persistence unknown: AOF is off, and whether RDB snapshots are on needs CONFIG",
                extra={"error": type(exc).__name__},
            )
    except RedisError as exc:
        log.debug("Redis persistence unknown: Redis did not answer", extra={"error": type(exc).__name__})
        return None
    warnings = []
    if not aof and snapshots is False:
        warnings.append(
            "Redis keeps no copy on disk (appendonly is no and save is empty): a restart loses "
            "queued webhooks and scheduled steps; turn on appendonly yes"
        )
    if policy and policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}, not noeviction: when memory fills it may evict "
            "queued webhooks and jobs"
        )
    return "; ".join(warnings) or None
