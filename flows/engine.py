"""The flow engine: starts runs from events and dates, advances them step by step, exactly once.

A run is a row keyed by (shop, flow, customer, trigger key), so the same order or the same birthday
year starts at most one run. Advancing a run takes a lease on its row, executes steps (each committing
its progress and its side effect's idempotency record) until the flow ends or waits; a wait is an RQ
job scheduled with `enqueue_at` on the `flows` queue. `reschedule_lost` (a cron job) re-queues runs
whose job is gone, so a run survives worker and Redis restarts. A run keeps the flow version it
started with: its definition is stored on the row.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast, overload

from rq import Retry, get_current_job
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from sqlalchemy import CursorResult, bindparam, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from encore_retention.core import effects, logs
from encore_retention.core import queue as queue_module
from encore_retention.core.events import Checkout, Event, EventType, Order
from encore_retention.core.metrics import EMAILS
from encore_retention.core.queue import FLOWS, get_redis, queue
from encore_retention.core.store import get_sessionmaker, session_scope
from encore_retention.core.store.ledger import cast_table
from encore_retention.core.store.models import Customer, Shop
from encore_retention.core.store.unit import NotCommitted, Unit
from encore_retention.flows import controls, dates, loader, rules, versions
from encore_retention.flows.loader import FlowFile
from encore_retention.flows.models import (
    ACTIVE,
    DONE,
    EXITED,
    FAILED,
    RUNNING,
    STOPPED,
    SUPPRESSED,
    WAITING,
    DraftRun,
    FlowRun,
    FlowTrace,
    Run,
    add_trace,
    capture_traces,
    considered,
    keep_traces,
)
from encore_retention.flows.rules import position_label, step_at
from encore_retention.flows.schema import format_duration
from encore_retention.flows.steps import StepRunner, TransientStepError, kind_of, parsed_once, preload_effects

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 8
RETRY_BACKOFF = [60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600]
MAX_STEPS_PER_ADVANCE = 200
RESUME = "encore_retention.flows.engine.resume_run"
WAKE = "encore_retention.flows.engine.wake_due"
BLOCKED = "blocked"  # driving stopped before a step with a side effect (pure_only)
WAKE_PREFIX = "flowwake-"
WAKE_MARK = "encore:wake:"
WAKE_SECONDS = 60  # waits end on the minute: one wake job per minute, however many runs wake in it
WAKE_BATCH = 100
# A resume or wake job fails in RQ only when its worker died or the store was unreachable (a step's
# own failure is recorded on the run): RQ runs it again, and it takes back the leases it held.
JOB_RETRY = Retry(max=5, interval=[5, 30, 120, 600, 1800])


# Hot statements, built once.
_ACTIVE_RUNS = select(FlowRun).where(
    FlowRun.customer_id == bindparam("customer_id"),
    FlowRun.status.in_((*ACTIVE, controls.HELD)),  # a held run exits too
    or_(FlowRun.event_id.is_(None), FlowRun.event_id != bindparam("event_id")),
)
_RECENT_RUN = (
    select(FlowRun.run_key)
    .where(
        FlowRun.customer_id == bindparam("customer_id"),
        FlowRun.flow_key == bindparam("flow_key"),
        FlowRun.status != SUPPRESSED,
        FlowRun.started_at > bindparam("since"),
    )
    .order_by(FlowRun.id.desc())
    .limit(1)
)
_RUN_BY_KEY = select(FlowRun.id, FlowRun.status).where(FlowRun.run_key == bindparam("run_key"))
_RUN_EVENT = select(FlowRun.event_id).where(FlowRun.run_key == bindparam("run_key"))
_SET_JOB_ID = (
    cast_table(FlowRun)
    .update()
    .where(cast_table(FlowRun).c.id == bindparam("run_id"))
    .values(job_id=bindparam("job_id"))
)


# ---- events ----------------------------------------------------------------------------------------


class EventNotCommitted(NotCommitted):
    """A run failed before the event's transaction was committed (its ledger changes are gone with it).

    Raised only when `handle_event` deferred the commit (the unit raises it at the rollback); the
    caller applies the event again with `defer_commit=False`, where the run's failure is recorded on
    the run as usual.
    """


def event_view(event: Event) -> dict[str, Any]:
    """The `event` of expressions and templates; a `feedback.received` adds the answer (`score`, `comment`,
    `order_id`)."""
    view: dict[str, Any] = {
        "id": event.id,
        "type": event.type.value,
        "occurred_at": event.occurred_at.isoformat(),
        "topic": event.topic,
    }
    if event.type == EventType.FEEDBACK_RECEIVED:
        view.update({name: event.data.get(name) for name in FEEDBACK_FIELDS})
    return view


FEEDBACK_FIELDS = ("score", "comment", "order_id")


def event_context(event: Event) -> dict[str, Any]:
    """What a run started by an event keeps: the event, its order or checkout (JSON)."""
    return {
        "event": event_view(event),
        "order": event.order.model_dump(mode="json") if event.order else None,
        "checkout": event.checkout.model_dump(mode="json") if event.checkout else None,
        "vars": {},
    }


def event_trigger_key(flow_file: FlowFile, event: Event, shop: Shop, customer: Customer) -> str:
    """The run key's trigger part (`rules.event_trigger_key`); a year is the event's in the customer's zone."""
    return rules.event_trigger_key(
        flow_file.flow.entry,
        event_type=event.type.value,
        event_id=event.id,
        occurred_at=event.occurred_at,
        tz=dates.zone(customer.timezone, shop.timezone),
        order_id=event.order.id if event.order is not None else None,
        checkout_token=event.checkout.token if event.checkout is not None else None,
    )


def handle_event(
    event: Event,
    *,
    shop: Shop | None,
    customer: Customer | None,
    new: bool,
    session: Unit,
    defer_commit: bool = False,
) -> None:
    """Start or advance the flow runs an event concerns, in the ledger's session. Must be idempotent.

    `new` is False when the ledger saw the event before; a retried job still comes here, and the run's
    unique key and the side effects' keys make the second pass finish what the first began. The
    ledger's changes and the runs started here are committed together, before any step acts. With
    `defer_commit`, when every run to advance is new and stopped before a side effect, that commit
    is the first run's claim (one commit less per event); should that run fail before it,
    EventNotCommitted is raised.
    """
    if shop is None:
        return
    if event.type == EventType.APP_UNINSTALLED:
        stop_shop(session, shop.id, "app uninstalled")
        return
    if event.type.is_privacy or customer is None:
        return
    registry = loader.registry()
    starting = registry.for_event(event.type.value)
    exiting = registry.exiting_on(event.type.value)
    if not starting and not exiting:
        return

    if exiting:
        exit_runs(session, customer.id, event)
    # Each new run's first steps without side effects (a wait, a branch) run before its row is written,
    # in this transaction; a run that reaches a side effect is advanced after the commit (its claim
    # commits again before acting), and so is an active run of the same key left by an earlier attempt.
    wakes: list[tuple[int, tuple[Any, str]]] = []
    rest: list[tuple[int, str | None]] = []
    if shop.active:
        context = event_context(event) if starting else {}
        for model, value in ((Order, event.order), (Checkout, event.checkout)):  # the steps need not parse them
            if value is not None and context.get(model.__name__.lower()):
                parsed_once(session, model, context[model.__name__.lower()], value)
        for flow_file in starting:
            key = event_trigger_key(flow_file, event, shop, customer)
            started = start_and_drive(session, flow_file, shop, customer, key, context, event_id=event.id)
            if started is None:
                continue
            run_id, token, status, wake = started
            if status in (BLOCKED, "existing"):
                rest.append((run_id, token))
            elif wake is not None:
                wakes.append((run_id, wake))
    deferred = defer_commit and bool(rest) and all(token is not None for _, token in rest)
    if not deferred:
        session.commit()  # the ledger's changes and the runs exist before any step acts
        for run_id, wake in wakes:
            schedule(run_id, *wake)
    for index, (run_id, token) in enumerate(rest):
        if deferred and index == 0:  # its claim (or its end) commits the event's transaction
            with session.deferred_commit(EventNotCommitted):
                advance(run_id, token, session)
            for waiting_id, wake in wakes:
                schedule(waiting_id, *wake)
        else:
            advance(run_id, token, session if token else None)


def exit_runs(session: Unit, customer_id: int, event: Event) -> int:
    """End a customer's active runs whose flow version lists this event in `exit_on` (with `exit_scope: order`,
    only those started for the event's order)."""
    runs = session.execute(_ACTIVE_RUNS, {"customer_id": customer_id, "event_id": event.id}).scalars().all()
    ended = 0
    event_order = event.order.id if event.order is not None else None
    for run in runs:
        flow = loader.flow_from_data(run.definition, run.flow_digest)
        if event.type.value not in flow.exit_on:
            continue
        run_order = ((run.context or {}).get("order") or {}).get("id")
        if not rules.exit_applies(flow.exit_scope, str(run_order) if run_order else None, event_order):
            continue
        _finish(session, run, EXITED, f"exit on {event.type.value}")
        _trace(session, run, "exit", f"{event.type.value} arrived: run ended", event=event.id)
        ended += 1
    return ended


def stop_shop(session: Unit, shop_id: int, reason: str) -> int:
    """Stop every active run of a shop (the app was uninstalled)."""
    runs = session.execute(
        select(FlowRun).where(FlowRun.shop_id == shop_id, FlowRun.status.in_((*ACTIVE, controls.HELD)))
    ).scalars()
    count = 0
    for run in runs:
        _finish(session, run, STOPPED, reason)
        _trace(session, run, "stop", f"stopped: {reason}")
        count += 1
    return count


# ---- starting runs ---------------------------------------------------------------------------------


@overload
def _insert_run(session: Unit, values: dict[str, Any], keep: Literal[True] = ...) -> FlowRun | None: ...
@overload
def _insert_run(session: Unit, values: dict[str, Any], keep: bool) -> FlowRun | int | None: ...
def _insert_run(session: Unit, values: dict[str, Any], keep: bool = True) -> FlowRun | int | None:
    """The new run (with `keep`, in the session; else its id), or None if a run with its key exists."""
    return session.insert_new(FlowRun, values, ["run_key"], attach=keep)


def _admit(
    session: Unit,
    flow_file: FlowFile,
    shop: Shop,
    customer: Customer,
    trigger_key: str,
    context: dict[str, Any],
    event_id: str | None,
) -> DraftRun | tuple[int, str | None] | None:
    """Check a flow's conditions and entry rules for a customer: the draft of the run to insert, or start_run's
    answer. The draft is leased (`lease_token`) unless it is a suppressed run, recorded but never driven."""
    flow = flow_file.flow
    now = dates.now()
    draft = DraftRun(
        run_key=f"{shop.id}:{flow_file.key}:{customer.id}:{trigger_key}",
        shop_id=shop.id,
        customer_id=customer.id,
        flow_key=flow_file.key,
        flow_name=flow.name,
        flow_digest=flow_file.digest,
        definition=flow_file.data,
        trigger_key=trigger_key,
        event_id=event_id,
        context=context,
        started_at=now,
        updated_at=now,
        priority=flow.priority,
    )

    versions.ensure(session, flow_file)  # once per version and process: its templates, for its runs' emails
    if flow.conditions:  # what the run would see, from its draft (no row is made for a flow that won't start)
        ctx = StepRunner(session, draft, flow, shop, customer).context()
    for condition in flow.conditions:
        held, error = rules.condition_holds(condition, ctx)
        if error is not None:
            log.warning("flow %s: %s", flow_file.key, error)
            _not_started(session, draft, f"condition {condition} -> error: {error}")
            return None
        if not held:
            log.debug("flow %s not started for customer %s: %s is false", flow_file.key, customer.id, condition)
            _not_started(session, draft, f"condition {condition} -> false")
            return None
    if flow.entry.cooldown:
        cooling = format_duration(flow.entry.cooldown)
        recent = (
            session.connection()
            .execute(
                _RECENT_RUN, {"customer_id": customer.id, "flow_key": flow_file.key, "since": now - flow.entry.cooldown}
            )
            .scalar()
        )
        if recent is not None:
            if recent == draft.run_key:
                return _existing_or_noted(session, draft)
            log.debug("flow %s not started for customer %s: cool-down", flow_file.key, customer.id)
            _not_started(session, draft, f"cool-down: its last run began less than {cooling} ago")
            return None
    if rules.consent_missing(flow, customer.email_consent):
        # Shown, not silent: a suppressed run with its reason (keyed apart so a later consent can start one).
        draft.status, draft.reason, draft.finished_at = SUPPRESSED, "no consent", now
        draft.run_key = f"{draft.run_key}:suppressed"
    elif flow_file.key in controls.paused_now(session):
        if flow.when_paused == "skip":
            log.info("flow %s paused: entry of customer %s skipped", flow_file.key, customer.id)
            _not_started(session, draft, "flow paused: new entries are skipped")
            return None
        draft.status, draft.reason = controls.HELD, "flow paused"  # recorded, driven once the flow resumes
    else:
        draft.lease_token, draft.lease_until = new_lease(), now + LEASE
    return draft


def _not_started(session: Unit, draft: DraftRun, reason: str) -> None:
    """Note on the customer's timeline that the flow was considered and not started, and why."""
    assert draft.customer_id is not None  # event and date triggers start runs for a customer
    cause = draft.event_id or draft.trigger_key
    considered(session, draft.shop_id, draft.customer_id, cause, draft.flow_key, reason, draft.started_at)


def _ran_before(session: Unit, draft: DraftRun) -> None:
    """A run of the draft's key exists and is over (or was suppressed): noted as considered, unless this very
    event started it (a retried event is not a reason) or the run is held by a pause."""
    if draft.status == controls.HELD:
        return
    ran_for = session.connection().execute(_RUN_EVENT, {"run_key": draft.run_key}).scalar()
    if draft.event_id is not None and ran_for == draft.event_id:
        return
    if draft.status == SUPPRESSED:
        reason = "no consent (customer.email_consent is not true)"
    elif draft.trigger_key == "once":
        reason = "already ran (once per customer)"
    else:
        reason = f"already ran for {draft.trigger_key}"
    _not_started(session, draft, reason)


def _existing_or_noted(session: Unit, draft: DraftRun) -> tuple[int, str | None] | None:
    """The active run of the draft's key (`_existing`); when it is over, noted as `_ran_before`."""
    existing = _existing(session, draft.run_key)
    if existing is None:
        _ran_before(session, draft)
    return existing


def _started(session: Unit, flow_file: FlowFile, run: Run, event_id: str | None, trigger_key: str) -> None:
    """The first lines of a new run's trace (and the suppression, for a run without consent)."""
    conditions = flow_file.flow.conditions
    held = "; ".join(f"{condition} -> true" for condition in conditions)
    _trace(
        session,
        run,
        "start",
        f"started by {'event ' + event_id if event_id else 'date ' + trigger_key}" + (f" ({held})" if held else ""),
        trigger_key=trigger_key,
        conditions={condition: True for condition in conditions} or None,
    )
    if run.status == controls.HELD:
        _trace(session, run, "held", "held: the flow is paused; it goes on when the flow resumes", reason="flow paused")
    if run.status == SUPPRESSED:
        _trace(
            session,
            run,
            "suppressed",
            "not started: no consent (customer.email_consent is not true)",
            reason="no consent",
        )

        EMAILS.labels(flow=flow_file.key, outcome="no consent").inc()


def start_run(
    session: Unit,
    flow_file: FlowFile,
    shop: Shop,
    customer: Customer,
    trigger_key: str,
    context: dict[str, Any],
    event_id: str | None = None,
) -> tuple[int, str | None] | None:
    """Create the run for (flow, customer, trigger key) if its entry rules and conditions allow.

    Returns (run id, lease token) of a run to advance: a new one, leased to the caller, or the existing
    active one for this key with no token (a retried job finishes it once its lease is free). None
    when the flow does not start (conditions false, cool-down, not consented, already finished).
    """
    draft = _admit(session, flow_file, shop, customer, trigger_key, context, event_id)
    if not isinstance(draft, DraftRun):
        return draft
    run = _insert_admitted(session, flow_file, draft, event_id, trigger_key)
    if run is None:
        if draft.lease_token is None:
            _ran_before(session, draft)
            return None
        return _existing_or_noted(session, draft)
    return None if run.status in (SUPPRESSED, controls.HELD) else (run.id, draft.lease_token)


def _insert_admitted(
    session: Unit, flow_file: FlowFile, draft: DraftRun, event_id: str | None, trigger_key: str
) -> FlowRun | None:
    """Insert an admitted run as its draft is (None when its key exists), with the first lines of its trace."""
    run = _insert_run(session, draft.row())
    if run is None:
        return None
    _started(session, flow_file, run, event_id, trigger_key)
    return run


def start_and_drive(
    session: Unit,
    flow_file: FlowFile,
    shop: Shop,
    customer: Customer,
    trigger_key: str,
    context: dict[str, Any],
    event_id: str | None = None,
) -> tuple[int, str | None, str, tuple[Any, str] | None] | None:
    """Start a run as `start_run` does, running its first steps without side effects before the row exists.

    A run whose first step is a wait is inserted already waiting: one INSERT, no UPDATE, no ORM
    object. Returns (run id, token, status, wake) where status is BLOCKED for a run stopped before a
    step with a side effect (leased to the caller, to advance after the commit), "existing" for an
    active run of the same key (token None), or the status the run reached; None when it does not start.
    """
    draft = _admit(session, flow_file, shop, customer, trigger_key, context, event_id)
    if draft is None:
        return None
    if not isinstance(draft, DraftRun):
        return draft[0], None, "existing", None
    token = draft.lease_token
    if token is None:  # suppressed (no consent) or held (flow paused): recorded, not driven now
        if _insert_admitted(session, flow_file, draft, event_id, trigger_key) is None:
            _ran_before(session, draft)
        return None
    with capture_traces(session) as lines:
        _started(session, flow_file, draft, event_id, trigger_key)
        status, wake = _drive(session, draft, token, pure_only=True)
    run = _insert_run(session, draft.row(), keep=status == BLOCKED)
    if run is None:
        existing = _existing(session, draft.run_key)
        if existing is None:
            _ran_before(session, draft)
            return None
        return existing[0], None, "existing", None
    run_id = run if isinstance(run, int) else run.id
    for line in lines:
        line["run_id"] = run_id
    keep_traces(session, lines)
    if wake is not None and not wake[1].startswith(WAKE_PREFIX):  # a job of its own: named after the id
        draft.id = run_id
        job_id = _job_id(draft)
        session.connection().execute(_SET_JOB_ID, {"run_id": run_id, "job_id": job_id})
        wake = (wake[0], job_id)
    return run_id, token if status == BLOCKED else None, status, wake


def _existing(session: Session, run_key: str) -> tuple[int, str | None] | None:
    row = session.connection().execute(_RUN_BY_KEY, {"run_key": run_key}).first()
    return (row.id, None) if row is not None and row.status in ACTIVE else None


# ---- leases ----------------------------------------------------------------------------------------


def new_lease() -> str:
    """A lease token; inside an RQ job it begins with the job's mark (see `lease_free`)."""
    return f"{_job_mark() or '-.'}{uuid.uuid4().hex}"


def lease_free(now: datetime) -> Any:
    """The condition for a run's lease to be free: none, run out, or taken by an earlier attempt of this job.

    A job whose worker died mid-run is retried by RQ once its heartbeats stop, under the same job id;
    the leases it held are its own, and it takes them back at once instead of waiting for them to run
    out (the run's side effects are keyed, so whatever the dead attempt did is not done twice).
    """
    free = or_(FlowRun.lease_until.is_(None), FlowRun.lease_until < now)
    mark = _job_mark()
    return free if mark is None else or_(free, FlowRun.lease_token.startswith(mark, autoescape=True))


def _job_mark() -> str | None:
    """The current RQ job's mark in lease tokens (16 hex digits and a dot), None outside a job."""

    job = get_current_job()
    if job is None:
        return None
    return hashlib.sha1(job.id.encode()).hexdigest()[:16] + "."


# ---- advancing runs --------------------------------------------------------------------------------


def resume_run(run_id: int) -> str:
    """RQ job: continue a run after its wait (or after a retry delay)."""
    return advance(run_id)


def advance(run_id: int, token: str | None = None, session: Unit | None = None, *, commit: bool = True) -> str:
    """Execute a run's steps until it ends or waits (every log line inside carries `run_id`)."""
    with logs.bind(run_id=run_id):
        return _advance(run_id, token, session, commit)


def _advance(run_id: int, token: str | None = None, session: Unit | None = None, commit: bool = True) -> str:
    """Execute a run's steps until it ends or waits; returns the run's status afterwards.

    `token` is the lease the caller already holds (a run it just created, in `session`); otherwise the
    lease is taken here, and a run leased by another worker (or by one that died, until the lease
    runs out) is left alone. With `commit=False` (a wake batch) the run's last changes are committed
    with the next run's claim or at the end of the batch; if a later run fails before its claim,
    the rollback takes them back, and the run, still leased and waiting, is driven again once the
    lease runs out, where its claimed effect is found and not repeated.
    """
    now = dates.now()
    own_session = None
    if token is None:
        token = new_lease()
        own_session = session = get_sessionmaker()()
        taken = cast(
            CursorResult[Any],
            session.execute(
                update(FlowRun)
                .where(  # an UPDATE's result: a cursor's
                    FlowRun.id == run_id,
                    FlowRun.status.in_(ACTIVE),
                    lease_free(now),
                )
                .values(lease_until=now + LEASE, lease_token=token)
            ),
        ).rowcount
        session.commit()
        if not taken:
            session.close()
            return "busy"
    wake: tuple[Any, str] | None = None
    try:
        if session is not None:
            status, wake = _drive(session, run_id, token)
            if commit:
                session.commit()
        else:
            with session_scope() as fresh:
                status, wake = _drive(fresh, run_id, token)
    except (TransientStepError, OperationalError) as exc:
        if session is not None:
            session.rollback()  # before the event's deferred commit, this raises EventNotCommitted
        status, wake = _retry_later(run_id, token, exc)
        _release(run_id, token)
    except Exception as exc:
        if session is not None:
            session.rollback()  # before the event's deferred commit, this raises EventNotCommitted
        log.exception("flow run %s failed", run_id)
        with session_scope() as fresh:
            run = fresh.get(FlowRun, run_id)
            if run is not None:
                _finish(fresh, run, FAILED, f"error: {exc}"[:255])
                _trace(fresh, run, "error", f"run failed: {type(exc).__name__}: {exc}")
        status, wake = FAILED, None
        _release(run_id, token)
    finally:
        if own_session is not None:
            own_session.close()
    if wake is not None:
        schedule(run_id, *wake)
    return status


def _drive(
    session: Unit,
    run_id: int | DraftRun,
    token: str,
    *,
    pure_only: bool = False,
) -> tuple[str, tuple[Any, str] | None]:
    """Run steps until the run waits or ends; then give the lease back.

    A step with a side effect commits the transaction before it acts (its claim); the others don't
    need to. With `pure_only`, driving stops before the first step with a side effect and returns
    BLOCKED, keeping the lease for the caller, who commits and then advances the run.
    """
    status, wake = RUNNING, None
    if isinstance(run_id, int) and (halted := _halted(session, run_id, token)) is not None:
        return halted, None
    for _ in range(MAX_STEPS_PER_ADVANCE):
        status, wake, more = _step(session, run_id, token, pure_only=pure_only)
        if not more:
            break
    if status == BLOCKED:
        return status, None
    run = session.get(FlowRun, run_id) if isinstance(run_id, int) else run_id
    if run is not None and run.lease_token == token:
        session.stage(run, lease_until=None, lease_token=None)
    return status, wake


def _halted(session: Unit, run_id: int, token: str) -> str | None:
    """Whether a stored run may not go on now: its flow was removed (the run ends) or is paused (it is held)."""
    run = session.get(FlowRun, run_id)
    if run is None or run.lease_token != token or run.status not in ACTIVE:
        return None
    if loader.registry().removed(run.flow_key):
        _finish(session, run, STOPPED, "flow removed")
        _trace(session, run, "stop", "stopped: its flow file was removed (mark it `retired: drain` to let runs finish)")
        status = STOPPED
    elif run.flow_key in controls.paused_now(session):  # it stays at its step until the flow resumes
        session.stage(run, status=controls.HELD, reason="flow paused", wake_at=None, updated_at=dates.now())
        _trace(session, run, "held", "held at this step: the flow is paused; it goes on when the flow resumes")
        status = controls.HELD
    else:
        return None
    session.stage(run, lease_until=None, lease_token=None)
    return status


def _release(run_id: int, token: str) -> None:
    with session_scope() as session:
        session.execute(
            update(FlowRun)
            .where(FlowRun.id == run_id, FlowRun.lease_token == token)
            .values(lease_until=None, lease_token=None)
        )


def _step(
    session: Unit,
    run_id: int | DraftRun,
    token: str,
    *,
    pure_only: bool = False,
) -> tuple[str, tuple[Any, str] | None, bool]:
    """Run one step of a run (by id, or a draft not stored yet): (status, (wake_at, job id), whether to go on)."""
    run = session.get(FlowRun, run_id) if isinstance(run_id, int) else run_id
    if run is None or run.lease_token != token or run.status not in ACTIVE:
        return (run.status if run else "gone"), None, False
    now = dates.now()
    if run.status == WAITING and run.wake_at is not None and run.wake_at > now:  # woken early: sleep again
        job_id = _job_id(run)
        session.stage(run, job_id=job_id)
        return WAITING, (run.wake_at, job_id), False
    # A waiting run is left as it is until its step is done (the step's claim commits without touching it).
    shop = session.get(Shop, run.shop_id)
    customer = session.get(Customer, run.customer_id) if run.customer_id else None
    if shop is None or not shop.active:
        _finish(session, run, STOPPED, "shop inactive")
        _trace(session, run, "stop", "stopped: the shop is inactive")
        return STOPPED, None, False
    flow = loader.flow_from_data(run.definition, run.flow_digest)
    runner = StepRunner(session, run, flow, shop, customer)
    if not runner.conditions_hold("before step"):
        _finish(session, run, EXITED, "condition no longer holds")
        return EXITED, None, False
    step = step_at(flow.steps, run.position)
    if pure_only and not kind_of(step).pure:
        return BLOCKED, None, False
    outcome = runner.run_step(step)
    session.stage(run, updated_at=now, attempts=0)
    then, following = rules.transition(flow.steps, run.position, outcome)
    if then == "stop":
        _finish(session, run, STOPPED if outcome.reason != "end" else DONE, outcome.reason)
        _trace(session, run, "stop", f"stopped: {outcome.reason}")
        return run.status, None, False
    if then == "suppress":
        _finish(session, run, SUPPRESSED, outcome.reason)
        _trace(
            session,
            run,
            "stop",
            "run ended: its email was not sent, and the steps after it don't run (`if_not_sent: continue` lets them)",
        )
        return SUPPRESSED, None, False
    if then == "enter":
        session.stage(run, status=RUNNING, position=following)
        return RUNNING, None, True
    if then == "defer":
        assert outcome.until is not None
        session.stage(run, status=WAITING, wake_at=outcome.until)
        job_id = _job_id(run)
        session.stage(run, job_id=job_id)
        return WAITING, (outcome.until, job_id), False
    if then == "done":
        dropped = (run.context or {}).get("dropped")
        if dropped:  # it went on past an email it did not send (`if_not_sent: continue`)
            _finish(session, run, SUPPRESSED, f"email not sent: {dropped}")
            _trace(session, run, "done", f"run completed, without an email it did not send ({dropped})")
            return SUPPRESSED, None, False
        _finish(session, run, DONE, "completed")
        _trace(session, run, "done", "run completed")
        return DONE, None, False
    if then == "wait":  # a held email of the run went; the next one, after the wait, takes its own turn
        assert outcome.until is not None
        session.stage(run, position=following, status=WAITING, wake_at=outcome.until, deferred_since=None)
        job_id = _job_id(run)
        session.stage(run, job_id=job_id)
        return WAITING, (outcome.until, job_id), False
    session.stage(run, position=following, status=RUNNING)
    return RUNNING, None, True


def _retry_later(run_id: int, token: str, exc: Exception) -> tuple[str, tuple[Any, str] | None]:
    with session_scope() as session:
        run = session.get(FlowRun, run_id)
        if run is None or run.lease_token != token:
            return "gone", None
        session.stage(run, attempts=(run.attempts or 0) + 1)
        if run.attempts > MAX_ATTEMPTS:
            _finish(session, run, FAILED, f"gave up after {MAX_ATTEMPTS} attempts")
            _trace(session, run, "error", f"gave up after {MAX_ATTEMPTS} attempts: {exc}")
            return FAILED, None
        delay = getattr(exc, "retry_after", None) or RETRY_BACKOFF[min(run.attempts, len(RETRY_BACKOFF)) - 1]
        wake_at = dates.now() + timedelta(seconds=float(delay))
        session.stage(run, status=WAITING, wake_at=wake_at)
        job_id = _job_id(run, own=True)  # on time: a retry is one run, not a minute's batch
        session.stage(run, job_id=job_id)
        _trace(session, run, "retry", f"will retry at {wake_at.isoformat()}: {exc}", attempt=run.attempts)
        return WAITING, (wake_at, job_id)


def _job_id(run: Run, own: bool = False) -> str:
    """The job that will resume a run: its minute's wake job when it waits, else (or `own`) a job of its own."""
    if not own and run.wake_at is not None and run.wake_at > dates.now():
        return wake_job_id(run.wake_at)
    label = position_label(run.position).replace("[", "_").replace("]", "").replace(".", "-")
    return f"flowrun-{run.id}-{label}-{run.attempts or 0}"


def wake_slot(when: datetime) -> int:
    """The end of the WAKE_SECONDS slot that `when` falls in (epoch seconds): a wait ends at most that late."""
    seconds = when.timestamp()
    return int(-(-seconds // WAKE_SECONDS) * WAKE_SECONDS)


def wake_job_id(when: datetime) -> str:
    return f"{WAKE_PREFIX}{wake_slot(when)}"


def release(run_ids: list[int]) -> None:
    """Have runs a resumed flow released go on now (each with a job of its own)."""
    for run_id in run_ids:
        schedule(run_id, dates.now(), f"flowrun-{run_id}-resumed-{uuid.uuid4().hex[:8]}")


def schedule(run_id: int, when: Any, job_id: str) -> None:
    """Have the run resumed at `when`.

    Waits share one `wake_due` job per WAKE_SECONDS slot, queued with RQ's `enqueue_at` the first time
    a run needs it (a Redis mark keeps the others from queueing it again); RQ's scheduler moves it
    to the `flows` queue when the slot ends. A run due now, or rescued, gets a `resume_run` job of its own.
    Inside a rehearsal (`core.effects.acting`) its stand-in records the wake-up instead.
    """
    instead = effects.current().schedule
    if instead is not None:
        instead(run_id, when, job_id)
        return

    q = queue(FLOWS)
    if not job_id.startswith(WAKE_PREFIX):
        if when <= dates.now():
            q.enqueue_call(
                RESUME, args=(run_id,), job_id=job_id, result_ttl=600, failure_ttl=30 * 24 * 3600, retry=JOB_RETRY
            )
        else:
            q.enqueue_at(
                when, RESUME, run_id, job_id=job_id, result_ttl=600, failure_ttl=30 * 24 * 3600, retry=JOB_RETRY
            )
        return
    slot = int(job_id[len(WAKE_PREFIX) :])

    seen = (queue_module.generation, slot)
    if seen in _slots_known:
        return  # this process queued the slot's job, or saw it queued (a lost job is the re-scheduler's)
    connection = get_redis()
    mark = WAKE_MARK + job_id
    ttl = max(3600, int(slot - dates.now().timestamp()) + 24 * 3600)
    if connection.set(mark, 1, nx=True, ex=ttl):
        try:
            q.enqueue_at(
                datetime.fromtimestamp(slot, UTC),
                WAKE,
                slot,
                job_id=job_id,
                result_ttl=600,
                failure_ttl=30 * 24 * 3600,
                retry=JOB_RETRY,
            )
        except Exception:
            connection.delete(mark)  # the next run of this slot queues it, or the re-scheduler does
            raise
    if len(_slots_known) > 100_000:
        _slots_known.clear()
    _slots_known.add(seen)


_slots_known: set[tuple[int, int]] = set()  # (Redis generation, slot) whose wake job is queued


def wake_due(slot: int | None = None) -> int:
    """RQ job: advance the waiting runs that are due, WAKE_BATCH at a time; returns how many were advanced.

    The batch is leased in one statement (on PostgreSQL skipping rows another worker holds), loaded
    with its shops, customers and side-effect records in four queries, and driven run by run; a run's
    last changes are committed with the next run's claim (see `_advance`) or at the end. When a full
    batch is leased, another wake job is queued before driving it, so that other workers share the work.
    """
    now = dates.now()
    token = new_lease()
    started = time.monotonic()
    advanced = 0
    more_queued = False
    with session_scope() as session:
        ids = _lease_due(session, now, token)
        session.commit()
        if not ids:
            return 0
        if len(ids) == WAKE_BATCH:  # more may be due: another worker takes the next batch meanwhile
            _queue_more(slot, token)
            more_queued = True
        # The batch, its shops and customers in three queries (held here, so the steps find them loaded).
        runs = session.scalars(select(FlowRun).where(FlowRun.id.in_(ids))).all()
        shops = session.scalars(select(Shop).where(Shop.id.in_({run.shop_id for run in runs}))).all()
        customer_ids = {run.customer_id for run in runs if run.customer_id}
        customers = session.scalars(select(Customer).where(Customer.id.in_(customer_ids))).all() if customer_ids else []
        preload_effects(session, ids)
        for run_id in ids:
            if time.monotonic() - started > LEASE.total_seconds() / 2:
                break  # the rest go back before their lease could run out under us
            advance(run_id, token, session, commit=False)
            advanced += 1
        del runs, shops, customers
        if advanced < len(ids):
            session.execute(
                update(FlowRun)
                .where(FlowRun.lease_token == token)
                .values(lease_until=None, lease_token=None)
                .execution_options(synchronize_session=False)
            )
    if advanced < len(ids) and not more_queued:
        _queue_more(slot, token)
    return advanced


def _queue_more(slot: int | None, token: str) -> None:
    """Queue another wake job for the same slot, now (for the runs beyond this job's batch)."""

    queue(FLOWS).enqueue_call(
        WAKE,
        args=(slot,),
        job_id=f"{WAKE_PREFIX}{slot}-more-{token[-8:]}",
        result_ttl=600,
        failure_ttl=30 * 24 * 3600,
        retry=JOB_RETRY,
    )


def _lease_due(session: Session, now: datetime, token: str) -> list[int]:
    """Lease up to WAKE_BATCH waiting runs whose time has come; their ids, soonest first."""
    free = lease_free(now)
    due = (
        select(FlowRun.id)
        .where(FlowRun.status == WAITING, FlowRun.wake_at <= now, free)
        .order_by(FlowRun.wake_at, FlowRun.id)
        .limit(WAKE_BATCH)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    # A materialised CTE: PostgreSQL may otherwise evaluate a LIMIT subquery more than once and lease more.
    batch = due.cte("due").prefix_with("MATERIALIZED", dialect="postgresql")
    leased = session.execute(
        update(FlowRun)
        .where(FlowRun.id.in_(select(batch.c.id)), FlowRun.status == WAITING, free)
        .values(lease_until=now + LEASE, lease_token=token)
        .returning(FlowRun.id, FlowRun.wake_at)
        .execution_options(synchronize_session=False)
    ).all()
    return [row.id for row in sorted(leased, key=lambda row: (row.wake_at, row.id))]


def _finish(session: Unit, run: Run, status: str, reason: str) -> None:
    now = dates.now()
    session.stage(
        run, status=status, reason=reason[:255], finished_at=now, updated_at=now, wake_at=None, deferred_since=None
    )


def _trace(session: Unit, run: Run, kind: str, message: str, **detail: Any) -> None:
    add_trace(
        session,
        run.id,
        dates.now(),
        kind,
        message,
        position_label(run.position) if run.position else None,
        detail or None,
    )


# ---- keeping runs alive ----------------------------------------------------------------------------


def reschedule_lost(grace_seconds: int = 120) -> int:
    """Cron job: re-queue runs whose resume job is gone (Redis lost it, a worker died mid-run) or stuck.

    A job still scheduled for longer than the grace after its time is stuck (no scheduler moved it):
    the run gets a job of its own too. Should the stuck one run after all, the run's lease and its
    side effects' keys keep it from acting twice.
    """

    connection = get_redis()
    now = dates.now()
    due = now - timedelta(seconds=grace_seconds)
    requeued = 0
    with session_scope() as session:
        rows = session.execute(
            select(FlowRun.id, FlowRun.status, FlowRun.job_id, FlowRun.lease_until)
            .where(
                FlowRun.status.in_(ACTIVE),
                or_(FlowRun.wake_at.is_(None), FlowRun.wake_at < due),
                or_(FlowRun.lease_until.is_(None), FlowRun.lease_until < now),
                FlowRun.updated_at < due,
            )
            .order_by(FlowRun.id)
            .limit(10000)
        ).all()
    for row in rows:
        if row.job_id and _job_alive(connection, row.job_id, due):
            continue
        job_id = f"flowrun-{row.id}-rescue-{uuid.uuid4().hex[:8]}"
        with session_scope() as session:
            session.execute(update(FlowRun).where(FlowRun.id == row.id).values(job_id=job_id))
        schedule(row.id, now, job_id)
        requeued += 1
    if requeued:
        log.info("re-queued %d flow runs whose job was gone", requeued)
    return requeued


def _job_alive(connection: Any, job_id: str, due: datetime) -> bool:
    """Whether the job will still run: queued, running, waiting on others, or scheduled and not overdue."""

    try:
        job = Job.fetch(job_id, connection=connection)
        status = job.get_status()
        if status == JobStatus.SCHEDULED:
            registry = ScheduledJobRegistry(job.origin, connection=connection)
            return registry.get_scheduled_time(job) >= due
        return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED)
    except Exception:  # noqa: BLE001 - NoSuchJobError or an unreadable job: it is gone either way
        return False


def trace_of(session: Session, run_id: int) -> list[FlowTrace]:
    """A run's trace, oldest first."""
    return list(session.execute(select(FlowTrace).where(FlowTrace.run_id == run_id).order_by(FlowTrace.id)).scalars())
