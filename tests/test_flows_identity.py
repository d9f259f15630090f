"""Several stores in one Encore: each mails as itself, unless a flow names its own sender."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.jobs import process_event
from tests.flows.helpers import customer, event, fake_platform, outbox
from tests.test_flows_engine import flow_dir

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HELLO = """
name: Hello
kind: transactional
trigger: {event: customer.created}
steps:
  - send_email: {template: check_in.html, subject: "Hello from {{ shop.name }}"}
"""


@pytest.fixture
def flows_env(env: pytest.MonkeyPatch, redis: Any):  # type: ignore[no-untyped-def]
    with fake_platform(env, T0):
        yield env


def test_each_store_mails_as_itself(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, hello=HELLO)
    with session_scope() as session:
        tea = get_or_create_shop(session, "shopify", "tea.myshopify.com")
        tea.name, tea.email_from, tea.reply_to = "Tea House", "Tea House <news@tea.example>", "hello@tea.example"
        pots = get_or_create_shop(session, "shopify", "pots.myshopify.com")
        pots.name, pots.email = "Pot Shop", "staff@pots.example"
    for shop, cid in (("tea.myshopify.com", "1"), ("pots.myshopify.com", "2")):
        data = event("customer.created", T0, customer(cid))
        data["shop"] = shop
        process_event(data)
    tea_mail, pots_mail = sorted(outbox(tmp_path), key=lambda m: m["Subject"], reverse=True)
    assert (tea_mail["Subject"], tea_mail["From"], tea_mail["Reply-To"]) == (
        "Hello from Tea House",
        "Tea House <news@tea.example>",
        "hello@tea.example",
    )
    # no sender of its own: its name over EMAIL_FROM's address; replies to its staff
    assert (pots_mail["From"], pots_mail["Reply-To"]) == ("Pot Shop <no-reply@localhost>", "staff@pots.example")


def test_a_flows_own_sender_wins(flows_env, tmp_path: Path):
    flow_dir(tmp_path, flows_env, hello=HELLO.replace('subject: "', 'from: "Events <events@tea.example>", subject: "'))
    with session_scope() as session:
        tea = get_or_create_shop(session, "shopify", "tea.myshopify.com")
        tea.name, tea.email_from = "Tea House", "Tea House <news@tea.example>"
    data = event("customer.created", T0, customer("3"))
    data["shop"] = "tea.myshopify.com"
    process_event(data)
    [sent] = outbox(tmp_path)
    assert sent["From"] == "Events <events@tea.example>"


ALERT = """
name: Refund alert
kind: transactional
trigger: {event: customer.created}
steps:
  - send_email: {template: check_in.html, subject: "Customer {{ customer.email }} asked for a refund", to: %s}
"""


def _run_for(shop: str, cid: str) -> None:
    data = event("customer.created", T0, customer(cid))
    data["shop"] = shop
    process_event(data)


def test_to_staff_mails_the_stores_staff_and_never_falls_back_to_the_customer(flows_env, tmp_path: Path):
    from tests.test_flows_engine import runs, trace

    flow_dir(tmp_path, flows_env, alert=ALERT % "staff")
    with session_scope() as session:
        get_or_create_shop(session, "shopify", "tea.myshopify.com").email = "staff@tea.example"
        get_or_create_shop(session, "shopify", "pots.myshopify.com")  # no staff email
    _run_for("tea.myshopify.com", "4")
    _run_for("pots.myshopify.com", "5")
    [sent] = outbox(tmp_path)
    assert sent["To"] == "staff@tea.example"  # not c4@example.com
    failed = runs()[-1]
    assert (failed.status, failed.reason) == (
        "stopped",
        "bad recipient: to: staff, but the store has no staff email (encore stores set STORE --staff-email …)",
    )
    assert trace(failed.id)[-2][0] == "error" and "not sent" in trace(failed.id)[-2][1]


@pytest.mark.parametrize(
    ("to", "why"),
    [
        ("\"{{ shop.email or '' }}\"", "rendered empty"),
        ('"{{ shop.email }}"', "rendered 'None', not one email address"),
    ],
)
def test_a_to_that_renders_no_address_sends_nothing(flows_env, tmp_path: Path, to: str, why: str):
    from tests.test_flows_engine import runs

    flow_dir(tmp_path, flows_env, alert=ALERT % to)
    with session_scope() as session:
        get_or_create_shop(session, "shopify", "pots.myshopify.com")
    _run_for("pots.myshopify.com", "6")
    assert outbox(tmp_path) == []  # above all, not to the customer
    [run] = runs()
    assert run.status == "stopped" and why in (run.reason or "")


def test_lint_warns_about_a_to_that_can_render_empty(flows_env, tmp_path: Path):
    from click.testing import CliRunner

    from encore_retention.cli import main

    folder = flow_dir(tmp_path, flows_env, alert=ALERT % "\"{{ shop.email or '' }}\"")
    result = CliRunner().invoke(main, ["flows", "lint", str(folder)])
    assert result.exit_code == 0 and "warning: to: \"{{ shop.email or '' }}\" can render empty" in result.output
    clean = CliRunner().invoke(main, ["flows", "lint", str(flow_dir(tmp_path, flows_env, alert=ALERT % "staff"))])
    assert "can render empty" not in clean.output
