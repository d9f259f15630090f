"""Rehearsals: the real pipeline (receivers, ledger, flow engine) run against a throwaway copy of the store.

`encore replay --dry-run` uses one. A rehearsal runs the same code as a real run, the same step rules
included; it differs only by where it writes and by its effects (`core.effects`). Inside `rehearsal()`:
- DATABASE_URL points at a SQLite copy of the store (a file copy of SQLite, a table-by-table copy of
  PostgreSQL), so the ledger and the runs change only there;
- EMAIL_URL is a file outbox in the rehearsal's folder: nothing is sent;
- the effects are the rehearsal's (`rehearsal_effects`): every shop's connector is a `RehearsalConnector`
  (codes computed exactly as the real connectors compute them, `connectors.codes.code_for`, but created
  nowhere; tags go nowhere), a run's wake-up is recorded instead of queued as an RQ job, and `follow()`
  plays them with the engine's clock moved to each, so later steps are rehearsed too; a rehearsed
  redaction removes nothing from Redis, which is the real queue's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from encore_retention.connectors.base import Connector, Discount, DiscountRequest
from encore_retention.connectors.codes import code_for
from encore_retention.core.effects import Effects, acting
from encore_retention.core.settings import get_settings, reset_settings
from encore_retention.core.store import get_engine, migrate, normalise_url, session_scope
from encore_retention.core.store.models import Base, Customer
from encore_retention.flows import dates, engine
from encore_retention.flows.models import FlowRun, FlowTrace


class RehearsalConnector(Connector):
    """A connector that makes nothing: the code a real connector would make, no call to the platform."""

    platform = "rehearsal"

    def create_discount(self, request: DiscountRequest) -> Discount:
        """The code the real connector would create for this request."""

        return Discount(
            code=code_for(self.shop.id, request),
            kind=request.kind,
            value=request.value,
            platform_id=None,
            ends_at=request.ends_at,
        )

    def tag_customer(self, customer_id: str, tags: list[str]) -> None:
        """Tags are only recorded in the rehearsal's ledger."""

    def fetch_customer(self, customer_id: str) -> Any:
        """Nothing is fetched."""
        return None

    def fetch_orders(self, since: datetime | None = None) -> Iterator[Any]:
        """Nothing is fetched."""
        return iter(())

    def register_webhooks(self, topics: list[str], address: str) -> list[str]:
        """Nothing is registered."""
        return []

    def account_invite_url(self, customer_id: str | None, email: str | None) -> str | None:
        """A stand-in for the link the platform would give (no call is made)."""
        return f"{(self.shop.url or f'https://{self.shop.domain}').rstrip('/')}/account"


@dataclass
class Rehearsal:
    """A running rehearsal: its folder, database URL, outbox, and the wake-ups the engine asked for."""

    folder: Path
    database_url: str
    outbox: Path
    first_run_id: int
    wakeups: list[tuple[datetime, int]] = field(default_factory=list)

    def record(self, run_id: int, when: datetime, job_id: str) -> None:
        """Keep a run's wake-up for `follow` (the rehearsal's stand-in for queueing its job)."""
        self.wakeups.append((when, run_id))

    def follow(self, until: datetime) -> int:
        """Play the recorded wake-ups due before `until`, in time order, with the clock at each; returns how many."""

        played = 0
        previous = dates._frozen
        try:
            while True:
                due = sorted(w for w in self.wakeups if w[0] <= until)
                if not due:
                    return played
                when, run_id = due[0]
                self.wakeups.remove(due[0])
                dates.set_now(max(when, dates.now()))
                engine.advance(run_id)
                played += 1
        finally:
            dates.set_now(previous)


def rehearsal_effects(current: Rehearsal) -> Effects:
    """A rehearsal's effects: codes made nowhere, tags kept in its ledger, wake-ups recorded, Redis left alone."""
    return Effects(connector=RehearsalConnector, schedule=current.record, forget_in_redis=_leave_redis)


def _leave_redis(connection: Any, person: Any, keep_jobs: set[str] | None = None) -> int:
    return 0


def copy_database(source_url: str, target: Path) -> str:
    """A SQLite copy of the store at `source_url`, migrated to the newest schema; returns its URL."""

    target_url = f"sqlite:///{target}"
    source_url = normalise_url(source_url)
    if source_url.startswith("sqlite:///") and Path(source_url[len("sqlite:///") :]).exists():
        with sqlite3.connect(source_url[len("sqlite:///") :]) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
        migrate(target_url)
        return target_url
    migrate(target_url)
    if source_url.startswith("sqlite"):
        return target_url

    for room in (
        "encore_retention.flows.models",
        "encore_retention.connectors.models",
        "encore_retention.core.archive",
    ):
        __import__(room)
    with get_engine(source_url).connect() as src, get_engine(target_url).begin() as dst:
        for table in Base.metadata.sorted_tables:
            batch: list[dict[str, Any]] = []
            for row in src.execute(select(table)).mappings():
                batch.append(dict(row))
                if len(batch) >= 1000:
                    dst.execute(insert(table), batch)
                    batch = []
            if batch:
                dst.execute(insert(table), batch)
    return target_url


@contextmanager
def rehearsal(folder: Path) -> Iterator[Rehearsal]:
    """Run the block against a throwaway copy of the store, with no email sent and nothing made on a platform."""

    folder.mkdir(parents=True, exist_ok=True)
    url = copy_database(get_settings().DATABASE_URL, folder / "rehearsal.db")
    outbox = folder / "outbox"
    saved_env = {name: os.environ.get(name) for name in ("DATABASE_URL", "EMAIL_URL")}
    os.environ["DATABASE_URL"] = url
    os.environ["EMAIL_URL"] = f"file://{outbox}"
    reset_settings()

    with session_scope() as session:
        first = (session.execute(select(FlowRun.id).order_by(FlowRun.id.desc()).limit(1)).scalar() or 0) + 1
    current = Rehearsal(folder, url, outbox, first)
    try:
        with acting(rehearsal_effects(current)):
            yield current
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_settings()


def outcome_rows(first_run_id: int) -> list[dict[str, Any]]:
    """What the rehearsed runs did, line by line: (time, flow, customer, kind, message)."""

    with session_scope() as session:
        rows = session.execute(
            select(
                FlowTrace.at,
                FlowRun.id,
                FlowRun.flow_key,
                Customer.email,
                FlowTrace.kind,
                FlowTrace.message,
                FlowTrace.detail,
            )
            .join(FlowRun, FlowRun.id == FlowTrace.run_id)
            .outerjoin(Customer, Customer.id == FlowRun.customer_id)
            .where(FlowRun.id >= first_run_id)
            .order_by(FlowTrace.at, FlowTrace.id)
        ).all()
    return [
        {
            "at": at.isoformat(),
            "run": run_id,
            "flow": flow,
            "customer": email,
            "kind": kind,
            "message": message,
            "detail": detail,
        }
        for at, run_id, flow, email, kind, message, detail in rows
    ]
