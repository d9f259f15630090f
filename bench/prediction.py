"""Measure the predicted next order on a reproducible synthetic store, against the store-median baseline.

The store sells consumables for a year (2026): each repeat customer reorders on a rhythm of their own
(log-normal around 35 days), each gap that rhythm give or take a gamma-distributed spread (CV 0.3);
many buy once, and repeat customers stop after a few orders. The history is written as a Shopify orders
CSV and replayed by `encore simulate`'s own Simulation, which predicts after every order from the orders
before it and checks each prediction against the order that followed. Prints the mean absolute error in
days and the ratio to the baseline (the last order plus the store's median gap), measured in the same run.

    .venv/bin/python bench/prediction.py [--customers 4000] [--seed 7] [--keep DIR]
    .venv/bin/encore simulate --orders DIR/orders.csv     # the same figure, in the simulation's report
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = ["Name", "Email", "Financial Status", "Accepts Marketing", "Currency", "Total", "Created at", "Id"]
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)


def generate(folder: Path, customers: int, seed: int = 7) -> Path:
    """Write orders.csv: a year of a store whose repeat customers each keep a rhythm of their own."""
    rng = random.Random(seed)
    rows = []
    for person in range(customers):
        email = f"customer{person}@example.com"
        first = START + timedelta(seconds=rng.randint(0, 300 * 86400))
        repeat = rng.random() < 0.55
        rhythm = min(180.0, max(5.0, rng.lognormvariate(3.55, 0.55)))  # median about 35 days
        stop_after = rng.randint(2, 12) if repeat else 1
        at = first
        for _ in range(stop_after):
            if at > END:
                break
            rows.append((at, email, rng.choice([18, 24, 32, 45, 60])))
            at += timedelta(days=rhythm * rng.gammavariate(1 / 0.09, 0.09))  # mean 1, CV 0.3
    rows.sort()
    path = folder / "orders.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for number, (at, email, total) in enumerate(rows, 1001):
            stamp = at.strftime("%Y-%m-%d %H:%M:%S +0000")
            writer.writerow([f"#{number}", email, "paid", "yes", "EUR", f"{total}.00", stamp, str(6000000000 + number)])
    return path


def main() -> None:
    """Generate, simulate, print the prediction's error and the baseline's."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="write orders.csv here and keep it")
    args = parser.parse_args()

    from encore_retention import simulate
    from encore_retention.flows import dates

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = generate(folder, args.customers, args.seed)
        began = time.perf_counter()
        orders = simulate.read_orders(path)
        first = min(o.order.created_at for o in orders if o.order.created_at)
        last = max(o.order.created_at for o in orders if o.order.created_at)
        start = datetime.combine(first.date(), datetime.min.time(), UTC)
        end = datetime.combine(last.date(), datetime.max.time(), UTC)
        sim = simulate.run_simulation(orders, [], {}, start, end, dates.zone("UTC"))
        took = time.perf_counter() - began
    score = sim.predictions
    assert score.mae is not None and score.baseline_mae is not None
    print(f"{len(orders)} orders of {args.customers} customers (seed {args.seed}), replayed in {took:.2f} s")
    print(f"predictions checked against the next order: {score.count}")
    print(f"mean absolute error, own gaps shrunk to the store's: {score.mae:6.1f} days")
    print(f"mean absolute error, store-median baseline:         {score.baseline_mae:6.1f} days")
    print(f"ratio to the baseline: {score.mae / score.baseline_mae:.2f}")
    print(score.summary())


if __name__ == "__main__":
    main()
