"""The store: SQLAlchemy engine, units of work (its sessions: unit.py) and Alembic migrations (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import sessionmaker

from encore_retention.core import resources
from encore_retention.core.settings import get_settings
from encore_retention.core.store.unit import Unit

try:
    import fcntl
except ImportError:  # not a POSIX system: SQLite migrations are not serialised between processes there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MIGRATIONS = resources.folder(__name__, "migrations")
# The PostgreSQL advisory lock that lets one process at a time migrate a database ("encore" in ASCII).
MIGRATION_LOCK_KEY = 0x656E636F7265
# Seconds to wait for PostgreSQL to accept a connection (libpq waits forever by default); a URL may set its own.
CONNECT_TIMEOUT = 10

_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Unit]] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _json_dumps(value: Any) -> str:
    """JSON columns through orjson (several times faster than the json module; int keys become strings alike)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def normalise_url(url: str) -> str:
    """Map plain `postgres://`/`postgresql://` URLs to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


PING_AFTER_IDLE = 10.0  # seconds a pooled PostgreSQL connection may rest before it is checked again


def _checked_in(_dbapi_connection, record) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    """Check a pooled connection that rested PING_AFTER_IDLE seconds (a restarted server closed it).

    SQLAlchemy's `pool_pre_ping` checks at every checkout, a round trip per transaction (about two
    per event); a connection used a moment ago is alive. A dead one is replaced by the pool, and
    one that died in between fails its transaction, which the job retries (the pool is renewed then).
    """
    if time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()  # hand it back idle, not inside the transaction the SELECT began
    except Exception as exc:  # noqa: BLE001 - any failure: the pool connects anew
        raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def get_engine(url: str | None = None) -> Engine:
    """The engine for `url` (default DATABASE_URL), created once per process."""
    url = normalise_url(url or get_settings().DATABASE_URL)
    engine = _engines.get(url)
    if engine is None:
        json_options = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30}, **json_options)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            connect_args = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT}
            engine = create_engine(url, pool_size=5, max_overflow=10, connect_args=connect_args, **json_options)
            event.listen(engine.pool, "connect", _checked_in)
            event.listen(engine.pool, "checkin", _checked_in)
            event.listen(engine.pool, "checkout", _ping_if_idle)
        _engines[url] = engine
    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Unit]:
    """A factory of units of work (the store's sessions) bound to `url` (default DATABASE_URL)."""
    url = normalise_url(url or get_settings().DATABASE_URL)
    maker = _sessionmakers.get(url)
    if maker is None:
        maker = sessionmaker(get_engine(url), class_=Unit, expire_on_commit=False)
        _sessionmakers[url] = maker
    return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Unit]:
    """A unit of work (the store's session) that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        if session.in_transaction():  # nothing to commit after the block committed its own work
            session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None):
    """An Alembic Config pointing at the shipped migrations and `url`."""

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url or get_settings().DATABASE_URL))
    return config


def migrate(url: str | None = None) -> None:
    """Bring the database at `url` to the newest schema (idempotent; processes starting together take turns)."""

    url = normalise_url(url or get_settings().DATABASE_URL)
    with migration_lock(url):
        command.upgrade(alembic_config(url), "head")


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Hold the lock that lets one process at a time migrate the database at `url`.

    PostgreSQL: a session advisory lock (MIGRATION_LOCK_KEY) on a connection of its own, released
    after. SQLite: an exclusive `flock` on `<database file>.migrate-lock` beside the database; an
    in-memory database needs none. Without the lock, processes starting together on an empty
    database all create the same tables, and all but one fail.
    """
    engine = get_engine(url)
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine):
            yield
    elif engine.dialect.name == "sqlite":
        with _file_lock(_sqlite_file(engine)):
            yield
    else:
        yield


@contextmanager
def _advisory_lock(engine: Engine) -> Iterator[None]:
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            except DBAPIError as exc:  # the session is gone, and its lock with it; never pool the connection
                log.warning("migration lock not released", extra={"error": type(exc.orig).__name__})
                connection.invalidate()


def _sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine; None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or engine.url.query.get("mode") == "memory":
        return None
    return Path(database.removeprefix("file:"))


@contextmanager
def _file_lock(database: Path | None) -> Iterator[None]:
    if database is None or fcntl is None:
        yield
        return
    try:
        handle = open(database.with_name(database.name + ".migrate-lock"), "a+b")
    except OSError:  # a folder that is missing or read-only: SQLite itself will say why it can't migrate
        handle = None
    if handle is None:
        yield
        return
    with handle:  # the lock file stays; only its lock comes and goes
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dispose_all() -> None:
    """Close every pooled connection (after a fork, and in tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sessionmakers.clear()
