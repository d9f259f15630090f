"""The admin's daily charts and how it shows times and durations: series, SVG, store time zones."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer
from encore_retention.flows.schema import format_duration, parse_duration
from encore_retention.web.admin import charts
from tests.conftest import SHOP, sign_in

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def _run(session: Any, shop_id: int, customer_id: int, key: str, flow: str, started: datetime, **fields: Any) -> Any:
    from encore_retention.flows.models import FlowRun

    run = FlowRun(
        run_key=key,
        shop_id=shop_id,
        customer_id=customer_id,
        flow_key=flow,
        flow_name=flow.title(),
        flow_digest="d",
        definition={},
        trigger_key="once",
        status=fields.pop("status", "done"),
        position=[0],
        context={},
        started_at=started,
        updated_at=started,
        **fields,
    )
    session.add(run)
    session.flush()
    return run


# ---- durations -------------------------------------------------------------------------------------


def test_durations_keep_days_as_days():
    for written in ("60d", "-14d", "14d", "1h30m", "1d12h", "0m", "180d"):
        assert format_duration(parse_duration(written)) == written
    assert format_duration(parse_duration("8w")) == "56d"  # the admin shows the file's own text: `8w`


# ---- the daily series ------------------------------------------------------------------------------


def test_daily_series_on_sqlite_and_postgresql(db_url, env, redis):
    from encore_retention.core.store.ledger import get_or_create_shop
    from encore_retention.core.store.models import Order
    from encore_retention.flows.models import FlowEffect, FlowTrace
    from encore_retention.web.admin.flows import daily
    from tests.conftest import use_database

    use_database(env, db_url)
    dec1, dec2 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC), datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        other = get_or_create_shop(session, "shopify", "other.myshopify.com")
        shop.currency = "EUR"
        session.flush()
        ada = Customer(shop_id=shop.id, platform_id="1", email="ada@example.com")
        session.add(ada)
        session.flush()
        first = _run(session, shop.id, ada.id, "a", "welcome", dec1)
        _run(session, shop.id, ada.id, "b", "welcome", datetime(2026, 12, 1, 23, 30, tzinfo=UTC))  # 2 Dec in Paris
        _run(session, shop.id, ada.id, "c", "win_back", datetime(2026, 11, 30, 8, 0, tzinfo=UTC))
        _run(session, shop.id, ada.id, "d", "welcome", datetime(2026, 10, 1, 8, 0, tzinfo=UTC))  # before the window
        held = _run(session, shop.id, ada.id, "e", "welcome", dec2, status="suppressed")
        for key, kind, status, result in (
            ("m1", "email", "done", {"to": "ada@example.com"}),
            ("m2", "email", "failed", {"error": "refused"}),
            ("c1", "discount", "done", {"code": "HELLO-1"}),
        ):
            session.add(
                FlowEffect(
                    key=key,
                    run_id=first.id,
                    shop_id=shop.id,
                    customer_id=ada.id,
                    kind=kind,
                    status=status,
                    result=result,
                    created_at=dec1,
                )
            )
        for kind in ("start", "suppressed", "deferred", "sent"):
            session.add(FlowTrace(run_id=held.id, at=dec2, kind=kind, message=kind))
        for number, (codes, total, shop_id, placed) in enumerate(
            [
                (["hello-1"], "50.00", shop.id, datetime(2026, 12, 3, 8, 0, tzinfo=UTC)),
                (["OTHER"], "20.00", shop.id, datetime(2026, 12, 3, 8, 0, tzinfo=UTC)),
                (["HELLO-1"], "99.00", other.id, datetime(2026, 12, 3, 8, 0, tzinfo=UTC)),  # not this store's code
            ]
        ):
            session.add(
                Order(
                    shop_id=shop_id,
                    platform_id=f"o{number}",
                    placed_at=placed,
                    total=Decimal(total),
                    currency="EUR",
                    discount_codes=codes,
                )
            )
        shop_id, other_id = shop.id, other.id

    welcome = daily([shop_id], "welcome", PARIS, NOW)
    assert len(welcome.days) == 30 and welcome.days[0] == date(2026, 11, 4) and welcome.days[-1] == date(2026, 12, 3)
    assert welcome.zone == "Europe/Paris"
    on = {day: i for i, day in enumerate(welcome.days)}
    d1, d2, d3 = on[date(2026, 12, 1)], on[date(2026, 12, 2)], on[date(2026, 12, 3)]
    assert sum(welcome.entries) == 3 and welcome.entries[d1] == 1 and welcome.entries[d2] == 2  # 23:30 UTC is 2 Dec
    assert sum(welcome.emails) == 1 and welcome.emails[d1] == 1  # the failed one is not sent
    assert sum(welcome.held) == 2 and welcome.held[d2] == 2  # suppressed and deferred
    assert sum(welcome.redeemed) == 1 and welcome.redeemed[d3] == 1
    assert welcome.revenue[d3] == Decimal("50.00") and sum(welcome.revenue) == Decimal("50.00")
    assert welcome.currency == "EUR"

    everything = daily([shop_id, other_id], None, UTC, NOW)
    on = {day: i for i, day in enumerate(everything.days)}
    assert everything.entries[on[date(2026, 11, 30)]] == 1 and everything.entries[on[date(2026, 12, 1)]] == 2
    assert sum(everything.entries) == 4 and sum(everything.redeemed) == 1
    win_back = daily([shop_id], "win_back", UTC, NOW)
    assert sum(win_back.emails) == 0 and win_back.currency == "EUR"  # nothing redeemed: the store's currency
    assert daily([shop_id, other_id], "win_back", UTC, NOW).currency is None  # two stores, not one currency
    assert sum(daily([], None, UTC, NOW).entries) == 0


# ---- the SVG ---------------------------------------------------------------------------------------


def test_bars_land_where_their_values_say_and_every_text_is_escaped():
    days = [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3), date(2026, 12, 4)]
    series = charts.Series("emails", "<script>alert(1)</script> & co", [0, 2, 4, 1])
    markup = str(charts.bar_chart(days, series))
    assert "<script" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in markup
    svg = ET.fromstring(markup)  # well-formed XML
    assert svg.get("role") == "img" and svg.get("viewBox") == f"0 0 {charts.WIDTH} {charts.HEIGHT}"
    summary = svg.get("aria-label") or ""
    assert summary == svg.findtext(f"{SVG}title")
    assert "1 Dec 2026 to 4 Dec 2026: 7 in all; most on 3 Dec (4)" in summary
    bars = {bar.get("data-day"): bar for bar in svg.iter(f"{SVG}rect")}
    assert set(bars) == {"2026-12-02", "2026-12-03", "2026-12-04"}  # no bar for a zero
    full = charts.BOTTOM - charts.TOP
    tallest, half = bars["2026-12-03"], bars["2026-12-02"]
    assert float(tallest.get("height") or 0) == full and float(tallest.get("y") or 0) == charts.TOP
    assert float(half.get("height") or 0) == full / 2 and float(half.get("y") or 0) == charts.BOTTOM - full / 2
    assert float(half.get("x") or 0) < float(tallest.get("x") or 0) < float(bars["2026-12-04"].get("x") or 0)
    assert half.findtext(f"{SVG}title") == "2 Dec: 2"
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert texts[:3] == ["<script>alert(1)</script> & co", "7", "4"]  # label, total, the top line's value
    assert texts[-3:] == ["1 Dec", "3 Dec", "4 Dec"]  # first, middle and last day


def test_money_series_and_empty_days():
    days = [date(2026, 12, 1), date(2026, 12, 2)]
    revenue = charts.Series("revenue", "Revenue", [Decimal("0"), Decimal("12.50")], lambda v: f"€{v:.2f}")
    markup = str(charts.small_multiples(days, [revenue], caption="days in <UTC>"))
    assert "€12.50 in all; most on 2 Dec (€12.50)" in markup and "days in &lt;UTC&gt;" in markup
    quiet = str(charts.bar_chart(days, charts.Series("held", "Held", [0, 0])))
    assert "<rect" not in quiet and "0 in all." in quiet


# ---- pages -----------------------------------------------------------------------------------------


def test_a_waiting_runs_times_show_in_its_stores_zone_to_the_minute(client, redis):
    from encore_retention.core.store.ledger import get_or_create_shop
    from encore_retention.flows.models import FlowTrace

    sign_in(client)
    wake = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)
    started = datetime.now(UTC) - timedelta(hours=1)
    with session_scope() as session:
        paris = get_or_create_shop(session, "shopify", SHOP)
        paris.timezone = "Europe/Paris"
        york = get_or_create_shop(session, "woocommerce", "woo.example.com")
        york.timezone = "America/New_York"
        session.flush()
        ada = Customer(shop_id=paris.id, platform_id="1", email="ada@example.com")
        bob = Customer(shop_id=york.id, platform_id="2", email="bob@example.com")
        session.add_all([ada, bob])
        session.flush()
        run = _run(session, paris.id, ada.id, "w1", "win_back", started, status="waiting", wake_at=wake)
        _run(session, york.id, bob.id, "w2", "win_back", started, status="waiting", wake_at=wake)
        session.add(
            FlowTrace(run_id=run.id, at=started, kind="wait", message=f"waiting until {wake.isoformat()}", step="s")
        )
        ada_id = ada.id

    page = client.get("/admin/flows/win_back", environ_base=LOCAL).get_data(as_text=True)
    # both stores in view: each row in its own store's zone
    assert "until 2026-12-03 09:00 CET" in page and "until 2026-12-03 03:00 EST" in page
    assert ".123456" not in page and "T08:00" not in page
    assert "customer.last_order_at 60d at 10:00" in page  # the trigger as written
    assert page.count('role="img"') == 5 and "Entries per day" in page

    timeline = client.get(f"/admin/customers/{ada_id}", environ_base=LOCAL).get_data(as_text=True)
    assert "waiting until 2026-12-03 09:00 CET" in timeline and ".123456" not in timeline
    local_start = started.astimezone(ZoneInfo("Europe/Paris")).strftime("%Y-%m-%d %H:%M %Z")
    assert local_start in timeline
    assert not re.search(r"\d{2}:\d{2}:\d{2}", timeline)  # to the minute, nowhere seconds

    overview = client.get("/admin/", environ_base=LOCAL).get_data(as_text=True)
    assert overview.count('role="img"') == 5 and "days in UTC" in overview  # several stores: DEFAULT_TIMEZONE
    assert "customer.birthday -14d at 09:00 yearly" in overview and "-2w" not in overview
