"""The newcomer's path in a real headless Chromium: samples sent to a running server, then the admin page.

Skipped where /usr/bin/chromium is missing, unless ENCORE_REQUIRE_BROWSER=1 (set by `.ci/run`).
ENCORE_SCREENSHOTS_DIR keeps the screenshots for a look.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from encore_retention.core.queue import PROCESS_EVENT

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    if os.environ.get("ENCORE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"ENCORE_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install -y chromium)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture
def server(env, redis) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The web app served by a real HTTP server on 127.0.0.1, in a thread."""
    from werkzeug.serving import make_server

    from encore_retention.core.settings import reset_settings
    from encore_retention.web import create_app

    probe = make_server("127.0.0.1", 0, lambda *a: [])  # find a free port
    port = probe.server_port
    probe.server_close()
    url = f"http://127.0.0.1:{port}"
    env.setenv("APP_URL", url)
    reset_settings()
    http = make_server("127.0.0.1", port, create_app(), threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield url
    http.shutdown()
    thread.join(5)


@pytest.fixture
def browser(tmp_path) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A page in a fresh headless Chromium profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def not_blank(path: Path, min_colours: int = 12, min_spread: float = 8.0) -> bool:
    """A screenshot with content: many colours and some spread of brightness, not one flat fill."""
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        spread = max(ImageStat.Stat(rgb.convert("L")).stddev)
    return len(colours) >= min_colours and spread >= min_spread


def shot(page: Any, folder: Path, name: str, **options: Any) -> Path:
    path = folder / f"{name}.png"
    (options.pop("element") if "element" in options else page).screenshot(path=str(path), **options)
    keep = os.environ.get("ENCORE_SCREENSHOTS_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def test_samples_then_the_admin_page_in_chromium(server, browser, redis, tmp_path):
    from encore_retention.cli import main
    from tests.conftest import drain

    # the README's one command: the bundled samples, signed and posted to the running server
    sent = CliRunner().invoke(main, ["samples", "send", "--url", server])
    assert sent.exit_code == 0, sent.output
    assert "08-order_updated.json: order.updated -> HTTP 200" in sent.output
    drain(redis)  # the worker: ledger, flows, codes from the sandbox store, emails to the outbox
    outbox = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(outbox) >= 2, "the welcome emails of the two consenting customers"
    assert any(b"ada@example.com" in p.read_bytes() for p in outbox)

    page, folder = browser, tmp_path / "shots"
    folder.mkdir()

    page.goto(f"{server}/admin/")  # coming from this machine is no sign-in
    assert page.url.startswith(f"{server}/admin/login") and "encore admin link" in page.inner_text("main")
    from encore_retention.core.access import sign_in_url

    page.goto(sign_in_url(server))  # the one-time link `encore run` prints
    assert page.url == f"{server}/admin/"
    assert page.locator("h1").inner_text().startswith("Flows")
    welcome = page.locator("tr", has_text="Welcome, with a first-purchase code")
    cells = welcome.locator("td").all_inner_texts()
    assert cells[3] == "2" and cells[5] == "2" and cells[6] == "2"  # runs, emails, codes
    assert not_blank(shot(page, folder, "flows", full_page=True))

    page.click("text=Thank loyal customers on their third order")
    runs = page.locator("table").inner_text()
    assert "grace@example.com" in runs and "waiting" in runs and "email held back since" in runs
    assert "Emails held back (quiet hours, the frequency cap): 1 waiting now" in page.inner_text("main")
    assert "frequency cap 1" in page.inner_text("main")
    assert not_blank(shot(page, folder, "flow", full_page=True))

    page.click("text=Customers")
    page.fill("input[name=q]", "grace")
    page.click("button:has-text('Find')")
    page.click("text=grace@example.com")
    timeline = page.locator(".timeline").inner_text()
    assert "Thank loyal customers on their third order" in timeline
    assert "email held back (frequency cap): sending at" in timeline  # the welcome email went out the same day
    assert "sent 'welcome.html' to grace@example.com" in timeline
    assert not_blank(shot(page, folder, "customer", full_page=True))

    page.click("text=Preview an email for this customer: >> xpath=.. >> text=Welcome, with a first-purchase code")
    page.wait_for_selector("#frame-mobile")
    for name, width in (("desktop", 680), ("mobile", 375)):
        frame = page.frame_locator(f"#frame-{name}")
        frame.locator("body").wait_for()
        assert "Grace" in frame.locator("body").inner_text()
        box = page.locator(f"#frame-{name}").bounding_box()
        assert box is not None and abs(box["width"] - width) <= 4
        assert not_blank(shot(page, folder, f"preview-{name}", element=page.locator(f"#frame-{name}")))
    assert not_blank(shot(page, folder, "preview", full_page=True))

    page.goto(f"{server}/admin/messages")
    assert page.locator("td", has_text="ada@example.com").count() >= 1
    assert not_blank(shot(page, folder, "messages", full_page=True))
    view = page.locator("tr", has_text="ada@example.com").locator("a", has_text="view").get_attribute("href")
    page.goto(f"{server}{view}")
    assert "Welcome to Sample Store, Ada!" in page.inner_text("body")  # the email as sent, from the outbox
    assert not_blank(shot(page, folder, "sent-email", full_page=True))
    # a forged webhook and a failing job, then the Failures page and its Requeue button
    import requests

    from encore_retention.core.queue import EVENTS, queue

    forged = requests.post(
        f"{server}/webhooks/woocommerce",
        data=b'{"id": 1}',
        timeout=10,
        headers={
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": "https://nobody.example/",
            "X-WC-Webhook-Topic": "order.created",
            "X-WC-Webhook-Signature": "Zm9yZ2Vk",
        },
    )
    assert forged.status_code == 401
    queue(EVENTS).enqueue_call(PROCESS_EVENT, args=({"id": "broken"},), job_id="broken-job")
    drain(redis)
    page.goto(f"{server}/admin/failures")
    jobs, rejected = page.locator("table").nth(0), page.locator("table").nth(1)
    assert "broken-job" in jobs.inner_text() and "ValidationError" in jobs.inner_text()
    assert "unknown_store" in rejected.inner_text() and "nobody.example" in rejected.inner_text()
    assert not_blank(shot(page, folder, "failures", full_page=True))
    page.click("button:has-text('Requeue')")
    page.wait_for_url(f"{server}/admin/failures")
    assert "No failed jobs." in page.locator("table").first.inner_text()
    assert "broken-job" in queue(EVENTS).job_ids


def test_the_walk_through_holds_graces_reward_and_birthday_back_then_sends_both(server, browser, redis, tmp_path):
    from datetime import datetime, time, timedelta

    from encore_retention.cli import main
    from encore_retention.core.access import sign_in_url
    from encore_retention.flows import dates
    from tests.conftest import drain
    from tests.flows.helpers import walk_to

    zone = dates.zone(None)
    ten = datetime.combine(datetime.now(zone).date(), time(10, 0), zone)  # a day's morning, in the store's zone
    dates.set_now(ten)
    try:
        sent = CliRunner().invoke(main, ["samples", "send", "--url", server])
        assert sent.exit_code == 0, sent.output
        drain(redis)
        swept = CliRunner().invoke(main, ["sweep"])  # the daily date triggers: Grace's birthday is in two weeks
        assert swept.exit_code == 0, swept.output
        drain(redis)
        page, folder = browser, tmp_path / "shots"
        folder.mkdir()
        page.goto(sign_in_url(server))

        def graces_timeline() -> str:
            page.goto(f"{server}/admin/customers?q=grace")
            page.click("text=grace@example.com")
            return page.locator(".timeline").inner_text()

        # her welcome email took the day's cap: the reward and the birthday email are held, not dropped
        timeline = graces_timeline()
        assert timeline.count("email held back (frequency cap): sending at") == 2
        assert "email not sent" not in timeline
        assert "sent 'loyalty_reward.html'" not in timeline and "sent 'birthday.html'" not in timeline
        assert "created code LOYAL" not in timeline  # a code is made when its email goes
        assert not_blank(shot(page, folder, "held", full_page=True))

        # when the cap ends, the reward (held first) goes; the birthday email waits for the next turn
        walk_to(redis, ten + timedelta(hours=16, minutes=2))
        timeline = graces_timeline()
        assert "sent 'loyalty_reward.html' to grace@example.com" in timeline and "created code LOYAL" in timeline
        assert "sent 'birthday.html'" not in timeline
        walk_to(redis, ten + timedelta(hours=32, minutes=4))
        timeline = graces_timeline()
        assert "sent 'birthday.html' to grace@example.com" in timeline and "created code BDAY" in timeline
        assert not_blank(shot(page, folder, "sent-later", full_page=True))
        page.goto(f"{server}/admin/flows/birthday")
        assert "completed" in page.locator("table").inner_text()
        assert "priority high" in page.inner_text("main") and "max delay 7d" in page.inner_text("main")
    finally:
        dates.set_now(None)


def test_the_daily_charts_fit_a_phone(server, browser, redis, tmp_path):
    import re

    from encore_retention.cli import main
    from encore_retention.core.access import sign_in_url
    from tests.conftest import drain

    sent = CliRunner().invoke(main, ["samples", "send", "--url", server])
    assert sent.exit_code == 0, sent.output
    drain(redis)
    page, folder = browser, tmp_path / "shots"
    folder.mkdir()
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto(sign_in_url(server))
    for name, path in (("overview", "/admin/"), ("welcome", "/admin/flows/welcome")):
        page.goto(f"{server}{path}")
        charts = page.locator("svg.chart-svg")
        assert charts.count() == 5  # entries, emails, suppressed or deferred, redeemed, revenue
        entries = page.locator("svg.chart-svg.entries")
        entries.scroll_into_view_if_needed()
        assert entries.is_visible()
        box = entries.bounding_box()
        assert box is not None and 250 <= box["width"] <= 375 and box["x"] >= 0 and box["x"] + box["width"] <= 375
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, "no horizontal scrolling"
        # the accessible summary: the image's name says what the bars show
        summary = page.get_by_role("img", name=re.compile(r"^Entries per day, .* in all")).first
        assert summary.count() == 1 and re.search(
            r": [1-9][0-9]* in all; most on ", summary.get_attribute("aria-label") or ""
        )
        assert page.locator("svg.chart-svg.entries rect.bar").count() >= 1  # today's runs
        axis = page.locator("svg.chart-svg.entries text.axis").last.bounding_box()
        assert axis is not None and axis["height"] >= 9, "axis labels readable on a phone"
        assert not_blank(shot(page, folder, f"charts-{name}-375", element=page.locator(".daily")))


def test_a_blank_page_is_recognised(browser, tmp_path):
    browser.set_content("<html><body style='background:#fff'></body></html>")
    assert not not_blank(shot(browser, tmp_path, "blank"))


def test_rq_dashboards_buttons_carry_the_sessions_csrf_token(server, browser, redis):
    pytest.importorskip("rq_dashboard")
    from encore_retention.core.access import sign_in_url
    from encore_retention.core.queue import EVENTS, queue
    from tests.conftest import drain, wait_for

    queue(EVENTS).enqueue_call(PROCESS_EVENT, args=({"id": "broken"},), job_id="broken-job")
    drain(redis)
    page = browser
    page.goto(sign_in_url(server))
    page.goto(f"{server}/admin/rq/0/view/jobs/{EVENTS}/failed/8/asc/1")
    row = page.locator("tr[data-job-id='broken-job']")
    row.wait_for()
    # a script of the page that does not send the token changes nothing, though the cookie goes along
    status = page.evaluate(
        "url => fetch(url, {method: 'POST'}).then(r => r.status)", f"{server}/admin/rq/requeue/{EVENTS}"
    )
    assert status == 403 and "broken-job" in queue(EVENTS).failed_job_registry.get_job_ids()
    row.locator("[data-role=requeue-job-btn]").click()  # the dashboard's own button sends it
    assert wait_for(lambda: "broken-job" in queue(EVENTS).job_ids, timeout=10)


def test_the_feedback_page_confirms_a_score_takes_a_comment_and_records_once(server, browser, redis, tmp_path):
    """A feedback link opened in Chromium shows the score checked; changing it, commenting and sending records
    the answer once, and a second visit shows it instead of the form."""
    from sqlalchemy import select

    from encore_retention.core import events as ev
    from encore_retention.core import feedback
    from encore_retention.core.store import session_scope
    from encore_retention.core.store.ledger import find_customer, get_or_create_shop, upsert_customer
    from encore_retention.core.store.models import Feedback, utcnow

    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", "tea.myshopify.com")
        shop.name = "Tea Corner"
        upsert_customer(session, shop, ev.Customer(id="42", email="ada@example.com"), utcnow())
        session.flush()
        row = find_customer(session, shop.id, "42")
        assert row is not None
        asked = feedback.Asked(shop.id, row.id, "5001", 0, 4)
    link = feedback.feedback_url(asked)
    assert link.startswith(server)
    browser.goto(link)
    assert browser.is_checked('input[name="score"][value="4"]')
    with session_scope() as session:
        assert session.execute(select(Feedback)).first() is None  # opening the link recorded nothing
    browser.check('input[name="score"][value="2"]')
    browser.fill("#comment", "The lid was cracked")
    browser.click("button[type=submit]")
    browser.wait_for_selector("text=Thank you")
    assert "2 out of 5" in browser.content() and "The lid was cracked" in browser.content()
    shot(browser, tmp_path, "feedback-done")
    browser.goto(link)
    assert browser.locator("textarea").count() == 0 and "2 out of 5" in browser.content()
    with session_scope() as session:
        answers = [(f.score, f.comment, f.queued) for f in session.execute(select(Feedback)).scalars()]
    assert answers == [(2, "The lid was cracked", True)]
