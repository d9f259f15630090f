"""The unit of work on SQLite and PostgreSQL: staged rows are seen, committed or dropped without the caller's help."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, select, text

from encore_retention.core.store import get_engine, get_sessionmaker, session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.core.store.unit import NotCommitted, Part, Unit

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def new_customer(unit: Unit, shop_id: int, key: str) -> Customer:
    values: dict[str, Any] = {column.key: None for column in Customer.__table__.columns if column.key != "id"}
    values.update(shop_id=shop_id, platform_id=key, tags=[], orders_count=0, total_spent=Decimal("0"))
    values.update(created_at=NOW, updated_at=NOW)
    row = unit.insert_new(Customer, values, ["shop_id", "platform_id"])
    assert isinstance(row, Customer)
    return row


@pytest.fixture
def stored(db_url: str) -> Iterator[tuple[str, int, int]]:
    """(database URL, shop id, customer id): a shop with one customer, committed."""
    with session_scope(db_url) as unit:
        values = {"platform": "shopify", "domain": "unit.myshopify.com", "settings": {}, "active": True}
        shop_id = unit.insert_new(Shop, {**values, "created_at": NOW}, ["platform", "domain"], attach=False)
        customer_id = new_customer(unit, shop_id, "c1").id
    yield db_url, shop_id, customer_id


def count_in_store(url: str, customer_id: int) -> int:
    """The customer's orders_count as another connection sees it (committed only)."""
    with get_engine(url).connect() as connection:
        return connection.execute(
            text("SELECT orders_count FROM customers WHERE id = :id"), {"id": customer_id}
        ).scalar_one()


@pytest.fixture
def statements(stored: tuple[str, int, int]) -> Iterator[list[str]]:
    """The SQL statements run on the database while the test runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    engine = get_engine(stored[0])
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_the_store_hands_out_units(stored: tuple[str, int, int]) -> None:
    with session_scope(stored[0]) as unit:
        assert isinstance(unit, Unit)


@pytest.mark.parametrize(
    "read",
    [
        lambda unit, cid: unit.execute(select(Customer.orders_count).where(Customer.id == cid)).scalar_one(),
        lambda unit, cid: unit.scalar(select(Customer.orders_count).where(Customer.id == cid)),
        lambda unit, cid: unit.scalars(select(Customer.orders_count).where(Customer.id == cid)).one(),
        lambda unit, cid: unit.execute(text("SELECT orders_count FROM customers WHERE id = :id"), {"id": cid}).scalar(),
        lambda unit, cid: unit.query(Customer.orders_count).filter(Customer.id == cid).scalar(),
    ],
    ids=["execute", "scalar", "scalars", "text", "query"],
)
def test_a_read_through_the_unit_sees_the_staged_columns(stored: tuple[str, int, int], read: Any) -> None:
    url, _, customer_id = stored
    with session_scope(url) as unit:
        row = unit.get(Customer, customer_id)
        unit.stage(row, orders_count=3)
        assert row.orders_count == 3 and row not in unit.dirty  # held as loaded, not left to the ORM's flush
        assert read(unit, customer_id) == 3
        assert count_in_store(url, customer_id) == 0  # written in the transaction, not committed yet
    assert count_in_store(url, customer_id) == 3


def test_a_commit_writes_the_staged_columns_in_one_update_per_row(
    stored: tuple[str, int, int], statements: list[str]
) -> None:
    url, _, customer_id = stored
    with session_scope(url) as unit:
        row = unit.get(Customer, customer_id)
        statements.clear()
        unit.stage(row, orders_count=1)
        unit.stage(row, orders_count=2, email="ada@example.com")
        assert statements == []  # nothing is written yet
        unit.commit()
    assert statements.count("UPDATE") == 1
    assert count_in_store(url, customer_id) == 2
    with session_scope(url) as other:
        assert other.get(Customer, customer_id).email == "ada@example.com"


def test_a_begin_block_writes_the_staged_columns_too(stored: tuple[str, int, int]) -> None:
    url, _, customer_id = stored
    unit = get_sessionmaker(url)()
    with unit.begin():
        unit.stage(unit.get(Customer, customer_id), orders_count=5)
    unit.close()
    assert count_in_store(url, customer_id) == 5


def test_a_rollback_drops_the_staged_columns(stored: tuple[str, int, int]) -> None:
    url, _, customer_id = stored
    with session_scope(url) as unit:
        row = unit.get(Customer, customer_id)
        unit.stage(row, orders_count=7)
        unit.rollback()
        assert row.orders_count == 0  # reloaded as stored
        unit.commit()  # nothing left to write
    assert count_in_store(url, customer_id) == 0


def test_closing_the_unit_drops_what_it_staged(stored: tuple[str, int, int]) -> None:
    url, _, customer_id = stored
    unit = get_sessionmaker(url)()
    unit.stage(unit.get(Customer, customer_id), orders_count=9)
    unit.close()
    unit.commit()  # the same unit again: nothing of the closed transaction is written
    unit.close()
    assert count_in_store(url, customer_id) == 0


def test_a_row_that_is_not_stored_just_takes_the_values(stored: tuple[str, int, int]) -> None:
    with session_scope(stored[0]) as unit:
        draft = Customer(shop_id=stored[1], platform_id="draft")
        unit.stage(draft, orders_count=4)
        assert draft.orders_count == 4
        assert draft not in unit


def test_insert_new_inserts_once_and_knows_what_it_inserted(
    stored: tuple[str, int, int], statements: list[str]
) -> None:
    url, shop_id, customer_id = stored
    with session_scope(url) as unit:
        statements.clear()
        row = new_customer(unit, shop_id, "c2")
        assert statements == ["INSERT"]  # put in the unit as it is, without selecting it back
        assert unit.get(Customer, row.id) is row and row.platform_id == "c2"
        assert unit.inserted(Customer, row.id) and not unit.inserted(Customer, customer_id)
        values = {"shop_id": shop_id, "platform_id": "c2", "tags": [], "created_at": NOW, "updated_at": NOW}
        assert unit.insert_new(Customer, values, ["shop_id", "platform_id"]) is None  # one exists
        third = unit.insert_new(Customer, {**values, "platform_id": "c3"}, ["shop_id", "platform_id"], attach=False)
        assert isinstance(third, int) and unit.inserted(Customer, third)
        row_id = row.id
        unit.rollback()
        assert not unit.inserted(Customer, row_id)  # gone with the transaction
    with session_scope(url) as unit:
        assert unit.scalars(select(Customer.platform_id).order_by(Customer.id)).all() == ["c1"]


class Notes(Part):
    """A room's staged kind for the tests: lines written at commit, after the staged updates."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.written: list[tuple[list[str], int]] = []

    def write(self, unit: Unit) -> None:
        (customer_id,) = unit.scalars(select(Customer.id).where(Customer.platform_id == "c1")).all()
        count = (
            unit.connection()
            .execute(text("SELECT orders_count FROM customers WHERE id = :id"), {"id": customer_id})
            .scalar_one()
        )
        self.written.append((self.lines, count))
        self.lines = []

    def forget(self) -> None:
        self.lines = []


def test_a_rooms_part_is_written_before_commit_and_forgotten_at_rollback(stored: tuple[str, int, int]) -> None:
    url, _, customer_id = stored
    with session_scope(url) as unit:
        notes = unit.part(Notes)
        assert unit.part(Notes) is notes  # one per unit
        notes.lines.append("dropped")
        unit.rollback()
        notes.lines.append("kept")
        unit.stage(unit.get(Customer, customer_id), orders_count=2)
    assert notes.written == [(["kept"], 2)]  # the staged update came first
    assert notes.lines == []


def test_a_rollback_before_the_deferred_commit_raises_and_the_work_is_gone(stored: tuple[str, int, int]) -> None:
    url, _, customer_id = stored

    class Lost(NotCommitted):
        pass

    with session_scope(url) as unit:
        unit.stage(unit.get(Customer, customer_id), orders_count=1)  # the work the block's commit should carry
        with pytest.raises(Lost, match="the claim failed") as caught, unit.deferred_commit(Lost):
            try:
                raise RuntimeError("the claim failed")
            except RuntimeError:
                unit.rollback()  # whoever rolls back can't forget to say what went
        assert isinstance(caught.value.__cause__, RuntimeError)
        unit.rollback()  # outside the block: a plain rollback
    assert count_in_store(url, customer_id) == 0


def test_after_the_deferred_commit_a_rollback_is_a_plain_one(stored: tuple[str, int, int]) -> None:
    url, _, customer_id = stored
    with session_scope(url) as unit:
        row = unit.get(Customer, customer_id)
        unit.stage(row, orders_count=1)
        with unit.deferred_commit():
            unit.commit()  # the block's first commit carries the work before it
            unit.stage(row, orders_count=2)
            unit.rollback()
    assert count_in_store(url, customer_id) == 1
