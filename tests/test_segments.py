"""Segments: the YAML and its lint, the SQL and the in-flow readings agreeing on SQLite and PostgreSQL,
`customer in segment('vip')` in a flow, and `encore export customers`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from encore_retention.cli import main
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import dates, exports, segments
from encore_retention.flows.models import FlowRun
from encore_retention.flows.steps import customer_view, shop_view
from encore_retention.jobs import process_event
from tests.conftest import use_database
from tests.flows.helpers import customer, event, order, outbox

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def segment(text: str) -> Any:
    loaded, problems = segments.load_text(text, "segments/test.yaml")
    assert loaded is not None, problems
    return loaded.segment


# ---- the file ----------------------------------------------------------------------------------------


def test_a_segment_file_is_checked_with_lines_and_the_choices(tmp_path: Path) -> None:
    text = "description: x\nwhere:\n  orders_count: {at_least: two}\n  tagz: {any: [vip]}\nmatch: some\n"
    loaded, problems = segments.load_text(text, "segments/bad.yaml")
    assert loaded is None
    found = {(p.line, p.message.split(":")[0].split(" (")[0]) for p in problems}
    assert (3, "where.orders_count.at_least") in found
    assert (4, "unknown field `tagz`") in found
    assert (5, "match") in found
    unknown = next(p for p in problems if "tagz" in p.message)
    assert (
        "feedback_score" in unknown.message
        and "flows_entered" in unknown.message
        and str(unknown).startswith("segments/bad.yaml:4: ")
    )
    assert segments.load_text("where: {}\n", "segments/Bad Name.yaml")[1][0].message.startswith("segment name")


def test_flows_lint_covers_the_segments_and_the_names_flows_use(tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    (folder / "segments").mkdir(parents=True)
    (folder / "segments" / "vip.yaml").write_text("where:\n  orders_count: {at_least: 3}\n")
    (folder / "segments" / "broken.yaml").write_text("where:\n  total_spent: {over: 5}\n")
    (folder / "reward.yaml").write_text(
        "name: Reward\ntrigger:\n  event: order.placed\nconditions:\n"
        "  - customer in segment('vip')\n  - customer in segment('vips')\n"
        "steps:\n  - tag_customer: vip\n"
    )
    result = CliRunner().invoke(main, ["flows", "lint", str(folder)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"{folder}/segments/broken.yaml:2: unknown field `over` in `where.total_spent`" in lines
    assert f"{folder}/reward.yaml:6: unknown segment 'vips' (known: broken, vip)" in lines
    assert len(lines) == 2, lines
    assert "1 flow file(s): 2 error(s), 0 warning(s) (with 2 segment file(s))" in result.stderr

    (folder / "segments" / "broken.yaml").unlink()
    (folder / "reward.yaml").write_text((folder / "reward.yaml").read_text().replace("'vips'", "'vip'"))
    result = CliRunner().invoke(main, ["flows", "lint", str(folder / "segments" / "vip.yaml")])
    assert result.exit_code == 0 and result.stdout == "", result.output
    assert CliRunner().invoke(main, ["flows", "lint", str(folder)]).exit_code == 0


def test_the_library_ships_a_vip_segment() -> None:
    from encore_retention.flows import loader

    found = segments.registry(loader.LIBRARY)
    assert "vip" in found and found["vip"].segment.where.orders_count.at_least == 3


# ---- SQL and Python agree ----------------------------------------------------------------------------

PEOPLE: list[dict[str, Any]] = [
    # orders, spent, last order (days ago), predicted (days ahead), birthday, tags, consent, store, feedback score
    {"n": 5, "spent": "900", "last": 10, "next": 5, "bday": date(1990, 6, 3), "tags": ["vip"], "ok": True, "fb": 5},
    {"n": 3, "spent": "500", "last": 400, "next": None, "bday": None, "tags": [], "ok": None, "s": 0},
    {
        "n": 1,
        "spent": "20",
        "last": 30,
        "next": None,
        "bday": date(1985, 12, 1),
        "tags": ["wholesale"],
        "ok": False,
        "fb": 2,
    },
    {"n": 2, "spent": "120.50", "last": 60, "next": 40, "bday": date(2000, 6, 30), "tags": ["vip", 'b"x'], "ok": True},
    {"n": 0, "spent": "0", "last": None, "next": None, "bday": None, "tags": ["a%_"], "ok": True, "s": 1},
    {"n": 7, "spent": "2500", "last": 2, "next": 12, "bday": date(1970, 1, 1), "tags": ["vip", "wholesale"], "s": 1},
]
SEGMENTS = {
    "vip": "where:\n  orders_count: {at_least: 3}\n  total_spent: {at_least: 500}\n  last_order_at: {in_last: 365d}\n",
    "lapsed": "where:\n  last_order_at: {not_in_last: 90d}\n",
    "never": "where:\n  last_order_at: {is_set: false}\n",
    "soon": "where:\n  predicted_next_order: {in_next: 14d}\n",
    "june": "where:\n  birthday_month: {in: [6]}\n",
    "tags": "where:\n  tags: {any: [vip, 'a%_'], none: [wholesale]}\n",
    "all_tags": "where:\n  tags: {all: [vip, 'b\"x']}\n",
    "consent": "where:\n  email_consent: true\n",
    "no_consent": "where:\n  email_consent: false\n",
    "store": "where:\n  store: two.example\n",
    "either": "match: any\nwhere:\n  orders_count: {equals: 1}\n  total_spent: {at_most: 0}\n",
    "since": "where:\n  first_order_at: {since: 2026-01-01, before: 2026-06-01}\n",
    "entered": "where:\n  flows_entered: {any: [welcome]}\n",
    "not_entered": "where:\n  flows_entered: {none: [welcome]}\n  orders_count: {at_least: 1}\n",
    "unhappy": "where:\n  feedback_score: {at_most: 2}\n",
    "everyone": "where: {}\n",
}
EXPECTED = {
    "vip": {0, 5},
    "lapsed": {1},
    "never": {4},
    "soon": {0, 5},
    "june": {0, 3},
    "tags": {0, 3, 4},
    "all_tags": {3},
    "consent": {0, 3, 4},
    "no_consent": {1, 2, 5},
    "store": {4, 5},
    "either": {2, 4},
    "since": {0, 2, 3},
    "entered": {0, 2},
    "not_entered": {1, 3, 5},
    "unhappy": {2},
    "everyone": {0, 1, 2, 3, 4, 5},
}


def _fill(db: Any) -> tuple[list[Customer], list[Shop]]:
    shops = [Shop(platform="shopify", domain=f"{name}.example", settings={}) for name in ("one", "two")]
    db.add_all(shops)
    db.flush()
    rows = []
    for index, p in enumerate(PEOPLE):
        last = NOW - timedelta(days=p["last"]) if p["last"] is not None else None
        rows.append(
            Customer(
                shop_id=shops[p.get("s", 0)].id,
                platform_id=str(index),
                email=f"c{index}@example.com",
                orders_count=p["n"],
                total_spent=Decimal(p["spent"]),
                first_order_at=last - timedelta(days=30 * index) if last else None,
                last_order_at=last,
                predicted_next_order=NOW + timedelta(days=p["next"]) if p["next"] is not None else None,
                birthday=p["bday"],
                birthday_month=p["bday"].month if p["bday"] else None,
                birthday_day=p["bday"].day if p["bday"] else None,
                tags=p["tags"],
                email_consent=p.get("ok"),
                feedback_score=p.get("fb"),
            )
        )
    db.add_all(rows)
    db.flush()
    for index, status in ((0, "done"), (2, "waiting"), (3, "suppressed")):
        db.add(
            FlowRun(
                run_key=f"run-{index}",
                shop_id=rows[index].shop_id,
                customer_id=rows[index].id,
                flow_key="welcome",
                flow_name="Welcome",
                flow_digest="x",
                definition={},
                trigger_key="t",
                status=status,
                position=[0],
                context={},
                started_at=NOW,
                updated_at=NOW,
            )
        )
    db.flush()
    return rows, shops


def test_the_sql_and_the_in_flow_check_agree(env: pytest.MonkeyPatch, db_url: str) -> None:
    use_database(env, db_url)
    with session_scope() as db:
        rows, shops = _fill(db)
        index_of = {row.id: n for n, row in enumerate(rows)}
        by_shop = {shop.id: shop for shop in shops}
        for name, text in SEGMENTS.items():
            seg = segment(text)
            query = segments.members(seg, None, NOW, segments.dialect_of(db))
            in_sql = {index_of[row.id] for row in db.scalars(query)}
            entered = {
                row.id: set(db.scalars(segments.flows_entered_query(row.id))) for row in rows
            }  # as the engine's runner asks
            in_python = {
                index_of[row.id]
                for row in rows
                if segments.matches(
                    seg,
                    segments.Facts(
                        customer_view(row), shop_view(by_shop[row.shop_id]), lambda r=row, known=entered: known[r.id]
                    ),
                    NOW,
                )
            }
            assert in_sql == EXPECTED[name], name
            assert in_python == in_sql, name
            assert segments.count(db, seg, None, NOW) == len(EXPECTED[name])
            assert segments.count(db, seg, [shops[1].id], NOW) == len(EXPECTED[name] & {4, 5})
        db.rollback()


def test_a_field_is_one_entry_away(env: pytest.MonkeyPatch) -> None:
    """What a room adds (the feedback loop's score, say): the YAML, the SQL and the in-flow check follow."""
    text = "where:\n  account: true\n"
    assert "unknown field `account`" in segments.load_text(text, "segments/x.yaml")[1][0].message
    segments.add_field(
        segments.SegmentField(
            "account", segments.BOOL, lambda: Customer.has_account, lambda f: f.customer.get("has_account")
        )
    )
    try:
        seg = segment(text)
        with session_scope() as db:
            shop = Shop(platform="shopify", domain="one.example", settings={})
            db.add(shop)
            db.flush()
            rows = [Customer(shop_id=shop.id, platform_id=str(n), has_account=n == 1) for n in range(3)]
            db.add_all(rows)
            db.flush()
            assert [c.platform_id for c in db.scalars(segments.members(seg, None, NOW, "sqlite"))] == ["1"]
            assert [segments.matches(seg, segments.Facts(customer_view(c)), NOW) for c in rows] == [False, True, False]
    finally:
        segments.remove_field("account")
    assert segments.load_text(text, "segments/x.yaml")[0] is None


# ---- in flows ----------------------------------------------------------------------------------------

VIP_FLOW = """
name: VIP thanks
kind: transactional
trigger:
  event: order.placed
conditions:
  - customer in segment('big')
steps:
  - send_email:
      template: thank_you_first_order.html
      subject: "Thank you, VIP"
"""


def test_a_flow_condition_asks_a_segment(env: pytest.MonkeyPatch, redis: Any, tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    (folder / "segments").mkdir(parents=True)
    (folder / "vip_thanks.yaml").write_text(VIP_FLOW)
    (folder / "segments" / "big.yaml").write_text("where:\n  total_spent: {at_least: 100}\n  tags: {none: [staff]}\n")
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    dates.set_now(NOW)
    try:
        process_event(event("order.placed", NOW, customer("1"), order=order("o1", NOW, total="150.00")))
        process_event(event("order.placed", NOW, customer("2"), order=order("o2", NOW, total="50.00")))
        process_event(event("order.placed", NOW, customer("3", tags=["staff"]), order=order("o3", NOW, "500.00")))
    finally:
        dates.set_now(None)
    assert [m["To"] for m in outbox(tmp_path)] == ["c1@example.com"]
    # an unknown segment is an error of the condition: the flow does not start, and says why
    (folder / "segments" / "big.yaml").unlink()
    process_event(event("order.placed", NOW, customer("4"), order=order("o4", NOW, total="900.00")))
    assert len(outbox(tmp_path)) == 1


# ---- encore export customers -------------------------------------------------------------------------


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_export_customers_streams_csv_guards_formulas_and_leaves_out_the_redacted(
    env: pytest.MonkeyPatch, redis: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "flows"
    (folder / "segments").mkdir(parents=True)
    (folder / "segments" / "buyers.yaml").write_text("where:\n  orders_count: {at_least: 1}\n")
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    process_event(event("order.placed", NOW, customer("1", first_name='=HYPERLINK("x")'), order=order("o1", NOW)))
    process_event(event("customer.created", NOW, customer("2", first_name="+1", last_name="@me", tags=["-vip"])))
    process_event(event("order.placed", NOW, customer("3", first_name="Grace"), order=order("o3", NOW)))
    process_event(event("customer.redact", NOW, customer("3")))

    everyone = CliRunner().invoke(main, ["export", "customers"])
    assert everyone.exit_code == 0, everyone.output
    rows = _csv(everyone.stdout)
    assert [r["customer_id"] for r in rows] == ["1", "2"]  # Grace was redacted: no row, anywhere
    assert "c3@example.com" not in everyone.stdout
    assert rows[0]["first_name"] == '\'=HYPERLINK("x")' and rows[0]["orders_count"] == "1"
    assert (rows[1]["first_name"], rows[1]["last_name"], rows[1]["tags"]) == ("'+1", "'@me", "'-vip")
    assert rows[0]["total_spent"] == "60.00" and rows[0]["email_consent"] == "yes"

    target = tmp_path / "buyers.csv"
    buyers = CliRunner().invoke(main, ["export", "customers", "--segment", "buyers", "--output", str(target)])
    assert buyers.exit_code == 0, buyers.output
    assert [r["customer_id"] for r in _csv(target.read_text())] == ["1"]
    assert "1 customer(s) exported" in buyers.stderr

    unknown = CliRunner().invoke(main, ["export", "customers", "--segment", "nope"])
    assert unknown.exit_code == 2 and "no segment 'nope' (known: buyers)" in unknown.output


def test_an_export_holds_one_batch_at_a_time(env: pytest.MonkeyPatch, db_url: str) -> None:
    use_database(env, db_url)
    statement = exports.query(None, None, NOW, "postgresql")
    assert statement.get_execution_options()["yield_per"] == exports.BATCH  # a server-side cursor on PostgreSQL
    with session_scope() as db:
        shop = Shop(platform="shopify", domain="one.example", settings={})
        db.add(shop)
        db.flush()
        db.add_all(Customer(shop_id=shop.id, platform_id=str(n), email=f"{n}@x.example") for n in range(2500))
        db.commit()
        seen = [row[1] for row in exports.rows(db, None, None, NOW)]
    assert seen == [str(n) for n in range(2500)]
