"""A run renders the templates of the flow version it started on, whatever the files say when it sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from encore_retention.connectors import base as connector_registry
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.flows import dates, loader, render, versions
from encore_retention.jobs import process_event
from tests.flows.helpers import FakeConnector, customer, event, outbox, walk_to
from tests.test_flows_engine import flow_dir, runs

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FLOW = """
name: Pinned
kind: transactional
trigger: {event: customer.created}
steps:
  - wait: %s
  - send_email: {template: pinned.html, subject: "PIN %s"}
"""


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    templates = tmp_path / "templates"
    templates.mkdir()
    env.setenv("TEMPLATES_DIR", str(templates))
    reset_settings()
    render.reset()
    versions.forget()
    dates.set_now(T0)
    yield templates
    dates.set_now(None)
    render.reset()
    versions.forget()


def _body(message: Any) -> str:
    return message.get_body(("html",)).get_content()


def test_a_waiting_run_sends_its_versions_template_and_timing(flows_env: Path, env, redis, tmp_path: Path):
    (flows_env / "pinned.html").write_text("<p>TEMPLATE v1 for {{ customer.first_name }}</p>")
    folder = flow_dir(tmp_path, env, pinned=FLOW % ("1h", "v1"))
    first = loader.registry().flows["pinned"].digest
    process_event(event("customer.created", T0, customer("1")))

    (flows_env / "pinned.html").write_text("<p>TEMPLATE v2 for {{ customer.first_name }}</p>")
    second = loader.registry().flows["pinned"].digest
    assert second != first  # a template edited is a new version of the flow
    (folder / "pinned.yaml").write_text(FLOW % ("3h", "v2"))
    process_event(event("customer.created", T0, customer("2")))

    walk_to(redis, T0 + timedelta(hours=1, minutes=1))
    [old] = outbox(tmp_path)
    assert (old["To"], old["Subject"]) == ("c1@example.com", "PIN v1")
    assert "TEMPLATE v1 for Ada" in _body(old) and "v2" not in _body(old)
    assert "TEMPLATE v1 for Ada" in old.get_body(("plain",)).get_content()  # its text part too

    walk_to(redis, T0 + timedelta(hours=3, minutes=1))
    new = outbox(tmp_path)[-1]
    assert (new["To"], new["Subject"]) == ("c2@example.com", "PIN v2") and "TEMPLATE v2" in _body(new)
    with session_scope() as session:
        assert versions.pinned(session, first, "pinned").sources["pinned.html"].startswith("<p>TEMPLATE v1")
    assert [r.flow_digest for r in runs()] == [first, loader.registry().flows["pinned"].digest]


def test_a_run_from_before_versions_kept_templates_renders_the_files(flows_env: Path, env, redis, tmp_path: Path):
    (flows_env / "pinned.html").write_text("<p>TEMPLATE v1</p>")
    flow_dir(tmp_path, env, pinned=FLOW % ("1h", "v1"))
    process_event(event("customer.created", T0, customer("3")))
    with session_scope() as session:
        session.execute(versions.FlowVersion.__table__.delete())  # as a run started by an older Encore
    versions.forget()
    (flows_env / "pinned.html").write_text("<p>TEMPLATE now</p>")
    (tmp_path / "flows" / "pinned.yaml").write_text(FLOW % ("2h", "v2"))  # and no longer the current version
    walk_to(redis, T0 + timedelta(hours=1, minutes=1))
    [sent] = outbox(tmp_path)
    assert sent["Subject"] == "PIN v1" and "TEMPLATE now" in _body(sent)


def test_previews_say_which_version_they_show(flows_env: Path, env, tmp_path: Path):
    from encore_retention.flows import preview
    from encore_retention.flows.trial import SAMPLE_CUSTOMER

    (flows_env / "pinned.html").write_text("<p>TEMPLATE v1</p>")
    flow_dir(tmp_path, env, pinned=FLOW % ("1h", "v1"))
    flow_file = loader.registry().flows["pinned"]
    [shown] = preview.render_flow(flow_file, dict(SAMPLE_CUSTOMER))
    assert shown.version == flow_file.digest[:12] and "TEMPLATE v1" in shown.html
