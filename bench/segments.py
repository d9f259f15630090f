"""Segments at scale: sizes, member pages and exports in SQL; the in-flow check per customer.

    .venv/bin/python bench/segments.py [--customers 200000] [--database-url URL]

Fills a fresh SQLite database (or `--database-url`, emptied first: use a scratch database) with
customers of varied figures, then times, against baselines measured in the same run:
- a segment's size (`segments.count`) against counting every customer;
- its first member page and one 90 % deep (keyset, 50 rows) against the first page of all customers;
- its CSV export (`exports.rows`, streamed) with the peak Python memory, against reading the same
  rows' ids alone;
- `customer in segment('vip')` evaluated as a flow condition for one customer, against the plain
  condition `customer.orders_count >= 3`.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VIP = "where:\n  orders_count: {at_least: 3}\n  total_spent: {at_least: 500}\n  last_order_at: {in_last: 365d}\n"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def best(function, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    """The best wall time of a few calls, in seconds."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    """Fill, time, print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    import os

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp}/bench.db"
        from sqlalchemy import delete, insert, select

        from encore_retention.core.store import migrate, session_scope
        from encore_retention.core.store.models import Customer, Shop
        from encore_retention.flows import exports, rules, segments
        from encore_retention.flows.steps import customer_view

        migrate()
        rng = random.Random(5)
        with session_scope() as db:
            db.execute(delete(Customer))
            db.execute(delete(Shop))
            shop = Shop(platform="shopify", domain="bench.example", settings={})
            db.add(shop)
            db.flush()
            rows = []
            for n in range(args.customers):
                count = rng.choice([0, 1, 1, 1, 2, 2, 3, 4, 6, 9])
                rows.append(
                    {
                        "shop_id": shop.id,
                        "platform_id": str(n),
                        "email": f"c{n}@example.com",
                        "orders_count": count,
                        "total_spent": Decimal(count * rng.randint(20, 200)),
                        "last_order_at": NOW - timedelta(days=rng.randint(0, 700)) if count else None,
                        "tags": rng.choice([[], [], ["vip"], ["wholesale"]]),
                        "email_consent": rng.random() < 0.6,
                        "created_at": NOW,
                        "updated_at": NOW,
                    }
                )
                if len(rows) == 10_000:
                    db.execute(insert(Customer), rows)
                    rows = []
            if rows:
                db.execute(insert(Customer), rows)
            db.commit()
            shop_ids = [shop.id]

        loaded, _ = segments.load_text(VIP, "segments/vip.yaml")
        assert loaded is not None
        vip = loaded.segment
        with session_scope() as db:
            dialect = segments.dialect_of(db)
            size = segments.count(db, vip, shop_ids, NOW)
            t_count = best(lambda: segments.count(db, vip, shop_ids, NOW))
            t_all = best(lambda: segments.count(db, None, shop_ids, NOW))
            members = segments.members(vip, shop_ids, NOW, dialect)
            deep = db.execute(members.with_only_columns(Customer.id).offset(int(size * 0.9)).limit(1)).scalar() or 0
            t_page = best(lambda: db.execute(members.limit(50)).all())
            t_deep = best(lambda: db.execute(members.where(Customer.id > deep).limit(50)).all())
            t_page_all = best(lambda: db.execute(select(Customer).order_by(Customer.id).limit(50)).all())

            tracemalloc.start()
            began = time.perf_counter()
            lines = sum(1 for _ in exports.csv_lines(exports.rows(db, vip, shop_ids, NOW)))
            t_export = time.perf_counter() - began
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            where = segments.criteria(vip, shop_ids, NOW, dialect)
            t_ids = best(lambda: sum(1 for _ in db.execute(select(Customer.id).where(*where)).scalars()), 1)
            sample = [customer_view(c) for c in db.scalars(select(Customer).limit(2000))]

        context = {"shop": {"domain": "bench.example"}, "now": NOW}
        membership = "customer in segment('vip')"
        segments.registry()  # the built-in library's vip: the same filters as VIP

        def check(condition: str) -> None:
            for view in sample:
                rules.condition_holds(condition, {**context, "customer": view})

        t_in_flow = best(lambda: check(membership)) / len(sample)
        t_plain = best(lambda: check("customer.orders_count >= 3")) / len(sample)

    print(f"{args.customers} customers ({dialect}); segment vip: {size} members")
    print(
        f"size:            {t_count * 1000:8.1f} ms   (count of all customers {t_all * 1000:.1f} ms, ratio "
        f"{t_count / t_all:.2f})"
    )
    print(
        f"first page (50): {t_page * 1000:8.2f} ms   90 % deep: {t_deep * 1000:.2f} ms   (all customers' first "
        f"page {t_page_all * 1000:.2f} ms, ratio {t_deep / t_page_all:.2f})"
    )
    print(
        f"export:          {t_export:8.2f} s    {size / t_export:,.0f} rows/s, peak Python memory "
        f"{peak / 2**20:.2f} MiB in {lines} pieces (the ids alone {t_ids:.2f} s, ratio {t_export / t_ids:.1f})"
    )
    print(
        f"in a flow:       {t_in_flow * 1e6:8.1f} µs per check   (customer.orders_count >= 3: {t_plain * 1e6:.1f} µs, "
        f"ratio {t_in_flow / t_plain:.1f})"
    )


if __name__ == "__main__":
    main()
