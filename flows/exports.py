"""Customers as CSV: a segment, or every customer, streamed from the ledger a batch at a time.

The admin's download and `encore export customers` write the same columns through `csv_lines`. The
rows come from a server-side cursor (`yield_per`), so an export of a million customers holds one batch
in memory. A redacted customer has no ledger row any more (`customers/redact` deletes it), so it can't
appear. A cell a spreadsheet would read as a formula (starting with =, +, -, @, a tab or a carriage
return) is written with a leading apostrophe, which spreadsheets show as text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import segments

BATCH = 1000
COLUMNS: tuple[tuple[str, Any], ...] = (
    ("store", Shop.domain),
    ("customer_id", Customer.platform_id),
    ("email", Customer.email),
    ("first_name", Customer.first_name),
    ("last_name", Customer.last_name),
    ("phone", Customer.phone),
    ("locale", Customer.locale),
    ("email_consent", Customer.email_consent),
    ("has_account", Customer.has_account),
    ("orders_count", Customer.orders_count),
    ("total_spent", Customer.total_spent),
    ("first_order_at", Customer.first_order_at),
    ("last_order_at", Customer.last_order_at),
    ("predicted_next_order", Customer.predicted_next_order),
    ("birthday", Customer.birthday),
    ("tags", Customer.tags),
    ("created_at", Customer.platform_created_at),
)
if hasattr(Customer, segments.FEEDBACK):  # where the ledger keeps the feedback loop's score
    COLUMNS += ((segments.FEEDBACK, getattr(Customer, segments.FEEDBACK)),)
HEADER = [name for name, _ in COLUMNS]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_text(text: str) -> str:
    """Text a spreadsheet won't run: a leading apostrophe before what would start a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def cell(value: Any) -> str:
    """One value as CSV text: dates in ISO 8601, yes/no, tags comma-separated, customer text made safe."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, list):
        return safe_text(", ".join(str(item) for item in value))
    return safe_text(str(value))


def query(segment: Any | None, shop_ids: list[int] | None, now: datetime, dialect: str) -> Any:
    """The export's statement: the segment's members (None: every customer) with their store, by id."""
    return (
        select(*(column for _, column in COLUMNS))
        .select_from(Customer)
        .join(Shop, Shop.id == Customer.shop_id)
        .where(*segments.criteria(segment, shop_ids, now, dialect))
        .order_by(Customer.id)
        .execution_options(yield_per=BATCH)
    )


def rows(session: Session, segment: Any | None, shop_ids: list[int] | None, now: datetime) -> Iterator[list[str]]:
    """The export's rows as text cells, streamed a batch at a time."""
    for row in session.execute(query(segment, shop_ids, now, segments.dialect_of(session))):
        yield [cell(value) for value in row]


def csv_lines(records: Iterable[list[str]], header: bool = True) -> Iterator[str]:
    """CSV text (the header first) in pieces of about 64 KB: what a streamed download sends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(HEADER)
    for record in records:
        writer.writerow(record)
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def count(session: Session, segment: Any | None, shop_ids: list[int] | None, now: datetime) -> int:
    """How many rows the export will have."""
    return segments.count(session, segment, shop_ids, now)
