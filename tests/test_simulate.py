"""`encore simulate`: the flows over historical orders with a simulated clock."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from encore_retention import simulate
from encore_retention.cli import main
from encore_retention.flows import dates, loader

SHOPIFY_COLUMNS = [
    "Name",
    "Email",
    "Financial Status",
    "Paid at",
    "Fulfillment Status",
    "Fulfilled at",
    "Accepts Marketing",
    "Currency",
    "Subtotal",
    "Total",
    "Discount Code",
    "Created at",
    "Lineitem quantity",
    "Lineitem name",
    "Billing Name",
    "Id",
]


def shopify_csv(path: Path, orders: list[tuple[str, str, str, str, str | None]]) -> Path:
    """A Shopify orders export: (number, email, created, consent, fulfilled), two line-item rows each."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SHOPIFY_COLUMNS)
        for number, email, created, consent, fulfilled in orders:
            writer.writerow(
                [
                    f"#{number}",
                    email,
                    "paid",
                    created,
                    "fulfilled" if fulfilled else "",
                    fulfilled or "",
                    consent,
                    "EUR",
                    "50.00",
                    "55.00",
                    "",
                    created,
                    "1",
                    "Tea",
                    "Ada Lovelace",
                    number,
                ]
            )
            writer.writerow([f"#{number}", email, "", "", "", "", "", "", "", "", "", created, "1", "Cup", "", ""])
    return path


def library() -> dict[str, loader.FlowFile]:
    return {f.key: f for f in loader.load_dir(loader.LIBRARY)[0]}


def run(
    orders_path: Path,
    flows: dict[str, loader.FlowFile] | None = None,
    customers: Path | None = None,
    start: str = "2026-01-01",
    end: str = "2026-12-31",
    zone: str = "Europe/Berlin",
) -> simulate.Simulation:
    known = simulate.read_customers(customers) if customers else []
    return simulate.run_simulation(
        simulate.read_orders(orders_path),
        known,
        flows or library(),
        datetime.fromisoformat(f"{start}T00:00:00+00:00"),
        datetime.fromisoformat(f"{end}T23:59:59+00:00"),
        dates.zone(zone),
    )


def rows(
    sim: simulate.Simulation, flow: str | None = None, action: str | None = None, customer: str | None = None
) -> list[simulate.Outcome]:
    return [
        o
        for o in sim.outcomes
        if (flow is None or o.flow == flow)
        and (action is None or o.action == action)
        and (customer is None or o.customer == customer)
    ]


def test_a_year_of_shopify_orders(tmp_path):
    path = shopify_csv(
        tmp_path / "orders.csv",
        [
            ("1001", "ada@example.com", "2026-01-10 09:15:00 +0100", "yes", "2026-01-11 15:00:00 +0100"),
            ("1002", "ada@example.com", "2026-02-01 12:00:00 +0100", "yes", None),
            ("1003", "ada@example.com", "2026-03-01 12:00:00 +0100", "yes", None),
            ("1004", "bob@example.com", "2026-03-02 12:00:00 +0100", "no", None),
            ("1005", "bob@example.com", "2026-03-03 12:00:00 +0100", "no", None),
            ("1006", "bob@example.com", "2026-03-04 12:00:00 +0100", "no", None),
        ],
    )
    sim = run(path)
    ada, bob = "ada@example.com", "bob@example.com"
    # welcome: the customer is created just before the first order, with consent
    welcome = rows(sim, "welcome", "email", ada)
    assert len(welcome) == 1 and welcome[0].subject == "Welcome to Your store: 10% off your first order"
    assert welcome[0].code.startswith("HELLO-") and len(welcome[0].code) == len("HELLO-XXXX-XXXX")
    # thank you for the first order: two hours later (transactional: Bob gets his too)
    thanks = rows(sim, "thank_you_first_order", "email", ada)
    assert [t.at for t in thanks] == [datetime(2026, 1, 10, 10, 15, tzinfo=UTC)]
    assert thanks[0].subject == "Thank you, Ada!"
    assert len(rows(sim, "thank_you_first_order", "email", bob)) == 1
    # check-in three days after fulfilment
    check_in = rows(sim, "check_in_after_delivery", "email", ada)
    assert [c.at for c in check_in] == [datetime(2026, 1, 14, 14, 0, tzinfo=UTC)]
    assert check_in[0].subject == "How is your order #1001?"
    # the third order: a code and an email for Ada; Bob has not consented
    loyal = rows(sim, "loyalty_third_order", "email", ada)
    assert len(loyal) == 1 and loyal[0].code.startswith("LOYAL-") and "€10.00 off" in loyal[0].subject
    assert [(o.action, o.reason) for o in rows(sim, "loyalty_third_order", customer=bob)] == [
        ("suppressed", "no consent")
    ]
    # win-back: 60 days after the last order, at 10:00 in the shop's zone, then a reminder a week later
    back = rows(sim, "win_back", "email", ada)
    assert [b.at for b in back] == [datetime(2026, 4, 30, 8, 0, tzinfo=UTC), datetime(2026, 5, 7, 8, 0, tzinfo=UTC)]
    assert back[0].code == back[1].code and back[0].code.startswith("BACK-")
    assert [(o.action, o.reason) for o in rows(sim, "win_back", customer=bob)] == [("suppressed", "no consent")]
    # Ada's win-back planned after her first and second orders never fired: her last order moved on
    assert len(rows(sim, "win_back", "code", ada)) == 1


def test_the_frequency_cap_quiet_hours_and_exits(tmp_path):
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "first.yaml").write_text(
        "name: First\ntrigger:\n  event: order.placed\nfrequency_cap: 7d\n"
        "steps:\n  - send_email:\n      template: thank_you_first_order.html\n      subject: One\n"
    )
    (folder / "second.yaml").write_text(
        "name: Second\ntrigger:\n  event: order.placed\nquiet_hours:\n  from: '21:00'\n  to: '08:00'\n"
        "steps:\n  - wait: 1h\n  - send_email:\n      template: thank_you_first_order.html\n      subject: Two\n"
    )
    (folder / "pending.yaml").write_text(
        "name: Pending\ntrigger:\n  event: order.placed\nexit_on: order.fulfilled\n"
        "steps:\n  - wait: 5d\n  - send_email:\n      template: thank_you_first_order.html\n      subject: Three\n"
    )
    flows = {f.key: f for f in loader.load_dir(folder)[0]}
    assert set(flows) == {"first", "second", "pending"}
    path = shopify_csv(
        tmp_path / "orders.csv",
        [
            ("1", "ada@example.com", "2026-06-01 21:30:00 +0000", "yes", "2026-06-02 10:00:00 +0000"),
        ],
    )
    sim = run(path, flows, zone="UTC")
    second = rows(sim, "second")
    # quiet hours held the send until 08:00; then its own 16 h cap since the first flow's email, until 13:30
    assert [(o.action, o.reason, o.at) for o in second] == [
        ("deferred", "quiet hours", datetime(2026, 6, 1, 22, 30, tzinfo=UTC)),
        ("deferred", "frequency cap", datetime(2026, 6, 2, 8, 0, tzinfo=UTC)),
        ("email", "", datetime(2026, 6, 2, 13, 30, tzinfo=UTC)),
    ]
    assert simulate.summary(sim)["second"]["deferred"] == 2
    assert [(o.action, o.reason) for o in rows(sim, "pending")] == [("exited", "exit on order.fulfilled")]


def test_woocommerce_json_export_with_a_customers_file_and_a_window(tmp_path):
    from tests.conftest import payload

    orders = []
    for number, (day, status) in enumerate(
        [("2026-02-01", "completed"), ("2026-03-01", "processing"), ("2026-09-01", "processing")], 1
    ):
        body = payload("woocommerce", "order_created")
        body.update(
            id=700 + number,
            number=str(700 + number),
            customer_id=25,
            status=status,
            date_created_gmt=f"{day}T10:00:00",
            date_modified_gmt=f"{day}T10:00:00",
            date_paid_gmt=f"{day}T10:05:00",
            date_completed_gmt=f"{day}T18:00:00" if status == "completed" else None,
        )
        orders.append(body)
    (tmp_path / "orders.json").write_text(json.dumps(orders))
    customer = payload("woocommerce", "customer_created")
    customer["meta_data"] = [
        {"id": 1, "key": "marketing_consent", "value": "yes"},
        {"id": 2, "key": "birthday", "value": "1990-03-20"},
    ]
    (tmp_path / "customers.json").write_text(json.dumps([customer]))
    sim = run(
        tmp_path / "orders.json",
        customers=tmp_path / "customers.json",
        start="2026-01-15",
        end="2026-06-30",
        zone="UTC",
    )
    john = "john.doe@example.com"
    assert {o.flow for o in rows(sim, action="email", customer=john)} >= {"birthday", "check_in_after_delivery"}
    birthday = rows(sim, "birthday", "email", john)
    assert [b.at for b in birthday] == [datetime(2026, 3, 6, 9, 0, tzinfo=UTC)]  # 14 days early, at 09:00
    assert birthday[0].code.startswith("BDAY-") and "John" in birthday[0].subject
    # the September order is outside the window; so is everything it would have started
    assert all(o.at <= datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC) for o in sim.outcomes)
    assert len(rows(sim, "check_in_after_delivery", "email", john)) == 1


def test_the_command_prints_tables_and_writes_the_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = shopify_csv(
        tmp_path / "orders.csv",
        [
            ("1001", "ada@example.com", "2026-01-10 09:15:00 +0100", "yes", None),
            ("1002", "bob@example.com", "2026-01-11 09:15:00 +0100", "no", None),
        ],
    )
    report = tmp_path / "report.csv"
    result = CliRunner().invoke(
        main, ["simulate", "--orders", str(path), "--csv", str(report), "--timezone", "Europe/Berlin"]
    )
    assert result.exit_code == 0, result.output
    assert "2 orders, 2 customers" in result.output and "thank_you_first_order" in result.output
    with report.open() as handle:
        lines = list(csv.DictReader(handle))
    assert {"date", "time_utc", "flow", "customer", "action", "template", "subject", "code", "reason"} <= set(lines[0])
    assert any(
        r["flow"] == "thank_you_first_order"
        and r["customer"] == "bob@example.com"
        and r["action"] == "email"
        and r["date"] == "2026-01-11"
        and r["time_utc"] == "10:15"
        for r in lines
    )

    bad = tmp_path / "bad.csv"
    bad.write_text("Name,Created at\n#1,yesterday\n")
    failed = CliRunner().invoke(main, ["simulate", "--orders", str(bad)])
    assert failed.exit_code != 0 and "bad.csv:2: bad date 'yesterday'" in failed.output
    wrong = CliRunner().invoke(main, ["simulate", "--orders", str(path), "--from", "2026-13-01"])
    assert wrong.exit_code != 0 and "is not a date" in wrong.output


def test_a_woocommerce_csv_export(tmp_path):
    path = tmp_path / "woo-orders.csv"
    path.write_text(
        "Order ID,Order Date,Order Status,Customer ID,Billing First Name,Billing Last Name,Billing Email,"
        "Order Total,Coupon Code,Date Completed\n"
        "701,2026-05-01 10:00:00,completed,25,Grace,Hopper,GRACE@example.com,42.00,,2026-05-02 09:00:00\n"
        "702,2026-05-03 10:00:00,processing,25,Grace,Hopper,grace@example.com,18.50,SPRING,\n"
        "703,2026-05-04 10:00:00,cancelled,,Guest,Buyer,guest@example.com,9.00,,\n"
    )
    orders = simulate.read_orders(path)
    assert [o.order.id for o in orders] == ["701", "702", "703"]
    first = orders[0]
    assert (first.customer_key, first.email, first.first_name) == ("25", "grace@example.com", "Grace")
    assert first.order.total == Decimal("42.00") and first.fulfilled_at == datetime(2026, 5, 2, 9, 0, tzinfo=UTC)
    assert first.paid_at == first.order.created_at  # completed: paid when placed
    assert orders[1].order.discount_codes == ["SPRING"] and orders[1].fulfilled_at is None
    assert orders[2].cancelled_at is not None and orders[2].customer_key == "email:guest@example.com"
    sim = run(path, zone="UTC")
    thanks = rows(sim, "thank_you_first_order", "email")
    assert [(t.customer, t.at) for t in thanks] == [("grace@example.com", datetime(2026, 5, 1, 12, 0, tzinfo=UTC))]
    # the guest's only order was cancelled: the ledger no longer counts it, so the thank-you run ends
    assert [(o.action, o.reason) for o in rows(sim, "thank_you_first_order", customer="guest@example.com")] == [
        ("exited", "condition no longer holds: customer.orders_count == 1")
    ]


def test_json_exports_are_read_by_the_platform_whose_objects_they_are(tmp_path):
    from tests.conftest import payload

    shopify_order = payload("shopify", "orders_create")
    shopify_order.update(
        financial_status="paid",
        processed_at="2026-02-01T10:05:00Z",
        fulfillments=[{"id": 1, "created_at": "2026-02-02T09:00:00Z"}, {"id": 2, "created_at": "2026-02-03T09:00:00Z"}],
    )
    woo_order = payload("woocommerce", "order_created")
    woo_order.update(status="cancelled", date_created_gmt="2026-02-05T10:00:00", date_paid_gmt=None)
    (tmp_path / "orders.json").write_text(json.dumps({"orders": [shopify_order, woo_order]}))
    shopify, woo = simulate.read_orders(tmp_path / "orders.json")
    assert (shopify.order.id, shopify.email) == ("820982911946154508", "john@example.com")
    assert shopify.paid_at == datetime(2026, 2, 1, 10, 5, tzinfo=UTC)
    assert shopify.fulfilled_at == datetime(2026, 2, 2, 9, 0, tzinfo=UTC)  # the first fulfillment
    assert woo.order.id == "727" and woo.paid_at is None
    assert woo.cancelled_at == woo.order.created_at == datetime(2026, 2, 5, 10, 0, tzinfo=UTC)

    (tmp_path / "other.json").write_text(json.dumps([{"id": 1, "grand_total": "10.00"}]))
    with pytest.raises(click.ClickException, match=r"other.json: order #1 is not an order of shopify or woocommerce"):
        simulate.read_orders(tmp_path / "other.json")


def test_the_command_measures_the_predicted_next_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Ada orders every 10 days, Bob every 30: each one's later orders check the prediction made before them
    placed = [("ada", "01-01"), ("bob", "01-01"), ("ada", "01-11"), ("ada", "01-21"), ("bob", "01-31")]
    placed += [("ada", "01-31"), ("ada", "02-10"), ("bob", "03-02")]
    rows = [
        (str(number), f"{who}@example.com", f"2026-{day} 09:00:00 +0000", "yes", None)
        for number, (who, day) in enumerate(placed, 1001)
    ]
    result = CliRunner().invoke(main, ["simulate", "--orders", str(shopify_csv(tmp_path / "orders.csv", rows))])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "predicted next order: mean absolute error" in flat and "store-median baseline" in flat
    checked = re.search(r"error ([\d.]+) days over (\d+) repeat orders \(store-median baseline ([\d.]+) days", flat)
    assert checked is not None, flat
    # from Ada's third order on, a prediction and a baseline stand before each order; the steady rhythms beat one median
    assert int(checked.group(2)) >= 3 and float(checked.group(1)) < float(checked.group(3))
