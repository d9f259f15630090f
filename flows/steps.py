"""The steps of a flow run: one handler per step kind, run by any `Runner`, each doing at most one effect.

`run_step(runner, step)` dispatches by the step's key through `STEPS` (`wait` -> `step_wait()`,
`send_email` -> `step_send_email()`…) and returns an `Outcome`: go on, wait until an instant, enter a
branch, or stop. The handlers decide with `flows.rules`; the runner supplies the facts and the
effects. `StepRunner` is the engine's: the store and the connectors. A new kind of step is one
schema model and one handler, added with `register()`.
"""

from __future__ import annotations

import http.client
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, cast

from sqlalchemy import bindparam, func, select

from encore_retention.connectors import base as connectors
from encore_retention.connectors import email as email_api
from encore_retention.connectors import http as outbound
from encore_retention.connectors.base import Discount, DiscountRequest, PlatformError
from encore_retention.connectors.consent import queue_write_backs
from encore_retention.connectors.email import get_transport
from encore_retention.connectors.email.base import addressed, header_text
from encore_retention.core import bounces
from encore_retention.core import events as ev
from encore_retention.core.feedback import FeedbackLinks
from encore_retention.core.metrics import EMAILS, platform_error
from encore_retention.core.settings import get_settings
from encore_retention.core.store.ledger import cast_table
from encore_retention.core.store.models import Customer, Order, Shop
from encore_retention.core.store.unit import Part, Unit
from encore_retention.core.unsubscribe import is_suppressed, unsubscribe_url
from encore_retention.flows import dates, expressions, render, rules, segments, versions
from encore_retention.flows.models import WAITING, FlowEffect, FlowRun, Run, add_trace
from encore_retention.flows.rules import NEXT, Outcome, position_label
from encore_retention.flows.schema import (
    SPLIT_PREFIX,
    AccountInviteStep,
    CreateDiscountStep,
    Flow,
    HttpStep,
    IfStep,
    NotifyStep,
    ReviewLinkStep,
    SendEmailStep,
    SplitStep,
    StepModel,
    StopStep,
    TagCustomerStep,
    WaitStep,
    add_step_model,
    remove_step_model,
    step_kind,
)

log = logging.getLogger(__name__)


class TransientStepError(Exception):
    """A step failed in a way worth retrying later (a platform's 5xx or 429, a refused connection)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_transports: dict[str, Any] = {}


def _transport() -> Any:
    """The email transport for EMAIL_URL, made once per process."""

    url = get_settings().EMAIL_URL
    transport = _transports.get(url)
    if transport is None:
        transport = _transports[url] = get_transport(url)
    return transport


_EFFECTS = cast_table(FlowEffect)
_CLAIM = _EFFECTS.insert()
_UNCLAIM = _EFFECTS.delete().where(_EFFECTS.c.key == bindparam("effect_key"))
_FINISH = (
    _EFFECTS.update()
    .where(_EFFECTS.c.key == bindparam("effect_key"))
    .values(status=bindparam("status"), result=bindparam("result"), done_at=bindparam("done_at"))
)
_LAST_EMAIL = select(func.max(FlowEffect.created_at)).where(
    FlowEffect.customer_id == bindparam("customer_id"),
    FlowEffect.kind == "email",
    FlowEffect.marketing.is_(True),
    FlowEffect.created_at > bindparam("since"),
    FlowEffect.status.in_(("done", "pending", "uncertain")),
)
_HELD_DUE = select(FlowRun.id, FlowRun.priority, FlowRun.deferred_since).where(  # a customer's held emails due now
    FlowRun.customer_id == bindparam("customer_id"),
    FlowRun.status == WAITING,
    FlowRun.deferred_since.is_not(None),
    FlowRun.wake_at <= bindparam("now"),
    FlowRun.id != bindparam("run_id"),
    FlowRun.priority >= bindparam("priority"),
)


class _Memo(Part):
    """What a unit keeps for the steps: orders and checkouts parsed once, a wake batch's side-effect records."""

    def __init__(self) -> None:
        self.parsed: dict[tuple[Any, int], tuple[dict[str, Any], Any]] = {}
        self.effects: dict[Any, dict[str, FlowEffect]] = {}  # by run id


def parsed_once(session: Unit, model: Any, data: dict[str, Any], known: Any = None) -> Any:
    """`model.model_validate(data)`, kept in the session for the same dict (`known`: the model it came from)."""
    cache = session.part(_Memo).parsed
    entry = cache.get((model, id(data)))
    if entry is None or entry[0] is not data:
        entry = cache[(model, id(data))] = (data, known if known is not None else model.model_validate(data))
    return entry[1]


def preload_effects(session: Unit, run_ids: list[int]) -> None:
    """Load the side-effect records of a batch of runs in one query, for their next step to look up."""
    found: dict[int, dict[str, FlowEffect]] = {run_id: {} for run_id in run_ids}
    for effect in session.scalars(select(FlowEffect).where(FlowEffect.run_id.in_(run_ids))):
        found[effect.run_id][effect.key] = effect
    session.part(_Memo).effects = found


# ---- what expressions and templates see ------------------------------------------------------------


def customer_view(customer: Customer | None) -> dict[str, Any]:
    """The `customer` of expressions and templates, from the ledger row."""
    if customer is None:
        return {}
    return {
        "id": customer.platform_id,
        "email": customer.email,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "phone": customer.phone,
        "locale": customer.locale,
        "timezone": customer.timezone,
        "orders_count": customer.orders_count or 0,
        "total_spent": customer.total_spent or Decimal("0"),
        "first_order_at": customer.first_order_at,
        "last_order_at": customer.last_order_at,
        "predicted_next_order": customer.predicted_next_order,
        "birthday": customer.birthday,
        "email_consent": bool(customer.email_consent),
        "tags": list(customer.tags or []),
        "has_account": bool(customer.has_account),
        "created_at": customer.platform_created_at,
        "feedback_score": customer.feedback_score,
        "feedback_at": customer.feedback_at,
    }


def shop_view(shop: Shop) -> dict[str, Any]:
    """The `shop` of expressions and templates."""
    return {
        "id": shop.id,
        "name": shop.name or shop.domain,
        "domain": shop.domain,
        "url": shop.url or f"https://{shop.domain}",
        "email": shop.email,
        "staff_email": shop.email,
        "email_from": shop.email_from,
        "reply_to": shop.reply_to or shop.email,
        "currency": shop.currency,
        "timezone": shop.timezone or get_settings().DEFAULT_TIMEZONE,
        "platform": shop.platform,
        "review_url": (shop.settings or {}).get("review_url"),
    }


def store_sender(name: str | None) -> str | None:
    """A store's From when it has none of its own: its name over EMAIL_FROM's address (the domain that sends)."""
    if not name:
        return None
    try:
        _, address = email_api.mailbox(get_settings().EMAIL_FROM)
    except ValueError:
        return None
    return f"{name} <{address}>"


class DiscountView:
    """A created discount as later steps see it; `redeemed` asks the ledger, then the platform, when read.

    It holds the stored record and makes each field from it when a step reads it (a run keeps one per code).
    """

    __slots__ = ("_data", "_runner", "code")

    def __init__(self, data: dict[str, Any], runner: Runner | None) -> None:
        self._data = data
        self._runner = runner
        self.code: str = data["code"]

    @property
    def kind(self) -> str:
        """`percent` or `fixed`."""
        return str(self._data["kind"])

    @property
    def amount(self) -> Decimal:
        """The percentage or the amount off."""
        return Decimal(str(self._data["amount"]))

    @property
    def value(self) -> str:
        """The discount as a customer reads it (`15%`, `€10.00`)."""
        return str(self._data["value"])

    @property
    def expires_at(self) -> datetime | None:
        """When the code stops working."""
        found = self._data.get("expires_at")
        return datetime.fromisoformat(found) if found else None

    @property
    def expires_on(self) -> str:
        """The last day, in the customer's zone, as a customer reads it."""
        return str(self._data.get("expires_on") or "")

    @property
    def minimum_subtotal(self) -> Decimal | None:
        """The smallest subtotal the code applies to."""
        found = self._data.get("minimum_subtotal")
        return Decimal(found) if found else None

    @property
    def redeemed(self) -> bool:
        """Whether the customer has used the code (orders in the ledger, else the platform if it can tell)."""
        return self._runner.redeemed(self.code) if self._runner else False

    def __str__(self) -> str:
        return self.code


# ---- the interpreter -------------------------------------------------------------------------------


class Runner(ABC):
    """What a step handler sees of its run: the flow, the position, the context, the facts and the effects.

    The step rules (the handlers below and `flows.rules`) are the same for every runner; a runner only
    says where the facts come from and what an effect does: `StepRunner` (the engine: the store and
    the connectors), the simulator's in-memory world, a preview's sample customer.
    """

    __slots__ = ()
    flow: Flow
    # Whether `trace()` keeps what it is given: a runner that keeps no trace is spared the building of its lines.
    traced: ClassVar[bool] = True

    @property
    @abstractmethod
    def position(self) -> list[Any]:
        """The position of the step being run."""

    @abstractmethod
    def now(self) -> datetime:
        """The run's clock."""

    @abstractmethod
    def tz(self) -> Any:
        """The run's time zone: the customer's when known, else the shop's."""

    @abstractmethod
    def context(self) -> dict[str, Any]:
        """Everything an expression or template may read."""

    @abstractmethod
    def trace(self, kind: str, message: str, **detail: Any) -> None:
        """Add a line to the run's trace."""

    @abstractmethod
    def set_var(self, name: str, value: Any) -> None:
        """Make a value available to later steps under `name`."""

    @abstractmethod
    def key(self, kind: str) -> str:
        """The idempotency key of the current step's side effect."""

    @abstractmethod
    def run_key(self) -> str:
        """The run's key (flow, customer, trigger): the same on every retry and replay of the run."""

    @abstractmethod
    def entered_branch(self, split: str, branch: str) -> None:
        """Keep the branch the run entered at the split labelled `split`, for its results to be counted by."""

    # -- facts: what an earlier attempt did, and what the marketing checks read ----------------------
    def recall(self, key: str) -> Any:
        """The record (`status`, `result`) of this step's effect from an earlier attempt, if any."""
        return None

    def consent(self) -> bool | None:
        """The customer's email consent."""
        return bool(self.context()["customer"].get("email_consent"))

    def suppression(self, address: str) -> str | None:
        """Why the address is on the shop's unsubscribe or bounce list (None when it is not)."""
        return None

    def last_emailed(self, since: datetime) -> datetime | None:
        """When the customer was last sent a marketing email, if after `since` (None: not since, or no customer)."""
        return None

    def emailed_since(self, since: datetime) -> bool | None:
        """Whether the customer was sent a marketing email after `since`."""
        return self.last_emailed(since) is not None

    def marketing_block(self, address: str, again: bool = False) -> str | None:
        """Why a marketing email to `address` must not go out now (`rules.marketing_block`)."""
        return rules.marketing_block(
            self.flow,
            consent=self.consent(),
            suppression=lambda: self.suppression(address),
            emailed_since=self.emailed_since,
            now=self.now(),
            tz=self.tz(),
            again=again,
        )

    def held_since(self) -> datetime | None:
        """Since when this run's email has been held back (None: it was not)."""
        return None

    def behind_another(self) -> bool:
        """Whether another held email of the customer's is due and goes first (`rules.goes_first`)."""
        return False

    @abstractmethod
    def counted(self, outcome: str) -> None:
        """Count an email's outcome (sent, or why not) in the metrics."""

    def hold(self, reason: str, until: datetime) -> Outcome:
        """Hold the email back until `until` (the step runs again then): traced and counted."""
        if self.traced:
            self.trace(
                "deferred",
                f"email held back ({reason}): sending at {until.isoformat()}",
                reason=reason,
                until=until.isoformat(),
            )
        self.counted("deferred")
        return Outcome("defer", until=until)

    def dropped(self, reason: str, spec: Any) -> Outcome:
        """An email not sent for `reason`: counted and traced. The run ends as suppressed, unless the step says
        `if_not_sent: continue` (then the run goes on, noted as having dropped an email)."""
        self.counted(reason)
        self.trace("suppressed", f"email not sent: {reason}", reason=reason)
        if getattr(spec, "if_not_sent", "stop") == "continue":
            self.note_dropped(reason)
            return NEXT
        return Outcome("suppress", reason=f"email not sent: {reason}")

    def note_dropped(self, reason: str) -> None:  # noqa: B027 - a runner without runs to note has nothing to do
        """Remember that the run went on past an email it did not send."""

    def redeemed(self, code: str) -> bool:
        """Whether the customer has used `code`."""
        return False

    # -- effects: the only thing that differs between a real run and a rehearsal -------------------
    @abstractmethod
    def send(self, email: EmailDraft) -> Outcome:
        """Send an email that passed the checks."""

    @abstractmethod
    def make_discount(self, key: str, request: DiscountRequest, earlier: Any) -> Discount | Outcome:
        """Create a code (or the outcome of a failure to)."""

    @abstractmethod
    def discount_made(self, key: str, result: dict[str, Any]) -> None:
        """Record a created code."""

    @abstractmethod
    def tag(self, key: str, tags: list[str], earlier: Any) -> Outcome:
        """Add tags to the customer."""

    @abstractmethod
    def post(self, key: str, spec: Any, body: dict[str, Any], earlier: Any) -> Outcome:
        """POST an http step's body."""

    @abstractmethod
    def fetch_link(self, key: str, kind: str, earlier: Any) -> str | Outcome:
        """The link an `account_invite` or `review_link` step (`kind`) finds (or the outcome of a failure to)."""


@dataclass
class EmailDraft:
    """An email that passed the checks, before it is rendered: an effect renders what it needs of it."""

    spec: Any
    context: dict[str, Any]
    address: str
    recipient: str
    key: str
    again: bool
    marketing: bool
    staff: bool = False
    """A `notify` step's alert to the store's staff (not an email to the customer)."""

    def subject(self) -> str:
        """The subject as sent: one line."""
        return header_text(expressions.render_string(self.spec.subject, self.context))

    def compose(self, unsubscribe: str | None, pinned: render.Pinned | None = None) -> email_api.OutgoingEmail:
        """The message: subject, preheader, the template's HTML and text (the version's, when `pinned`), sender
        and reply address."""
        spec, ctx = self.spec, self.context
        subject = self.subject()
        preheader = expressions.render_string(spec.preheader, ctx) if spec.preheader else None
        ctx.update(unsubscribe_url=unsubscribe, subject=subject, preheader=preheader)
        html, text = render.render_email(spec.template, ctx, pinned)
        from_addr = expressions.render_string(spec.from_, ctx) if spec.from_ else None
        reply_to = expressions.render_string(spec.reply_to, ctx) if spec.reply_to else None
        shop = ctx.get("shop") or {}  # unless the flow says otherwise, every store mails as itself
        from_addr = from_addr or shop.get("email_from") or store_sender(shop.get("name"))
        reply_to = reply_to or shop.get("reply_to")
        return email_api.OutgoingEmail(
            to=self.address,
            subject=subject,
            html=html,
            text=text,
            idempotency_key=self.key,
            marketing=self.marketing,
            from_addr=from_addr or None,
            reply_to=reply_to or None,
            preheader=preheader,
            unsubscribe_url=unsubscribe,
        )


Handler = Callable[[Runner, Any], Outcome]


@dataclass(frozen=True)
class StepKind:
    """A kind of step: its key in a flow file, its schema model, its handler; `pure` when it has no side effect."""

    name: str
    model: type[StepModel]
    handler: Handler
    pure: bool = False


STEPS: dict[str, StepKind] = {}
_BY_MODEL: dict[type, StepKind] = {}


def register(name: str, model: type[StepModel], handler: Handler, *, pure: bool = False) -> StepKind:
    """Add a kind of step: flow files may use it, and the engine, the simulator and previews run it."""
    add_step_model(name, model)
    kind = STEPS[name] = _BY_MODEL[model] = StepKind(name, model, handler, pure)
    return kind


def unregister(name: str) -> None:
    """Take a registered kind of step back out (tests)."""
    kind = STEPS.pop(name, None)
    if kind is not None:
        _BY_MODEL.pop(kind.model, None)
    remove_step_model(name)


def kind_of(step: Any) -> StepKind:
    """The registered kind of a step."""
    kind = _BY_MODEL.get(type(step))
    if kind is not None:
        return kind
    name = step_kind(step)
    if name is None or name not in STEPS:
        raise ValueError(f"not a step: {step!r}")
    return STEPS[name]


def run_step(runner: Runner, step: Any) -> Outcome:
    """Run one step by its kind."""
    return (_BY_MODEL.get(type(step)) or kind_of(step)).handler(runner, step)


def branches(step: Any) -> list[tuple[str, list[Any]]]:
    """The step lists nested in a step (an `if`'s `then` and `else`, a split's `split.<name>`)."""
    return step.nested() if isinstance(step, StepModel) else []


def walk(steps: list[Any], prefix: list[Any] | None = None) -> Iterator[tuple[list[Any], Any]]:
    """Every step with its position, both sides of each branch, in the order they are written."""
    for index, step in enumerate(steps):
        position = [*(prefix or []), index]
        yield position, step
        for name, nested in branches(step):
            yield from walk(nested, [*position, name])


# ---- the step kinds --------------------------------------------------------------------------------


def step_wait(runner: Runner, step: Any) -> Outcome:
    """Pause until the wait's end (a duration in local calendar terms, then a local time of day)."""
    until = rules.wait_until(step.wait, runner.now(), runner.tz())
    if runner.traced:
        runner.trace("wait", f"waiting until {until.isoformat()}", until=until.isoformat())
    return Outcome("wait", until=until)


def step_if(runner: Runner, step: Any) -> Outcome:
    """Enter `then` or `else` depending on the expression."""
    result, error = rules.condition_holds(step.if_, runner.context())
    if runner.traced:
        if error is not None:
            runner.trace("condition", f"if {step.if_} -> error: {error}", expression=step.if_, result=None)
        verdict = "true" if result else "false"
        runner.trace("condition", f"if {step.if_} -> {verdict}", expression=step.if_, result=result)
    branch = step.then if result else step.else_
    if not branch:
        return NEXT
    return Outcome("enter", position=[*runner.position, "then" if result else "else", 0])


def step_split(runner: Runner, step: Any) -> Outcome:
    """Enter the run's branch of an A/B split, drawn from the run's key and the step (so every attempt agrees)."""
    label = position_label(runner.position)
    shares = step.shares()
    branch = rules.choose_branch(rules.split_point(runner.run_key(), label), shares)
    runner.entered_branch(label, branch)
    if runner.traced:
        share = rules.share_text(dict(shares)[branch])
        runner.trace("split", f"split: branch {branch} ({share}% of runs)", branch=branch, share=share)
    if not rules.nested_steps(step, SPLIT_PREFIX + branch):
        return NEXT  # a control branch: straight on after the split
    return Outcome("enter", position=rules.branch_position(runner.position, branch))


def step_stop(runner: Runner, step: Any) -> Outcome:
    """End the run."""
    reason = step.stop if isinstance(step.stop, str) else "stop step"
    return Outcome("stop", reason=reason)


@dataclass
class Admission:
    """Whether an email may go now: to whom, or why not (held back until an instant, dropped, or failed)."""

    address: str | None = None  # as the step names it (`Name <address>` kept)
    recipient: str | None = None  # the bare address
    reason: str | None = None  # why it is held back or dropped
    until: datetime | None = None  # held back until then
    failed: Outcome | None = None  # a `to` naming no one: the run stops


def admission(runner: Runner, spec: Any, again: bool = False) -> Admission:
    """Whether a send_email step's email may go out now, without acting.

    Marketing email held back by quiet hours or the frequency cap is deferred to the first moment it may
    go, and behind the customer's other held emails of a higher priority (then older ones); one that could
    go only after the flow's `max_delay` (counted from when it was first held) is dropped, as is one
    without consent or to an unsubscribed address. `again`: an interrupted send, admitted already.
    """
    try:
        address = rules.recipient(spec.to, runner.context())
    except rules.RecipientError as exc:  # never the customer instead: the step fails, saying why
        return Admission(reason=str(exc), failed=Outcome("stop", reason=f"bad recipient: {exc}"[:255]))
    if not address:
        return Admission(reason="no email address")
    address, recipient = addressed(address)  # `to` may be `Name <address>`
    flow = runner.flow
    if not flow.marketing:
        return Admission(address, recipient)
    reason = runner.marketing_block(recipient, again=again)
    if reason is None and not again and runner.behind_another():
        reason = rules.BEHIND
    if reason in rules.HELD_BACK:
        now = runner.now()
        cap = flow.frequency_cap
        last = runner.last_emailed(now - cap) if reason == rules.FREQUENCY_CAP and cap is not None else None
        until = rules.free_at(flow, reason, now, runner.tz(), last)
        if rules.past_max_delay(flow, runner.held_since() or now, until):
            return Admission(address, recipient, f"{reason}, and it could not go within max_delay")
        return Admission(address, recipient, reason, until)
    return Admission(address, recipient, reason)


def step_send_email(runner: Runner, step: Any) -> Outcome:
    """Send one email after the marketing checks: held back to its time, or dropped with the reason, traced."""
    spec = step.send_email
    key = runner.key("email")
    earlier = runner.recall(key)
    # A claim still pending is a send interrupted before the server's answer was recorded (the worker
    # died, or Redis went away): it is sent again under the same key, so with the same Message-ID,
    # and a copy the server did take shows as one email. Anything else recorded was done already.
    again = earlier is not None and earlier.status == "pending"
    if earlier is not None and not again:
        return NEXT
    verdict = admission(runner, spec, again)
    if verdict.failed is not None:
        runner.trace("error", f"not sent: {verdict.reason}", reason="bad recipient")
        return verdict.failed
    if verdict.until is not None:
        return runner.hold(str(verdict.reason), verdict.until)
    if verdict.reason is not None:
        return runner.dropped(verdict.reason, spec)
    assert verdict.address is not None and verdict.recipient is not None
    draft = EmailDraft(spec, runner.context(), verdict.address, verdict.recipient, key, again, runner.flow.marketing)
    return runner.send(draft)


# The steps that act at once, without a wait or a branch: a code made before them is still made for the email after.
ACTING_AT_ONCE = (CreateDiscountStep, TagCustomerStep, HttpStep, NotifyStep, AccountInviteStep, ReviewLinkStep)


def email_served(runner: Runner) -> Any:
    """The email a create_discount step makes its code for: the next send_email step, with only steps that act
    at once (codes, tags, http, staff alerts) between; None when a wait, a branch or the end comes first."""
    steps, position = runner.flow.steps, runner.position
    following = rules.next_position(steps, position)
    while following is not None and len(following) == len(position):
        step = rules.step_at(steps, following)
        if isinstance(step, SendEmailStep):
            return step.send_email
        if not isinstance(step, ACTING_AT_ONCE):
            return None
        following = rules.next_position(steps, following)
    return None


def step_notify(runner: Runner, step: Any) -> Outcome:
    """Mail the store's staff address, never the customer: no consent, list, cap or quiet hours, no unsubscribe link.

    A store without a staff email fails the step (traced), and the run stops with the reason.
    """
    spec = step.notify
    ctx = runner.context()
    try:
        address = rules.recipient(rules.STAFF, ctx)
    except rules.RecipientError as exc:
        runner.trace("error", f"staff alert not sent: {exc}", reason="no staff email")
        return Outcome("stop", reason=f"no staff email: {exc}"[:255])
    key = runner.key("email")
    earlier = runner.recall(key)
    again = earlier is not None and earlier.status == "pending"  # interrupted: sent again with the same Message-ID
    if earlier is not None and not again:
        return NEXT
    if spec.body:  # a copy: a runner may keep its context for the next steps
        ctx = {**ctx, "body": expressions.render_string(spec.body, ctx)}
    address, recipient = addressed(str(address))
    return runner.send(EmailDraft(spec, ctx, address, recipient, key, again, marketing=False, staff=True))


def step_create_discount(runner: Runner, step: Any) -> Outcome:
    """Create a unique single-use code for the customer (idempotent by the step's key).

    A code made for an email (`email_served`) is made when that email is admitted: held back with it, and
    never made for an email that won't go.
    """
    spec = step.create_discount
    key = runner.key("discount")
    earlier = runner.recall(key)
    if earlier is not None and earlier.status == "done" and earlier.result:
        runner.set_var(spec.as_, earlier.result)
        return NEXT
    email = email_served(runner) if earlier is None else None
    if email is not None:  # made when its email is admitted, never for an email that won't go
        verdict = admission(runner, email)
        if verdict.until is not None:
            return runner.hold(str(verdict.reason), verdict.until)
        if verdict.reason is not None:  # the email won't go: no code for it
            if runner.traced:
                runner.trace("discount", f"code not created: its email will not be sent ({verdict.reason})")
            if verdict.failed is None and email.if_not_sent == "stop":
                return runner.dropped(verdict.reason, email)
            return NEXT  # the email step says why, and what follows
    kind, value = rules.discount_terms(spec)
    ctx = runner.context()
    now = runner.now()
    ends_at = now + spec.expires_in
    currency = ctx["shop"].get("currency") or (ctx["order"].currency if ctx["order"] is not None else None)
    customer_id, customer_email = ctx["customer"].get("id"), ctx["customer"].get("email")
    restrict = spec.restrict_to_customer and bool(ctx["customer"])
    request = DiscountRequest(
        idempotency_key=f"encore-{ctx['shop']['id']}-{key}",
        kind=kind,
        value=value,
        prefix=spec.prefix,
        currency=currency,
        starts_at=now,
        ends_at=ends_at,
        minimum_subtotal=spec.minimum_subtotal,
        usage_limit=spec.usage_limit,
        customer_id=customer_id if restrict and not str(customer_id).startswith("email:") else None,
        customer_email=customer_email if restrict else None,
        title=f"{runner.flow.name} ({ctx['run']['id']})",
    )
    made = runner.make_discount(key, request, earlier)
    if isinstance(made, Outcome):
        return made
    result = rules.discount_result(spec, made.code, made.platform_id, made.ends_at or ends_at, currency, runner.tz())
    runner.discount_made(key, result)
    runner.set_var(spec.as_, result)
    return NEXT


def step_tag_customer(runner: Runner, step: Any) -> Outcome:
    """Add tags on the platform and in the ledger."""
    ctx = runner.context()
    tags = [expressions.render_string(t, ctx) for t in step.tag_customer]
    key = runner.key("tag")
    earlier = runner.recall(key)
    if earlier is not None and earlier.status == "done":
        return NEXT
    return runner.tag(key, tags, earlier)


def step_http(runner: Runner, step: Any) -> Outcome:
    """POST the step's JSON (values rendered) with an Idempotency-Key header."""
    spec = step.http
    ctx = runner.context()
    body = {k: expressions.render_string(v, ctx) if isinstance(v, str) else v for k, v in spec.json_.items()}
    key = runner.key("http")
    earlier = runner.recall(key)
    if earlier is not None and earlier.status == "done":
        return NEXT
    return runner.post(key, spec, body, earlier)


def step_link(runner: Runner, step: Any) -> Outcome:
    """Find a link through the store (an account invitation, a review page) and keep it for the later steps.

    Found once per run and step: a retry or a later attempt reads the recorded link.
    """
    kind = str(step_kind(step))
    spec = getattr(step, kind)
    key = runner.key("link")
    earlier = runner.recall(key)
    if earlier is not None and earlier.status == "done" and earlier.result:
        runner.set_var(spec.as_, earlier.result["url"])
        return NEXT
    found = runner.fetch_link(key, kind, earlier)
    if isinstance(found, Outcome):
        return found
    runner.set_var(spec.as_, found)
    return NEXT


register("wait", WaitStep, step_wait, pure=True)
register("send_email", SendEmailStep, step_send_email)
register("notify", NotifyStep, step_notify)
register("create_discount", CreateDiscountStep, step_create_discount)
register("tag_customer", TagCustomerStep, step_tag_customer)
register("if", IfStep, step_if, pure=True)
register("http", HttpStep, step_http)
register("stop", StopStep, step_stop, pure=True)
register("split", SplitStep, step_split, pure=True)
register("account_invite", AccountInviteStep, step_link)
register("review_link", ReviewLinkStep, step_link)


# ---- the engine's runner: the store and the connectors ---------------------------------------------


@dataclass
class StepRunner(Runner):
    """Runs the steps of one run inside one session: facts from the store, effects through the connectors.

    A side effect's idempotency key is claimed in the store (`_claim`, committed) before acting and its
    result recorded after (`_finish`), so a retried job finds the claim instead of acting twice.
    """

    session: Unit
    run: Run
    flow: Flow
    shop: Shop
    customer: Customer | None
    _entered: list[str] | None = None

    # -- the run ---------------------------------------------------------------------------------
    @property
    def position(self) -> list[Any]:
        """The position of the step being run."""
        return self.run.position

    def flows_entered(self) -> list[str]:
        """The flows the customer entered (asked of the store once per runner, when a segment reads them)."""
        if self._entered is None:
            found: list[str] = []
            if self.session is not None and self.customer is not None and self.customer.id:
                found = list(self.session.scalars(segments.flows_entered_query(self.customer.id)))
            self._entered = found
        return self._entered

    def now(self) -> datetime:
        """The engine's clock (`dates.now`, which a test or a rehearsal may move)."""
        return dates.now()

    def tz(self) -> Any:
        """The run's time zone: the customer's when known, else the shop's."""
        return dates.zone(self.customer.timezone if self.customer else None, self.shop.timezone)

    def context(self) -> dict[str, Any]:
        """Everything an expression or template may read."""
        stored = self.run.context or {}
        ctx: dict[str, Any] = {
            "customer": customer_view(self.customer),
            "shop": shop_view(self.shop),
            "event": stored.get("event") or {},
            "run": {"id": self.run.id, "started_at": self.run.started_at, "flow": self.run.flow_name},
            "order": self._parsed(ev.Order, stored.get("order")),
            "checkout": self._parsed(ev.Checkout, stored.get("checkout")),
            "now": dates.now(),
            "feedback_url": FeedbackLinks(
                self.shop.id or 0,
                self.customer.id if self.customer is not None and self.customer.id else 0,
                str((stored.get("order") or {}).get("id") or "") or None,
                self.run.id or 0,
            ),
            segments.ENTERED: self.flows_entered,
        }
        for name, value in (stored.get("vars") or {}).items():
            ctx[name] = DiscountView(value, self) if isinstance(value, dict) and "code" in value else value
        return ctx

    def _parsed(self, model: Any, data: dict[str, Any] | None) -> Any:
        """The stored order or checkout as its model, parsed once per session (`context()` runs per check)."""
        if not data:
            return None
        if self.session is None:  # a preview without a store
            return model.model_validate(data)
        return parsed_once(self.session, model, data)

    def set_var(self, name: str, value: Any) -> None:
        """Make a value available to later steps under `name`."""
        self._keep_context(self._context_with("vars", name, value))

    def _context_with(self, part: str, name: str, value: Any) -> dict[str, Any]:
        """The run's stored context with `name` set to `value` in its `part` (`vars`, `split`)."""
        stored = dict(self.run.context or {})
        stored[part] = {**(stored.get(part) or {}), name: value}
        return stored

    def _keep_context(self, stored: dict[str, Any]) -> None:
        """Make `stored` the run's context: staged in the session, or on the run in memory (a preview)."""
        if self.session is None:
            self.run.context = stored
        else:
            self.session.stage(self.run, context=stored)

    def trace(self, kind: str, message: str, **detail: Any) -> None:
        """Add a line to the run's trace."""
        position = self.run.position
        add_trace(
            self.session,
            self.run.id,
            dates.now(),
            kind,
            message,
            position_label(position) if position else None,
            detail or None,
        )

    def key(self, kind: str) -> str:
        """The idempotency key of the current step's side effect."""
        return f"{self.run.flow_key}-{self.run.id}-{position_label(self.run.position)}-{kind}"

    def run_key(self) -> str:
        """The run's unique key (shop, flow, customer, trigger)."""
        return self.run.run_key

    def entered_branch(self, split: str, branch: str) -> None:
        """Keep the branch in the run's context, under `split` (the split step's label)."""
        self._keep_context(self._context_with("split", split, branch))

    def conditions_hold(self, when: str) -> bool:
        """Check every flow condition, tracing each result; False stops the run."""
        ctx = self.context()
        for condition in self.flow.conditions:
            result, error = rules.condition_holds(condition, ctx)
            if error is not None:
                self.trace("condition", f"{condition} -> error: {error}", expression=condition, result=None)
                return False
            if not result or when == "start":
                self.trace(
                    "condition",
                    f"{condition} -> {'true' if result else 'false'} ({when})",
                    expression=condition,
                    result=bool(result),
                )
            if not result:
                return False
        return True

    def run_step(self, step: Any) -> Outcome:
        """Run one step by its kind."""
        return run_step(self, step)

    # -- facts -----------------------------------------------------------------------------------
    def recall(self, key: str) -> FlowEffect | None:
        """The record of this step's side effect from an earlier attempt (none for a run begun in this session)."""
        if self.session.inserted(FlowRun, self.run.id):
            return None
        loaded = self.session.part(_Memo).effects.pop(self.run.id, None)
        if loaded is not None:
            return loaded.get(key)
        return self.session.get(FlowEffect, key)

    def consent(self) -> bool | None:
        """The ledger's consent of the customer."""
        return bool(self.customer and self.customer.email_consent)

    def suppression(self, address: str) -> str | None:
        """The address's entry on the shop's unsubscribe or bounce list."""
        return is_suppressed(self.session, self.shop.id, address)

    def last_emailed(self, since: datetime) -> datetime | None:
        """When a marketing email to the customer was last claimed, by any flow, if after `since`."""
        if self.customer is None or self.session is None:
            return None
        return cast(
            "datetime | None",
            self.session.connection()
            .execute(_LAST_EMAIL, {"customer_id": self.customer.id, "since": since})
            .scalar_one_or_none(),
        )

    def held_since(self) -> datetime | None:
        """Since when the run's email has been held back."""
        return self.run.deferred_since

    def behind_another(self) -> bool:
        """Whether a held email of the customer's, due now, goes first (`rules.goes_first`)."""
        if self.customer is None or self.session is None:
            return False
        now = self.now()
        run = self.run
        mine = (run.priority, run.deferred_since or now, run.id)
        held = self.session.connection().execute(
            _HELD_DUE, {"customer_id": self.customer.id, "now": now, "run_id": run.id or 0, "priority": run.priority}
        )
        return any(rules.goes_first(mine, (other.priority, other.deferred_since, other.id)) for other in held)

    def hold(self, reason: str, until: datetime) -> Outcome:
        """Hold the email back: the run keeps since when, so its turn and its max_delay count from then."""
        if self.run.deferred_since is None and self.session is not None:
            self.session.stage(self.run, deferred_since=self.now())
        return super().hold(reason, until)

    def note_dropped(self, reason: str) -> None:
        """Keep the first email the run went on without: it ends as suppressed, with that reason."""
        if "dropped" not in (self.run.context or {}):
            self._keep_context({**(self.run.context or {}), "dropped": reason})

    def counted(self, outcome: str) -> None:
        """Count an email's outcome in the metrics."""
        EMAILS.labels(flow=self.run.flow_key, outcome=outcome).inc()

    def redeemed(self, code: str) -> bool:
        """Whether an order in the ledger used `code`, else what the platform says."""
        if self.customer is not None:
            rows = self.session.execute(
                select(Order.discount_codes).where(
                    Order.customer_id == self.customer.id, Order.placed_at >= self.run.started_at - timedelta(days=1)
                )
            )
            if any(code.upper() in [c.upper() for c in (codes or [])] for (codes,) in rows):
                return True
        try:
            return bool(connectors.get_connector(self.shop).discount_redeemed(code))
        except Exception:  # noqa: BLE001 - unknown counts as not redeemed; the ledger is the main source
            log.warning("could not ask the platform whether %s was redeemed", code)
            return False

    # -- effects ---------------------------------------------------------------------------------
    def send(self, email: EmailDraft) -> Outcome:
        """Render the email and send it through EMAIL_URL's transport, claimed first under its key."""
        unsubscribe = unsubscribe_url(self.shop.id, email.recipient) if email.marketing else None
        pinned = self.pinned_templates()
        return self.deliver(email, email.compose(unsubscribe, pinned))

    def pinned_templates(self) -> render.Pinned | None:
        """The templates of the run's flow version (None without a store: a preview renders the files)."""
        if self.session is None:
            return None
        return versions.pinned(self.session, self.run.flow_digest, self.run.flow_key)

    def deliver(self, email: EmailDraft, message: email_api.OutgoingEmail) -> Outcome:
        """Send a rendered message, claimed first under its key; the answer is recorded and traced."""
        key, address, template = email.key, email.address, email.spec.template
        self._claim(key, "email", email.again, marketing=email.marketing)
        if email.again:
            self.trace(
                "resend",
                "the first attempt to send this email was interrupted; sending it again with the same Message-ID",
                key=key,
            )
        try:
            message_id = email_api.send(message, _transport())
        except email_api.TransientEmailError as exc:
            self._unclaim(key)
            raise TransientStepError(f"email to {address} deferred: {exc}") from exc
        except email_api.PermanentEmailError as exc:
            self._finish(key, "failed", {"error": str(exc)})
            self.trace(
                "error", f"email {template!r} to {address} failed permanently: {exc}", template=template, key=key
            )
            if exc.bounce and not email.staff:
                self.bounced(email.recipient, message.from_addr, str(exc))
            return NEXT
        subject = message.subject
        self._finish(key, "done", {"message_id": message_id, "to": address, "subject": subject})
        self.counted("sent")
        self.trace(
            "sent",
            f"sent {template!r} to {address}: {subject}",
            template=template,
            to=address,
            subject=subject,
            message_id=message_id,
            key=key,
        )
        return NEXT

    def bounced(self, address: str, sender: str | None, detail: str) -> None:
        """The receiving server refused the address: suppress it at the stores of this sender (`core.bounces`), and
        queue the consent write-backs once that is committed."""
        outcome = bounces.hard_bounce(
            self.session,
            address,
            sender or get_settings().EMAIL_FROM,
            source="smtp",
            detail=detail[:500],
            also=self.shop.id,
        )
        self.session.commit()
        queue_write_backs(outcome.changes)
        self.trace(
            "bounce",
            f"{address} bounced: suppressed at {outcome.suppressed} store(s) mailing from the same domain",
            reason="bounced",
            stores=outcome.suppressed,
        )

    def make_discount(self, key: str, request: DiscountRequest, earlier: Any) -> Discount | Outcome:
        """Ask the shop's platform for the code, claimed first under its key."""
        self._claim(key, "discount", earlier is not None)
        try:
            return connectors.get_connector(self.shop).create_discount(request)
        except PlatformError as exc:
            platform_error(self.shop.platform, exc)
            if exc.transient:
                raise TransientStepError(f"discount not created yet: {exc.message}", exc.retry_after) from exc
            self._finish(key, "failed", {"error": exc.message, "status": exc.status})
            self.trace("error", f"discount not created: {exc.message}", status=exc.status)
            return Outcome("stop", reason=f"discount failed: {exc.message}")

    def discount_made(self, key: str, result: dict[str, Any]) -> None:
        """Record the created code and trace it."""
        self._finish(key, "done", result)
        self.trace("discount", f"created code {result['code']} ({result['value']})", code=result["code"], key=key)

    def tag(self, key: str, tags: list[str], earlier: Any) -> Outcome:
        """Add the tags on the platform (a customer known by email only has none) and in the ledger."""
        customer = self.customer
        if customer is None:
            return NEXT
        self._claim(key, "tag", earlier is not None)
        if not customer.platform_id.startswith("email:"):
            try:
                connectors.get_connector(self.shop).tag_customer(customer.platform_id, tags)
            except PlatformError as exc:
                platform_error(self.shop.platform, exc)
                if exc.transient:
                    raise TransientStepError(f"tags not added yet: {exc.message}", exc.retry_after) from exc
                self._finish(key, "failed", {"error": exc.message})
                self.trace("error", f"tags not added: {exc.message}")
                return NEXT
        self.session.stage(customer, tags=sorted(set(customer.tags or []) | set(tags)))
        self._finish(key, "done", {"tags": tags})
        self.trace("tag", f"tagged {', '.join(tags)}", tags=tags)
        return NEXT

    def post(self, key: str, spec: Any, body: dict[str, Any], earlier: Any) -> Outcome:
        """POST to a public address only, with an Idempotency-Key header; a redirect is not followed.

        A URL whose host is not public (`connectors.http.refusal`) and not in HTTP_STEP_ALLOW_HOSTS
        fails the step once, traced, without a retry.
        """
        self._claim(key, "http", earlier is not None)
        headers = {**spec.headers, "Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": "Encore"}
        try:
            status, location = outbound.post_json(
                spec.url, json.dumps(body, default=str).encode(), headers, spec.timeout
            )
        except outbound.RefusedURL as exc:
            self._finish(key, "failed", {"error": str(exc)})
            self.trace("error", f"POST {spec.url} refused: {exc}", key=key)
            return NEXT
        except (OSError, http.client.HTTPException) as exc:
            raise TransientStepError(f"POST {spec.url} failed: {type(exc).__name__}: {exc}") from exc
        if status == 429 or status >= 500:
            raise TransientStepError(f"POST {spec.url}: HTTP {status}")
        if location is not None:
            self._finish(key, "failed", {"status": status, "location": location[:500]})
            self.trace(
                "error",
                f"POST {spec.url}: HTTP {status}, a redirect to {location[:200]!r}, not followed",
                status=status,
            )
            return NEXT
        self._finish(key, "done" if status < 400 else "failed", {"status": status})
        self.trace("http", f"POST {spec.url}: HTTP {status}", status=status)
        return NEXT

    def fetch_link(self, key: str, kind: str, earlier: Any) -> str | Outcome:
        """Ask the shop's platform for the link, claimed first under its key; the link is recorded and traced.

        A platform that gives none, or refuses (a customer whose account is already enabled), stops the run
        with the reason; a 5xx or 429 is retried later.
        """
        self._claim(key, "link", earlier is not None)
        try:
            url = self._find_link(kind)
        except PlatformError as exc:
            platform_error(self.shop.platform, exc)
            if exc.transient:
                raise TransientStepError(f"{kind} link not found yet: {exc.message}", exc.retry_after) from exc
            self._finish(key, "failed", {"error": exc.message, "status": exc.status})
            self.trace("error", f"{kind}: {exc.message}", status=exc.status)
            return Outcome("stop", reason=f"{kind} failed: {exc.message}"[:255])
        if not url:
            self._finish(key, "failed", {"error": "no link"})
            self.trace("error", f"{kind}: the store's platform gives no link for this customer")
            return Outcome("stop", reason=f"{kind}: the store's platform gives no link")
        self._finish(key, "done", {"url": url})
        self.trace("link", f"{kind}: {url}", link=kind, key=key)
        return url

    def _find_link(self, kind: str) -> str | None:
        """The link itself: the platform's account invitation, or the review page (`rules.review_target`)."""
        shop = shop_view(self.shop)
        if kind == "account_invite":
            customer = self.customer
            if customer is None:
                return None
            platform_id = None if customer.platform_id.startswith("email:") else customer.platform_id
            return connectors.get_connector(self.shop).account_invite_url(platform_id, customer.email)
        order = self.context()["order"]
        product = rules.review_product(order)
        if shop["review_url"] or product is None:
            return rules.review_target(shop, None)
        try:
            page = connectors.get_connector(self.shop).product_url(product)
        except PlatformError as exc:  # refused (Shopify without read_products, say): the store's own page
            if exc.transient:
                raise
            log.warning("product page not found; the review link is the store's", extra={"error": exc.message[:200]})
            page = None
        return rules.review_target(shop, page)

    # -- side-effect records ---------------------------------------------------------------------
    def _claim(self, key: str, kind: str, claimed: bool = False, *, marketing: bool | None = None) -> None:
        """Record (and commit) the intent before acting, so an interrupted act is known on retry.

        An effect claimed by an earlier attempt (`claimed`) is acted on again under the same key. An email
        counts in the frequency cap when `marketing` (default: the flow's kind; a staff alert never does).
        """
        if claimed:
            return
        self.session.connection().execute(
            _CLAIM,
            {
                "key": key,
                "run_id": self.run.id,
                "shop_id": self.shop.id,
                "customer_id": self.customer.id if self.customer else None,
                "kind": kind,
                "status": "pending",
                "marketing": kind == "email" and (self.flow.marketing if marketing is None else marketing),
                "created_at": dates.now(),
            },
        )
        self.session.commit()

    def _unclaim(self, key: str) -> None:
        self.session.connection().execute(_UNCLAIM, {"effect_key": key})
        self.session.commit()

    def _finish(self, key: str, status: str, result: dict[str, Any]) -> None:
        self.session.connection().execute(
            _FINISH, {"effect_key": key, "status": status, "result": result, "done_at": dates.now()}
        )
