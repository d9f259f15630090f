"""Pausing, resuming and cancelling flows: new entries held or skipped, waiting runs kept, every action recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from encore_retention.cli import main
from encore_retention.core.store import session_scope
from encore_retention.flows import controls
from encore_retention.jobs import process_event
from tests.flows.helpers import customer, event, fake_platform, outbox, walk_to
from tests.test_flows_engine import flow_dir, runs, trace

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

NUDGE = """
name: Nudge
trigger: {event: customer.created}
when_paused: %s
steps:
  - wait: 2h
  - send_email: {template: check_in.html, subject: "Hello {{ customer.first_name }}"}
"""


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    controls.forget()
    with fake_platform(env, T0):
        yield env
    controls.forget()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["flows", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_paused_flow_holds_new_entries_and_waiting_runs_until_it_resumes(flows_env, redis, tmp_path: Path):
    flow_dir(tmp_path, flows_env, nudge=NUDGE % "hold")
    process_event(event("customer.created", T0, customer("1")))  # waiting 2 h before the paused time
    assert "nudge: paused" in cli("pause", "nudge", "--reason", "copy being rewritten")
    process_event(event("customer.created", T0, customer("2")))
    first, second = runs()
    assert (first.status, second.status, second.reason) == ("waiting", "held", "flow paused")

    walk_to(redis, T0 + timedelta(hours=3))  # the first run comes due while paused: held at its step
    assert [r.status for r in runs()] == ["held", "held"] and outbox(tmp_path) == []
    assert ("held", "held at this step: the flow is paused; it goes on when the flow resumes") in trace(first.id)

    assert "2 held run(s) released" in cli("resume", "nudge")
    walk_to(redis, T0 + timedelta(hours=3, minutes=1))
    walk_to(redis, T0 + timedelta(hours=5, minutes=1))  # the second one's wait began when it was released
    assert sorted(m["To"] for m in outbox(tmp_path)) == ["c1@example.com", "c2@example.com"]
    assert [r.status for r in runs()] == ["done", "done"]
    record = cli("actions", "nudge")
    assert "pause nudge (0 run(s)): copy being rewritten" in record and "resume nudge (2 run(s))" in record
    assert "cli:" in record


def test_a_paused_flow_that_skips_starts_nothing(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, nudge=NUDGE % "skip")
    cli("pause", "nudge")
    assert "was paused already" in cli("pause", "nudge")
    process_event(event("customer.created", T0, customer("3")))
    assert runs() == []


def test_cancel_one_run_or_every_waiting_run_with_a_reason(flows_env, redis, tmp_path: Path):
    flow_dir(tmp_path, flows_env, nudge=NUDGE % "hold")
    for cid in ("4", "5", "6"):
        process_event(event("customer.created", T0, customer(cid)))
    one, *others = runs()
    assert "1 run(s) cancelled" in cli("cancel", "nudge", "--run", str(one.id), "--reason", "asked us not to")
    assert "2 run(s) cancelled" in cli("cancel", "nudge", "--reason", "wrong discount")
    walk_to(redis, T0 + timedelta(hours=3))
    assert outbox(tmp_path) == []
    statuses = {r.id: (r.status, r.reason) for r in runs()}
    assert statuses[one.id] == ("cancelled", "cancelled: asked us not to")
    assert {statuses[r.id] for r in others} == {("cancelled", "cancelled: wrong discount")}
    kind, message = trace(one.id)[-1]
    assert kind == "cancelled" and message.startswith("cancelled by cli:") and message.endswith(": asked us not to")
    again = CliRunner().invoke(main, ["flows", "cancel", "nudge", "--run", str(one.id), "--reason", "x"])
    assert again.exit_code == 1 and "is not waiting or held" in again.output
    with session_scope() as session:
        assert [(a.action, a.runs) for a in controls.actions(session, "nudge")] == [
            ("cancel", 0),
            ("cancel", 2),
            ("cancel", 1),
        ]


def test_the_commands_name_an_unknown_flow(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, nudge=NUDGE % "hold")
    result = CliRunner().invoke(main, ["flows", "pause", "nope"])
    assert result.exit_code == 2 and "no flow 'nope' (loaded: nudge)" in result.output
    assert CliRunner().invoke(main, ["flows", "cancel", "nudge"]).exit_code == 2  # --reason is required


RETIRED = NUDGE.replace("when_paused: %s", "retired: drain")


def test_removing_a_flow_ends_its_waiting_runs_and_retiring_it_lets_them_finish(flows_env, redis, tmp_path: Path):
    folder = flow_dir(tmp_path, flows_env, nudge=NUDGE % "hold", other=NUDGE.replace("Nudge", "Other") % "hold")
    process_event(event("customer.created", T0, customer("7")))
    nudge, other = runs()
    (folder / "nudge.yaml").unlink()  # removed: its waiting run ends when it comes due, and sends nothing
    (folder / "other.yaml").write_text(RETIRED.replace("Nudge", "Other"))  # retired: no new runs, this one ends
    process_event(event("customer.created", T0, customer("8")))
    assert len(runs()) == 2  # neither starts a run any more
    walk_to(redis, T0 + timedelta(hours=3))
    ended, finished = runs()
    assert (ended.status, ended.reason) == ("stopped", "flow removed")
    assert trace(nudge.id)[-1][1].startswith("stopped: its flow file was removed")
    assert finished.status == "done" and [m["To"] for m in outbox(tmp_path)] == ["c7@example.com"]


def test_a_flow_file_that_fails_to_load_is_not_a_removed_one(flows_env, redis, tmp_path: Path):
    folder = flow_dir(tmp_path, flows_env, nudge=NUDGE % "hold")
    process_event(event("customer.created", T0, customer("9")))
    (folder / "nudge.yaml").write_text("name: Nudge\ntrigger: {event: customer.created}\nsteps: [{wait: soon}]\n")
    walk_to(redis, T0 + timedelta(hours=3))
    [run] = runs()
    assert run.status == "done"  # it goes on with the version it started with; a broken edit ends nothing


def test_the_flow_page_pauses_resumes_and_cancels_with_the_session_and_its_form_token(
    flows_env, redis, tmp_path: Path, client
):
    from tests.conftest import sign_in
    from tests.test_admin import _csrf

    flow_dir(tmp_path, flows_env, nudge=NUDGE % "hold")
    process_event(event("customer.created", T0, customer("11")))
    process_event(event("customer.created", T0, customer("12")))
    first, second = runs()
    assert client.post("/admin/flows/nudge/pause", data={}).status_code in (302, 401)  # no session: not signed in
    assert not runs(status="held")  # nothing changed
    sign_in(client)
    assert client.post("/admin/flows/nudge/pause", data={"reason": "x"}).status_code == 400  # no form token
    csrf = _csrf(client)
    paused = client.post("/admin/flows/nudge/pause", data={"csrf": csrf, "reason": "new copy"})
    assert paused.status_code == 302
    page = client.get("/admin/flows/nudge").get_data(as_text=True)
    assert "paused</span> by admin:operator" in page and "new copy" in page and "Resume" in page

    no_reason = client.post("/admin/flows/nudge/cancel", data={"csrf": csrf, "run": str(first.id)})
    assert no_reason.status_code == 400
    bad_id = client.post("/admin/flows/nudge/cancel", data={"csrf": csrf, "run": "1; drop", "reason": "x"})
    assert bad_id.status_code == 400
    cancelled = client.post("/admin/flows/nudge/cancel", data={"csrf": csrf, "run": str(first.id), "reason": "asked"})
    assert cancelled.status_code == 302
    assert client.post("/admin/flows/nudge/resume", data={"csrf": csrf}).status_code == 302
    statuses = {r.id: r.status for r in runs()}
    assert statuses == {first.id: "cancelled", second.id: "waiting"}
    page = client.get("/admin/flows/nudge").get_data(as_text=True)
    assert "admin:operator · cancel run" in page and "admin:operator · pause" in page
