"""The `notify` step: an alert to the store's staff address, exactly once, never to the customer, never marketing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from encore_retention.cli import main
from encore_retention.core import events as ev
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.flows import loader
from encore_retention.flows import preview as previews
from encore_retention.flows.models import FlowEffect
from encore_retention.jobs import process_event
from encore_retention.simulate import STAFF_ADDRESS, HistoricalOrder, run_simulation
from tests.flows.helpers import SHOP, customer, event, fake_platform, outbox
from tests.test_flows_engine import flow_dir, runs, trace

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

# A marketing flow: its alert must not count in the customer's frequency cap, or the welcome email is capped.
ALERT = """
name: New customer alert
trigger: {event: customer.created}
steps:
  - notify:
      subject: "New customer {{ customer.email }}"
      body: "{{ customer.first_name }} just signed up."
      reply_to: "{{ customer.email }}"
  - send_email: {template: check_in.html, subject: "Welcome {{ customer.first_name }}"}
"""


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any):  # type: ignore[no-untyped-def]
    with fake_platform(env, T0):
        yield env


def _shop(email: str | None) -> None:
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        shop.name, shop.email = "Tea House", email


def test_notify_mails_the_staff_once_and_is_not_marketing(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, alert=ALERT)
    _shop("staff@tea.example")
    data = event("customer.created", T0, customer("1", first_name="Grace"))
    process_event(data)
    process_event(data)  # a retried job: the claimed alert is not sent again
    alert, welcome = outbox(tmp_path)
    assert (alert["To"], alert["Subject"]) == ("staff@tea.example", "New customer c1@example.com")
    assert alert["Reply-To"] == "c1@example.com"  # staff answer the customer with one click
    assert "List-Unsubscribe" not in alert  # not marketing: no unsubscribe link
    html = alert.get_body(("html",)).get_content()
    assert "Grace just signed up." in html and "The customer does not get this email" in html
    assert "Grace just signed up." in alert.get_body(("plain",)).get_content()
    assert welcome["To"] == "c1@example.com"  # not held back by a frequency cap the alert would have filled
    [run] = runs()
    assert run.status == "done"
    with session_scope() as session:
        effects = session.execute(select(FlowEffect).order_by(FlowEffect.created_at)).scalars().all()
        assert [(e.kind, e.marketing, e.status) for e in effects] == [("email", False, "done"), ("email", True, "done")]
        assert effects[0].result["to"] == "staff@tea.example" and effects[0].key.endswith("steps[0]-email")
    assert any(kind == "sent" and "staff_alert.html" in message for kind, message in trace(run.id))


def test_a_store_without_a_staff_email_stops_the_run_and_mails_nobody(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, alert=ALERT)
    _shop(None)
    process_event(event("customer.created", T0, customer("2")))
    assert outbox(tmp_path) == []  # above all, not the customer instead
    [run] = runs()
    assert run.status == "stopped" and run.reason.startswith("no staff email: to: staff, but the store has no staff")
    kind, message = trace(run.id)[-2]
    assert kind == "error" and message.startswith("staff alert not sent: ")


def test_lint_knows_notify(flows_env, tmp_path: Path):
    typo = ALERT.replace("customer.first_name }} just", "customer.frist_name }} just")
    folder = flow_dir(tmp_path, flows_env, alert=typo)
    result = CliRunner().invoke(main, ["flows", "lint", str(folder)])
    assert result.exit_code == 1
    assert "alert.yaml:7: `customer` has no field `frist_name` (did you mean `first_name`?)" in result.output
    bad = ALERT.replace("      reply_to:", "      to: someone@example.com\n      reply_to:")
    result = CliRunner().invoke(main, ["flows", "lint", str(flow_dir(tmp_path, flows_env, alert=bad))])
    assert result.exit_code == 1 and "unknown field `to`" in result.output  # it mails the staff, nobody else
    unshown = ALERT.replace('subject: "New', 'template: check_in\n      subject: "New')
    result = CliRunner().invoke(main, ["flows", "lint", str(flow_dir(tmp_path, flows_env, alert=unshown))])
    assert result.exit_code == 0, result.output
    assert "warning: template 'check_in.html' does not show `body`" in result.output
    assert "unsubscribe" not in result.output  # a staff alert needs no unsubscribe link, even in a marketing flow
    result = CliRunner().invoke(main, ["flows", "lint", str(flow_dir(tmp_path, flows_env, alert=ALERT))])
    assert result.exit_code == 0 and result.output.startswith("1 flow file(s): 0 error(s), 0 warning(s)")
    wrong = ALERT.replace("- notify:", "- notfy:")
    result = CliRunner().invoke(main, ["flows", "lint", str(flow_dir(tmp_path, flows_env, alert=wrong))])
    assert "unknown step 'notfy' (expected one of: wait, send_email, notify," in result.output


def test_the_simulator_reports_an_alert_apart_from_the_customers_emails(tmp_path: Path):
    (tmp_path / "alert.yaml").write_text(
        ALERT.replace("customer.created", "order.placed").replace("Welcome {{ customer.first_name }}", "Welcome")
    )
    flows, problems = loader.load_dir(tmp_path)
    assert problems == []
    placed = ev.Order(id="1", created_at=T0, total=Decimal("20"), currency="EUR")
    orders = [HistoricalOrder(order=placed, customer_key="ada@example.com", email="ada@example.com", consent=True)]
    sim = run_simulation(orders, [], {f.key: f for f in flows}, T0 - timedelta(days=1), T0 + timedelta(days=1), UTC)
    assert [(o.action, o.subject) for o in sim.outcomes] == [
        ("notify", "New customer ada@example.com"),
        ("email", "Welcome"),
    ]
    assert STAFF_ADDRESS.endswith(".example")


def test_previews_show_the_alert_as_the_staff_would_get_it(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, alert=ALERT)
    flow_file = loader.registry().flows["alert"]
    alert, welcome = previews.render_flow(flow_file, {"first_name": "Ada", "email": "ada@example.com"})
    assert (alert.step, alert.template, alert.staff, welcome.staff) == ("steps[0]", "staff_alert.html", True, False)
    assert alert.subject == "New customer ada@example.com" and "Ada just signed up." in alert.html


def test_the_admin_lists_the_alert_among_the_flows_emails(client, redis, tmp_path: Path, env):
    from tests.conftest import sign_in

    flow_dir(tmp_path, env, alert=ALERT)
    sign_in(client)
    page = client.get("/admin/flows/alert").get_data(as_text=True)
    assert "steps[0]</a> staff_alert.html (to staff)" in page and "steps[1]</a> check_in.html" in page
    page = client.get("/admin/preview?flow=alert&step=steps[0]").get_data(as_text=True)
    assert "steps[0] · staff_alert.html (to staff)" in page and "never to the customer" in page
