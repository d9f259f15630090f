"""Segments: named filters over the customer ledger, written in YAML beside the flows.

A segment is a file `segments/<name>.yaml` in the flows folder (FLOWS_DIR, else the built-in
library); its name is the file's stem. It says which customers belong:

    description: Customers worth a personal touch
    match: all            # all (default): every filter holds; any: at least one does
    where:
      orders_count: {at_least: 3}
      total_spent: {at_least: 500}
      last_order_at: {in_last: 180d}
      tags: {none: [wholesale]}
      email_consent: true

One segment has two readings that agree: `clause` compiles it to SQL (sizes, member pages and
exports run in the database, streamed), and `matches` evaluates it for one customer in Python, from
what a flow's condition already holds (`customer in segment('vip')` is checked before every step,
so it must not cost a query per check; only `flows_entered` asks the store, once per check).

The fields are one table, FIELDS: a field names its filter kind, its SQL value and its value for one
customer. Adding a field (a feedback score, say) is one `add_field` call; the YAML schema, the lint,
the SQL and the in-flow check follow from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import pass_context
from jinja2.runtime import Context
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql import Select

from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import expressions, loader
from encore_retention.flows.models import SUPPRESSED, FlowRun
from encore_retention.flows.schema import Duration

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FOLDER = "segments"


# ---- the filters -----------------------------------------------------------------------------------


class FilterModel(BaseModel):
    """A filter of one field: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NumberFilter(FilterModel):
    """A number: `{at_least: 3}`, `{at_most: 10}`, `{equals: 1}`, `{in: [3, 4]}` (together: all hold)."""

    at_least: Decimal | None = None
    at_most: Decimal | None = None
    equals: Decimal | None = None
    in_: list[Decimal] | None = Field(None, alias="in")


class DateFilter(FilterModel):
    """A moment: `{in_last: 90d}`, `{not_in_last: 90d}` (earlier), `{in_next: 14d}`, `{since: 2026-01-01}`,
    `{before: 2026-01-01}` (days start at midnight UTC), `{is_set: true}` (together: all hold)."""

    in_last: Duration | None = None
    not_in_last: Duration | None = None
    in_next: Duration | None = None
    since: date | None = None
    before: date | None = None
    is_set: bool | None = None


class SetFilter(FilterModel):
    """A set of names (tags, flows): `{any: [a, b]}`, `{all: [a, b]}`, `{none: [c]}` (together: all hold)."""

    any: list[str] | None = None
    all: list[str] | None = None
    none: list[str] | None = None


def _one_or_many(value: Any) -> Any:
    """One name given as a string is a list of one."""
    return [value] if isinstance(value, str) else value


@dataclass(frozen=True)
class Kind:
    """A kind of field: the YAML value it takes and how that is tested in SQL and in Python."""

    model: Any
    sql: Callable[[Any, Any, datetime, str], ColumnElement[bool]]
    test: Callable[[Any, Any, datetime], bool]


def _number_sql(column: Any, spec: NumberFilter, now: datetime, dialect: str) -> ColumnElement[bool]:
    """A number filter in SQL (a NULL matches nothing)."""
    parts = []
    if spec.at_least is not None:
        parts.append(column >= spec.at_least)
    if spec.at_most is not None:
        parts.append(column <= spec.at_most)
    if spec.equals is not None:
        parts.append(column == spec.equals)
    if spec.in_ is not None:
        parts.append(column.in_(spec.in_) if spec.in_ else false())
    return and_(column.is_not(None), *parts)


def _number_test(value: Any, spec: NumberFilter, now: datetime) -> bool:
    """A number filter for one value (None matches nothing)."""
    if value is None or isinstance(value, bool):
        return False
    number = Decimal(str(value))
    return (
        (spec.at_least is None or number >= spec.at_least)
        and (spec.at_most is None or number <= spec.at_most)
        and (spec.equals is None or number == spec.equals)
        and (spec.in_ is None or number in spec.in_)
    )


def _midnight(day: date) -> datetime:
    """The start of a day, UTC."""
    return datetime.combine(day, time(0), UTC)


def _date_bounds(spec: DateFilter, now: datetime) -> tuple[list[datetime], list[datetime], list[datetime]]:
    """(lower bounds, inclusive upper bounds, exclusive upper bounds) of a date filter at `now`."""
    lows, highs, below = [], [], []
    if spec.in_last is not None:
        lows.append(now - spec.in_last)
        highs.append(now)
    if spec.not_in_last is not None:
        below.append(now - spec.not_in_last)
    if spec.in_next is not None:
        lows.append(now)
        highs.append(now + spec.in_next)
    if spec.since is not None:
        lows.append(_midnight(spec.since))
    if spec.before is not None:
        below.append(_midnight(spec.before))
    return lows, highs, below


def _date_sql(column: Any, spec: DateFilter, now: datetime, dialect: str) -> ColumnElement[bool]:
    """A date filter in SQL."""
    lows, highs, below = _date_bounds(spec, now)
    parts = [column >= low for low in lows] + [column <= high for high in highs] + [column < b for b in below]
    if spec.is_set is False:
        return and_(column.is_(None), *([false()] if parts else []))
    return and_(column.is_not(None), *parts)


def _date_test(value: Any, spec: DateFilter, now: datetime) -> bool:
    """A date filter for one value."""
    if value is None:
        return spec.is_set is False
    if spec.is_set is False:
        return False
    lows, highs, below = _date_bounds(spec, now)
    return all(value >= low for low in lows) and all(value <= h for h in highs) and all(value < b for b in below)


def _set_parts(spec: SetFilter, has: Callable[[str], ColumnElement[bool]]) -> list[ColumnElement[bool]]:
    """The clauses of a set filter, from whether the customer has one element."""
    parts: list[ColumnElement[bool]] = []
    if spec.any is not None:
        parts.append(or_(false(), *(has(name) for name in spec.any)))
    if spec.all is not None:
        parts.extend(has(name) for name in spec.all)
    if spec.none is not None and spec.none:
        parts.append(not_(or_(*(has(name) for name in spec.none))))
    return parts


def _set_test(value: Any, spec: SetFilter, now: datetime) -> bool:
    """A set filter for one customer's set."""
    found = set(value or ())
    return (
        (spec.any is None or bool(found & set(spec.any)))
        and (spec.all is None or set(spec.all) <= found)
        and (spec.none is None or not found & set(spec.none))
    )


def _bool_sql(column: Any, wanted: bool, now: datetime, dialect: str) -> ColumnElement[bool]:
    """true: the column is true; false: it is false or unknown."""
    return column.is_(True) if wanted else or_(column.is_(None), column.is_(False))


def _bool_test(value: Any, wanted: bool, now: datetime) -> bool:
    """A yes/no filter for one value (unknown counts as no)."""
    return bool(value) == wanted


def _in_list_sql(column: Any, wanted: list[str], now: datetime, dialect: str) -> ColumnElement[bool]:
    """The value is one of a list."""
    return column.in_(wanted) if wanted else false()


def _in_list_test(value: Any, wanted: list[str], now: datetime) -> bool:
    """The value is one of a list, for one value."""
    return value in wanted


class _Has:
    """Marks a set field's SQL: `sql(name, dialect)` is whether the customer has that element."""

    def __init__(self, has: Callable[[str, str], ColumnElement[bool]]) -> None:
        self.has = has


def _set_sql(column: Any, spec: SetFilter, now: datetime, dialect: str) -> ColumnElement[bool]:
    """A set filter in SQL, through the field's `_Has`."""
    return and_(true(), *_set_parts(spec, lambda name: column.has(name, dialect)))


NUMBER = Kind(NumberFilter, _number_sql, _number_test)
DATE = Kind(DateFilter, _date_sql, _date_test)
SET = Kind(SetFilter, _set_sql, _set_test)
BOOL = Kind(bool, _bool_sql, _bool_test)
NAMES_IN = Kind(Annotated[list[str], BeforeValidator(_one_or_many)], _in_list_sql, _in_list_test)


# ---- what one customer is --------------------------------------------------------------------------


@dataclass
class Facts:
    """One customer as a segment reads them: the `customer` view of flows, their store, the flows they entered."""

    customer: dict[str, Any]
    shop: dict[str, Any] | None = None
    entered: Callable[[], Iterable[str]] | None = None

    def flows_entered(self) -> set[str]:
        """The keys of the flows the customer entered (asked once, when a segment reads them)."""
        return set(self.entered()) if self.entered is not None else set()


@dataclass(frozen=True)
class SegmentField:
    """A field segments filter on: its kind, its SQL value (a column, or a `_Has`), its value for one customer."""

    name: str
    kind: Kind
    sql: Callable[[], Any]
    value: Callable[[Facts], Any]
    help: str = ""


def _tag_has(tag: str, dialect: str) -> ColumnElement[bool]:
    """Whether the customer's tags (a JSON list) hold `tag`, exactly."""
    if dialect == "postgresql":
        return func.cast(Customer.tags, JSONB).contains([tag])
    element = func.json_each(Customer.tags).table_valued("value")
    return exists(select(1).select_from(element).where(element.c.value == tag))


def _entered_has(flow_key: str, dialect: str) -> ColumnElement[bool]:
    """Whether the customer entered a flow (a run started, not only recorded as suppressed)."""
    return exists(
        select(1).where(FlowRun.customer_id == Customer.id, FlowRun.flow_key == flow_key, FlowRun.status != SUPPRESSED)
    )


def _month(facts: Facts) -> int | None:
    """The month of the customer's birthday."""
    birthday = facts.customer.get("birthday")
    return birthday.month if birthday is not None else None


FIELDS: dict[str, SegmentField] = {}


def add_field(item: SegmentField) -> None:
    """Make a field available to segments (YAML schema, SQL and the in-flow check follow)."""
    FIELDS[item.name] = item
    _build_models()


def remove_field(name: str) -> None:
    """Take a field away from segments (a plug-in unloaded; a test)."""
    FIELDS.pop(name, None)
    _build_models()


# ---- the file --------------------------------------------------------------------------------------


class SegmentBase(BaseModel):
    """A segment file's shape; `where` is made from FIELDS."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    match: Literal["all", "any"] = "all"


Where: Any = None
Segment: Any = None


def _build_models() -> None:
    """Make the `Where` and `Segment` models from FIELDS."""
    global Where, Segment
    fields: dict[str, Any] = {
        name: (item.kind.model | None, Field(None, description=item.help)) for name, item in FIELDS.items()
    }
    Where = create_model("Where", __config__=ConfigDict(extra="forbid"), **fields)
    Segment = create_model("Segment", __base__=SegmentBase, where=(Where, Field(default_factory=Where)))


for _item in (
    SegmentField("orders_count", NUMBER, lambda: Customer.orders_count, lambda f: f.customer.get("orders_count")),
    SegmentField("total_spent", NUMBER, lambda: Customer.total_spent, lambda f: f.customer.get("total_spent")),
    SegmentField("first_order_at", DATE, lambda: Customer.first_order_at, lambda f: f.customer.get("first_order_at")),
    SegmentField("last_order_at", DATE, lambda: Customer.last_order_at, lambda f: f.customer.get("last_order_at")),
    SegmentField(
        "predicted_next_order",
        DATE,
        lambda: Customer.predicted_next_order,
        lambda f: f.customer.get("predicted_next_order"),
        "when the customer's next order is expected",
    ),
    SegmentField("birthday_month", NUMBER, lambda: Customer.birthday_month, _month, "1 to 12"),
    SegmentField("tags", SET, lambda: _Has(_tag_has), lambda f: f.customer.get("tags")),
    SegmentField("email_consent", BOOL, lambda: Customer.email_consent, lambda f: f.customer.get("email_consent")),
    SegmentField(
        "store",
        NAMES_IN,
        lambda: select(Shop.domain).where(Shop.id == Customer.shop_id).scalar_subquery(),
        lambda f: (f.shop or {}).get("domain"),
        "store domains",
    ),
    SegmentField("flows_entered", SET, lambda: _Has(_entered_has), lambda f: f.flows_entered(), "flow names"),
):
    FIELDS[_item.name] = _item
FEEDBACK = "feedback_score"  # the last answer to "How was your order?" (1 to 5)
FIELDS[FEEDBACK] = SegmentField(
    FEEDBACK, NUMBER, lambda: Customer.feedback_score, lambda f: f.customer.get(FEEDBACK), "1 to 5"
)
_build_models()


@dataclass
class SegmentFile:
    """A loaded segment: its name (the file's stem), model, file and source text."""

    name: str
    path: str
    segment: Any
    text: str = ""
    lines: dict[Any, int] = field(default_factory=dict)

    @property
    def filters(self) -> list[tuple[str, Any]]:
        """(field, filter) of every filter the segment sets."""
        where = self.segment.where
        return [(name, getattr(where, name)) for name in FIELDS if getattr(where, name, None) is not None]


def load_text(text: str, file: str, name: str | None = None) -> tuple[SegmentFile | None, list[loader.Problem]]:
    """Validate one segment's YAML; the SegmentFile is None when there are errors."""
    name = name or Path(file).stem
    if not NAME.match(name):
        return None, [loader.Problem(file, 1, f"segment name {name!r}: use a-z, 0-9, - and _ (up to 64)")]
    try:
        data, lines = loader.parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [loader.Problem(file, mark.line + 1 if mark else 1, f"not valid YAML: {exc}")]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [loader.Problem(file, 1, "a segment file is a mapping with `where` (and `description`, `match`)")]
    try:
        segment = Segment.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            line = lines.get(loc, lines.get(loc[:-1], 1)) if loc else 1
            problems.append(loader.Problem(file, line, _message(error)))
        return None, sorted(problems, key=lambda p: p.line)
    return SegmentFile(name, file, segment, text, lines), []


def _message(error: Any) -> str:
    """A validation error as marketers read it."""
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc)
    if error["type"] == "extra_forbidden" and loc[:1] == ["where"] and len(loc) == 2:
        return f"unknown field `{loc[1]}` (expected one of: {', '.join(FIELDS)})"
    if error["type"] == "extra_forbidden":
        return f"unknown field `{loc[-1]}`" + (f" in `{'.'.join(loc[:-1])}`" if len(loc) > 1 else "")
    if error["type"] == "literal_error":
        return f"{where}: unknown value {error['input']!r} ({error['msg'].replace('Input should be', 'expected')})"
    return f"{where}: {error['msg']}" if where else error["msg"]


def load_file(path: Path) -> tuple[SegmentFile | None, list[loader.Problem]]:
    """Validate one segment file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [loader.Problem(str(path), 1, f"cannot read: {exc}")]
    return load_text(text, str(path))


def segment_files(flows_folder: Path) -> list[Path]:
    """The segment files beside a flows folder (in its `segments/`), sorted."""
    folder = flows_folder / FOLDER
    if not folder.is_dir():
        return []
    return loader.flow_files(folder)


def load_dir(flows_folder: Path) -> tuple[list[SegmentFile], list[loader.Problem]]:
    """Every valid segment beside a flows folder, and every problem found (bad files are skipped)."""
    found: list[SegmentFile] = []
    problems: list[loader.Problem] = []
    for path in segment_files(flows_folder):
        loaded, more = load_file(path)
        problems.extend(more)
        if loaded is not None:
            found.append(loaded)
    return found, problems


_cache: dict[str, tuple[tuple[Any, ...], dict[str, SegmentFile]]] = {}


def _signature(folder: Path) -> tuple[Any, ...]:
    """What changes when a segment file does: names, times and sizes."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return ()
    return tuple(
        (e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.name.endswith((".yaml", ".yml"))
    )


def registry(flows_folder: Path | None = None) -> dict[str, SegmentFile]:
    """The segments in effect, by name (reloaded when a file changes); bad files are logged and skipped."""
    folder = flows_folder or loader.flows_dir()
    signature = _signature(folder / FOLDER)
    cached = _cache.get(str(folder))
    if cached and cached[0] == signature:
        return cached[1]
    found, problems = load_dir(folder)
    for problem in problems:
        loader.log.error("segment problem: %s", problem)
    current = {item.name: item for item in found}
    _cache[str(folder)] = (signature, current)
    return current


def editable_folder() -> Path | None:
    """Where the admin saves segments: FLOWS_DIR's `segments/`; None with the built-in library (read-only)."""
    folder = get_settings().FLOWS_DIR
    return folder / FOLDER if folder is not None else None


# ---- the two readings ------------------------------------------------------------------------------


def clause(segment: Any, now: datetime, dialect: str) -> ColumnElement[bool]:
    """The segment as a WHERE clause over `customers` (for a dialect: `sqlite` or `postgresql`)."""
    parts = []
    for name, item in FIELDS.items():
        spec = getattr(segment.where, name, None)
        if spec is not None:
            parts.append(item.kind.sql(item.sql(), spec, now, dialect))
    if not parts:
        return true()
    return and_(*parts) if segment.match == "all" else or_(*parts)


def matches(segment: Any, facts: Facts, now: datetime) -> bool:
    """Whether one customer is in the segment (the same answer as `clause`, without a query)."""
    if not facts.customer:
        return False
    results = (
        item.kind.test(item.value(facts), getattr(segment.where, name), now)
        for name, item in FIELDS.items()
        if getattr(segment.where, name, None) is not None
    )
    return all(results) if segment.match == "all" else any(results)


def criteria(segment: Any | None, shop_ids: list[int] | None, now: datetime, dialect: str) -> list[Any]:
    """The WHERE clauses of a segment's members (None: every customer) in some stores (None: all)."""
    found: list[Any] = []
    if shop_ids is not None:
        found.append(Customer.shop_id.in_(shop_ids))
    if segment is not None:
        found.append(clause(segment, now, dialect))
    return found


def members(segment: Any | None, shop_ids: list[int] | None, now: datetime, dialect: str) -> Select[Any]:
    """The customers of a segment (None: every customer) in some stores (None: all), by id."""
    return select(Customer).where(*criteria(segment, shop_ids, now, dialect)).order_by(Customer.id)


def count(session: Any, segment: Any | None, shop_ids: list[int] | None, now: datetime) -> int:
    """How many customers a segment holds in some stores."""
    where = criteria(segment, shop_ids, now, dialect_of(session))
    return int(session.execute(select(func.count(Customer.id)).where(*where)).scalar_one())


def dialect_of(session: Any) -> str:
    """The session's database dialect name."""
    return str(session.get_bind().dialect.name)


# ---- in flows: `customer in segment('vip')` --------------------------------------------------------


class Membership:
    """`segment('name')` in an expression: `customer in segment('vip')` asks it about that customer."""

    def __init__(self, name: str, facts: Facts, now: datetime) -> None:
        self.name, self.facts, self.now = name, facts, now

    def __contains__(self, customer: Any) -> bool:
        """Whether a customer (the `customer` of a flow) is in the segment."""
        found = registry().get(self.name)
        if found is None:
            raise LookupError(f"no segment {self.name!r} (known: {', '.join(sorted(registry())) or 'none'})")
        if not isinstance(customer, dict):
            return False
        facts = self.facts if customer is self.facts.customer else Facts(customer, self.facts.shop)
        return matches(found.segment, facts, self.now)


ENTERED = "_flows_entered"
"""The context key a runner sets to a callable giving the customer's entered flows (asked only when needed)."""


@pass_context
def segment_function(context: Context, name: str) -> Membership:
    """The `segment(name)` of expressions."""
    customer = context.get("customer")
    now = context.get("now")
    facts = Facts(customer if isinstance(customer, dict) else {}, context.get("shop"), context.get(ENTERED))
    return Membership(str(name), facts, now if isinstance(now, datetime) else datetime.now(UTC))


expressions.define_global("segment", segment_function)


_REFERENCE = re.compile(r"\bsegment\(\s*['\"]([^'\"]*)['\"]\s*\)")


def references(text: str) -> list[tuple[int, str]]:
    """(line, name) of every `segment('name')` in a flow file's text."""
    return [(number, name) for number, line in enumerate(text.splitlines(), 1) for name in _REFERENCE.findall(line)]


def unknown_references(path: Path, known: Iterable[str]) -> list[loader.Problem]:
    """A problem for every `segment('name')` of a flow file that names no segment beside it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # the flow's own lint says so
    names = sorted(set(known))
    return [
        loader.Problem(str(path), line, f"unknown segment {name!r} (known: {', '.join(names) or 'none'})")
        for line, name in references(text)
        if name not in names
    ]


def lint(flows_folder: Path) -> tuple[int, list[loader.Problem]]:
    """How many segment files a flows folder has, and the problems of those and of the flows' references."""
    files = segment_files(flows_folder)
    problems = [problem for path in files for problem in load_file(path)[1]]
    known = [path.stem for path in files]
    for path in loader.flow_files(flows_folder):
        problems.extend(unknown_references(path, known))
    return len(files), problems


def flows_entered_query(customer_id: int) -> Select[Any]:
    """The flows a ledger customer entered (for the in-flow check of `flows_entered`)."""
    return select(FlowRun.flow_key).where(FlowRun.customer_id == customer_id, FlowRun.status != SUPPRESSED).distinct()
