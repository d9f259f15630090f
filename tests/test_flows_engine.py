"""The flow engine over real Redis and a real store: exactly-once sends, consent, exits, crashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from encore.jobs import process_event
from encore.store import session_scope
from encore.store.models import Customer, Shop
from flows import dates, engine
from flows.models import FlowEffect, FlowRun, FlowTrace
from tests.flows.helpers import FakeConnector, customer, event, order, outbox, walk_to

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Real Redis and SQLite, the built-in library, a fake platform connector, a frozen clock at T0."""
    import connectors.base

    FakeConnector.reset()
    env.setattr(connectors.base, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(T0)
    yield env
    dates.set_now(None)


def flow_dir(tmp_path: Path, env: pytest.MonkeyPatch, **files: str) -> Path:
    """A FLOWS_DIR holding the given flow files."""
    from encore.settings import reset_settings

    folder = tmp_path / "flows"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    return folder


def runs(**where: Any) -> list[FlowRun]:
    with session_scope() as session:
        stmt = select(FlowRun).order_by(FlowRun.id)
        for name, value in where.items():
            stmt = stmt.where(getattr(FlowRun, name) == value)
        return list(session.execute(stmt).scalars())


def trace(run_id: int) -> list[tuple[str, str]]:
    with session_scope() as session:
        return [(t.kind, t.message) for t in engine.trace_of(session, run_id)]


WELCOME_NOW = """
name: Welcome now
trigger: {event: customer.created}
entry: {once_per_customer: true}
steps:
  - create_discount: {as: welcome, percent: 10, expires_in: 14d, prefix: HELLO}
  - send_email:
      template: welcome.html
      subject: "Welcome {{ customer.first_name }}: {{ welcome.value }} off"
"""


def test_duplicated_event_sends_one_email(flows_env, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW)
    data = event("customer.created", T0, customer())
    process_event(data)
    process_event(data)  # the same delivery again (a retried job)
    process_event(event("customer.created", T0, customer()))  # a second delivery with another id
    messages = outbox(tmp_path)
    assert len(messages) == 1
    assert messages[0]["Subject"] == "Welcome Ada: 10% off"
    assert "HELLO000001" in messages[0].get_body(("plain",)).get_content()
    assert len(FakeConnector.discounts) == 1
    assert len(runs()) == 1 and runs()[0].status == "done"


def test_no_email_without_consent_and_the_reason_is_traced(flows_env, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW)
    process_event(event("customer.created", T0, customer(email_consent=False)))
    assert outbox(tmp_path) == []
    assert FakeConnector.discounts == {}
    (run,) = runs()
    assert run.status == "suppressed" and run.reason == "no consent"
    assert ("suppressed", "not started: no consent (customer.email_consent is not true)") in trace(run.id)


def test_no_email_after_an_unsubscribe(flows_env, tmp_path: Path) -> None:
    from encore.unsubscribe import suppress

    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW.replace("steps:\n", "steps:\n  - wait: 1d\n"))
    process_event(event("customer.created", T0, customer()))
    with session_scope() as session:
        shop = session.execute(select(Shop)).scalar_one()
        suppress(session, shop.id, "C1001@example.com", "unsubscribed", "link")
    walk_to(flows_env_redis(), T0 + timedelta(days=1, minutes=1))
    assert outbox(tmp_path) == []
    (run,) = runs()
    assert run.status == "done"
    assert ("suppressed", "email not sent: unsubscribed") in trace(run.id)


def flows_env_redis():  # type: ignore[no-untyped-def]
    from encore.queue import get_redis

    return get_redis()
