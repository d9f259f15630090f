"""The unit of work: the session every store user gets, owning the hot paths' fast writes and their contract.

The ledger and the flow engine change a few columns of a few rows per event and insert rows that may
exist already; SQLAlchemy's own unit of work costs several times that SQL. `Unit` is the Session
(`store.get_sessionmaker` makes it) that does those writes by hand and keeps their rules itself:

- `stage(row, **values)` sets columns of a loaded row now and writes them with one prepared UPDATE
  per row, before the next statement run through the unit (`execute`, `scalars`, `scalar`, a
  query: wherever SQLAlchemy would autoflush) and before a commit; a rollback drops them. A read
  through the unit always sees them; `connection()` stays the raw path, for hand-written statements
  that know what they read.
- `insert_new(model, values, conflict)` is the one INSERT … ON CONFLICT DO NOTHING (SQLite and
  PostgreSQL): the new row, put in the session without selecting it back, or None when one exists.
  `inserted(model, key)` tells whether this unit made a row (no side effect can refer to it yet).
- `part(Kind)` is a room's own state in the unit (a `Part`: trace lines to insert, memos): its
  `write` runs before every commit, after the staged UPDATEs, and its `forget` after a rollback.
- `deferred_commit(error)` lets the work so far ride on the block's first commit (one commit less);
  a rollback before that commit rolls back and raises `error`, so the work can't be lost unnoticed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import bindparam, event, inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value


class NotCommitted(Exception):
    """The unit rolled back inside `deferred_commit` before the block's first commit: the work before it is gone."""


class Part:
    """A room's own state in a unit, made on first use by `Unit.part` and kept as long as the unit.

    A subclass that stages rows of its own writes them in `write` (before every commit, after the
    unit's staged UPDATEs) and drops them in `forget` (after a rollback); both do nothing here.
    """

    def write(self, unit: Unit) -> None:
        """Write what the transaction staged here; the commit follows."""

    def forget(self) -> None:
        """Drop what the transaction staged here: it rolled back."""


PartT = TypeVar("PartT", bound=Part)

# Statements built once per table (and dialect, and conflict columns): SQLAlchemy then skips building
# and coercing them per row.
_INSERTS: dict[tuple[str, str, tuple[str, ...]], tuple[Any, str]] = {}  # -> (statement, primary key)
_UPDATES: dict[tuple[str, tuple[str, ...]], Any] = {}


class Unit(Session):
    """The store's session, with the hot paths' fast writes behind its contract (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (model, identity) -> (row, columns to write): kept until written, so the row stays in the identity map
        self._staged: dict[tuple[Any, tuple[Any, ...]], tuple[Any, dict[str, Any]]] = {}
        # (model, primary key) -> the row (None when not attached): the rows this unit inserted
        self._inserted: dict[tuple[Any, Any], Any] = {}
        self._parts: dict[type[Part], Part] = {}
        self._commits = 0
        self._deferred: tuple[int, type[Exception]] | None = None  # (commits when it began, what to raise)

    # ---- writes ------------------------------------------------------------------------------------

    def stage(self, row: Any, **values: Any) -> None:
        """Set columns of a loaded row now; they are written before the next read through the unit, or the commit.

        The object holds the new values as loaded (not dirty), so SQLAlchemy's flush leaves it alone.
        A row that is not stored (a draft, a preview's run) just takes the values.
        """
        state = inspect(row, raiseerr=False)
        if state is None or state.identity is None:
            for key, value in values.items():
                setattr(row, key, value)
            return
        for key, value in values.items():
            set_committed_value(row, key, value)
        identity = (type(row), state.identity)
        entry = self._staged.get(identity)
        if entry is None:
            self._staged[identity] = (row, dict(values))
        else:
            entry[1].update(values)

    def insert_new(self, model: Any, values: dict[str, Any], conflict: list[str], *, attach: bool = True) -> Any:
        """INSERT … ON CONFLICT (`conflict`) DO NOTHING: the new row, or None if one exists.

        `values` holds every column but a generated primary key. With `attach`, the new row is put in
        the unit as the persistent object it is, without selecting it back (`values` must then hold
        every column); without, only its primary key is returned.
        """
        dialect = self.get_bind().dialect.name
        key = (dialect, model.__tablename__, tuple(conflict))
        built = _INSERTS.get(key)
        if built is None:
            builder = pg_insert if dialect == "postgresql" else sqlite_insert
            table = model.__table__
            (pk,) = table.primary_key.columns
            stmt = builder(table).on_conflict_do_nothing(index_elements=conflict).returning(pk)
            built = _INSERTS[key] = (stmt, pk.key)
        stmt, pk_key = built
        row_id = self.connection().execute(stmt, values).scalar()
        if row_id is None:
            return None
        if not attach:
            self._inserted[(model, row_id)] = None
            return row_id
        row = model(**{**values, pk_key: row_id})
        make_transient_to_detached(row)
        self.add(row)
        self._inserted[(model, row_id)] = row  # held here, so it stays in the identity map for the steps after
        return row

    def inserted(self, model: Any, key: Any) -> bool:
        """Whether this unit inserted the row (in a transaction that has not rolled back)."""
        return (model, key) in self._inserted

    def part(self, kind: type[PartT]) -> PartT:
        """The unit's instance of a room's Part, made on first use."""
        found = self._parts.get(kind)
        if found is None:
            found = self._parts[kind] = kind()
        return found  # type: ignore[return-value]

    # ---- commit ordering ---------------------------------------------------------------------------

    @contextmanager
    def deferred_commit(self, error: type[Exception] = NotCommitted) -> Iterator[None]:
        """Let the work so far be committed by the block's first commit; a rollback before it raises `error`.

        The rollback still happens (and takes that work with it); `error`, raised from the exception
        being handled, tells the caller to do the work again, committing it first.
        """
        self._deferred = (self._commits, error)
        try:
            yield
        finally:
            self._deferred = None

    def rollback(self) -> None:
        """Roll back; inside `deferred_commit` before its commit, then raise its error (the work is gone)."""
        deferred = self._deferred
        super().rollback()
        self._forget()  # also when no transaction had begun (then SQLAlchemy reports no rollback)
        if deferred is not None and deferred[0] == self._commits:
            self._deferred = None
            handled = sys.exception()
            raise deferred[1](str(handled) if handled else "rolled back before the deferred commit") from handled

    def close(self) -> None:
        """Close the session; what was staged and not committed is dropped with its transaction."""
        super().close()
        self._forget()

    def _autoflush(self) -> None:
        # SQLAlchemy's hook before every statement run through the session (a query, a Core statement,
        # an ORM UPDATE or DELETE): the staged rows are written first, so that the statement sees them.
        if self._staged:
            self._write_staged()
        super()._autoflush()

    def _write_staged(self) -> None:
        staged, self._staged = self._staged, {}
        connection = self.connection()
        for (model, identity), (_, values) in staged.items():
            table = model.__table__
            key = (table.name, tuple(sorted(values)))
            stmt = _UPDATES.get(key)
            if stmt is None:
                (pk,) = table.primary_key.columns
                stmt = _UPDATES[key] = table.update().where(pk == bindparam("staged_pk"))
            connection.execute(stmt, {**values, "staged_pk": identity[0]})

    def _before_commit(self) -> None:
        if self._staged:
            self._write_staged()
        for part in self._parts.values():
            part.write(self)

    def _forget(self) -> None:
        self._staged.clear()  # the rolled-back objects are expired too: they reload what is stored
        self._inserted.clear()
        for part in self._parts.values():
            part.forget()


# Whichever way a transaction ends (commit(), a `begin()` block, the session_scope), the unit sees it.
@event.listens_for(Unit, "before_commit")
def _before_commit(unit: Unit) -> None:
    unit._before_commit()


@event.listens_for(Unit, "after_commit")
def _after_commit(unit: Unit) -> None:
    unit._commits += 1


@event.listens_for(Unit, "after_rollback")
def _after_rollback(unit: Unit) -> None:
    unit._forget()
