"""The store: SQLAlchemy engine and sessions, and Alembic migrations (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, bindparam, create_engine, event, inspect
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from encore.settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
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
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


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
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, **json_options)
        _engines[url] = engine
    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to `url` (default DATABASE_URL)."""
    url = normalise_url(url or get_settings().DATABASE_URL)
    maker = _sessionmakers.get(url)
    if maker is None:
        maker = sessionmaker(get_engine(url), expire_on_commit=False)
        _sessionmakers[url] = maker
    return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
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


def alembic_config(url: str | None = None):  # type: ignore[no-untyped-def]
    """An Alembic Config pointing at the shipped migrations and `url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url or get_settings().DATABASE_URL))
    return config


def migrate(url: str | None = None) -> None:
    """Bring the database at `url` to the newest schema (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def dispose_all() -> None:
    """Close every pooled connection (after a fork, and in tests)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sessionmakers.clear()


# ---- inserts of whole rows -----------------------------------------------------------------------------

_INSERTS: dict[tuple[str, str, tuple[str, ...]], Any] = {}


def insert_new(session: Session, model: Any, values: dict[str, Any], conflict: list[str], *,
               attach: bool = True) -> Any:
    """INSERT … ON CONFLICT (`conflict`) DO NOTHING RETURNING id: the new row, or None if one exists.

    `values` holds every column but the id, so the new row is put in the session as the persistent
    object it is, without selecting it back (`attach=False`: only its id is returned). The statement
    is built once per dialect and table.
    """
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    dialect = session.get_bind().dialect.name
    key = (dialect, model.__tablename__, tuple(conflict))
    stmt = _INSERTS.get(key)
    if stmt is None:
        builder = pg_insert if dialect == "postgresql" else sqlite_insert
        table = model.__table__
        stmt = _INSERTS[key] = builder(table).on_conflict_do_nothing(index_elements=conflict).returning(table.c.id)
    row_id = session.connection().execute(stmt, values).scalar()
    if row_id is None or not attach:
        return row_id
    row = model(id=row_id, **values)
    make_transient_to_detached(row)
    session.add(row)
    return row


# ---- staged updates: the hot paths' writes, without the unit of work ----------------------------------

_STAGED = "encore_staged_updates"
_UPDATES: dict[tuple[str, tuple[str, ...]], Any] = {}


def stage(session: Session, row: Any, **values: Any) -> None:
    """Set columns of a loaded row now, and write them with one UPDATE when the transaction commits.

    The flow engine and the ledger change a few columns of a few rows per event; SQLAlchemy's unit of
    work costs several times the UPDATE itself, so those changes skip it: the object holds the new
    values (as loaded, not dirty) and `write_staged` issues one prepared UPDATE per row. Queries that
    read staged columns in the same transaction must call `write_staged` first (commits do).
    """
    state = inspect(row, raiseerr=False)
    if state is None or state.identity is None:  # not stored (a preview's run, a draft): ordinary attributes
        for key, value in values.items():
            setattr(row, key, value)
        return
    for key, value in values.items():
        set_committed_value(row, key, value)
    staged = session.info.setdefault(_STAGED, {})
    identity = (type(row), state.identity)
    entry = staged.get(identity)
    if entry is None:
        staged[identity] = (row, dict(values))
    else:
        entry[1].update(values)


def write_staged(session: Session) -> None:
    """Issue the staged UPDATEs (one per row)."""
    staged = session.info.pop(_STAGED, None)
    if not staged:
        return
    connection = session.connection()
    for (model, identity), (_, values) in staged.items():
        table = model.__table__
        key = (table.name, tuple(sorted(values)))
        stmt = _UPDATES.get(key)
        if stmt is None:
            (pk,) = table.primary_key.columns
            stmt = _UPDATES[key] = table.update().where(pk == bindparam("staged_pk"))
        connection.execute(stmt, {**values, "staged_pk": identity[0]})


@event.listens_for(Session, "before_commit")
def _write_staged_before_commit(session: Session) -> None:
    write_staged(session)


@event.listens_for(Session, "after_rollback")
def _forget_staged(session: Session) -> None:
    session.info.pop(_STAGED, None)  # the rollback expired the objects too: they reload what is stored
