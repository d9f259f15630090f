"""The flow file's schema: pydantic models whose trigger and step unions are chosen by a key.

Validation happens in two stages (like Home Assistant automations): these models check the shape of a
whole file, then `flows.loader.check` checks each part's meaning (expressions compile, templates
exist, variables are known). `encore flows schema` exports `Flow` as JSON Schema for editors.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from decimal import Decimal
from types import GenericAlias
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from encore_retention.core.events import EventType

# ---- scalar types ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(-)?\s*((?:\d+\s*[mhdw]\s*)+)$")
_PART = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
DURATION_PATTERN = r"^-?(\d+[mhdw])+$"


def parse_duration(value: Any) -> timedelta:
    """`30m`, `2h`, `14d`, `8w`, `1d12h`, `-14d` -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return timedelta(0)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "bad_duration", "bad duration '{value}' (expected e.g. 30m, 2h, 14d, 8w)", {"value": value}
        )
    total = sum((int(n) * _UNITS[unit] for n, unit in _PART.findall(match.group(2))), timedelta(0))
    return -total if match.group(1) else total


def format_duration(value: timedelta) -> str:
    """A timedelta as a flow file writes it, days kept as days (`60d`, `-14d`, `1h30m`; never `8w4d`)."""
    sign, seconds = ("-", -value) if value < timedelta(0) else ("", value)
    minutes = int(seconds.total_seconds() // 60)
    if minutes == 0:
        return "0m"
    parts = []
    for unit, size in (("d", 1440), ("h", 60), ("m", 1)):
        count, minutes = divmod(minutes, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def parse_local_time(value: Any) -> time:
    """`"09:00"` -> time(9, 0). An unquoted 09:00 that YAML 1.1 read as sexagesimal minutes works too."""
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return time(value // 60, value % 60)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", value)
        if match and int(match.group(1)) < 24 and int(match.group(2)) < 60:
            return time(int(match.group(1)), int(match.group(2)))
    raise PydanticCustomError(
        "bad_time", "bad time of day '{value}' (expected HH:MM, e.g. \"09:00\")", {"value": value}
    )


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "description": "a duration: 30m, 2h, 14d, 8w"}),
]
LocalTime = Annotated[
    time,
    BeforeValidator(parse_local_time),
    PlainSerializer(lambda t: t.strftime("%H:%M")),
    WithJsonSchema({"type": "string", "pattern": r"^\d{1,2}:\d{2}$", "description": "a local time of day, HH:MM"}),
]
TRIGGER_EVENTS = tuple(t.value for t in EventType if t is not EventType.UNKNOWN)
EventName = Literal[TRIGGER_EVENTS]  # type: ignore[valid-type]  # built from EventType at import: mypy can't read it
DateField = Annotated[
    Literal["customer.birthday", "customer.last_order_at", "customer.first_order_at", "customer.predicted_next_order"],
    BeforeValidator(lambda value: f"customer.{value}" if isinstance(value, str) and "." not in value else value),
]
YEARLY_FIELDS = frozenset({"customer.birthday", "customer.first_order_at"})
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FlowModel(BaseModel):
    """A part of a flow file: unknown keys are errors; keys may be written by their alias (`from`, `as`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


# ---- triggers --------------------------------------------------------------------------------------


class EventTrigger(FlowModel):
    """Start a run when a canonical event about a customer arrives (one event type, or any of a list)."""

    event: Annotated[
        list[EventName],
        BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
        Field(min_length=1),
        PlainSerializer(lambda v: v[0] if len(v) == 1 else list(v)),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "enum": list(TRIGGER_EVENTS)},
                    {"type": "array", "items": {"type": "string", "enum": list(TRIGGER_EVENTS)}, "minItems": 1},
                ],
                "description": "an event type, or a list of them (any one starts the flow)",
            }
        ),
    ]

    @property
    def events(self) -> tuple[str, ...]:
        """The event types that start the flow, each once."""
        return tuple(dict.fromkeys(str(name) for name in self.event))


class DateTrigger(FlowModel):
    """Start a run on a date derived from a customer date field, at a local time of day."""

    date: DateField
    offset: Duration = timedelta(0)
    at: LocalTime = time(9, 0)
    every: Literal["year"] | None = Field(
        None, description="yearly recurrence; the default for birthday and first_order_at"
    )

    @property
    def yearly(self) -> bool:
        """Whether the trigger recurs every year (anniversaries) rather than once per date value."""
        return self.every == "year" or self.date in YEARLY_FIELDS

    @field_validator("offset")
    @classmethod
    def _whole_days(cls, value: timedelta) -> timedelta:
        if value % timedelta(days=1):
            raise PydanticCustomError("bad_offset", "a date offset is whole days or weeks (e.g. -14d, 60d)")
        return value


TRIGGER_KINDS = ("event", "date")


def _trigger_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        found = [k for k in TRIGGER_KINDS if k in value]
        return found[0] if len(found) == 1 else None
    return "event" if isinstance(value, EventTrigger) else "date" if isinstance(value, DateTrigger) else None


def _check_trigger(value: Any) -> Any:
    if isinstance(value, dict) and _trigger_kind(value) is None:
        keys = ", ".join(repr(k) for k in value) or "nothing"
        raise PydanticCustomError(
            "unknown_trigger",
            "unknown trigger {keys} (expected one of: {choices})",
            {"keys": keys, "choices": ", ".join(TRIGGER_KINDS)},
        )
    return value


Trigger = Annotated[
    Annotated[EventTrigger, Tag("event")] | Annotated[DateTrigger, Tag("date")],
    Discriminator(_trigger_kind),
    BeforeValidator(_check_trigger),
]


# ---- steps -----------------------------------------------------------------------------------------


class StepModel(FlowModel):
    """A step of a flow: one key naming its kind (`wait:`, `send_email:`…) and an optional label."""

    name: str | None = Field(None, description="a label shown in the run's trace")

    def nested(self) -> list[tuple[str, list[Any]]]:
        """The step lists nested in this step, each by the name a run's position gives it (most steps have none)."""
        return []


class SendEmail(FlowModel):
    """Render a template and send it to the customer (HTML and text)."""

    template: str
    subject: str
    preheader: str | None = None
    from_: str | None = Field(None, alias="from")
    reply_to: str | None = None
    to: str | None = Field(
        None,
        description="an address, a template of one, or `staff` (the store's staff address); default the customer. "
        "A `to` that renders empty or not as one address fails the step: it never falls back to the customer",
    )
    if_not_sent: Literal["stop", "continue"] = Field(
        "stop",
        description="when this email is not sent (no consent, unsubscribed, held past max_delay…): end the run as "
        "suppressed (stop), or go on with the next steps (continue), for steps that don't refer to it",
    )


class SendEmailStep(StepModel):
    send_email: SendEmail


STAFF_TEMPLATE = "staff_alert.html"


def _html_name(value: Any) -> Any:
    """A template named without its suffix (`staff_alert`) is its HTML file."""
    return f"{value}.html" if isinstance(value, str) and value and "." not in value else value


class Notify(FlowModel):
    """Mail the store's staff address (an internal alert): never the customer, never marketing.

    No consent, unsubscribe list, frequency cap or quiet hours apply, and no unsubscribe link is added.
    A store without a staff email fails the step, and the run stops with the reason.
    """

    subject: str
    template: Annotated[str, BeforeValidator(_html_name)] = Field(
        STAFF_TEMPLATE, description="the template (default: the built-in staff alert, which shows `body`)"
    )
    body: str | None = Field(None, description="inline text (a template), shown by the template as `body`")
    reply_to: str | None = Field(None, description="e.g. `{{ customer.email }}`, so that staff can answer the customer")
    # What a staff alert leaves to the store, read by the email's composer as a send_email's are.
    preheader: ClassVar[str | None] = None
    from_: ClassVar[str | None] = None


class NotifyStep(StepModel):
    notify: Notify


class Wait(FlowModel):
    """Pause the run: for a duration, then (or only) until a local time of day."""

    for_: Duration | None = Field(None, alias="for")
    until: LocalTime | None = None

    @model_validator(mode="after")
    def _something(self) -> Wait:
        if self.for_ is None and self.until is None:
            raise PydanticCustomError("bad_wait", "a wait needs a duration or `until: HH:MM`")
        if self.for_ is not None and self.for_ < timedelta(0):
            raise PydanticCustomError("bad_wait", "a wait cannot be negative")
        return self


def _wait_shorthand(value: Any) -> Any:
    return {"for": value} if isinstance(value, str | int) and not isinstance(value, bool) else value


class WaitStep(StepModel):
    wait: Annotated[Wait, BeforeValidator(_wait_shorthand)]


class CreateDiscount(FlowModel):
    """Create a unique, single-use code restricted to the customer; later steps read it by its `as:` name."""

    as_: Identifier = Field("discount", alias="as")
    percent: Decimal | None = Field(None, gt=0, le=100)
    amount: Decimal | None = Field(None, gt=0, description="a fixed amount in the shop's currency")
    expires_in: Duration = timedelta(days=30)
    minimum_subtotal: Decimal | None = Field(None, ge=0)
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,20}$")
    usage_limit: int = Field(1, ge=1)
    restrict_to_customer: bool = True

    @model_validator(mode="after")
    def _one_value(self) -> CreateDiscount:
        if (self.percent is None) == (self.amount is None):
            raise PydanticCustomError("bad_discount", "a discount needs exactly one of `percent` or `amount`")
        if self.expires_in <= timedelta(0):
            raise PydanticCustomError("bad_discount", "`expires_in` must be positive")
        return self


class CreateDiscountStep(StepModel):
    create_discount: CreateDiscount


def _tags(value: Any) -> Any:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


class TagCustomerStep(StepModel):
    tag_customer: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_tags), Field(min_length=1)]


_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's field name
_LINE_BREAK = re.compile(r"[\r\n\x00]")


class Http(FlowModel):
    """POST JSON to a URL (string values are templates); the request carries an Idempotency-Key header.

    Only a public address is reached (HTTP_STEP_ALLOW_HOSTS lists others); a redirect is not followed.
    """

    url: str = Field(pattern=r"^https?://")
    json_: dict[str, Any] = Field(default_factory=dict, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(10, gt=0, le=60)

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HTTP_TOKEN.fullmatch(name):
                raise PydanticCustomError("bad_header", "'{name}' is not an HTTP header name", {"name": name})
            if _LINE_BREAK.search(value):
                raise PydanticCustomError(
                    "bad_header", "the value of header '{name}' has a line break or a NUL", {"name": name}
                )
        return headers


class HttpStep(StepModel):
    http: Annotated[Http, BeforeValidator(lambda v: {"url": v} if isinstance(v, str) else v)]


class IfStep(StepModel):
    if_: str = Field(alias="if", description="an expression")
    then: list[Step] = Field(default_factory=list)
    else_: list[Step] = Field(default_factory=list, alias="else")

    def nested(self) -> list[tuple[str, list[Any]]]:
        """`then` and `else`."""
        return [("then", self.then), ("else", self.else_)]


BRANCH_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
SPLIT_PREFIX = "split."  # a split's branch `a` is `split.a` in a run's position: `steps[2].split.a[0]`


def _branch_name(value: Any) -> Any:
    if isinstance(value, str) and not BRANCH_NAME.match(value):
        raise PydanticCustomError(
            "bad_branch_name",
            "'{name}' is not a branch name: up to 40 letters, digits and _, not starting with a digit "
            "(e.g. short_subject)",
            {"name": value},
        )
    return value


def _weight(value: Any) -> Any:
    number = value if isinstance(value, int | float | Decimal) and not isinstance(value, bool) else None
    if number is None or not 0 < number <= 100:
        raise PydanticCustomError(
            "bad_weight", "a branch's weight is a percentage above 0 and at most 100, not '{value}'", {"value": value}
        )
    return Decimal(str(number))


class SplitBranch(FlowModel):
    """One branch of an A/B split: its name, its share of the runs in percent, and its steps (none: a control)."""

    name: Annotated[str, BeforeValidator(_branch_name)]
    weight: Annotated[Decimal | None, BeforeValidator(lambda v: v if v is None else _weight(v))] = Field(
        None, description="this branch's percentage of the runs; the weights add up to 100 (none given: equal shares)"
    )
    steps: list[Step] = Field(default_factory=list)


def _branches(value: Any) -> Any:
    if isinstance(value, list) and len(value) < 2:
        raise PydanticCustomError("bad_split", "needs at least two branches, found {count}", {"count": len(value)})
    return value


class SplitStep(StepModel):
    """An A/B split: each run enters one branch, drawn from its run key and the step, so every attempt agrees;
    after the branch's steps the run goes on after the split."""

    split: Annotated[list[SplitBranch], BeforeValidator(_branches)]

    def nested(self) -> list[tuple[str, list[Any]]]:
        """Each branch's steps, as `split.<name>`."""
        return [(SPLIT_PREFIX + branch.name, branch.steps) for branch in self.split]

    def shares(self) -> list[tuple[str, Decimal]]:
        """(branch name, percentage) of each branch: its weight, or equal shares when no weight is given."""
        if all(branch.weight is None for branch in self.split):
            equal = Decimal(100) / len(self.split)
            return [(branch.name, equal) for branch in self.split]
        return [(branch.name, branch.weight or Decimal(0)) for branch in self.split]


class AccountInvite(FlowModel):
    """Fetch the link that makes a guest an account holder, through the store's platform; later steps read it
    by its `as:` name (Shopify: the customer's activation link with classic accounts, the sign-in page with
    new customer accounts; WooCommerce: the my-account registration page with the address)."""

    as_: Identifier = Field("invite_url", alias="as")


class AccountInviteStep(StepModel):
    account_invite: Annotated[AccountInvite, BeforeValidator(lambda v: {} if v in (None, True) else v)]


class ReviewLink(FlowModel):
    """Find where the customer can review the order publicly: the store's review page (`encore stores set
    --review-url`), else the page of the order's first product, else the store; later steps read it by its
    `as:` name."""

    as_: Identifier = Field("review_url", alias="as")


class ReviewLinkStep(StepModel):
    review_link: Annotated[ReviewLink, BeforeValidator(lambda v: {} if v in (None, True) else v)]


class StopStep(StepModel):
    stop: bool | str | None = Field(True, description="end the run here (a string gives the reason)")


STEP_MODELS: dict[str, type[StepModel]] = {
    "wait": WaitStep,
    "send_email": SendEmailStep,
    "notify": NotifyStep,
    "create_discount": CreateDiscountStep,
    "tag_customer": TagCustomerStep,
    "if": IfStep,
    "http": HttpStep,
    "stop": StopStep,
    "split": SplitStep,
    "account_invite": AccountInviteStep,
    "review_link": ReviewLinkStep,
}
STEP_KINDS = tuple(STEP_MODELS)


def step_kind(value: Any) -> str | None:
    """The kind of a step (its key), or None when it has none or several."""
    if isinstance(value, dict):
        found = [k for k in STEP_KINDS if k in value]
        return found[0] if len(found) == 1 else None
    for kind, model in STEP_MODELS.items():
        if isinstance(value, model):
            return kind
    return None


def _check_step(value: Any) -> Any:
    if value == "stop":
        return {"stop": True}
    if isinstance(value, dict) and step_kind(value) is None:
        keys = [k for k in value if k not in ("name", "then", "else")]
        several = [k for k in keys if k in STEP_KINDS]
        if len(several) > 1:
            raise PydanticCustomError(
                "several_steps", "one step per list item, found {found}", {"found": ", ".join(several)}
            )
        raise PydanticCustomError(
            "unknown_step",
            "unknown step {name} (expected one of: {choices})",
            {"name": ", ".join(repr(k) for k in keys) or "(empty)", "choices": ", ".join(STEP_KINDS)},
        )
    if not isinstance(value, dict | StepModel):
        raise PydanticCustomError(
            "unknown_step", "a step is a mapping such as `wait: 1h`, got '{value}'", {"value": value}
        )
    return value


def _step_union() -> Any:
    """The step type: a union of STEP_MODELS chosen by the step's key, so an error lists the valid kinds."""
    return Annotated[
        Union[tuple(Annotated[model, Tag(kind)] for kind, model in STEP_MODELS.items())],  # noqa: UP007
        Discriminator(step_kind),
        BeforeValidator(_check_step),
    ]


if TYPE_CHECKING:  # the union below as a type checker reads it (that one is built from STEP_MODELS at import)
    Step = (
        WaitStep
        | SendEmailStep
        | NotifyStep
        | CreateDiscountStep
        | TagCustomerStep
        | IfStep
        | HttpStep
        | StopStep
        | SplitStep
        | AccountInviteStep
        | ReviewLinkStep
    )
else:
    Step = _step_union()
IfStep.model_rebuild()
SplitBranch.model_rebuild()
SplitStep.model_rebuild()


# ---- the flow --------------------------------------------------------------------------------------


class Entry(FlowModel):
    """Re-entry: how often one customer may go through the flow."""

    once_per_customer: bool = False
    once_per: Literal["year"] | None = None
    cooldown: Duration | None = None


class QuietHours(FlowModel):
    """A daily local window in which marketing email waits (sends are deferred to its end, not dropped)."""

    from_: LocalTime = Field(alias="from")
    to: LocalTime


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _cap(value: Any) -> Any:
    return None if value in (False, None, "off", "none", 0) else value


PRIORITIES = {"low": 25, "normal": 50, "high": 75}


def _priority(value: Any) -> Any:
    """`high`, `normal`, `low`, or a number from 0 to 100."""
    if isinstance(value, str) and value.strip().lower() in PRIORITIES:
        return PRIORITIES[value.strip().lower()]
    if isinstance(value, str) or isinstance(value, bool):
        raise PydanticCustomError(
            "bad_priority", "{value} is not high, normal, low or a number from 0 to 100", {"value": repr(value)}
        )
    return value


class Flow(FlowModel):
    """One flow file: a trigger, conditions, re-entry rules and steps."""

    name: str = Field(min_length=1)
    description: str | None = None
    kind: Literal["marketing", "transactional"] = "marketing"
    enabled: bool = True
    trigger: Trigger
    conditions: Annotated[list[str], BeforeValidator(_listify)] = Field(
        default_factory=list, description="expressions that must all hold to start, re-checked before every step"
    )
    exit_on: Annotated[list[EventName], BeforeValidator(_listify)] = Field(
        default_factory=list, description="events that end a waiting run for that customer"
    )
    exit_scope: Literal["customer", "order"] = Field(
        "customer",
        description="which runs an `exit_on` event ends: all the customer's (customer), or only those started "
        "for the same order as the event's (order), e.g. a review request ended by that order's refund",
    )
    entry: Entry = Field(default_factory=Entry)
    requires_consent: bool | None = Field(None, description="default: true for marketing, false for transactional")
    quiet_hours: QuietHours | None = None
    frequency_cap: Annotated[Duration | None, BeforeValidator(_cap)] = Field(
        timedelta(hours=16), description="at most one marketing email per customer across flows in this period"
    )
    priority: Annotated[int, BeforeValidator(_priority), Field(ge=0, le=100)] = Field(
        PRIORITIES["normal"],
        description="when the frequency cap holds emails back, higher goes first: high, normal, low, or 0-100",
    )
    max_delay: Annotated[Duration | None, BeforeValidator(_cap)] = Field(
        timedelta(days=3),
        description="an email held back by quiet hours or the frequency cap is dropped when it can't go within this "
        "(off: never dropped)",
    )
    retired: Literal["drain"] | None = Field(
        None, description="drain: start no new runs, let the waiting ones finish (then delete the file)"
    )
    when_paused: Literal["hold", "skip"] = Field(
        "hold", description="while the flow is paused, a new entry waits until it resumes (hold) or is dropped (skip)"
    )
    steps: list[Step] = Field(min_length=1)

    @property
    def marketing(self) -> bool:
        """Whether this flow's emails are marketing (consent, suppression, cap, unsubscribe link)."""
        return self.kind == "marketing"

    @property
    def consent_required(self) -> bool:
        """`requires_consent`, defaulting by kind."""
        return self.marketing if self.requires_consent is None else self.requires_consent


def add_step_model(kind: str, model: type[StepModel]) -> None:
    """Make `kind` a step of flow files, validated by `model` (`flows.steps.register` calls this)."""
    if STEP_MODELS.get(kind) is model:
        return
    if kind in STEP_MODELS or kind in ("name", "then", "else"):
        raise ValueError(f"step kind {kind!r} is taken")
    STEP_MODELS[kind] = model
    _rebuild_steps()


def remove_step_model(kind: str) -> None:
    """Take an added step kind back out of flow files (tests)."""
    STEP_MODELS.pop(kind, None)
    _rebuild_steps()


def _rebuild_steps() -> None:
    """Rebuild the models holding steps after STEP_MODELS changed."""
    global STEP_KINDS
    STEP_KINDS = tuple(STEP_MODELS)
    union: Any = GenericAlias(list, (_step_union(),))  # list[Step], with the new kind in the union
    holders = ((IfStep, ("then", "else_")), (SplitBranch, ("steps",)), (SplitStep, ()), (Flow, ("steps",)))
    for owner, fields in holders:
        for name in fields:
            owner.model_fields[name].annotation = union
        if "__pydantic_core_schema__" in owner.__dict__:  # built afresh, not copied stale into the others
            delattr(owner, "__pydantic_core_schema__")
    for owner, _ in holders:
        owner.model_rebuild(force=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a flow file (for editors)."""
    schema = Flow.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Encore flow"
    return schema
