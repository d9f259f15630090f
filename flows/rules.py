"""The flow rules, as pure functions: trigger keys, entry, conditions, waits, marketing checks, codes' terms.

The engine, the simulator, previews and dry runs all decide with these; what differs between them is
only where the facts come from (the store, an in-memory world, a sample) and what an effect does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from encore_retention.connectors.email import mailbox
from encore_retention.flows import dates, expressions
from encore_retention.flows.render import format_money
from encore_retention.flows.schema import SPLIT_PREFIX, CreateDiscount, DateTrigger, Entry, Flow, Wait

# ---- what a step asks for next ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What a step asks the engine to do next."""

    action: str  # "next" | "wait" (then the next step) | "defer" (then this step again) | "enter" | "stop"
    # | "suppress" (the run ends as suppressed: its email was not sent, and the steps after refer to it)
    until: datetime | None = None
    position: list[Any] | None = None
    reason: str = ""


NEXT = Outcome("next")


# ---- positions -------------------------------------------------------------------------------------


def nested_steps(step: Any, name: str) -> list[Any]:
    """The step list nested in `step` under `name` (`then`, `else`, `split.a`…: `StepModel.nested`)."""
    for found, nested in step.nested():
        if found == name:
            return nested
    raise KeyError(f"{type(step).__name__} has no nested steps {name!r}")


def container_at(steps: list[Any], prefix: list[Any]) -> list[Any]:
    """The step list a position prefix points into ([] -> the flow's steps; [3, "then"] -> a branch;
    [2, "split.a"] -> a split's branch `a`)."""
    current = steps
    for index in range(0, len(prefix), 2):
        current = nested_steps(current[prefix[index]], prefix[index + 1])
    return current


def step_at(steps: list[Any], position: list[Any]) -> Any:
    """The step at a position."""
    return container_at(steps, position[:-1])[position[-1]]


def next_position(steps: list[Any], position: list[Any]) -> list[Any] | None:
    """The position after `position` (leaving finished branches), or None at the end of the flow."""
    position = list(position)
    while position:
        position[-1] += 1
        if position[-1] < len(container_at(steps, position[:-1])):
            return position
        if len(position) == 1:
            return None
        position = position[:-2]
    return None


def position_label(position: list[Any]) -> str:
    """`steps[3].then[0]` (or `steps[2].split.a[0]`) for a position."""
    label = f"steps[{position[0]}]" if position else "steps"
    for index in range(1, len(position), 2):
        label += f".{position[index]}[{position[index + 1]}]"
    return label


Transition = Literal["stop", "suppress", "enter", "defer", "done", "wait", "next"]


def transition(steps: list[Any], position: list[Any], outcome: Outcome) -> tuple[Transition, list[Any] | None]:
    """Where a run goes after a step's outcome: (what happens, the position it is then at)."""
    if outcome.action == "stop":
        return "stop", position
    if outcome.action == "suppress":
        return "suppress", position
    if outcome.action == "enter":
        return "enter", outcome.position
    if outcome.action == "defer":
        return "defer", position
    following = next_position(steps, position)
    if following is None:
        return "done", None
    return ("wait" if outcome.action == "wait" else "next"), following


# ---- A/B splits ------------------------------------------------------------------------------------


def split_point(run_key: str, step_label: str) -> Fraction:
    """Where a run falls in a split, in [0, 1): a hash of its key and the split's step, so every retry,
    replay and re-delivery of the run lands in the same place, and two splits of one run are independent."""
    digest = hashlib.sha256(f"{run_key}|{step_label}".encode()).digest()
    return Fraction(int.from_bytes(digest[:8], "big"), 2**64)


def choose_branch(point: Fraction, shares: list[tuple[str, Decimal]]) -> str:
    """The branch whose slice of the cumulative shares holds `point` (shares are relative: divided by their sum)."""
    total = sum((Fraction(share) for _, share in shares), Fraction(0))
    reached = Fraction(0)
    for name, share in shares:
        reached += Fraction(share)
        if point * total < reached:
            return name
    return shares[-1][0]


def share_text(share: Decimal) -> str:
    """A branch's percentage as a marketer writes it, to two places at most: `50`, `33.33`."""
    return f"{share.quantize(Decimal('0.01')).normalize():f}"


def branch_position(position: list[Any], branch: str) -> list[Any]:
    """The position of a split's branch's first step (`steps[2]` -> `steps[2].split.a[0]`)."""
    return [*position, SPLIT_PREFIX + branch, 0]


# ---- starting runs ---------------------------------------------------------------------------------


def event_trigger_key(
    entry: Entry,
    *,
    event_type: str,
    event_id: str,
    occurred_at: datetime,
    tz: tzinfo,
    order_id: str | None = None,
    checkout_token: str | None = None,
) -> str:
    """The run key's trigger part: one run per customer, per year (the event's, in `tz`), per order, per
    checkout, or per event."""
    if entry.once_per_customer:
        return "once"
    if entry.once_per == "year":
        return f"year:{occurred_at.astimezone(tz).year}"
    if order_id is not None:
        return f"order:{order_id}"
    if checkout_token is not None:
        return f"checkout:{checkout_token}"
    if event_type == "customer.created":
        return "customer.created"
    return f"event:{event_id}"


def due_day(trigger: DateTrigger, value: date, year: int | None = None) -> date:
    """The local day a customer's date value makes due (yearly: the anniversary in `year`)."""
    if trigger.yearly:
        assert year is not None
        return dates.anniversary(value, year) + trigger.offset
    return value + trigger.offset


def before_its_cause(trigger: DateTrigger, due: datetime, last_order_at: datetime | None) -> bool:
    """Whether a trigger on the predicted next order falls due before the order it was predicted from.

    A prediction close to the order that made it (a fast reorder rhythm, a negative offset) lands in the
    past; it never fires, in the engine (even when a sweep catches up) and in the simulator alike.
    """
    return trigger.date == "customer.predicted_next_order" and last_order_at is not None and due <= last_order_at


def date_trigger_key(entry: Entry, trigger: DateTrigger, value: date, day: date) -> str:
    """`year:2027` for yearly triggers and `once_per: year`; else the date value (one run per value)."""
    if entry.once_per_customer:
        return "once"
    if trigger.yearly:
        return f"year:{(day - trigger.offset).year}"
    if entry.once_per == "year":
        return f"year:{day.year}"
    return f"{trigger.date}:{value.isoformat()}"


def condition_holds(condition: str, context: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether a condition holds, and the error when it could not be evaluated (which counts as false)."""
    try:
        return bool(expressions.holds(condition, context)), None
    except expressions.ExpressionError as exc:
        return False, str(exc)


def consent_missing(flow: Flow, consent: bool | None) -> bool:
    """Whether a run may not start for want of consent (it is recorded as suppressed instead)."""
    return flow.marketing and flow.consent_required and not consent


def cooling_down(flow: Flow, last_started: datetime | None, now: datetime) -> bool:
    """Whether the flow's cool-down since the customer's last run has not passed yet."""
    cooldown = flow.entry.cooldown
    if cooldown is None or last_started is None:
        return False
    return last_started > now - cooldown


# ---- steps -----------------------------------------------------------------------------------------


def wait_until(wait: Wait, now: datetime, tz: tzinfo) -> datetime:
    """A wait's end: a duration in local calendar terms, then a local time of day."""
    until = now
    if wait.for_:
        until = dates.add_duration(until, wait.for_, tz)
    if wait.until is not None:
        until = dates.next_local_time(until, wait.until, tz)
    return until


STAFF = "staff"  # `to: staff`: the store's staff address, never a customer's


def recipient(to: str | None, context: dict[str, Any]) -> str | None:
    """Whom an email goes to: the customer's address (else the checkout's) when the step names nobody.

    A step with a `to` goes there or nowhere: `staff` is the store's staff address, anything else is
    rendered and must be one address. RecipientError says why not; it never falls back to the customer.
    """
    if to is None:
        address = (context["customer"] or {}).get("email")
        if not address and context.get("checkout") is not None:
            address = context["checkout"].email
        return address or None
    if to.strip() == STAFF:
        staff = (context.get("shop") or {}).get("staff_email")
        if not staff:
            raise RecipientError(
                "to: staff, but the store has no staff email (encore stores set STORE --staff-email …)"
            )
        return str(staff)
    address = expressions.render_string(to, context).strip()
    if not address:
        raise RecipientError(f"to: {to!r} rendered empty")
    try:
        mailbox(address)
    except ValueError:
        raise RecipientError(f"to: {to!r} rendered {address[:80]!r}, not one email address") from None
    return address


class RecipientError(ValueError):
    """A step's `to` that names no one to mail: the step fails, the email goes to nobody."""


def marketing_block(
    flow: Flow,
    *,
    consent: bool | None,
    suppression: Callable[[], str | None],
    emailed_since: Callable[[datetime], bool | None],
    now: datetime,
    tz: tzinfo,
    again: bool = False,
) -> str | None:
    """Why a marketing email must not go out now (None when it may).

    `suppression()` is the address's entry on the unsubscribe or bounce list; `emailed_since(t)` whether
    the customer was sent a marketing email after t (None: there is no customer to count for). `again`: the
    email's interrupted first attempt is sent again; consent and the unsubscribe list still hold, but
    not quiet hours or the frequency cap, which it was admitted under (and counts in).
    """
    if flow.consent_required and not consent:
        return "no consent"
    reason = suppression()
    if reason:
        return "unsubscribed" if reason == "unsubscribed" else f"suppressed ({reason})"
    if again:
        return None
    if flow.quiet_hours and dates.in_window(now, flow.quiet_hours.from_, flow.quiet_hours.to, tz):
        return "quiet hours"
    if flow.frequency_cap and emailed_since(now - flow.frequency_cap):
        return "frequency cap"
    return None


def quiet_hours_end(flow: Flow, now: datetime, tz: tzinfo) -> datetime:
    """When a send deferred by the flow's quiet hours goes out."""
    assert flow.quiet_hours is not None
    return dates.next_local_time(now, flow.quiet_hours.to, tz)


# ---- held emails: deferred to the first moment they may go, in priority order -----------------------

QUIET_HOURS, FREQUENCY_CAP = "quiet hours", "frequency cap"
BEHIND = "another held email goes first"  # a held email of the customer's with a higher priority is due
HELD_BACK = (QUIET_HOURS, FREQUENCY_CAP, BEHIND)
TURN = timedelta(minutes=1)  # how long an email behind another waits before it looks again


def free_at(flow: Flow, reason: str, now: datetime, tz: tzinfo, last_emailed: datetime | None) -> datetime:
    """The first moment an email held back for `reason` may go: the end of the quiet hours, of the frequency
    cap since the customer's last marketing email, or (behind another held email) a moment later."""
    if reason == QUIET_HOURS:
        return quiet_hours_end(flow, now, tz)
    if reason == FREQUENCY_CAP and flow.frequency_cap is not None and last_emailed is not None:
        return max(now, last_emailed + flow.frequency_cap)
    return now + TURN


def goes_first(mine: tuple[int, datetime, int | None], other: tuple[int, datetime, int]) -> bool:
    """Whether another held email (priority, held since, run id) goes before this one: the higher priority, then
    the one held longest, then the older run."""
    priority, since, run_id = mine
    other_priority, other_since, other_id = other
    if other_priority != priority:
        return other_priority > priority
    if other_since != since:
        return other_since < since
    return run_id is None or other_id < run_id


def past_max_delay(flow: Flow, held_since: datetime, until: datetime) -> bool:
    """Whether an email held since `held_since` could go only after the flow's max_delay: it is dropped."""
    return flow.max_delay is not None and until > held_since + flow.max_delay


def discount_terms(spec: CreateDiscount) -> tuple[Literal["percent", "fixed"], Decimal]:
    """A discount's kind and value."""
    if spec.percent is not None:
        return "percent", spec.percent
    assert spec.amount is not None
    return "fixed", spec.amount


def discount_result(
    spec: CreateDiscount, code: str, platform_id: str | None, ends_at: datetime, currency: str | None, tz: tzinfo
) -> dict[str, Any]:
    """What later steps read of a created code (stored under the step's `as:` name)."""
    kind, value = discount_terms(spec)
    display = f"{value.normalize():f}%" if kind == "percent" else format_money(value, currency)
    return {
        "code": code,
        "kind": kind,
        "amount": str(value),
        "value": display,
        "expires_at": ends_at.astimezone(UTC).isoformat(),
        "expires_on": ends_at.astimezone(tz).strftime("%d %B %Y"),
        "minimum_subtotal": str(spec.minimum_subtotal) if spec.minimum_subtotal is not None else None,
        "platform_id": platform_id,
    }


# ---- links: account invitations, review pages, exits by order --------------------------------------


def review_product(order: Any) -> str | None:
    """The product a review link points at: the order's first line with a product (None: no order, no product)."""
    for line in getattr(order, "line_items", None) or []:
        if line.product_id:
            return str(line.product_id)
    return None


def review_target(shop: dict[str, Any], product_page: str | None) -> str:
    """Where a review request sends the customer: the store's review page when it has one (`encore stores set
    --review-url`), else the product's page, else the store itself."""
    return str(shop.get("review_url") or product_page or shop.get("url") or "")


def exit_applies(scope: str, run_order_id: str | None, event_order_id: str | None) -> bool:
    """Whether an `exit_on` event ends a run: always for `exit_scope: customer`; for `order`, only a run
    started for the event's order."""
    if scope != "order":
        return True
    return run_order_id is not None and run_order_id == event_order_id
