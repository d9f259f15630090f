"""Test sends: the real rendered email to your own address, marked as a test, touching no customer or run."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

from encore_retention.cli import main
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Customer
from encore_retention.flows.models import FlowEffect, FlowRun
from tests.conftest import sign_in
from tests.test_admin import _csrf


def _outbox(tmp_path: Path) -> list[email.message.Message]:
    folder = tmp_path / "outbox"
    return (
        [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(folder.glob("*.eml"))]
        if folder.exists()
        else []
    )


def _store_with_grace() -> None:
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", "woo.example.com")
        shop.name, shop.email, shop.reply_to = "Woo & Co", "team@woo.example.com", "hello@woo.example.com"
        session.flush()
        session.add(Customer(shop_id=shop.id, platform_id="77", email="grace@example.com", first_name="Grace"))


def test_test_send_mails_every_email_of_a_flow_marked_as_a_test_and_records_nothing(env, redis, tmp_path):
    _store_with_grace()
    result = CliRunner().invoke(
        main, ["flows", "test-send", "win_back", "--to", "me@example.org", "--customer", "grace@example.com"]
    )
    assert result.exit_code == 0, result.output
    sent = _outbox(tmp_path)
    assert len(sent) == 2 and all(m["To"] == "me@example.org" for m in sent)  # the email and its reminder
    assert all(m["Subject"].startswith("[TEST] ") and m["X-Encore-Test"].startswith("win_back step ") for m in sent)
    assert sent[0]["From"] == "Woo & Co <no-reply@localhost>" and sent[0]["Reply-To"] == "hello@woo.example.com"
    assert "Grace" in sent[0].get_body(("html",)).get_content()
    assert "List-Unsubscribe" not in sent[0]  # no customer's unsubscribe link in a test
    with session_scope() as session:
        assert session.execute(select(func.count()).select_from(FlowRun)).scalar() == 0
        assert session.execute(select(func.count()).select_from(FlowEffect)).scalar() == 0


def test_test_send_of_one_step_for_a_sample_file(env, redis, tmp_path):
    sample = tmp_path / "ada.json"
    sample.write_text(json.dumps({"first_name": "Ada", "email": "ada@example.com", "orders_count": 3}))
    result = CliRunner().invoke(
        main, ["flows", "test-send", "loyalty_third_order", "--to", "Me <me@example.org>", "--customer", str(sample)]
    )
    assert result.exit_code == 0, result.output
    [sent] = _outbox(tmp_path)
    assert sent["To"] == "Me <me@example.org>" and sent["Subject"].startswith("[TEST] Three orders!")
    wrong = CliRunner().invoke(main, ["flows", "test-send", "welcome", "--to", "me@example.org", "--step", "9"])
    assert wrong.exit_code == 2 and "welcome has no email at step '9'" in wrong.output
    for bad in ("not an address", "a@example.com, b@example.com"):
        refused = CliRunner().invoke(main, ["flows", "test-send", "welcome", "--to", bad])
        assert refused.exit_code == 2 and "not one email address" in refused.output
    assert len(_outbox(tmp_path)) == 1


def test_the_preview_page_sends_a_test_with_the_session_and_its_form_token(client, redis, tmp_path):
    sign_in(client)
    form = {"flow": "welcome", "step": "steps[1]", "to": "me@example.org"}
    assert client.post("/admin/preview/test-send", data=form).status_code == 400  # no form token
    answer = client.post("/admin/preview/test-send", data={**form, "csrf": _csrf(client)})
    assert answer.status_code == 302
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "test sent to me@example.org: [TEST] " in page, page[page.find('role="status"') :][:300]
    [sent] = _outbox(tmp_path)
    assert sent["To"] == "me@example.org" and sent["X-Encore-Test"] == "welcome step steps[1]"
    assert "test sent" not in client.get(answer.headers["Location"]).get_data(as_text=True)  # shown once
