"""The flow engine over real Redis and a real store: exactly-once sends, consent, exits, crashes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import func, select

from encore_retention.core.queue import FLOWS, queue
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import EventRecord, Shop
from encore_retention.flows import dates, engine
from encore_retention.flows.models import FlowEffect, FlowRun
from encore_retention.flows.steps import StepRunner
from encore_retention.jobs import process_event
from tests.flows.helpers import FakeConnector, customer, event, fake_platform, hook_server, order, outbox, walk_to

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Real Redis and SQLite, the built-in library, a fake platform connector, a frozen clock at T0."""

    with fake_platform(env, T0):
        yield env


def flow_dir(tmp_path: Path, env: pytest.MonkeyPatch, **files: str) -> Path:
    """A FLOWS_DIR holding the given flow files."""
    from encore_retention.core.settings import reset_settings

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


def test_a_run_failing_before_the_events_deferred_commit_has_the_event_applied_again(
    flows_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The event's changes ride on its first run's claim; a failure before it takes them along, and says so."""
    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW)
    claim, failed = StepRunner._claim, []

    def claim_failing_once(self: StepRunner, key: str, kind: str, existing: Any = None, **options: Any) -> None:
        if not failed:
            failed.append(key)
            raise RuntimeError("the store went away")
        claim(self, key, kind, existing, **options)

    monkeypatch.setattr(StepRunner, "_claim", claim_failing_once)
    result = process_event(event("customer.created", T0, customer()))
    assert failed and result["new"] is True  # the first attempt's ledger changes were not committed
    assert "a flow run failed before the event was committed; applying it again" in caplog.text
    assert len(outbox(tmp_path)) == 1 and len(FakeConnector.discounts) == 1
    (run,) = runs()
    assert run.status == "done"
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EventRecord)) == 1


def test_a_run_that_keeps_failing_is_recorded_failed_and_its_event_kept(
    flows_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW)

    def claim_failing(self: StepRunner, key: str, kind: str, existing: Any = None, **options: Any) -> None:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(StepRunner, "_claim", claim_failing)
    result = process_event(event("customer.created", T0, customer()))
    assert result["new"] is True and result["customer_id"] is not None
    (run,) = runs()
    assert run.status == "failed" and run.reason == "error: the store went away"
    assert ("error", "run failed: RuntimeError: the store went away") in trace(run.id)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EventRecord)) == 1
    assert outbox(tmp_path) == []


def test_no_email_without_consent_and_the_reason_is_traced(flows_env, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW)
    process_event(event("customer.created", T0, customer(email_consent=False)))
    assert outbox(tmp_path) == []
    assert FakeConnector.discounts == {}
    (run,) = runs()
    assert run.status == "suppressed" and run.reason == "no consent"
    assert ("suppressed", "not started: no consent (customer.email_consent is not true)") in trace(run.id)


def test_no_email_after_an_unsubscribe(flows_env, tmp_path: Path) -> None:
    from encore_retention.core.unsubscribe import suppress

    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW.replace("steps:\n", "steps:\n  - wait: 1d\n"))
    process_event(event("customer.created", T0, customer()))
    with session_scope() as session:
        shop = session.execute(select(Shop)).scalar_one()
        suppress(session, shop.id, "C1001@example.com", "unsubscribed", "link")
    walk_to(flows_env_redis(), T0 + timedelta(days=1, minutes=1))
    assert outbox(tmp_path) == []
    assert FakeConnector.discounts == {}  # its code was for that email: never made
    (run,) = runs()
    assert run.status == "suppressed" and run.reason == "email not sent: unsubscribed"
    assert ("suppressed", "email not sent: unsubscribed") in trace(run.id)


def flows_env_redis():  # type: ignore[no-untyped-def]
    from encore_retention.core.queue import get_redis

    return get_redis()


TWO_NOTES = """
name: Two notes
kind: transactional
trigger: {event: order.placed}
steps:
  - send_email: {template: thank_you_first_order.html, subject: "First note"}
  - wait: 1d
  - send_email: {template: check_in.html, subject: "Second note"}
"""

KILL_SCRIPT = """
import json, os, sys
from datetime import datetime
import encore_retention.connectors.email as email_api
from encore_retention.flows import dates
real_send = email_api.send
def send_then_die(message, transport=None):
    real_send(message, transport)
    os._exit(9)  # the worker dies after delivering, before recording it
email_api.send = send_then_die
dates.set_now(datetime.fromisoformat(sys.argv[1]))
from encore_retention.jobs import process_event
process_event(json.loads(sys.argv[2]))
"""


def subjects(tmp_path: Path) -> list[str]:
    return sorted(m["Subject"] for m in outbox(tmp_path))


def test_a_worker_killed_mid_send_resends_with_the_same_message_id(flows_env, redis, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import redis_url_of

    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    data = event("order.placed", T0, customer(), order=order("61", T0))
    child = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, T0.isoformat(), json.dumps(data)],
        env={**os.environ, "REDIS_URL": redis_url_of(redis), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr
    assert subjects(tmp_path) == ["First note"]
    (run,) = runs()
    assert run.status == "running" and run.lease_until is not None  # left behind by the dead worker
    # The job is retried (RQ's retry, or the sweeper once the lease is over): nothing is sent twice.
    process_event(data)
    assert subjects(tmp_path) == ["First note"]
    dates.set_now(T0 + timedelta(minutes=10))
    assert engine.reschedule_lost() == 1
    walk_to(redis, T0 + timedelta(minutes=10))
    assert subjects(tmp_path) == ["First note"]
    (run,) = runs()
    assert run.status == "waiting"
    assert any(kind == "resend" and "same Message-ID" in message for kind, message in trace(run.id))
    walk_to(redis, T0 + timedelta(days=1, minutes=10))
    assert subjects(tmp_path) == ["First note", "Second note"]
    assert runs()[0].status == "done"


def test_a_run_whose_job_is_lost_is_rescheduled(flows_env, redis, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    process_event(event("order.placed", T0, customer(), order=order("62", T0)))
    redis.flushdb()  # Redis lost its data: the scheduled resume job is gone
    walk_to(redis, T0 + timedelta(days=1, minutes=5))
    assert subjects(tmp_path) == ["First note"]
    assert engine.reschedule_lost() == 1
    assert engine.reschedule_lost() == 0  # the new job is queued: not twice
    walk_to(redis, T0 + timedelta(days=1, minutes=5))
    assert subjects(tmp_path) == ["First note", "Second note"]


def test_a_run_finishes_on_the_flow_version_it_started_with(flows_env, redis, tmp_path: Path) -> None:
    folder = flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    process_event(event("order.placed", T0, customer(), order=order("63", T0)))
    (folder / "notes.yaml").write_text(TWO_NOTES.replace("Second note", "Edited note"))
    os_utime_later(folder / "notes.yaml")
    walk_to(redis, T0 + timedelta(days=1, minutes=1))
    assert subjects(tmp_path) == ["First note", "Second note"]
    process_event(event("order.placed", T0, customer("2002"), order=order("64", T0)))
    walk_to(redis, T0 + timedelta(days=2, minutes=2))
    assert subjects(tmp_path) == ["Edited note", "First note", "First note", "Second note"]


def os_utime_later(path: Path) -> None:
    import os

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))


def test_uninstall_stops_the_shops_runs_and_inactive_shops_start_none(flows_env, redis, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    process_event(event("order.placed", T0, customer(), order=order("65", T0)))
    process_event(event("app.uninstalled", T0, None))
    (run,) = runs()
    assert run.status == "stopped" and run.reason == "app uninstalled"
    process_event(event("order.placed", T0, customer("2002"), order=order("66", T0)))
    walk_to(redis, T0 + timedelta(days=2))
    assert subjects(tmp_path) == ["First note"]
    assert len(runs()) == 1


SECOND_MARKETING = """
name: Another hello
trigger: {event: customer.created}
steps:
  - send_email: {template: check_in.html, subject: "Another hello"}
"""


def test_the_frequency_cap_is_shared_across_flows_and_traced(flows_env, redis, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, a_welcome=WELCOME_NOW, b_hello=SECOND_MARKETING)
    process_event(event("customer.created", T0, customer()))
    assert subjects(tmp_path) == ["Welcome Ada: 10% off"]
    (hello,) = runs(flow_key="b_hello")
    # held back, not dropped: it goes when the 16 h cap since the welcome email ends
    assert hello.status == "waiting" and hello.wake_at == T0 + timedelta(hours=16)
    held = f"email held back (frequency cap): sending at {(T0 + timedelta(hours=16)).isoformat()}"
    assert ("deferred", held) in trace(hello.id)
    walk_to(redis, T0 + timedelta(hours=15, minutes=59))
    assert subjects(tmp_path) == ["Welcome Ada: 10% off"]
    walk_to(redis, T0 + timedelta(hours=16, minutes=1))
    assert subjects(tmp_path) == ["Another hello", "Welcome Ada: 10% off"]
    (hello,) = runs(flow_key="b_hello")
    assert hello.status == "done" and hello.deferred_since is None


def test_quiet_hours_defer_a_marketing_email(flows_env, redis, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, hello=SECOND_MARKETING + 'quiet_hours: {from: "21:00", to: "08:00"}\n')
    late = T0.replace(hour=23)
    dates.set_now(late)
    process_event(event("customer.created", late, customer()))
    assert subjects(tmp_path) == []
    (run,) = runs()
    assert run.status == "waiting" and run.wake_at == (late + timedelta(hours=9))
    walk_to(redis, late + timedelta(hours=9))
    assert subjects(tmp_path) == ["Another hello"]


def test_a_transient_email_failure_is_retried_once(flows_env, redis, tmp_path: Path) -> None:
    import encore_retention.connectors.email as email_api

    real_send = email_api.send
    calls = []

    def flaky(message, transport=None):  # type: ignore[no-untyped-def]
        calls.append(message.idempotency_key)
        if len(calls) == 1:
            raise email_api.TransientEmailError("421 try again later")
        return real_send(message, transport)

    flows_env.setattr(email_api, "send", flaky)
    flow_dir(tmp_path, flows_env, hello=SECOND_MARKETING)
    process_event(event("customer.created", T0, customer()))
    assert subjects(tmp_path) == []
    (run,) = runs()
    assert run.status == "waiting" and any(kind == "retry" for kind, _ in trace(run.id))
    walk_to(redis, T0 + timedelta(minutes=2))
    walk_to(redis, T0 + timedelta(minutes=30))
    assert subjects(tmp_path) == ["Another hello"] and len(calls) == 2


def test_exactly_once_on_sqlite_and_postgresql(flows_env, redis, tmp_path: Path, db_url: str) -> None:
    from tests.conftest import use_database

    use_database(flows_env, db_url)
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    data = event("order.placed", T0, customer(), order=order("67", T0))
    process_event(data)
    process_event(data)
    walk_to(redis, T0 + timedelta(days=1, minutes=1))
    process_event(data)
    walk_to(redis, T0 + timedelta(days=2))
    assert subjects(tmp_path) == ["First note", "Second note"]
    (run,) = runs()
    assert run.status == "done"
    with session_scope() as session:
        effects = session.execute(select(FlowEffect.status)).scalars().all()
    assert effects == ["done", "done"]


def test_runs_command_shows_traces_with_suppression_reasons(flows_env, redis, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from encore_retention.cli import main

    flow_dir(tmp_path, flows_env, welcome=WELCOME_NOW)
    process_event(event("customer.created", T0, customer(email_consent=False)))
    process_event(event("customer.created", T0, customer("2002")))
    result = CliRunner().invoke(main, ["flows", "runs", "--customer", "C1001@example.com"])
    assert result.exit_code == 0, result.output
    assert "welcome · c1001@example.com · suppressed (no consent)" in result.output
    assert "not started: no consent" in result.output
    result = CliRunner().invoke(main, ["flows", "runs", "--status", "done"])
    assert "c2002@example.com · done" in result.output and "sent 'welcome.html' to c2002@example.com" in result.output


HTTP_FLOW = """
name: Tell the CRM
kind: transactional
trigger: {event: order.placed}
steps:
  - http:
      url: URL
      json: {email: "{{ customer.email }}", order: "{{ order.number }}", vip: true}
  - tag_customer: crm-synced
"""


def test_http_step_posts_json_once_with_an_idempotency_key(flows_env, redis, tmp_path: Path) -> None:
    flows_env.setenv("HTTP_STEP_ALLOW_HOSTS", "127.0.0.1")  # this machine, listed
    with hook_server((500, {})) as (server, received):  # the first answer fails: the step is retried later
        flow_dir(tmp_path, flows_env, crm=HTTP_FLOW.replace("URL", f"http://127.0.0.1:{server.server_port}/hook"))
        data = event("order.placed", T0, customer(), order=order("71", T0))
        process_event(data)
        walk_to(redis, T0 + timedelta(minutes=2))
        process_event(data)
        walk_to(redis, T0 + timedelta(minutes=30))
    assert [r["json"] for r in received] == [{"email": "c1001@example.com", "order": "71", "vip": True}] * 2
    keys = [r["headers"]["Idempotency-Key"] for r in received]
    assert keys[0] == keys[1] and keys[0].startswith("crm-")
    assert FakeConnector.tags == [("1001", ["crm-synced"])]
    (run,) = runs()
    assert run.status == "done"


@pytest.mark.parametrize(
    ("host", "listed"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
        ("2130706433", "127.0.0.0/8"),
        ("0x7f000001", "127.0.0.1/32"),
    ],
)
def test_http_step_refuses_this_machine_unless_listed(flows_env, redis, tmp_path: Path, host: str, listed: str) -> None:
    with hook_server() as (server, received):
        url = f"http://{host}:{server.server_port}/hook"
        flow_dir(tmp_path, flows_env, crm=HTTP_FLOW.replace("URL", url))
        process_event(event("order.placed", T0, customer(), order=order("71", T0)))
        walk_to(redis, T0 + timedelta(hours=2))
        assert received == []  # refused once, not retried
        (run,) = runs()
        assert run.status == "done" and not run.attempts and FakeConnector.tags == [("1001", ["crm-synced"])]
        assert (
            "error",
            f"POST {url} refused: {host} "
            + ("" if host == "127.0.0.1" else "(127.0.0.1) ")
            + "is loopback; the http step reaches only public addresses unless HTTP_STEP_ALLOW_HOSTS lists "
            "the host",
        ) in trace(run.id)
        with session_scope() as session:
            (effect,) = session.scalars(select(FlowEffect).where(FlowEffect.kind == "http"))
            assert effect.status == "failed" and "is loopback" in effect.result["error"]

        flows_env.setenv("HTTP_STEP_ALLOW_HOSTS", f"crm.example.com, {listed}")
        from encore_retention.core.settings import reset_settings

        reset_settings()
        process_event(event("order.placed", T0, customer(), order=order("72", T0)))
    assert [r["json"]["order"] for r in received] == ["72"]
    assert received[0]["headers"]["Host"] == f"{host}:{server.server_port}"


def test_http_step_does_not_follow_a_redirect(flows_env, redis, tmp_path: Path) -> None:
    flows_env.setenv("HTTP_STEP_ALLOW_HOSTS", "127.0.0.1")
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with hook_server((302, {"Location": metadata})) as (server, received):
        url = f"http://127.0.0.1:{server.server_port}/hook"
        flow_dir(tmp_path, flows_env, crm=HTTP_FLOW.replace("URL", url))
        process_event(event("order.placed", T0, customer(), order=order("71", T0)))
        walk_to(redis, T0 + timedelta(hours=2))
    assert [r["path"] for r in received] == ["/hook"]
    (run,) = runs()
    assert ("error", f"POST {url}: HTTP 302, a redirect to {metadata!r}, not followed") in trace(run.id)
    assert not run.attempts


def test_an_unquoted_time_of_day_waits_until_that_time(flows_env, redis, tmp_path: Path) -> None:
    # `until: 09:00` unquoted is read by YAML 1.1 as 540 (sexagesimal minutes): still nine o'clock.
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES.replace("  - wait: 1d", "  - wait: {until: 09:00}"))
    process_event(event("order.placed", T0, customer(), order=order("81", T0)))
    (run,) = runs()
    assert run.wake_at == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    walk_to(redis, datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    assert subjects(tmp_path) == ["First note", "Second note"]


def test_yaml_dates_in_a_flow_are_stored_as_text(env: pytest.MonkeyPatch) -> None:
    from encore_retention.flows.loader import load_text

    text = (
        "name: x\nkind: transactional\ntrigger: {event: order.placed}\nsteps:\n"
        "  - http: {url: 'https://hooks.example.com/a', json: {since: 2026-03-01}}\n"
    )
    loaded, problems = load_text(text, "x.yaml")
    assert problems == [] and loaded is not None
    assert loaded.data["steps"][0]["http"]["json"] == {"since": "2026-03-01"}
    json.dumps(loaded.data)


def test_a_run_woken_early_goes_back_to_sleep(flows_env, redis, tmp_path: Path) -> None:
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    process_event(event("order.placed", T0, customer(), order=order("91", T0)))
    (run,) = runs()
    assert engine.resume_run(run.id) == "waiting"  # a resume job arriving before its time
    assert subjects(tmp_path) == ["First note"]
    (again,) = runs()
    assert again.status == "waiting" and again.wake_at == run.wake_at
    scheduled = ScheduledJobRegistry(FLOWS, connection=redis, serializer=JSONSerializer)
    assert again.job_id in scheduled.get_job_ids()  # its minute's wake job is still there to resume it
    walk_to(redis, T0 + timedelta(days=1))
    assert subjects(tmp_path) == ["First note", "Second note"]


def wake_jobs(redis: Any) -> list[str]:
    registry = ScheduledJobRegistry(FLOWS, connection=redis, serializer=JSONSerializer)
    return [job_id for job_id in registry.get_job_ids() if job_id.startswith(engine.WAKE_PREFIX)]


def test_waits_ending_in_one_minute_share_one_wake_job(flows_env, redis, tmp_path: Path, db_url: str) -> None:
    from tests.conftest import use_database

    use_database(flows_env, db_url)
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    for n in range(12):  # twelve orders five seconds apart: their waits end within one minute
        at = T0 + timedelta(seconds=5 * n + 5)
        dates.set_now(at)
        process_event(event("order.placed", at, customer(str(500 + n)), order=order(f"w{n}", at)))
    assert len(subjects(tmp_path)) == 12
    (job_id,) = wake_jobs(redis)
    assert job_id == f"{engine.WAKE_PREFIX}{int((T0 + timedelta(days=1, minutes=1)).timestamp())}"
    assert {run.job_id for run in runs()} == {job_id}
    walk_to(redis, T0 + timedelta(days=1, seconds=30))  # the minute is not over: nobody is woken early
    assert len(subjects(tmp_path)) == 12
    walk_to(redis, T0 + timedelta(days=1, minutes=1))
    assert subjects(tmp_path).count("Second note") == 12
    assert {run.status for run in runs()} == {"done"}
    walk_to(redis, T0 + timedelta(days=3))  # nothing runs twice
    assert len(subjects(tmp_path)) == 24


def test_a_wake_job_hands_what_is_beyond_one_batch_to_another(flows_env, redis, tmp_path: Path) -> None:
    flows_env.setattr(engine, "WAKE_BATCH", 4)
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    for n in range(10):
        process_event(event("order.placed", T0, customer(str(600 + n)), order=order(f"b{n}", T0)))
    dates.set_now(T0 + timedelta(days=1, minutes=1))
    assert engine.wake_due() == 4
    queued = queue(FLOWS, redis).job_ids
    assert len(queued) == 1 and queued[0].startswith(engine.WAKE_PREFIX)  # the rest, for any worker to take
    walk_to(redis, T0 + timedelta(days=1, minutes=1))
    assert subjects(tmp_path).count("Second note") == 10


def test_two_workers_lease_disjoint_batches_of_due_runs(flows_env, redis, tmp_path: Path, db_url: str) -> None:
    """Three wake jobs run at once over 40 due runs: each advances a batch of its own, no run twice."""
    import threading

    from tests.conftest import use_database

    use_database(flows_env, db_url)
    flow_dir(tmp_path, flows_env, notes=TWO_NOTES)
    for n in range(40):
        process_event(event("order.placed", T0, customer(str(700 + n)), order=order(f"d{n}", T0)))
    dates.set_now(T0 + timedelta(days=1, minutes=1))
    flows_env.setattr(engine, "WAKE_BATCH", 15)
    advanced: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def wake() -> None:
        barrier.wait()
        try:
            advanced.append(engine.wake_due())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=wake) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(advanced) == [10, 15, 15]  # 40 runs in all: the batches are disjoint
    assert subjects(tmp_path).count("Second note") == 40
    assert {run.status for run in runs()} == {"done"}


BROKEN_FIRST_STEP = """
name: Broken note
kind: transactional
trigger: {event: order.placed}
steps:
  - send_email: {template: broken.html, subject: "Broken"}
"""


def test_a_run_failing_before_the_event_is_committed_still_leaves_the_ledger_applied(
    flows_env, redis, tmp_path: Path
) -> None:
    from encore_retention.core.settings import reset_settings
    from encore_retention.core.store.models import Customer, EventRecord
    from encore_retention.flows import render

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken.html").write_text("<p>{{ 1 // 0 }}</p>")  # fails when rendered
    flows_env.setenv("TEMPLATES_DIR", str(templates))
    reset_settings()
    render.reset()
    flow_dir(tmp_path, flows_env, broken=BROKEN_FIRST_STEP, notes=TWO_NOTES)
    data = event("order.placed", T0, customer("3003"), order=order("77", T0))
    process_event(data)
    with session_scope() as session:
        assert session.get(EventRecord, data["id"]) is not None
        (buyer,) = session.execute(select(Customer)).scalars().all()
        assert buyer.orders_count == 1
    statuses = {run.flow_key: (run.status, run.reason) for run in runs()}
    assert statuses["broken"][0] == "failed" and "division or modulo by zero" in statuses["broken"][1]
    assert statuses["notes"][0] == "waiting"  # the other flow's run went on
    assert subjects(tmp_path) == ["First note"]
    render.reset()
