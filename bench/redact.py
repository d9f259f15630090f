"""A redaction that names many orders: finding the archived webhooks that name the person.

    .venv/bin/python bench/redact.py [--archived 450] [--orders 100,1000] [--database-url URL]

A fresh PostgreSQL database (created on 127.0.0.1:5432 and dropped afterwards; `--database-url` uses
that one, emptied) holds `--archived` archived 15 KB Shopify `orders/create` deliveries of one shop
(tests/payloads/shopify/orders_create.json, each its own order and customer). For a person naming N
orders, it times `archive.forget`'s search as the product does it now
(`archive.narrowed`: SQL filters up to NEEDLES_PER_QUERY needles, past that one pass checked in
Python by `Person.mentioned_in`), against the baseline measured in the same run: the method before it,
one LIKE query per NEEDLES_PER_QUERY needles, each a scan of the shop's archive. Both must find the
same deliveries. RQ's job timeout is 180 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import fresh_database  # noqa: E402 - bench/scale.py's fresh PostgreSQL database
from sqlalchemy import func, or_, select  # noqa: E402

from encore_retention.connectors.privacy import archived_names  # noqa: E402
from encore_retention.core import archive  # noqa: E402
from encore_retention.core.store import migrate, session_scope  # noqa: E402
from encore_retention.core.store.ledger import Person  # noqa: E402

SHOP = "bench-redact.myshopify.com"


def fill(archived: int) -> None:
    """Archive `archived` distinct 15 KB orders of one shop."""
    example = json.loads((ROOT / "tests" / "payloads" / "shopify" / "orders_create.json").read_text())
    with session_scope() as session:
        for n in range(archived):
            body = copy.deepcopy(example)
            body["id"] = 900_000_000 + n
            body["customer"]["id"] = 800_000_000 + n
            body["email"] = body["customer"]["email"] = f"customer{n}@example.com"
            archive.record_delivery(
                "shopify",
                SHOP,
                "orders/create",
                f"d{n}",
                [],
                json.dumps(body).encode(),
                "queued",
                [f"e{n}"],
                session=session,
            )


def person(orders: int) -> Person:
    """Someone whose orders are the first `orders` of the archive's (and as many that are not in it)."""
    found = Person(platform="shopify", shop=SHOP, emails={"customer0@example.com"}, platform_ids={"800000000"})
    found.order_ids = {str(900_000_000 + n) for n in range(orders // 2)} | {str(1_000 + n) for n in range(orders // 2)}
    return found


def before(session, who: Person) -> list[int]:  # type: ignore[no-untyped-def]
    """The previous method: one LIKE query per NEEDLES_PER_QUERY needles, each over the shop's archive."""
    needles = who.needles()
    query = select(archive.WebhookDelivery).where(archive.WebhookDelivery.shop == SHOP)
    body = func.lower(archive.WebhookDelivery.body)
    doomed, seen = [], set()
    for start in range(0, len(needles), archive.NEEDLES_PER_QUERY):
        chunk = needles[start : start + archive.NEEDLES_PER_QUERY]
        for row in session.execute(query.where(or_(*(body.contains(n, autoescape=True) for n in chunk)))).scalars():
            if row.id not in seen:
                seen.add(row.id)
                if archived_names(who, row):
                    doomed.append(row.id)
    return sorted(doomed)


def now(session, who: Person) -> list[int]:  # type: ignore[no-untyped-def]
    """The product's method (archive.forget's search)."""
    query = select(archive.WebhookDelivery).where(archive.WebhookDelivery.shop == SHOP)
    found = archive.narrowed(query, func.lower(archive.WebhookDelivery.body), who.needles())
    return sorted(row.id for row in session.execute(found).scalars() if archived_names(who, row))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archived", type=int, default=450)
    parser.add_argument("--orders", default="100,1000")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    ok = True
    with fresh_database(args.database_url) as url:
        import os

        os.environ["DATABASE_URL"] = url
        from encore_retention.core.settings import reset_settings

        reset_settings()
        migrate(url)
        fill(args.archived)
        print(f"{args.archived} archived 15 KB orders of one shop, PostgreSQL")
        for orders in (int(n) for n in args.orders.split(",")):
            who = person(orders)
            timings = {}
            for name, method in (("before", before), ("now", now)):
                with session_scope() as session:
                    started = time.perf_counter()
                    found = method(session, who)
                    timings[name] = (time.perf_counter() - started, found)
            same = timings["before"][1] == timings["now"][1]
            ok &= same
            print(
                f"  {orders:>5} orders ({len(who.needles())} needles): before {timings['before'][0]:8.2f} s, "
                f"now {timings['now'][0]:6.2f} s, {timings['before'][0] / max(timings['now'][0], 1e-9):6.1f}x; "
                f"found {len(timings['now'][1])}, {'the same' if same else 'DIFFERENT'}"
            )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
