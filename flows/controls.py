"""The marketer's hand on the flows: pause, resume and cancel, each recorded with who, when and why.

A paused flow starts no run: a new entry is held (`when_paused: hold`, the default), waiting as a
`held` run until the flow resumes, or skipped (`when_paused: skip`). Runs that were already waiting
stay where they are: one that comes due while the flow is paused is held at its step. Resuming
releases every held run at once. Cancelling ends one run, or every waiting and held run of a flow,
with the reason given. `FlowAction` keeps the record the admin and `encore flows actions` show.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from encore_retention.core.store.models import Base, IdType, UTCDateTime, utcnow
from encore_retention.flows import dates
from encore_retention.flows.models import ACTIVE, FlowRun, FlowTrace

HELD, CANCELLED = "held", "cancelled"
Action = Literal["pause", "resume", "cancel"]


class FlowControl(Base):
    """A flow's switch: paused or not, since when, by whom and why (no row: running)."""

    __tablename__ = "flow_controls"

    flow_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(String(500))


class FlowAction(Base):
    """One thing done to a flow or its runs by hand: the record of who, when and why."""

    __tablename__ = "flow_actions"
    __table_args__ = (Index("ix_flow_actions_flow_at", "flow_key", "at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))
    flow_key: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("flow_runs.id", ondelete="SET NULL"))
    runs: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(500))


def is_paused(session: Session, flow_key: str) -> bool:
    """Whether the flow is paused."""
    return bool(session.execute(select(FlowControl.paused).where(FlowControl.flow_key == flow_key)).scalar())


def paused_flows(session: Session) -> set[str]:
    """The keys of the paused flows."""
    return set(session.execute(select(FlowControl.flow_key).where(FlowControl.paused.is_(True))).scalars())


FRESH_SECONDS = 1.0  # how long a process trusts what it read: a pause reaches every worker within it
_known: tuple[float, frozenset[str]] = (0.0, frozenset())


def paused_now(session: Session) -> frozenset[str]:
    """The paused flows, read at most once per FRESH_SECONDS per process (the engine asks on every step)."""
    global _known
    at, keys = _known
    if time.monotonic() - at > FRESH_SECONDS:
        keys = frozenset(paused_flows(session))
        _known = (time.monotonic(), keys)
    return keys


def forget() -> None:
    """Read the paused flows again on the next question (after this process paused or resumed one)."""
    global _known
    _known = (0.0, frozenset())


def _record(session: Session, action: Action, flow_key: str, actor: str, reason: str | None, **extra: int) -> None:
    session.add(FlowAction(action=action, flow_key=flow_key, actor=actor[:255], reason=(reason or None), **extra))


def _switch(session: Session, flow_key: str, paused: bool, actor: str, reason: str | None) -> None:
    control = session.get(FlowControl, flow_key)
    if control is None:
        control = FlowControl(flow_key=flow_key, changed_by=actor[:255])
        session.add(control)
    control.paused, control.changed_at, control.changed_by, control.reason = paused, utcnow(), actor[:255], reason
    forget()


def pause(session: Session, flow_key: str, actor: str, reason: str | None = None) -> bool:
    """Pause a flow; False when it was paused already (nothing recorded then)."""
    if is_paused(session, flow_key):
        return False
    _switch(session, flow_key, True, actor, reason)
    _record(session, "pause", flow_key, actor, reason)
    return True


def resume(session: Session, flow_key: str, actor: str, reason: str | None = None) -> list[int]:
    """Resume a flow; returns the held runs it releases (now due: the caller schedules them)."""
    now = dates.now()  # the engine's clock: a released run is due at once
    held = list(
        session.execute(select(FlowRun.id).where(FlowRun.flow_key == flow_key, FlowRun.status == HELD)).scalars()
    )
    if not is_paused(session, flow_key) and not held:
        return []
    _switch(session, flow_key, False, actor, reason)
    if held:
        session.execute(
            update(FlowRun)
            .where(FlowRun.id.in_(held))
            .values(status="waiting", wake_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    _record(session, "resume", flow_key, actor, reason, runs=len(held))
    return held


def cancel(
    session: Session,
    flow_key: str,
    actor: str,
    reason: str,
    run_id: int | None = None,
    shop_ids: list[int] | None = None,
) -> list[int]:
    """End one run (`run_id`), or every waiting and held run of the flow (of `shop_ids`), as cancelled."""
    now = dates.now()
    query = select(FlowRun.id).where(FlowRun.flow_key == flow_key, FlowRun.status.in_((*ACTIVE, HELD)))
    if run_id is not None:
        query = query.where(FlowRun.id == run_id)
    if shop_ids is not None:
        query = query.where(FlowRun.shop_id.in_(shop_ids))
    ids = list(session.execute(query).scalars())
    if ids:
        session.execute(
            update(FlowRun)
            .where(FlowRun.id.in_(ids))
            .values(
                status=CANCELLED, reason=f"cancelled: {reason}"[:255], wake_at=None, finished_at=now, updated_at=now
            )
            .execution_options(synchronize_session=False)
        )
        session.add_all(
            FlowTrace(run_id=run, kind="cancelled", message=f"cancelled by {actor}: {reason}", detail={"by": actor})
            for run in ids
        )
    _record(session, "cancel", flow_key, actor, reason, runs=len(ids), **({"run_id": run_id} if run_id else {}))
    return ids


def control_of(session: Session, flow_key: str) -> FlowControl | None:
    """The flow's switch as last set (None: never paused)."""
    return session.get(FlowControl, flow_key)


def actions(session: Session, flow_key: str | None = None, limit: int = 50) -> list[FlowAction]:
    """The latest actions, on one flow or all."""
    query = select(FlowAction).order_by(FlowAction.at.desc(), FlowAction.id.desc()).limit(limit)
    if flow_key is not None:
        query = query.where(FlowAction.flow_key == flow_key)
    return list(session.execute(query).scalars())
