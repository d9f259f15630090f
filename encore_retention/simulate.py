"""`encore simulate`: the flows over a store's historical orders, with a simulated clock.

The orders (a Shopify or WooCommerce export, CSV or JSON) become the events the platform would have
sent: `customer.created` before a customer's first order, `order.placed`, `order.paid`,
`order.fulfilled`, `order.cancelled`; the date triggers fire when a customer's date makes them due.
Exports hold no checkouts: a caller that has them adds `checkout.started` events (`Simulation.add_checkout`).
Each flow is run by the engine's own step handlers and rules (`flows.steps`, `flows.rules`: trigger
keys, entry, conditions re-checked before each step, waits, the marketing checks, codes' terms) with a
`SimRunner` whose facts and effects are an in-memory world, so that a year of a busy store runs in
seconds. Nothing is sent or created, and the store is not read.

The report says who would get which email, when, with which code, and who would be suppressed and why.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import heapq
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from encore_retention.connectors.base import Discount, DiscountRequest, platforms
from encore_retention.connectors.codes import format_code
from encore_retention.core import events as ev
from encore_retention.core.store import prediction
from encore_retention.flows import dates, expressions, loader, rules, segments
from encore_retention.flows.render import format_money
from encore_retention.flows.results import BranchResult, split_shares
from encore_retention.flows.rules import position_label, step_at
from encore_retention.flows.schema import DateTrigger, EventTrigger
from encore_retention.flows.steps import DiscountView, EmailDraft, Runner, email_served, run_step
from encore_retention.webhooks.base import Exports

STAFF_ADDRESS = "staff@store.example"  # the simulated store's staff, whom `notify` steps mail
SIM_LINK = "https://store.example/simulated-link"  # what an account invitation or review link step finds


def _feedback_url(score: Any) -> str:
    """`feedback_url(score)` in a simulation: a stand-in (no link is signed)."""
    return f"https://encore.example/feedback/simulated-{score}"


# ---- reading exports -------------------------------------------------------------------------------


@dataclass
class HistoricalOrder:
    """One order of an export, with what the flows need of its customer."""

    order: ev.Order
    customer_key: str
    email: str | None
    first_name: str | None = None
    last_name: str | None = None
    consent: bool | None = None
    paid_at: datetime | None = None
    fulfilled_at: datetime | None = None
    cancelled_at: datetime | None = None
    refunded_at: datetime | None = None


@dataclass
class KnownCustomer:
    """A customer from a customers export."""

    key: str
    email: str | None
    first_name: str | None = None
    last_name: str | None = None
    consent: bool | None = None
    birthday: date | None = None
    created_at: datetime | None = None
    tags: list[str] = field(default_factory=list)
    has_account: bool | None = None


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# Column names (normalised) of the Shopify and WooCommerce exports, and of common export plugins.
ORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "orderid", "ordernumber", "name", "number"),
    "number": ("name", "ordernumber", "number", "orderid"),
    "email": ("email", "billingemail", "customeremail", "billingemailaddress"),
    "customer_id": ("customerid", "customeruserid", "userid"),
    "first_name": ("billingfirstname", "firstname", "customerfirstname"),
    "last_name": ("billinglastname", "lastname", "customerlastname"),
    "billing_name": ("billingname", "customername", "customer"),
    "created_at": ("createdat", "orderdate", "datecreated", "datecreatedgmt", "date", "processedat"),
    "paid_at": ("paidat", "datepaid", "datepaidgmt", "paiddate"),
    "fulfilled_at": ("fulfilledat", "datecompleted", "datecompletedgmt", "completeddate"),
    "cancelled_at": ("cancelledat", "cancelleddate"),
    "financial_status": ("financialstatus", "paymentstatus"),
    "fulfillment_status": ("fulfillmentstatus",),
    "status": ("orderstatus", "status"),
    "total": ("total", "ordertotal", "totalprice", "ordertotalamount", "netsales"),
    "subtotal": ("subtotal", "ordersubtotal", "subtotalprice"),
    "currency": ("currency", "ordercurrency"),
    "codes": ("discountcode", "couponcode", "couponcodes", "coupons", "couponsused", "discountcodes"),
    "consent": ("acceptsmarketing", "acceptsemailmarketing", "marketingconsent", "newsletter"),
}
CUSTOMER_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("customerid", "id", "userid"),
    "email": ("email", "billingemail", "emailaddress"),
    "first_name": ("firstname", "billingfirstname"),
    "last_name": ("lastname", "billinglastname"),
    "consent": ("acceptsemailmarketing", "acceptsmarketing", "marketingconsent", "emailmarketingconsent", "newsletter"),
    "birthday": ("birthday", "birthdate", "dateofbirth", "dob"),
    "created_at": ("createdat", "datecreated", "datecreatedgmt", "registered", "dateregistered"),
    "tags": ("tags",),
}


def _columns(header: list[str], wanted: dict[str, tuple[str, ...]]) -> dict[str, int]:
    normalised = [_norm(h) for h in header]
    found: dict[str, int] = {}
    for name, aliases in wanted.items():
        for alias in aliases:
            if alias in normalised:
                found[name] = normalised.index(alias)
                break
    return found


def _yes(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    return str(value).strip().lower() in ("yes", "true", "1", "subscribed", "y", "opt-in", "opted in")


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    if len(text) >= 24 and text[-5] in "+-" and text[-4:].isdigit():  # Shopify's `2026-01-31 12:00:00 +0100`
        text = f"{text[:-5].rstrip()}{text[-5:-2]}:{text[-2:]}"
    try:
        quick = datetime.fromisoformat(text)
        return quick if quick.tzinfo else quick.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        parsed = ev.parse_datetime(str(value).strip().replace(" +", "+").replace(" -", "-"))
    except ValueError:
        parsed = None
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _money(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        return Decimal(str(value).replace(",", "").strip().lstrip("$€£").strip())
    except ArithmeticError:
        return None


def _rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise click.ClickException(f"{path}: empty file") from None
    return header, reader


def read_orders(path: Path) -> list[HistoricalOrder]:
    """Orders from a Shopify or WooCommerce export (CSV or JSON)."""
    if path.suffix.lower() in (".json", ".jsonl"):
        return list(_json_orders(path))
    header, reader = _rows(path)
    cols = _columns(header, ORDER_COLUMNS)
    missing = [name for name in ("id", "created_at") if name not in cols]
    if missing:
        raise click.ClickException(f"{path}: no {' or '.join(missing)} column (found: {', '.join(header[:12])}…)")
    by_id: dict[str, HistoricalOrder] = {}
    for number, row in enumerate(reader, 2):

        def get(name: str, row: list[str] = row) -> str | None:
            index = cols.get(name)
            return row[index].strip() if index is not None and index < len(row) and row[index].strip() else None

        order_id = get("id")
        if not order_id:
            continue
        if order_id in by_id:  # Shopify repeats an order on one row per line item; the first row has the totals
            continue
        created = _time(get("created_at"))
        if created is None:
            raise click.ClickException(f"{path}:{number}: bad date {get('created_at')!r}")
        email = (get("email") or "").lower() or None
        first, last = get("first_name"), get("last_name")
        if not first and get("billing_name"):
            first, _, last = (get("billing_name") or "").partition(" ")
        status = (get("status") or "").lower()
        financial = (get("financial_status") or "").lower() or None
        paid = _time(get("paid_at")) or (
            created if financial == "paid" or status in ("processing", "completed") else None
        )
        fulfilled = _time(get("fulfilled_at")) or (created if status == "completed" else None)
        cancelled = _time(get("cancelled_at")) or (created if status == "cancelled" else None)
        codes = [c.strip() for c in (get("codes") or "").replace(";", ",").split(",") if c.strip()]
        order = ev.Order.model_construct(
            id=order_id,
            number=(get("number") or order_id).lstrip("#"),
            created_at=created,
            updated_at=created,
            total=_money(get("total")),
            subtotal=_money(get("subtotal")),
            currency=get("currency"),
            line_items=[],
            discount_codes=codes,
            financial_status=financial,
            fulfillment_status=get("fulfillment_status"),
            cancelled_at=cancelled,
            checkout_token=None,
        )
        key = get("customer_id") or (f"email:{email}" if email else f"order:{order_id}")
        by_id[order_id] = HistoricalOrder(
            order, key, email, first, last, _yes(get("consent")), paid, fulfilled, cancelled
        )
    return list(by_id.values())


def _json_items(path: Path, plural: str) -> Iterable[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{path}: not JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get(plural, data.get("data", [data]))
    if not isinstance(data, list):
        raise click.ClickException(f"{path}: expected a list of {plural}")
    return data


def _exports_of(payload: dict[str, Any]) -> Exports | None:
    """The export reader of the installed platform whose export an object is, if any."""
    return next(
        (p.exports for p in platforms().values() if p.exports is not None and p.exports.recognises(payload)), None
    )


def _json_orders(path: Path) -> Iterator[HistoricalOrder]:
    for number, payload in enumerate(_json_items(path, "orders"), 1):
        if not isinstance(payload, dict):
            continue
        exports = _exports_of(payload)
        if exports is None:
            raise click.ClickException(
                f"{path}: order #{number} is not an order of {' or '.join(platforms())} as their APIs export them"
            )
        try:
            exported = exports.order(payload)
        except (ValueError, TypeError, KeyError) as exc:
            raise click.ClickException(f"{path}: order #{number}: {exc}") from None
        order, customer = exported.order, exported.customer
        if order.created_at is None:
            raise click.ClickException(f"{path}: order #{number} has no creation date")
        email = (customer.email if customer else None) or None
        key = (customer.key if customer else None) or f"order:{order.id}"
        yield HistoricalOrder(
            order,
            key,
            email.lower() if email else None,
            customer.first_name if customer else None,
            customer.last_name if customer else None,
            customer.email_consent if customer else None,
            exported.paid_at,
            exported.fulfilled_at,
            exported.cancelled_at,
        )


def read_customers(path: Path) -> list[KnownCustomer]:
    """Customers from a Shopify or WooCommerce customers export (CSV or JSON)."""
    if path.suffix.lower() in (".json", ".jsonl"):
        found = []
        for number, payload in enumerate(_json_items(path, "customers"), 1):
            if not isinstance(payload, dict):
                continue
            exports = _exports_of(payload)
            if exports is None:
                raise click.ClickException(
                    f"{path}: customer #{number} is not a customer of {' or '.join(platforms())} as their APIs "
                    "export them"
                )
            customer = exports.customer(payload)
            if customer.key is None:
                continue
            found.append(
                KnownCustomer(
                    customer.key,
                    (customer.email or "").lower() or None,
                    customer.first_name,
                    customer.last_name,
                    customer.email_consent,
                    customer.birthday,
                    customer.created_at,
                    list(customer.tags or []),
                )
            )
        return found
    header, reader = _rows(path)
    cols = _columns(header, CUSTOMER_COLUMNS)
    if "email" not in cols and "id" not in cols:
        raise click.ClickException(f"{path}: no email or customer id column")
    customers = []
    for row in reader:

        def get(name: str, row: list[str] = row) -> str | None:
            index = cols.get(name)
            return row[index].strip() if index is not None and index < len(row) and row[index].strip() else None

        email = (get("email") or "").lower() or None
        key = get("id") or (f"email:{email}" if email else None)
        if key is None:
            continue
        customers.append(
            KnownCustomer(
                key.lstrip("'"),
                email,
                get("first_name"),
                get("last_name"),
                _yes(get("consent")),
                ev.parse_date(get("birthday")) if get("birthday") else None,
                _time(get("created_at")),
                [t.strip() for t in (get("tags") or "").split(",") if t.strip()],
            )
        )
    return customers


# ---- the simulated store ---------------------------------------------------------------------------


@dataclass
class SimCustomer:
    """The in-memory ledger row of one customer."""

    key: str
    email: str | None
    first_name: str | None = None
    last_name: str | None = None
    consent: bool | None = None
    birthday: date | None = None
    tags: set[str] = field(default_factory=set)
    orders_count: int = 0
    total_spent: Decimal = Decimal("0")
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    created_at: datetime | None = None
    has_account: bool | None = None
    feedback_score: int | None = None
    feedback_at: datetime | None = None
    last_marketing: datetime | None = None
    order_times: list[datetime] = field(default_factory=list)  # of the orders not cancelled
    predicted_next_order: datetime | None = None
    baseline_next_order: datetime | None = None  # the naive prediction: the last order plus the store's median gap
    entered: set[str] = field(default_factory=set)  # the flows the customer entered (a run started)
    runs: list[SimRun] = field(default_factory=list)
    held: dict[int, SimRun] = field(default_factory=dict)  # runs whose email is held back, by number
    version: int = 0
    _view: dict[str, Any] | None = None

    def changed(self) -> None:
        """Note a change of the ledger row (conditions and views are computed again)."""
        self.version += 1
        self._view = None

    def view(self) -> dict[str, Any]:
        """The `customer` of expressions and templates (the engine's customer_view)."""
        if self._view is None:
            self._view = self._make_view()
        return self._view

    def _make_view(self) -> dict[str, Any]:
        return {
            "id": self.key,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "phone": None,
            "locale": None,
            "timezone": None,
            "orders_count": self.orders_count,
            "total_spent": self.total_spent,
            "first_order_at": self.first_order_at,
            "last_order_at": self.last_order_at,
            "predicted_next_order": self.predicted_next_order,
            "birthday": self.birthday,
            "email_consent": bool(self.consent),
            "tags": sorted(self.tags),
            "has_account": bool(self.has_account),
            "created_at": self.created_at,
            "feedback_score": self.feedback_score,
            "feedback_at": self.feedback_at,
        }


@dataclass
class SimRun:
    """One simulated run."""

    number: int
    flow_key: str
    flow: Any
    customer: SimCustomer
    started_at: datetime
    event: dict[str, Any]
    order: Any
    checkout: Any = None
    position: list[Any] = field(default_factory=lambda: [0])
    vars: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    code: str | None = None
    deferred_since: datetime | None = None  # since when its email has been held back
    wake: datetime | None = None  # when a held email looks again
    key: str = ""
    """The run's key (flow, customer, trigger key): what a split draws its branch from."""
    branches: dict[str, str] = field(default_factory=dict)
    """The branch entered at each split (by the split step's label)."""


@dataclass
class PredictionScore:
    """How good the predicted next orders were: each one checked against the order that followed it.

    A prediction is made from the orders before it (the one it predicts is held out by time itself);
    the naive baseline, the last order plus the store's median gap, is scored on the same orders.
    """

    errors: list[float] = field(default_factory=list)
    baseline_errors: list[float] = field(default_factory=list)

    def check(self, customer: SimCustomer, placed: datetime) -> None:
        """Score the customer's standing predictions against the order they just placed."""
        if customer.predicted_next_order is None or customer.baseline_next_order is None:
            return
        self.errors.append(abs((placed - customer.predicted_next_order).total_seconds()) / prediction.DAY)
        self.baseline_errors.append(abs((placed - customer.baseline_next_order).total_seconds()) / prediction.DAY)

    @property
    def count(self) -> int:
        """How many predictions were checked."""
        return len(self.errors)

    @property
    def mae(self) -> float | None:
        """The mean absolute error of the predictions, in days."""
        return sum(self.errors) / len(self.errors) if self.errors else None

    @property
    def baseline_mae(self) -> float | None:
        """The mean absolute error of the store-median baseline, in days."""
        return sum(self.baseline_errors) / len(self.baseline_errors) if self.baseline_errors else None

    def summary(self) -> str:
        """One line for the report."""
        if self.mae is None or self.baseline_mae is None:
            return "predicted next order: no customer ordered again after a prediction; nothing to measure"
        change = (self.mae / self.baseline_mae - 1) * 100 if self.baseline_mae else 0.0
        versus = f"{abs(change):.0f}% {'lower' if change <= 0 else 'higher'}"
        return (
            f"predicted next order: mean absolute error {self.mae:.1f} days over {self.count} repeat orders "
            f"(store-median baseline {self.baseline_mae:.1f} days: {versus})"
        )


@dataclass
class Outcome:
    """One line of the report."""

    at: datetime
    flow: str
    customer: str
    action: str
    template: str = ""
    subject: str = ""
    code: str = ""
    reason: str = ""
    branches: tuple[tuple[str, str], ...] = ()
    """The branches the run had entered by then: (split step's label, branch)."""


@dataclass(frozen=True)
class CodeMade:
    """A code a run in a split's branch made: what the per-branch results look for in the later orders."""

    flow: str
    customer: str
    code: str
    at: datetime
    expires_at: datetime
    branches: tuple[tuple[str, str], ...]


class Simulation:
    """The flows of a registry over a stream of historical events, in time order."""

    def __init__(
        self,
        flows: dict[str, Any],
        shop: dict[str, Any],
        tz: tzinfo,
        start: datetime,
        end: datetime,
        now_hook: Callable[[datetime], None] | None = None,
    ) -> None:
        self.flows = {key: f.flow for key, f in flows.items() if f.flow.enabled}
        self.by_event: dict[str, list[str]] = defaultdict(list)
        self.exiting: dict[str, list[str]] = defaultdict(list)
        self.dated: list[str] = []
        for key, flow in self.flows.items():
            if isinstance(flow.trigger, EventTrigger):
                for name in flow.trigger.events:
                    self.by_event[name].append(key)
            elif isinstance(flow.trigger, DateTrigger):
                self.dated.append(key)
            for name in flow.exit_on:
                self.exiting[name].append(key)
        self.shop, self.tz, self.start, self.end = shop, tz, start, end
        self.shop = {"staff_email": STAFF_ADDRESS, **shop}  # where a notify step's alerts would go
        self.customers: dict[str, SimCustomer] = {}
        self.queue: list[tuple[float, int, datetime, str, Any]] = []
        self.sequence = 0
        self.run_keys: set[tuple[str, str, str]] = set()
        self.last_start: dict[tuple[str, str], datetime] = {}
        self.outcomes: list[Outcome] = []
        self.not_started: Counter[tuple[str, str]] = Counter()
        self.runs = 0
        self.now = start
        self.memo: dict[tuple[str, str, int], bool] = {}
        self.pure: dict[str, bool] = {}
        self.codes_made: list[CodeMade] = []
        self.gap_times: list[datetime] = []  # when each of the store's gaps between orders ended, in time order
        self.gap_days: list[float] = []
        self.store_gap_on: date | None = None
        self.store_gap_days: float | None = None
        self.predictions = PredictionScore()

    # -- the clock ---------------------------------------------------------------------------------
    def at(self, when: datetime, kind: str, payload: Any) -> None:
        """Schedule something at `when` (dropped when past the end of the simulation)."""
        if when <= self.end:
            self.sequence += 1
            heapq.heappush(self.queue, (when.timestamp(), self.sequence, when, kind, payload))

    def run(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Play everything scheduled, in time order; `progress(done, pending)` is called now and then."""
        # The history, queued before the clock starts, is sorted once; what playing it queues (waits, date
        # triggers) goes on the heap, which stays small. The two are merged by (time, sequence).
        planned: list[Any] = sorted(self.queue)
        self.queue = []
        done, index, total = 0, 0, len(planned)
        while index < total or self.queue:
            if self.queue and (index == total or self.queue[0] < planned[index]):
                _, _, when, kind, payload = heapq.heappop(self.queue)
            else:
                _, _, when, kind, payload = planned[index]
                planned[index] = None  # played: let go of it
                index += 1
            if when > self.now:
                self.now = when
            if kind == "event":
                self.event(*payload)
            elif kind == "resume":
                if payload.active:
                    self.advance(payload)
            elif kind == "date":
                self.date_due(*payload)
            done += 1
            if progress and done % 5000 == 0:
                progress(done, total - index + len(self.queue))
        if progress:
            progress(done, 0)

    # -- history -----------------------------------------------------------------------------------
    def load(self, orders: list[HistoricalOrder], known: list[KnownCustomer]) -> int:
        """Queue the events the orders (and customers) mean; returns how many."""
        by_key = {c.key: c for c in known}
        by_email = {c.email: c for c in known if c.email}
        count = 0
        first_seen: dict[str, datetime] = {}
        for item in orders:
            created = item.order.created_at
            if created is None or created < self.start or created > self.end:
                continue
            customer = self.customers.get(item.customer_key)
            if customer is None:
                info = by_key.get(item.customer_key) or (by_email.get(item.email) if item.email else None)
                customer = SimCustomer(
                    item.customer_key,
                    item.email or (info.email if info else None),
                    item.first_name or (info.first_name if info else None),
                    item.last_name or (info.last_name if info else None),
                    info.consent if info and info.consent is not None else item.consent,
                    info.birthday if info else None,
                    set(info.tags) if info else set(),
                    created_at=info.created_at if info else None,
                    has_account=info.has_account if info else None,
                )
                self.customers[item.customer_key] = customer
            if customer.consent is None and item.consent is not None:
                customer.consent = item.consent
            if item.customer_key not in first_seen or created < first_seen[item.customer_key]:
                first_seen[item.customer_key] = created
            self.at(created, "event", ("order.placed", customer, item.order))
            count += 1
            for name, moment in (
                ("order.paid", item.paid_at),
                ("order.fulfilled", item.fulfilled_at),
                ("order.cancelled", item.cancelled_at),
                ("order.refunded", item.refunded_at),
            ):
                listened = name in self.by_event or name in self.exiting or name == "order.cancelled"
                if moment is not None and listened:
                    self.at(max(moment, created), "event", (name, customer, item.order))
                    count += 1
        emails = {c.email for c in self.customers.values() if c.email}
        for info in known:
            if info.key not in self.customers and (info.email is None or info.email not in emails):
                self.customers[info.key] = SimCustomer(
                    info.key,
                    info.email,
                    info.first_name,
                    info.last_name,
                    info.consent,
                    info.birthday,
                    set(info.tags),
                    created_at=info.created_at,
                    has_account=info.has_account,
                )
        for key, customer in self.customers.items():
            created = customer.created_at or (first_seen[key] - timedelta(seconds=1) if key in first_seen else None)
            listened = "customer.created" in self.by_event or "customer.created" in self.exiting
            if listened and created is not None and self.start <= created <= self.end:
                self.at(created, "event", ("customer.created", customer, None))
                count += 1
            if customer.birthday is not None:
                self.plan_dates(customer, "customer.birthday")
        return count

    # -- events ------------------------------------------------------------------------------------
    def add_checkout(self, when: datetime, customer_key: str, checkout: ev.Checkout) -> None:
        """Queue a started checkout of a loaded customer (exports hold no checkouts: a caller that has them adds
        them after `load`)."""
        self.at(when, "event", ("checkout.started", self.customers[customer_key], None, checkout))

    def add_feedback(
        self, when: datetime, customer_key: str, score: int, order: ev.Order | None = None, comment: str | None = None
    ) -> None:
        """Queue a customer's answer to "How was your order?" (a `feedback.received`; exports hold none: a caller
        that has the answers adds them after `load`)."""
        answer = {"score": score, "comment": comment, "order_id": order.id if order is not None else None}
        self.at(when, "event", ("feedback.received", self.customers[customer_key], order, None, answer))

    def event(
        self, name: str, customer: SimCustomer, order: Any, checkout: Any = None, answer: dict[str, Any] | None = None
    ) -> None:
        """One historical event: the ledger first, then exits and starts, as the worker does."""
        if name == "order.placed":
            customer.orders_count += 1
            customer.total_spent += order.total or Decimal("0")
            placed = order.created_at
            customer.first_order_at = min(customer.first_order_at or placed, placed)
            customer.last_order_at = max(customer.last_order_at or placed, placed)
            self.predictions.check(customer, placed)
            if customer.order_times and placed >= max(customer.order_times):
                self.gap_times.append(placed)
                self.gap_days.append((placed - max(customer.order_times)).total_seconds() / prediction.DAY)
            customer.order_times.append(placed)
            self.predict(customer)
            customer.changed()
            self.plan_dates(customer, "customer.last_order_at")
            if customer.orders_count == 1:
                self.plan_dates(customer, "customer.first_order_at")
        elif name == "order.cancelled":  # the ledger counts orders that are not cancelled
            customer.orders_count = max(0, customer.orders_count - 1)
            customer.total_spent -= order.total or Decimal("0")
            if order.created_at in customer.order_times:
                customer.order_times.remove(order.created_at)
                self.predict(customer)
            customer.changed()
        elif name == "feedback.received" and answer is not None:  # the ledger keeps the latest answer
            customer.feedback_score, customer.feedback_at = answer["score"], self.now
            customer.changed()
        exiting, starting = self.exiting.get(name), self.by_event.get(name)
        if not exiting and not starting:
            return
        subject = order.id if order is not None else checkout.token if checkout is not None else customer.key
        event = {
            "id": f"{name}:{subject}",
            "type": name,
            "occurred_at": self.now.isoformat(),
            "topic": name,
            **(answer or {}),
        }
        if exiting and customer.runs:
            customer.runs = [run for run in customer.runs if run.active]
            for run in customer.runs:
                scope = run.flow.exit_scope
                run_order = run.order.id if run.order is not None else None
                if not rules.exit_applies(scope, run_order, order.id if order is not None else None):
                    continue
                if run.flow_key in exiting and run.event.get("id") != event["id"]:
                    run.active = False
                    self.record(run, "exited", reason=f"exit on {name}")
        order_id = order.id if order is not None else None
        token = checkout.token if checkout is not None else None
        for key in starting or ():
            flow = self.flows[key]
            trigger_key = rules.event_trigger_key(
                flow.entry,
                event_type=name,
                event_id=event["id"],
                occurred_at=self.now,
                tz=self.tz,
                order_id=order_id,
                checkout_token=token,
            )
            self.start_run(key, flow, customer, trigger_key, event, order, checkout)

    # -- the predicted next order ------------------------------------------------------------------
    def store_gap(self, day: date) -> float | None:
        """The store's median gap between orders as of `day` (as the ledger's `prediction.store_gap`)."""
        if self.store_gap_on is not None and self.store_gap_on >= day:
            return self.store_gap_days
        until = prediction.day_start(day)
        low = bisect.bisect_left(self.gap_times, until - prediction.WINDOW)
        high = bisect.bisect_left(self.gap_times, until)
        self.store_gap_on, self.store_gap_days = day, prediction.median(self.gap_days[low:high])
        return self.store_gap_days

    def predict(self, customer: SimCustomer) -> None:
        """Predict the customer's next order again (as the ledger does when an order changes)."""
        before = customer.predicted_next_order
        if len(customer.order_times) < 2:
            customer.predicted_next_order = customer.baseline_next_order = None
        else:
            store = self.store_gap(max(customer.order_times).astimezone(UTC).date())
            customer.predicted_next_order = prediction.predict_next(customer.order_times, store)
            customer.baseline_next_order = prediction.baseline_next(customer.order_times, store)
        if customer.predicted_next_order != before and customer.predicted_next_order is not None:
            self.plan_dates(customer, "customer.predicted_next_order")

    # -- date triggers -----------------------------------------------------------------------------
    def plan_dates(self, customer: SimCustomer, date_field: str) -> None:
        """Schedule the date-triggered starts a customer's date makes due."""
        for key in self.dated:
            trigger = self.flows[key].trigger
            if trigger.date != date_field:
                continue
            value = getattr(customer, date_field.split(".", 1)[1])
            if value is None:
                continue
            local = value.astimezone(self.tz).date() if isinstance(value, datetime) else value
            if trigger.yearly:
                days = [
                    rules.due_day(trigger, local, year)
                    for year in range(self.start.year - 1, self.end.year + 2)
                    if year >= local.year
                ]
            else:
                days = [rules.due_day(trigger, local)]
            for day in days:
                when = dates.local_instant(day, trigger.at, self.tz)
                if self.start <= when <= self.end and when >= self.now:
                    self.at(when, "date", (key, customer, value, day))

    def date_due(self, key: str, customer: SimCustomer, value: Any, day: date) -> None:
        """A date trigger fires, if the customer's date has not moved since it was planned."""
        flow = self.flows[key]
        trigger = flow.trigger
        if getattr(customer, trigger.date.split(".", 1)[1]) != value:
            return
        if rules.before_its_cause(trigger, self.now, customer.last_order_at):
            return
        local = value.astimezone(self.tz).date() if isinstance(value, datetime) else value
        trigger_key = rules.date_trigger_key(flow.entry, trigger, local, day)
        event = {"id": f"date:{key}:{day.isoformat()}", "type": "date", "occurred_at": self.now.isoformat()}
        self.start_run(key, flow, customer, trigger_key, event, None)

    # -- runs --------------------------------------------------------------------------------------
    def context(self, run: SimRun) -> dict[str, Any]:
        """What expressions and subjects read (as the engine's StepRunner.context)."""
        ctx: dict[str, Any] = {
            "customer": run.customer.view(),
            "shop": self.shop,
            "event": run.event,
            "run": {"id": run.number, "started_at": run.started_at, "flow": run.flow.name},
            "order": run.order,
            "checkout": run.checkout,
            "now": self.now,
            "feedback_url": _feedback_url,
            segments.ENTERED: lambda: run.customer.entered,
        }
        ctx.update(run.vars)
        return ctx

    def holds(self, flow: Any, ctx: dict[str, Any], customer: SimCustomer | None = None) -> str | None:
        """The first condition that does not hold (None when all do).

        A condition that reads only `customer` and `shop` is evaluated once per version of the customer.
        """
        for condition in flow.conditions:
            memo_key = None
            if customer is not None and self._customer_only(condition):
                memo_key = (condition, customer.key, customer.version)
                known = self.memo.get(memo_key)
                if known is not None:
                    if not known:
                        return condition
                    continue
            result = rules.condition_holds(condition, ctx)[0]
            if memo_key is not None:
                if len(self.memo) > 200_000:
                    self.memo.clear()
                self.memo[memo_key] = result
            if not result:
                return condition
        return None

    def _customer_only_flow(self, key: str, flow: Any) -> bool:
        found = self.pure.get(key)
        if found is None:
            found = self.pure[key] = all(self._customer_only(c) for c in flow.conditions)
        return found

    def _customer_only(self, condition: str) -> bool:
        found = self.pure.get(condition)
        if found is None:
            found = self.pure[condition] = expressions.names_in_expression(condition) <= {"customer", "shop"}
        return found

    def start_run(
        self,
        key: str,
        flow: Any,
        customer: SimCustomer,
        trigger_key: str,
        event: dict[str, Any],
        order: Any,
        checkout: Any = None,
    ) -> None:
        """Start a run if its key is new, its conditions hold, and its cool-down has passed."""
        run_key = (key, customer.key, trigger_key)
        if run_key in self.run_keys:
            return
        simple = self._customer_only_flow(key, flow)
        if simple and flow.conditions:  # decide before building the run
            failed = self.holds(flow, {"customer": customer.view(), "shop": self.shop}, customer)
            if failed is not None:
                self.not_started[(key, f"condition false: {failed}")] += 1
                return
        self.runs += 1
        run = SimRun(self.runs, key, flow, customer, self.now, event, order, checkout)
        if not simple:
            failed = self.holds(flow, self.context(run), customer)
            if failed is not None:
                self.not_started[(key, f"condition false: {failed}")] += 1
                return
        if flow.entry.cooldown and rules.cooling_down(flow, self.last_start.get((key, customer.key)), self.now):
            self.not_started[(key, "cool-down")] += 1
            return
        if rules.consent_missing(flow, customer.consent):
            suppressed = (key, customer.key, trigger_key + ":suppressed")
            if suppressed not in self.run_keys:
                self.run_keys.add(suppressed)
                self.record(run, "suppressed", reason="no consent")
            return
        self.run_keys.add(run_key)
        run.key = ":".join(run_key)
        self.last_start[(key, customer.key)] = self.now
        customer.runs.append(run)
        customer.entered.add(key)
        self.advance(run)

    def advance(self, run: SimRun) -> None:
        """Execute a run's steps until it ends or waits (as the engine's `_step` loop)."""
        runner = SimRunner(self, run)
        for _ in range(200):
            if run.flow.conditions:
                failed = self.holds(run.flow, runner.context(), run.customer)
                if failed is not None:
                    run.active = False
                    self.record(run, "exited", reason=f"condition no longer holds: {failed}")
                    return
            runner.step = step = step_at(run.flow.steps, run.position)
            outcome = run_step(runner, step)
            then, following = rules.transition(run.flow.steps, run.position, outcome)
            if then != "defer":
                run.customer.held.pop(run.number, None)
                if then == "wait":
                    run.deferred_since = None
            if then in ("stop", "done", "suppress"):
                run.active = False
                return
            if then == "defer":
                assert outcome.until is not None
                self.at(outcome.until, "resume", run)
                return
            assert following is not None
            run.position = following
            if then == "wait":
                assert outcome.until is not None
                self.at(outcome.until, "resume", run)
                return

    def code_made(self, run: SimRun, code: str, expires_at: datetime) -> None:
        """Keep a code a run in a split's branch made, for its branch's results."""
        branches = tuple(run.branches.items())
        self.codes_made.append(CodeMade(run.flow_key, run.customer.key, code, self.now, expires_at, branches))

    def record(
        self, run: SimRun, action: str, template: str = "", subject: str = "", code: str = "", reason: str = ""
    ) -> None:
        """Add a line to the report."""
        self.outcomes.append(
            Outcome(
                self.now,
                run.flow_key,
                run.customer.email or run.customer.key,
                action,
                template,
                subject,
                code,
                reason,
                tuple(run.branches.items()),
            )
        )


class SimRunner(Runner):
    """A simulated run's facts and effects: the in-memory customer, the simulated clock, the report.

    It keeps no trace: a suppression goes into the report (`suppressed`), the other lines are not made.
    """

    __slots__ = ("sim", "run", "flow", "step", "_context", "_version")
    traced = False

    def __init__(self, sim: Simulation, run: SimRun) -> None:
        self.sim, self.run, self.flow = sim, run, run.flow
        self.step: Any = None
        self._context: dict[str, Any] | None = None
        self._version = -1

    @property
    def position(self) -> list[Any]:
        """The position of the step being run."""
        return self.run.position

    def now(self) -> datetime:
        """The simulated clock."""
        return self.sim.now

    def tz(self) -> Any:
        """The shop's zone (exports carry no customer zones)."""
        return self.sim.tz

    def context(self) -> dict[str, Any]:
        """What expressions and subjects read: made once per advance, again when the customer changed."""
        version = self.run.customer.version
        if self._context is None or self._version != version:
            self._context, self._version = self.sim.context(self.run), version
        return self._context

    def trace(self, kind: str, message: str, **detail: Any) -> None:
        """Trace lines are not kept."""

    def dropped(self, reason: str, spec: Any) -> rules.Outcome:
        """Report the email not sent, with its reason and template."""
        self.sim.record(self.run, "suppressed", template=getattr(spec, "template", ""), reason=reason)
        return super().dropped(reason, spec)

    def hold(self, reason: str, until: datetime) -> rules.Outcome:
        """Report the email held back, and keep it among the customer's held emails until it goes."""
        run = self.run
        if run.deferred_since is None:
            run.deferred_since = self.sim.now
        run.wake = until
        run.customer.held[run.number] = run
        spec = getattr(self.step, "send_email", None) or email_served(self)  # a code's step: its email's
        self.sim.record(run, "deferred", template=spec.template if spec else "", reason=reason)
        return super().hold(reason, until)

    def set_var(self, name: str, value: Any) -> None:
        """Keep a value for the later steps (a code as later steps see it: never redeemed, so it needs no runner)."""
        kept = DiscountView(value, None) if isinstance(value, dict) and "code" in value else value
        self.run.vars[name] = kept
        if self._context is not None:
            self._context[name] = kept

    def key(self, kind: str) -> str:
        """The step's effect key, shaped as the engine's."""
        return f"{self.run.flow_key}-{self.run.number}-{position_label(self.run.position)}-{kind}"

    def run_key(self) -> str:
        """The run's key: flow, customer and trigger key."""
        return self.run.key

    def entered_branch(self, split: str, branch: str) -> None:
        """Keep the branch on the run and report the entry (its emails and codes are counted for it)."""
        self.run.branches[split] = branch
        self.sim.record(self.run, "split", reason=f"{split}: {branch}")

    def consent(self) -> bool | None:
        """The customer's consent, from the exports."""
        return bool(self.run.customer.consent)

    def last_emailed(self, since: datetime) -> datetime | None:
        """When a marketing email was last simulated for the customer, if after `since`."""
        last = self.run.customer.last_marketing
        return last if last is not None and last > since else None

    def held_since(self) -> datetime | None:
        """Since when the run's email has been held back."""
        return self.run.deferred_since

    def behind_another(self) -> bool:
        """Whether another held email of the customer's, due now, goes first."""
        run, now = self.run, self.sim.now
        mine = (run.flow.priority, run.deferred_since or now, run.number)
        return any(
            other.wake is not None
            and other.wake <= now
            and rules.goes_first(mine, (other.flow.priority, other.deferred_since or now, other.number))
            for number, other in run.customer.held.items()
            if number != run.number
        )

    def counted(self, outcome: str) -> None:
        """The report counts; there are no metrics."""

    def send(self, email: EmailDraft) -> rules.Outcome:
        """Report the email with its subject (the body is not rendered)."""
        try:
            subject = email.subject()
        except Exception as exc:  # noqa: BLE001 - shown in the report like the engine's trace would
            subject = f"(subject failed: {exc})"
        if email.marketing:
            self.run.customer.last_marketing = self.sim.now
        action = "notify" if email.staff else "email"  # a staff alert is reported apart from the customer's emails
        self.sim.record(self.run, action, template=email.spec.template, subject=subject, code=self.run.code or "")
        return rules.NEXT

    def make_discount(self, key: str, request: DiscountRequest, earlier: Any) -> Discount | rules.Outcome:
        """A code shaped as the connectors make them (prefix and 8 characters), made nowhere."""
        code = format_code(request.prefix, hashlib.sha256(request.idempotency_key.encode()).digest())
        return Discount(code=code, kind=request.kind, value=request.value, ends_at=request.ends_at)

    def discount_made(self, key: str, result: dict[str, Any]) -> None:
        """Report the code; the run's later emails show it."""
        self.run.code = result["code"]
        self.sim.record(self.run, "code", code=result["code"])
        if self.run.branches:  # for the results per branch: was it used before it expired?
            self.sim.code_made(self.run, result["code"], datetime.fromisoformat(result["expires_at"]))

    def tag(self, key: str, tags: list[str], earlier: Any) -> rules.Outcome:
        """Tag the in-memory customer (its conditions are evaluated again)."""
        self.run.customer.tags.update(tags)
        self.run.customer.changed()
        return rules.NEXT

    def post(self, key: str, spec: Any, body: dict[str, Any], earlier: Any) -> rules.Outcome:
        """Nothing is posted."""
        return rules.NEXT

    def fetch_link(self, key: str, kind: str, earlier: Any) -> str | rules.Outcome:
        """A stand-in link (the platform is not asked): the store's review page when set, else the store."""
        if kind == "review_link":
            return rules.review_target(self.sim.shop, None) or SIM_LINK
        return SIM_LINK


# ---- reporting -------------------------------------------------------------------------------------


def summary(sim: Simulation) -> dict[str, Counter[str]]:
    """Per flow: emails, codes, deferrals (an email held back by quiet hours or the cap), suppressions, exits."""
    per_flow: dict[str, Counter[str]] = defaultdict(Counter)
    for item in sim.outcomes:
        label = item.action if item.action not in ("suppressed", "exited") else f"{item.action}: {item.reason}"
        per_flow[item.flow][label] += 1
    return per_flow


def branch_report(sim: Simulation, orders: list[HistoricalOrder]) -> dict[str, list[BranchResult]]:
    """Per flow with a split, each branch's runs, emails and codes, and the codes "redeemed".

    The history holds no simulated code, so a code counts as redeemed when its customer placed an order
    (not cancelled) after the code was made and before it expired, as that order could have used it;
    the revenue is those orders' totals. An order counts once, for the first such code.
    """
    results: dict[tuple[str, str, str], BranchResult] = {}
    for key in sorted(sim.flows):
        for label, name, share in split_shares(sim.flows[key]):
            results[(key, label, name)] = BranchResult(label, name, share)

    def result(flow: str, label: str, name: str) -> BranchResult:
        found = results.get((flow, label, name))
        if found is None:
            found = results[(flow, label, name)] = BranchResult(label, name)
        return found

    for item in sim.outcomes:
        if item.action == "split":
            label, _, name = item.reason.partition(": ")
            result(item.flow, label, name).runs += 1
        elif item.action in ("email", "code"):
            for label, name in item.branches:
                counted = result(item.flow, label, name)
                if item.action == "email":
                    counted.emails += 1
                else:
                    counted.codes += 1
    later: dict[str, list[HistoricalOrder]] = defaultdict(list)
    for order in sorted(orders, key=lambda o: o.order.created_at or sim.start):
        if order.cancelled_at is None and order.order.created_at is not None:
            later[order.customer_key].append(order)
    used: set[str] = set()
    for made in sim.codes_made:
        for order in later.get(made.customer, []):
            placed = order.order.created_at
            if placed is not None and made.at < placed <= made.expires_at and order.order.id not in used:
                used.add(order.order.id)
                for label, name in made.branches:
                    counted = result(made.flow, label, name)
                    counted.redeemed += 1
                    counted.revenue += order.order.total or Decimal("0")
                    counted.currency = counted.currency or order.order.currency
                break
    report: dict[str, list[BranchResult]] = defaultdict(list)
    for (flow, _, _), found in results.items():
        report[flow].append(found)
    return dict(report)


def branch_tables(report: dict[str, list[BranchResult]], currency: str) -> Table | None:
    """The results per branch as one table (None when no flow has a split)."""
    if not report:
        return None
    table = Table(title="A/B splits: each branch's runs, and what they sent and sold")
    for name in ("flow", "split", "branch", "share", "runs", "emails", "codes", "redeemed", "revenue"):
        table.add_column(name, justify="left" if name in ("flow", "split", "branch") else "right")
    for flow, results in sorted(report.items()):
        for found in results:
            table.add_row(
                flow,
                found.split,
                found.branch,
                found.share_text,
                str(found.runs),
                str(found.emails),
                str(found.codes),
                str(found.redeemed),
                format_money(found.revenue, found.currency or currency),
            )
    return table


def write_csv(outcomes: list[Outcome], target: Any) -> None:
    """The report as CSV: one row per email, code, suppression or exit."""
    writer = csv.writer(target)
    writer.writerow(
        ["date", "time_utc", "flow", "customer", "action", "template", "subject", "code", "reason", "branch"]
    )
    for item in outcomes:
        writer.writerow(
            [
                item.at.date().isoformat(),
                item.at.strftime("%H:%M"),
                item.flow,
                item.customer,
                item.action,
                item.template,
                item.subject,
                item.code,
                item.reason,
                "; ".join(f"{split}={branch}" for split, branch in item.branches),
            ]
        )


def _day(value: str, name: str, end: bool = False) -> datetime:
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None
    moment = datetime.combine(parsed, time(0), UTC)
    return moment + timedelta(days=1) - timedelta(microseconds=1) if end else moment


@click.command()
@click.option(
    "--orders",
    "orders_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="orders export: Shopify or WooCommerce, CSV or JSON",
)
@click.option(
    "--customers",
    "customers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="customers export (consent, birthdays, tags)",
)
@click.option("--from", "date_from", metavar="YYYY-MM-DD", help="first day (default: the first order's)")
@click.option("--to", "date_to", metavar="YYYY-MM-DD", help="last day (default: the last order's)")
@click.option(
    "--flows",
    "flows_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="flow folder (default: FLOWS_DIR or the built-in library)",
)
@click.option("--timezone", "zone_name", help="the shop's time zone (default: DEFAULT_TIMEZONE)")
@click.option("--currency", default="EUR", show_default=True, help="the shop's currency")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write every email, code, suppression and exit here",
)
@click.option("--days", default=14, show_default=True, help="how many of the busiest days to show (0: every day)")
def simulate(
    orders_file: Path,
    customers_file: Path | None,
    date_from: str | None,
    date_to: str | None,
    flows_dir: Path | None,
    zone_name: str | None,
    currency: str,
    csv_path: Path | None,
    days: int,
) -> None:
    """Run the flows over historical orders with a simulated clock: who would get which email, when, and why not."""

    out = Console()
    if flows_dir is not None:
        flows, problems = loader.load_dir(flows_dir)
        registry = {f.key: f for f in flows}
    else:
        current = loader.registry()
        registry, problems = current.flows, current.problems
    for problem in problems:
        click.echo(str(problem), err=True)
    if not registry:
        raise click.ClickException("no valid flow to simulate")
    orders = read_orders(orders_file)
    known = read_customers(customers_file) if customers_file else []
    if not orders:
        raise click.ClickException(f"{orders_file}: no orders")
    first = min(o.order.created_at for o in orders if o.order.created_at)
    last = max(o.order.created_at for o in orders if o.order.created_at)
    start = _day(date_from, "--from") if date_from else datetime.combine(first.date(), time(0), UTC)
    end = _day(date_to, "--to", end=True) if date_to else datetime.combine(last.date(), time(23, 59, 59), UTC)
    if end < start:
        raise click.BadParameter("--to is before --from", param_hint="--to")
    tz = dates.zone(zone_name)
    shop = {
        "id": 0,
        "name": "Your store",
        "domain": "store.example",
        "url": "https://store.example",
        "email": None,
        "currency": currency,
        "timezone": str(tz),
        "platform": "simulation",
    }
    sim = Simulation(registry, shop, tz, start, end)
    total = sim.load(orders, known)
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("events", total=total)
        sim.run(lambda done, pending: progress.update(task, completed=done, total=done + pending))
    per_flow = summary(sim)
    table = Table(title=f"{len(orders)} orders, {len(sim.customers)} customers, {start.date()} to {end.date()}")
    numbers = ("emails", "codes", "deferred", "suppressed", "exited")
    for name in ("flow", "emails", "codes", "deferred", "suppressed", "why suppressed", "exited", "not started"):
        table.add_column(name, justify="right" if name in numbers else "left")
    for key in sorted(sim.flows):
        counts = per_flow.get(key, Counter())
        reasons = {k.split(": ", 1)[1]: v for k, v in counts.items() if k.startswith("suppressed: ")}
        exited = sum(v for k, v in counts.items() if k.startswith("exited: "))
        skipped = {reason: n for (flow, reason), n in sim.not_started.items() if flow == key}
        table.add_row(
            key,
            str(counts["email"]),
            str(counts["code"]),
            str(counts["deferred"]),
            str(sum(reasons.values())),
            ", ".join(f"{r} ({n})" for r, n in sorted(reasons.items())),
            str(exited),
            ", ".join(f"{r} ({n})" for r, n in sorted(skipped.items(), key=lambda x: -x[1])[:2]),
        )
    out.print(table)
    by_day: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for item in sim.outcomes:
        by_day[(item.at.astimezone(tz).date().isoformat(), item.flow)][item.action] += 1
    ranked = sorted(by_day.items(), key=lambda kv: (-(kv[1]["email"] + kv[1]["suppressed"]), kv[0]))
    busiest = ranked[:days] if days > 0 else ranked
    title = f"the {len(busiest)} busiest days and flows" if days > 0 else "every day and flow"
    daily = Table("day", "flow", "emails", "codes", "suppressed", title=title)
    for (day, flow), counts in sorted(busiest):
        daily.add_row(day, flow, str(counts["email"]), str(counts["code"]), str(counts["suppressed"]))
    out.print(daily)
    splits = branch_tables(branch_report(sim, orders), currency)
    if splits is not None:
        out.print(splits)
        out.print(
            "a split's code counts as redeemed when its customer ordered again before it expired (the history "
            "has no simulated codes); the revenue is those orders' totals"
        )
    out.print(sim.predictions.summary())
    if csv_path:
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            write_csv(sim.outcomes, handle)
        out.print(f"every email, code, suppression and exit, per day: {csv_path}")
    else:
        out.print("add --csv PATH for every email, code, suppression and exit, per day")


def run_simulation(
    orders: list[HistoricalOrder],
    known: list[KnownCustomer],
    flows: dict[str, Any],
    start: datetime,
    end: datetime,
    tz: tzinfo,
    currency: str = "EUR",
    checkouts: Iterable[tuple[datetime, str, ev.Checkout]] = (),
    feedback: Iterable[tuple[datetime, str, int, ev.Order | None]] = (),
) -> Simulation:
    """Simulate without the command line (tests, benchmarks); `checkouts`: (when, customer key, checkout);
    `feedback`: answers to "How was your order?" (when, customer key, score, order)."""
    shop = {
        "id": 0,
        "name": "Your store",
        "domain": "store.example",
        "url": "https://store.example",
        "email": None,
        "currency": currency,
        "timezone": str(tz),
        "platform": "simulation",
    }
    sim = Simulation(flows, shop, tz, start, end)
    sim.load(orders, known)
    for when, customer_key, checkout in checkouts:
        sim.add_checkout(when, customer_key, checkout)
    for when, customer_key, score, order in feedback:
        sim.add_feedback(when, customer_key, score, order)
    sim.run()
    return sim


def csv_text(outcomes: list[Outcome]) -> str:
    """The CSV report as a string."""
    buffer = io.StringIO()
    write_csv(outcomes, buffer)
    return buffer.getvalue()
