"""The A/B `split` step: a deterministic branch per run, its steps then the rest, lint, results per branch."""

from __future__ import annotations

import csv
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select

from encore_retention import simulate
from encore_retention.cli import main
from encore_retention.connectors import base as connector_registry
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import EventRecord
from encore_retention.flows import dates, engine, loader, preview, rules
from encore_retention.flows.models import FlowRun
from encore_retention.flows.results import branch_results
from encore_retention.jobs import process_event
from tests.conftest import sign_in
from tests.flows.helpers import FakeConnector, customer, event, order, outbox, walk_to
from tests.test_simulate import shopify_csv

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}

SPLIT_FLOW = """\
name: Subject test
kind: transactional
trigger: {event: order.placed}
steps:
  - split:
      - name: short
        weight: 50
        steps:
          - create_discount: {as: offer, percent: 10, prefix: SHORT}
          - send_email: {template: thank_you_first_order.html, subject: "Short {{ offer.code }}"}
      - name: long
        weight: 50
        steps:
          - wait: 1d
          - send_email: {template: thank_you_first_order.html, subject: "A longer subject"}
  - send_email: {template: thank_you_first_order.html, subject: "After the split"}
"""


@pytest.fixture
def split_env(env: pytest.MonkeyPatch, redis: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Real Redis and SQLite, the split flow in FLOWS_DIR, a fake platform connector, the clock at T0."""
    from encore_retention.core.settings import reset_settings

    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "subject_test.yaml").write_text(SPLIT_FLOW)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    dates.set_now(T0)
    yield env
    dates.set_now(None)


def subjects_to(tmp_path: Path, address: str) -> list[str]:
    """The subjects of the emails sent to `address`, in the order written."""
    return [str(m["Subject"]) for m in outbox(tmp_path) if m["To"] == address]


def stored_runs() -> list[FlowRun]:
    with session_scope() as session:
        return list(session.execute(select(FlowRun).order_by(FlowRun.id)).scalars())


# ---- the draw --------------------------------------------------------------------------------------


def test_the_branch_is_a_pure_function_of_run_key_and_step() -> None:
    shares = [("a", Decimal(50)), ("b", Decimal(50))]
    first = rules.choose_branch(rules.split_point("1:subject_test:7:order:61", "steps[0]"), shares)
    for _ in range(3):  # a retry, a replay, another worker: the same inputs, the same branch
        assert rules.choose_branch(rules.split_point("1:subject_test:7:order:61", "steps[0]"), shares) == first
    points = {rules.split_point(f"1:f:{n}:once", "steps[0]") for n in range(200)}
    assert len(points) == 200 and all(0 <= p < 1 for p in points)
    # a second split of the same run draws apart from the first
    same = sum(
        (rules.split_point(f"1:f:{n}:once", "steps[0]") < Decimal("0.5"))
        == (rules.split_point(f"1:f:{n}:once", "steps[3]") < Decimal("0.5"))
        for n in range(2000)
    )
    assert 850 < same < 1150


@pytest.mark.parametrize(
    "shares",
    [
        [("a", Decimal(50)), ("b", Decimal(50))],
        [("control", Decimal(10)), ("offer", Decimal(90))],
        [("x", Decimal("33.3")), ("y", Decimal("33.3")), ("z", Decimal("33.4"))],
    ],
)
def test_the_branches_share_the_runs_as_their_weights_say(shares: list[tuple[str, Decimal]]) -> None:
    total = 20_000
    drawn = Counter(
        rules.choose_branch(rules.split_point(f"1:flow:{n}:order:{n}", "steps[1]"), shares) for n in range(total)
    )
    assert set(drawn) == {name for name, _ in shares}
    for name, share in shares:
        assert abs(drawn[name] / total - float(share) / 100) < 0.015, (name, drawn)


# ---- the engine ------------------------------------------------------------------------------------


def test_a_run_takes_its_branch_then_goes_on_after_the_split(split_env, redis, tmp_path: Path) -> None:
    for number in range(12):
        process_event(event("order.placed", T0, customer(str(3000 + number)), order=order(str(500 + number), T0)))
    walk_to(redis, T0 + timedelta(days=1, minutes=5))
    runs = stored_runs()
    assert len(runs) == 12 and {run.status for run in runs} == {"done"}
    flow = loader.registry().flows["subject_test"].flow
    seen = set()
    for run in runs:
        branch = run.context["split"]["steps[0]"]
        # the branch is the hash of the run's key and the step, mapped onto the weights
        assert branch == rules.choose_branch(rules.split_point(run.run_key, "steps[0]"), flow.steps[0].shares())
        with session_scope() as session:
            lines = [(t.kind, t.step, t.detail) for t in engine.trace_of(session, run.id)]
        assert ("split", "steps[0]", {"branch": branch, "share": "50"}) in lines
        address = f"c{_platform_id(run.customer_id)}@example.com"
        got = subjects_to(tmp_path, address)
        if branch == "short":
            assert len(got) == 2 and re.fullmatch(r"Short SHORT\d{6}", got[0]) and got[1] == "After the split"
            assert any(step == "steps[0].split.short[1]" for _, step, _ in lines)
        else:
            assert got == ["A longer subject", "After the split"]  # after the branch's wait of a day
            assert any(step == "steps[0].split.long[1]" for _, step, _ in lines)
        seen.add(branch)
    assert seen == {"short", "long"}, "12 customers at 50/50 reach both branches"


def _platform_id(customer_id: int) -> str:
    from encore_retention.core.store.models import Customer

    with session_scope() as session:
        found = session.get(Customer, customer_id)
        assert found is not None
        return found.platform_id


def test_retries_and_replays_agree_on_the_branch(split_env, redis, tmp_path: Path) -> None:
    """The same delivery again, and the same order replayed into an emptied store, land in the same branch."""
    data = [event("order.placed", T0, customer(str(4000 + n)), order=order(str(700 + n), T0)) for n in range(6)]
    for item in data:
        process_event(item)
        process_event(item)  # a retried job
    first = {run.run_key: run.context["split"]["steps[0]"] for run in stored_runs()}
    assert len(first) == 6
    with session_scope() as session:  # forget the runs and the deliveries: the orders are replayed
        session.execute(delete(FlowRun))
        session.execute(delete(EventRecord))
    for item in data:
        process_event({**item, "id": item["id"] + "-replayed"})
    again = {run.run_key: run.context["split"]["steps[0]"] for run in stored_runs()}
    assert again == first


def test_runs_command_shows_results_per_branch(split_env, redis, tmp_path: Path) -> None:
    for number in range(8):
        process_event(event("order.placed", T0, customer(str(5000 + number)), order=order(str(800 + number), T0)))
    walk_to(redis, T0 + timedelta(days=1, minutes=5))
    branches = {run.context["split"]["steps[0]"] for run in stored_runs()}
    codes = [d.code for d in FakeConnector.discounts.values()]
    short_runs = sum(run.context["split"]["steps[0]"] == "short" for run in stored_runs())
    assert len(codes) == short_runs and short_runs > 0 and branches == {"short", "long"}
    # one short-branch customer redeems the code on a later order
    owner = next(run for run in stored_runs() if run.context["split"]["steps[0]"] == "short")
    later = order("899", T0 + timedelta(days=2), total="42.50", codes=[codes[0]])
    dates.set_now(T0 + timedelta(days=2))
    process_event(event("order.placed", T0 + timedelta(days=2), customer(_platform_id(owner.customer_id)), order=later))
    result = CliRunner().invoke(main, ["flows", "runs", "--flow", "subject_test", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "A/B split subject_test steps[0], last 30 days:" in result.output
    table = result.output.split("A/B split subject_test steps[0], last 30 days:", 1)[1].splitlines()
    header, short, long = (line.split() for line in table[1:4])
    assert header == ["branch", "share", "runs", "sent", "codes", "redeemed", "revenue"]
    # the redeeming order started a ninth run: a short one sends at once, a long one waits a day
    branches = Counter(run.context["split"]["steps[0]"] for run in stored_runs())
    ninth = stored_runs()[-1].context["split"]["steps[0]"]
    long_sent = 2 * (branches["long"] - (ninth == "long"))
    assert short == ["short", "50%", str(branches["short"]), str(2 * branches["short"]), str(branches["short"])] + [
        "1",
        "€42.50",
    ]
    assert long == ["long", "50%", str(branches["long"]), str(long_sent), "0", "0", "€0.00"]


# ---- lint --------------------------------------------------------------------------------------------

BAD_SPLITS = """\
name: Bad splits
trigger: {event: order.placed}
steps:
  - split:
      - name: a
        weight: 50
      - name: a
        weight: 50
  - split:
      - name: 2nd
        weight: 0
      - name: b-c
        weight: 100
  - split:
      - name: only
  - split:
      - {name: a, weight: 60}
      - {name: b, weight: 30}
  - split:
      - {name: a, weight: 60}
      - {name: b}
  - if: customer.orders_count > 1
    then:
      - split:
          - {name: x, weight: 50}
          - {name: x, weight: 50}
"""


def test_lint_reports_every_bad_weight_and_branch_name_at_its_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "bad_splits.yaml"
    path.write_text(BAD_SPLITS)
    result = CliRunner().invoke(main, ["flows", "lint", str(path)])
    assert result.exit_code == 1
    expected = [
        (7, "branch name 'a' is used twice in this split"),
        (10, "name: '2nd' is not a branch name: up to 40 letters, digits and _"),
        (11, "weight: a branch's weight is a percentage above 0 and at most 100, not '0'"),
        (12, "name: 'b-c' is not a branch name"),
        (14, "split: needs at least two branches, found 1"),
        (16, "a split's weights are percentages adding up to 100; these add up to 90 (a: 60, b: 30)"),
        (21, "give every branch of a split a weight, or none (for equal shares)"),
        (26, "branch name 'x' is used twice in this split"),
    ]
    for line, message in expected:
        assert f"{path}:{line}: {message}" in result.output, (line, message, result.output)
    assert f"1 flow file(s): {len(expected)} error(s)" in result.output  # every one at once, nothing else


def test_weights_left_out_share_equally_and_a_control_branch_may_have_no_steps(env: pytest.MonkeyPatch) -> None:
    text = SPLIT_FLOW.replace("        weight: 50\n", "").replace(
        '  - send_email: {template: thank_you_first_order.html, subject: "After the split"}\n',
        "  - split:\n      - {name: control}\n      - {name: nudge, steps: [{tag_customer: nudged}]}\n"
        "      - {name: other, steps: [stop]}\n",
    )
    loaded, problems = loader.load_text(text, "equal.yaml")
    assert loaded is not None, problems
    assert [name for name, _ in loaded.flow.steps[0].shares()] == ["short", "long"]
    assert {share for _, share in loaded.flow.steps[1].shares()} == {Decimal(100) / 3}
    assert rules.share_text(Decimal(100) / 3) == "33.33" and rules.share_text(Decimal("50.0")) == "50"


# ---- previews ----------------------------------------------------------------------------------------


def test_a_preview_shows_every_branchs_emails(env: pytest.MonkeyPatch) -> None:
    loaded, problems = loader.load_text(SPLIT_FLOW, "subject_test.yaml")
    assert loaded is not None, problems
    rendered = preview.render_flow(loaded, {"email": "ada@example.com", "first_name": "Ada"})
    assert [(p.step, p.subject) for p in rendered] == [
        ("steps[0].split.short[1]", "Short SHORTPREVIEW"),
        ("steps[0].split.long[1]", "A longer subject"),
        ("steps[1]", "After the split"),
    ]


# ---- the admin's flow page -----------------------------------------------------------------------------


def test_the_flow_page_shows_results_per_branch(client, redis, tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    from encore_retention.core.settings import reset_settings

    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "subject_test.yaml").write_text(SPLIT_FLOW)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    FakeConnector.reset()
    env.setattr(connector_registry, "get_connector", lambda shop: FakeConnector(shop))
    now = datetime.now(UTC).replace(microsecond=0)
    dates.set_now(now)
    try:
        for number in range(10):
            process_event(event("order.placed", now, customer(str(6000 + number)), order=order(str(900 + number), now)))
        runs = stored_runs()
        by_branch = Counter(run.context["split"]["steps[0]"] for run in runs)
        assert by_branch["short"] and by_branch["long"]
        owner = next(run for run in runs if run.context["split"]["steps[0]"] == "short")
        code = next(iter(FakeConnector.discounts.values())).code
        later = order("999", now, total="30.00", codes=[code.lower()])
        process_event(event("order.placed", now, customer(_platform_id(owner.customer_id)), order=later))
    finally:
        dates.set_now(None)
    sign_in(client)
    page = client.get("/admin/flows/subject_test", environ_base=LOCAL).get_data(as_text=True)
    assert 'A/B split <span class="mono">steps[0]</span>' in page
    rows = re.findall(r"<tr>\s*<td class=\"mono\">(\w+)[^<]*(?:<span[^>]*>[^<]*</span>)?</td>(.*?)</tr>", page, re.S)
    cells = {name: re.findall(r'<td class="num">([^<]*)</td>', rest) for name, rest in rows}
    by_branch = Counter(run.context["split"]["steps[0]"] for run in stored_runs())  # the redeeming order's run too
    # short: every run made a code and sent its short email and the one after the split
    assert cells["short"] == [
        "50%",
        str(by_branch["short"]),
        str(2 * by_branch["short"]),
        str(by_branch["short"]),
        "1",
        "€30.00",
    ]
    # long: waiting a day before its email; nothing sent yet, nothing made
    assert cells["long"] == ["50%", str(by_branch["long"]), "0", "0", "0", "€0.00"]


def test_branch_results_on_sqlite_and_postgresql(db_url: str, env: pytest.MonkeyPatch) -> None:
    """Effects before the split don't count for a branch; another flow's and another store's don't either."""
    from encore_retention.core.store.ledger import get_or_create_shop
    from encore_retention.core.store.models import Customer, Order
    from encore_retention.flows.models import FlowEffect, FlowTrace
    from tests.conftest import use_database

    use_database(env, db_url)
    now = datetime.now(UTC)
    split_at = now - timedelta(days=3)
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", "encore-test.myshopify.com")
        other = get_or_create_shop(session, "shopify", "other.myshopify.com")
        session.flush()
        ada = Customer(shop_id=shop.id, platform_id="1", email="ada@example.com")
        session.add(ada)
        session.flush()
        plan = [("a", "A1"), ("a", "A2"), ("b", "B1"), ("b", None)]
        for number, (branch, code) in enumerate(plan):
            run = FlowRun(
                run_key=f"k{number}", shop_id=shop.id, customer_id=ada.id, flow_key="subject_test",
                flow_name="Subject test", flow_digest="d", definition={}, trigger_key=f"t{number}", status="done",
                position=[1], context={"split": {"steps[0]": branch}}, started_at=split_at, updated_at=split_at,
            )  # fmt: skip
            session.add(run)
            session.flush()
            session.add(FlowTrace(run_id=run.id, at=split_at, step="steps[0]", kind="split", detail={"branch": branch}))
            effects = [("email", f"before{number}", split_at - timedelta(minutes=1), None)]
            effects.append(("email", f"after{number}", split_at + timedelta(hours=1), None))
            if code:
                effects.append(("discount", f"code{number}", split_at, {"code": code}))
            for kind, key, at, result in effects:
                session.add(
                    FlowEffect(
                        key=key, run_id=run.id, shop_id=shop.id, customer_id=ada.id, kind=kind, status="done",
                        result=result, created_at=at,
                    )
                )  # fmt: skip
        for number, (codes, total, shop_id) in enumerate(
            [(["a1"], "50.00", shop.id), (["B1"], "20.00", shop.id), (["A2"], "99.00", other.id)]
        ):
            session.add(
                Order(
                    shop_id=shop_id, platform_id=f"o{number}", customer_id=ada.id if shop_id == shop.id else None,
                    placed_at=now - timedelta(days=1), total=Decimal(total), currency="EUR", discount_codes=codes,
                )
            )  # fmt: skip
        shop_id = shop.id
        session.commit()
        flow = loader.load_text(SPLIT_FLOW.replace("short", "a").replace("long", "b"), "s.yaml")[0]
        assert flow is not None
        results = branch_results(session, [shop_id], "subject_test", now - timedelta(days=30), flow.flow)
        stale = branch_results(session, [shop_id], "subject_test", now - timedelta(days=2), flow.flow)
        elsewhere = branch_results(session, [shop_id], "another_flow", now - timedelta(days=30), flow.flow)
    got = {r.branch: (r.runs, r.emails, r.codes, r.redeemed, r.revenue, r.currency) for r in results}
    assert got == {"a": (2, 2, 2, 1, Decimal("50.00"), "EUR"), "b": (2, 2, 1, 1, Decimal("20.00"), "EUR")}
    assert [(r.branch, r.runs, r.emails) for r in stale] == [("a", 0, 0), ("b", 0, 0)]  # split before the window
    assert [(r.branch, r.runs) for r in elsewhere] == [("a", 0), ("b", 0)]


# ---- the simulator ---------------------------------------------------------------------------------------


def test_simulate_reports_each_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "subject_test.yaml").write_text(SPLIT_FLOW)
    orders = [(str(1000 + n), f"c{n}@example.com", "2026-05-01 10:00:00 +0000", "yes", None) for n in range(40)]
    orders += [(str(2000 + n), f"c{n}@example.com", "2026-05-10 10:00:00 +0000", "yes", None) for n in range(5)]
    path = shopify_csv(tmp_path / "orders.csv", orders)
    flows = {f.key: f for f in loader.load_dir(folder)[0]}
    history = simulate.read_orders(path)
    sim = simulate.run_simulation(
        history,
        [],
        flows,
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 5, 31, tzinfo=UTC),
        dates.zone("UTC"),
    )
    split_lines = [o for o in sim.outcomes if o.action == "split"]
    assert len(split_lines) == 45
    branch_of = {}
    for line in split_lines:
        if line.at.day == 1:
            branch_of[line.customer] = line.reason.split(": ")[1]
    report = {r.branch: r for r in simulate.branch_report(sim, history)["subject_test"]}
    short, long = report["short"], report["long"]
    assert short.runs + long.runs == 45 and short.runs > 10 and long.runs > 10
    assert short.codes == short.runs and long.codes == 0
    assert short.emails == 2 * short.runs and long.emails == 2 * long.runs
    # the five who ordered again on the 10th, within their code's 30 days, count as redeemed when in `short`
    again = [f"c{n}@example.com" for n in range(5)]
    redeemed = sum(branch_of[c] == "short" for c in again)
    assert short.redeemed == redeemed and short.revenue == Decimal("55.00") * redeemed and long.redeemed == 0
    # the command prints the table, and the CSV says each line's branch
    monkeypatch.chdir(tmp_path)
    report_csv = tmp_path / "report.csv"
    result = CliRunner().invoke(
        main,
        [
            "simulate", "--orders", str(path), "--flows", str(folder), "--timezone", "UTC", "--csv", str(report_csv),
        ],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "A/B splits" in result.output
    assert re.search(rf"subject_test\s.*steps\[0\]\s.*short\s.*50%\s.*{short.runs}\s", result.output)
    with report_csv.open() as handle:
        lines = list(csv.DictReader(handle))
    emails = [r for r in lines if r["action"] == "email" and r["subject"] == "A longer subject"]
    assert emails and all(r["branch"] == "steps[0]=long" for r in emails)
