"""The flow engine's tables: runs (one per flow, customer and trigger key), their traces, and side effects.

A side effect (an email, a discount code, a tag, an HTTP call) is a row keyed by its idempotency key,
so a retried job finds what it already did instead of doing it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from encore_retention.core.store.ledger import BEFORE_REDACT, Person, cast_table
from encore_retention.core.store.models import Base, Customer, IdType, JSONType, UTCDateTime, utcnow
from encore_retention.core.store.unit import Part, Unit

RUNNING, WAITING, DONE, STOPPED, EXITED, FAILED, SUPPRESSED = (
    "running",
    "waiting",
    "done",
    "stopped",
    "exited",
    "failed",
    "suppressed",
)
ACTIVE = (RUNNING, WAITING)

# Date triggers find due customers by range over these (birthdays use ix_customers_birthday_md).
Index("ix_customers_shop_last_order", Customer.shop_id, Customer.last_order_at)
Index("ix_customers_shop_first_order", Customer.shop_id, Customer.first_order_at)
Index("ix_customers_shop_predicted_next", Customer.shop_id, Customer.predicted_next_order)


class FlowRun(Base):
    """One customer's way through one version of a flow."""

    __tablename__ = "flow_runs"
    __table_args__ = (
        Index("ix_flow_runs_status_wake", "status", "wake_at"),
        Index("ix_flow_runs_customer_flow", "customer_id", "flow_key"),
        Index("ix_flow_runs_shop_status", "shop_id", "status"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    run_key: Mapped[str] = mapped_column(String(512), unique=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    flow_key: Mapped[str] = mapped_column(String(128))
    flow_name: Mapped[str] = mapped_column(String(255))
    flow_digest: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    trigger_key: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=RUNNING)
    reason: Mapped[str | None] = mapped_column(String(255))
    position: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    wake_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    job_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The flow's priority, and since when the run's email has been held back (quiet hours, the frequency
    # cap): of a customer's held emails, the higher priority, then the one held longest, goes first.
    priority: Mapped[int] = mapped_column(Integer, default=50, server_default="50")
    deferred_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


@dataclass
class DraftRun:
    """A run whose row is not written yet, with FlowRun's columns (its `id` is None until the row exists).

    The engine checks a flow's conditions against it, runs its first steps without side effects on
    it, and then writes its row once, as those steps left it.
    """

    run_key: str
    shop_id: int
    customer_id: int | None
    flow_key: str
    flow_name: str
    flow_digest: str
    definition: dict[str, Any]
    trigger_key: str
    event_id: str | None
    context: dict[str, Any]
    started_at: datetime
    updated_at: datetime
    status: str = RUNNING
    reason: str | None = None
    position: list[Any] = field(default_factory=lambda: [0])
    attempts: int = 0
    finished_at: datetime | None = None
    lease_token: str | None = None
    lease_until: datetime | None = None
    wake_at: datetime | None = None
    job_id: str | None = None
    priority: int = 50
    deferred_since: datetime | None = None
    id: int | None = None

    def row(self) -> dict[str, Any]:
        """The values of its row: every column but the id."""
        return {column.name: getattr(self, column.name) for column in fields(self) if column.name != "id"}


Run = FlowRun | DraftRun  # what the steps run on: a stored run, or a draft


class FlowTrace(Base):
    """One line of a run's trace: a condition's result, a wait, a send, a suppression and its reason."""

    __tablename__ = "flow_trace"
    __table_args__ = (Index("ix_flow_trace_run", "run_id", "id"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    step: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class FlowEffect(Base):
    """A side effect of a run, keyed by its idempotency key (claimed `pending`, then `done` or `failed`)."""

    __tablename__ = "flow_effects"
    __table_args__ = (
        Index("ix_flow_effects_cap", "customer_id", "kind", "created_at"),
        Index("ix_flow_effects_run", "run_id"),
    )

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    marketing: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FlowConsidered(Base):
    """A flow whose trigger an event (or a date) matched for a customer but which started no run, and why.

    One row per customer, cause (the event's id, or a date trigger's key) and flow, so a retried event or
    a second sweep adds nothing; the customer's timeline shows them ("considered for: welcome (…)"). They
    go with the customer (a redaction) by cascade.
    """

    __tablename__ = "flow_considered"
    __table_args__ = (UniqueConstraint("customer_id", "cause", "flow_key"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    shop_id: Mapped[int] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    cause: Mapped[str] = mapped_column(String(255))
    flow_key: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# ---- trace lines, written in one statement per transaction -------------------------------------------

_INSERT_TRACE = cast_table(FlowTrace).insert()


class Traces(Part):
    """A transaction's trace lines, inserted in one statement before it commits (dropped if it rolls back)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, unit: Unit) -> None:
        """Insert the lines; their runs are in the database already (inserted, or loaded)."""
        lines, self.lines = self.lines, []
        if lines:
            unit.connection().execute(_INSERT_TRACE, lines)

    def forget(self) -> None:
        """Drop the lines: they described work that did not happen."""
        self.lines = []


_ADD_CONSIDERED: dict[str, Any] = {}  # dialect -> the INSERT … ON CONFLICT DO NOTHING, built once


class Considered(Part):
    """A transaction's "considered, not started" notes, inserted in one statement before it commits."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, unit: Unit) -> None:
        """Insert the notes; one already kept (a retried event, a second sweep) stays as it is."""
        rows, self.rows = self.rows, []
        if not rows:
            return
        dialect = unit.get_bind().dialect.name
        statement = _ADD_CONSIDERED.get(dialect)
        if statement is None:
            builder = pg_insert if dialect == "postgresql" else sqlite_insert
            statement = _ADD_CONSIDERED[dialect] = builder(cast_table(FlowConsidered)).on_conflict_do_nothing(
                index_elements=["customer_id", "cause", "flow_key"]
            )
        unit.connection().execute(statement, rows)

    def forget(self) -> None:
        """Drop the notes: the transaction that made them rolled back."""
        self.rows = []


def considered(
    session: Unit, shop_id: int, customer_id: int, cause: str, flow_key: str, reason: str, at: datetime
) -> None:
    """Note that a flow was considered for a customer and not started, and why (written with the transaction)."""
    session.part(Considered).rows.append(
        {
            "shop_id": shop_id,
            "customer_id": customer_id,
            "cause": cause[:255],
            "flow_key": flow_key,
            "reason": reason[:255],
            "at": at,
        }
    )


def add_trace(
    session: Unit,
    run_id: int | None,
    at: datetime,
    kind: str,
    message: str,
    step: str | None,
    detail: dict[str, Any] | None,
) -> None:
    """Add a trace line to the session's transaction; the lines are inserted together when it commits.

    A draft's lines (`run_id` None) are captured apart and given the id when its row is written.
    """
    session.part(Traces).lines.append(
        {"run_id": run_id, "at": at, "kind": kind, "message": message, "step": step, "detail": detail}
    )


@contextmanager
def capture_traces(session: Unit) -> Iterator[list[dict[str, Any]]]:
    """Collect the trace lines added inside the block apart (a draft run's, before it has an id)."""
    traces = session.part(Traces)
    saved, traces.lines = traces.lines, []
    try:
        yield traces.lines
    finally:
        traces.lines = saved


def keep_traces(session: Unit, lines: list[dict[str, Any]]) -> None:
    """Add captured trace lines to the transaction's."""
    session.part(Traces).lines.extend(lines)


# ---- redaction -------------------------------------------------------------------------------------


def _emails_of(session: Session, person: Person) -> None:
    """Before a redaction: the keys of the emails sent to or about the person (or by the whole shop).

    The rows go by cascade with the customer or the shop; the keys name the copies kept outside the
    store (the file outbox writes one file per key), so those can be removed too.
    """
    query = select(FlowEffect.key).where(FlowEffect.kind == "email")
    if person.whole_shop:
        query = query.where(FlowEffect.shop_id == person.shop_id)
    elif person.customer_ids:
        query = query.where(
            FlowEffect.run_id.in_(select(FlowRun.id).where(FlowRun.customer_id.in_(sorted(person.customer_ids))))
        )
    else:
        return
    person.messages.update(session.execute(query).scalars())


BEFORE_REDACT.append(_emails_of)
