"""Benchmark `encore simulate`: a year of a store with 100,000 orders (a Shopify orders CSV export).

Generates the export (one row per line item, as Shopify writes it) and a customers export with consent
and birthdays, then times reading and simulating with the built-in flows. Prints figures, and the
ratio to a baseline measured in the same run: reading the CSV alone with the csv module.

    .venv/bin/python bench/simulate.py [--orders 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHOPIFY_ORDER_COLUMNS = [
    "Name",
    "Email",
    "Financial Status",
    "Paid at",
    "Fulfillment Status",
    "Fulfilled at",
    "Accepts Marketing",
    "Currency",
    "Subtotal",
    "Shipping",
    "Taxes",
    "Total",
    "Discount Code",
    "Discount Amount",
    "Shipping Method",
    "Created at",
    "Lineitem quantity",
    "Lineitem name",
    "Lineitem price",
    "Billing Name",
    "Cancelled at",
    "Id",
]
SHOPIFY_CUSTOMER_COLUMNS = [
    "Customer ID",
    "First Name",
    "Last Name",
    "Email",
    "Accepts Email Marketing",
    "Tags",
    "Birthday",
]
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim", "Margaret", "Linus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Berners-Lee"]


def generate(folder: Path, orders: int, seed: int = 7) -> tuple[Path, Path]:
    """Write orders.csv and customers.csv for a year (2026) of a store."""
    rng = random.Random(seed)
    customers = max(1, orders * 2 // 5)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    people = []
    with (folder / "customers.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SHOPIFY_CUSTOMER_COLUMNS)
        for number in range(customers):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            email = f"{first.lower()}.{last.lower()}.{number}@example.com"
            birthday = date(rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28))
            consent = "yes" if rng.random() < 0.6 else "no"
            people.append((email, f"{first} {last}", consent))
            writer.writerow([str(7000000 + number), first, last, email, consent, "", birthday.isoformat()])
    # Some customers buy often: a skewed choice of buyer.
    weights = [1.0 / (1 + (i % 50)) for i in range(customers)]
    buyers = rng.choices(range(customers), weights=weights, k=orders)
    moments = sorted(start + timedelta(seconds=rng.randint(0, 365 * 24 * 3600 - 1)) for _ in range(orders))
    with (folder / "orders.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SHOPIFY_ORDER_COLUMNS)
        for number, (buyer, created) in enumerate(zip(buyers, moments, strict=True), 1001):
            email, name, consent = people[buyer]
            items = rng.randint(1, 3)
            prices = [rng.choice([12, 19, 24, 39, 56, 80]) for _ in range(items)]
            total = sum(prices) + 5
            fulfilled = created + timedelta(hours=rng.randint(6, 72))
            stamp = "%Y-%m-%d %H:%M:%S +0000"
            for index, price in enumerate(prices):
                first_row = index == 0
                writer.writerow(
                    [
                        f"#{number}",
                        email,
                        "paid" if first_row else "",
                        created.strftime(stamp) if first_row else "",
                        "fulfilled" if first_row else "",
                        fulfilled.strftime(stamp) if first_row else "",
                        consent if first_row else "",
                        "EUR" if first_row else "",
                        f"{sum(prices)}.00" if first_row else "",
                        "5.00" if first_row else "",
                        "0.00" if first_row else "",
                        f"{total}.00" if first_row else "",
                        "",
                        "",
                        "Standard" if first_row else "",
                        created.strftime(stamp),
                        "1",
                        f"Item {price}",
                        f"{price}.00",
                        name if first_row else "",
                        "",
                        str(5000000000 + number) if first_row else "",
                    ]
                )
    return folder / "orders.csv", folder / "customers.csv"


def main() -> None:
    """Generate, read, simulate, print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the generated files here and keep them")
    args = parser.parse_args()

    from encore_retention import simulate
    from encore_retention.flows import dates, loader

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        orders_path, customers_path = generate(folder, args.orders)
        generated = time.perf_counter() - began

        began = time.perf_counter()
        with orders_path.open(newline="") as handle:
            rows = sum(1 for _ in csv.reader(handle))
        baseline = time.perf_counter() - began

        began, cpu = time.perf_counter(), time.process_time()
        orders = simulate.read_orders(orders_path)
        known = simulate.read_customers(customers_path)
        read, read_cpu = time.perf_counter() - began, time.process_time() - cpu

        flows = loader.load_dir(loader.LIBRARY)[0]
        began, cpu = time.perf_counter(), time.process_time()
        sim = simulate.run_simulation(
            orders,
            known,
            {f.key: f for f in flows},
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
            dates.zone("Europe/Berlin"),
        )
        simulated, simulated_cpu = time.perf_counter() - began, time.process_time() - cpu
        began = time.perf_counter()
        with (folder / "report.csv").open("w", newline="") as handle:
            simulate.write_csv(sim.outcomes, handle)
        written = time.perf_counter() - began
        emails = sum(1 for o in sim.outcomes if o.action == "email")
        suppressed = sum(1 for o in sim.outcomes if o.action == "suppressed")

    print(f"orders: {len(orders)} ({rows - 1} CSV rows), customers: {len(known)}, flows: {len(flows)}")
    print(f"generate the export:       {generated:7.2f} s")
    print(f"baseline, csv.reader only: {baseline:7.2f} s")
    print(
        f"read orders and customers: {read:7.2f} s wall, {read_cpu:6.2f} s CPU  ({read / baseline:.1f}x the baseline)"
    )
    print(
        f"simulate a year:           {simulated:7.2f} s wall, {simulated_cpu:6.2f} s CPU  "
        f"({simulated / baseline:.1f}x the baseline)"
    )
    print(f"write the CSV report:      {written:7.2f} s wall")
    print(
        f"total (read, simulate, write): {read + simulated + written:7.2f} s wall (target: under 60 s); "
        f"CPU {read_cpu + simulated_cpu:.2f} s"
    )
    print(
        f"outcome: {emails} emails, {suppressed} suppressed, {len(sim.outcomes)} report rows, {sim.runs} run attempts"
    )


if __name__ == "__main__":
    main()
