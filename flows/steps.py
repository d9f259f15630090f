"""The steps of a flow run: one method per step kind, each doing at most one keyed side effect.

`StepRunner.run_step(step)` dispatches by the step's key (`wait` -> `step_wait()`, `send_email` ->
`step_send_email()`…) and returns an `Outcome`: go on, wait until an instant, enter a branch, or stop.
A side effect's idempotency key is claimed in the store (`_claim`, committed) before acting and its
result recorded after (`_finish`), so a retried job finds the claim instead of acting twice.
"""

from __future__ import annotations

import http.client
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import bindparam, func, select

from encore_retention.connectors import base as connectors
from encore_retention.connectors import email as email_api
from encore_retention.connectors import http as outbound
from encore_retention.connectors.base import DiscountRequest, PlatformError
from encore_retention.connectors.email import get_transport
from encore_retention.connectors.email.base import header_text, mailbox
from encore_retention.core import events as ev
from encore_retention.core.metrics import EMAILS, platform_error
from encore_retention.core.settings import get_settings
from encore_retention.core.store.ledger import cast_table
from encore_retention.core.store.models import Customer, Order, Shop
from encore_retention.core.store.unit import Part, Unit
from encore_retention.core.unsubscribe import is_suppressed, unsubscribe_url
from encore_retention.flows import dates, expressions, render, versions
from encore_retention.flows.models import FlowEffect, FlowRun, Run, add_trace
from encore_retention.flows.schema import Flow, step_kind

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
_RECENT_EMAILS = (
    select(func.count())
    .select_from(FlowEffect)
    .where(
        FlowEffect.customer_id == bindparam("customer_id"),
        FlowEffect.kind == "email",
        FlowEffect.marketing.is_(True),
        FlowEffect.created_at > bindparam("since"),
        FlowEffect.status.in_(("done", "pending", "uncertain")),
    )
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


# ---- positions -------------------------------------------------------------------------------------


def container_at(steps: list[Any], prefix: list[Any]) -> list[Any]:
    """The step list a position prefix points into ([] -> the flow's steps; [3, "then"] -> a branch)."""
    current = steps
    for index in range(0, len(prefix), 2):
        step = current[prefix[index]]
        current = step.then if prefix[index + 1] == "then" else step.else_
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
    """`steps[3].then[0]` for a position."""
    label = f"steps[{position[0]}]" if position else "steps"
    for index in range(1, len(position), 2):
        label += f".{position[index]}[{position[index + 1]}]"
    return label


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
        "birthday": customer.birthday,
        "email_consent": bool(customer.email_consent),
        "tags": list(customer.tags or []),
        "has_account": bool(customer.has_account),
        "created_at": customer.platform_created_at,
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
    }


class DiscountView:
    """A created discount as later steps see it; `redeemed` asks the ledger, then the platform, when read."""

    def __init__(self, data: dict[str, Any], runner: StepRunner | None) -> None:
        self._data = data
        self._runner = runner
        self.code: str = data["code"]
        self.kind: str = data["kind"]
        self.amount = Decimal(str(data["amount"]))
        self.value: str = data["value"]
        self.expires_at = datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None
        self.expires_on: str = data.get("expires_on") or ""
        self.minimum_subtotal = Decimal(data["minimum_subtotal"]) if data.get("minimum_subtotal") else None

    @property
    def redeemed(self) -> bool:
        """Whether the customer has used the code (orders in the ledger, else the platform if it can tell)."""
        return self._runner.redeemed(self.code) if self._runner else False

    def __str__(self) -> str:
        return self.code


@dataclass
class Outcome:
    """What a step asks the engine to do next."""

    action: str  # "next" | "wait" (then the next step) | "defer" (then this step again) | "enter" | "stop"
    until: datetime | None = None
    position: list[Any] | None = None
    reason: str = ""


NEXT = Outcome("next")


@dataclass
class StepRunner:
    """Runs the steps of one run inside one session; `dry_run` renders without side effects (previews)."""

    session: Unit
    run: Run
    flow: Flow
    shop: Shop
    customer: Customer | None
    dry_run: bool = False
    rendered: list[dict[str, Any]] = field(default_factory=list)

    # -- context ---------------------------------------------------------------------------------
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
        stored = dict(self.run.context or {})
        stored["vars"] = {**(stored.get("vars") or {}), name: value}
        if self.session is None:  # a preview without a store
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

    # -- conditions ------------------------------------------------------------------------------
    def conditions_hold(self, when: str) -> bool:
        """Check every flow condition, tracing each result; False stops the run."""
        ctx = self.context()
        for condition in self.flow.conditions:
            try:
                result = expressions.holds(condition, ctx)
            except expressions.ExpressionError as exc:
                self.trace("condition", f"{condition} -> error: {exc}", expression=condition, result=None)
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

    # -- dispatch --------------------------------------------------------------------------------
    def run_step(self, step: Any) -> Outcome:
        """Run one step by its kind."""
        kind = step_kind(step)
        if kind is None:
            raise ValueError(f"not a step: {step!r}")
        return getattr(self, "step_" + kind)(step)

    def step_wait(self, step: Any) -> Outcome:
        """Pause until the wait's end (a duration in local calendar terms, then a local time of day)."""
        tz = self.tz()
        until = dates.now()
        if step.wait.for_:
            until = dates.add_duration(until, step.wait.for_, tz)
        if step.wait.until is not None:
            until = dates.next_local_time(until, step.wait.until, tz)
        self.trace("wait", f"waiting until {until.isoformat()}", until=until.isoformat())
        return Outcome("wait", until=until)

    def step_if(self, step: Any) -> Outcome:
        """Enter `then` or `else` depending on the expression."""
        try:
            result = bool(expressions.holds(step.if_, self.context()))
        except expressions.ExpressionError as exc:
            self.trace("condition", f"if {step.if_} -> error: {exc}", expression=step.if_, result=None)
            result = False
        self.trace("condition", f"if {step.if_} -> {'true' if result else 'false'}", expression=step.if_, result=result)
        branch = step.then if result else step.else_
        if not branch:
            return NEXT
        return Outcome("enter", position=[*self.run.position, "then" if result else "else", 0])

    def step_stop(self, step: Any) -> Outcome:
        """End the run."""
        reason = step.stop if isinstance(step.stop, str) else "stop step"
        return Outcome("stop", reason=reason)

    def step_send_email(self, step: Any) -> Outcome:
        """Render and send one email, after the marketing checks; suppressions are traced with their reason."""
        spec = step.send_email
        customer = self.customer
        ctx = self.context()
        address = (expressions.render_string(spec.to, ctx).strip() if spec.to else None) or (
            customer.email if customer else None
        )
        if not address:
            if self.run.context.get("checkout") and ctx["checkout"] and ctx["checkout"].email:
                address = ctx["checkout"].email
        key = self.key("email")
        existing = None if self.dry_run else self._effect(key)
        # A claim still pending is a send interrupted before the server's answer was recorded (the worker
        # died, or Redis went away): it is sent again under the same key, so with the same Message-ID,
        # and a copy the server did take shows as one email. Anything else recorded was done already.
        resend = existing is not None and existing.status == "pending"
        if existing is not None and not resend:
            return NEXT
        if not address:
            return self._suppressed("no email address")
        if self.dry_run:
            address = address or "preview@example.com"
        address = header_text(address)
        try:  # `to` may be `Name <address>`: consent, suppressions and unsubscribing go by the address
            recipient = mailbox(address)[1]
        except ValueError:
            recipient = address  # not one address: refused when the message is built, and traced
        if self.flow.marketing and not self.dry_run:
            reason = self._marketing_block(recipient, again=resend)
            if reason == "quiet hours":
                assert self.flow.quiet_hours is not None
                until = dates.next_local_time(dates.now(), self.flow.quiet_hours.to, self.tz())
                self.trace("deferred", f"quiet hours: sending at {until.isoformat()}", reason="quiet hours")
                return Outcome("defer", until=until)
            if reason:
                return self._suppressed(reason)

        unsubscribe = unsubscribe_url(self.shop.id, recipient) if self.flow.marketing else None
        subject = header_text(expressions.render_string(spec.subject, ctx))  # as sent: one line
        preheader = expressions.render_string(spec.preheader, ctx) if spec.preheader else None
        ctx.update(unsubscribe_url=unsubscribe, subject=subject, preheader=preheader)
        pinned = versions.pinned(self.session, self.run.flow_digest, self.run.flow_key) if self.session else None
        html, text = render.render_email(spec.template, ctx, pinned)
        from_addr = expressions.render_string(spec.from_, ctx) if spec.from_ else None
        reply_to = expressions.render_string(spec.reply_to, ctx) if spec.reply_to else None
        if self.dry_run:
            self.rendered.append(
                {"to": address, "subject": subject, "html": html, "text": text, "template": spec.template}
            )
            return NEXT

        message = email_api.OutgoingEmail(
            to=address,
            subject=subject,
            html=html,
            text=text,
            idempotency_key=key,
            marketing=self.flow.marketing,
            from_addr=from_addr or None,
            reply_to=reply_to or None,
            preheader=preheader,
            unsubscribe_url=unsubscribe,
        )
        self._claim(key, "email", existing)
        if resend:
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
                "error",
                f"email {spec.template!r} to {address} failed permanently: {exc}",
                template=spec.template,
                key=key,
            )
            return NEXT
        self._finish(key, "done", {"message_id": message_id, "to": address, "subject": subject})
        EMAILS.labels(flow=self.run.flow_key, outcome="sent").inc()
        self.trace(
            "sent",
            f"sent {spec.template!r} to {address}: {subject}",
            template=spec.template,
            to=address,
            subject=subject,
            message_id=message_id,
            key=key,
        )
        return NEXT

    def _suppressed(self, reason: str) -> Outcome:
        if not self.dry_run:
            EMAILS.labels(flow=self.run.flow_key, outcome=reason).inc()
        self.trace("suppressed", f"email not sent: {reason}", reason=reason)
        return NEXT

    def _marketing_block(self, address: str, again: bool = False) -> str | None:
        """Why a marketing email must not go out now (None when it may).

        `again`: the email's interrupted first attempt is sent again; consent and the unsubscribe list
        still hold, but not quiet hours or the frequency cap, which it was admitted under (and counts in).
        """

        customer = self.customer
        if self.flow.consent_required and not (customer and customer.email_consent):
            return "no consent"
        reason = is_suppressed(self.session, self.shop.id, address)
        if reason:
            return "unsubscribed" if reason == "unsubscribed" else f"suppressed ({reason})"
        if again:
            return None
        if self.flow.quiet_hours and dates.in_window(
            dates.now(), self.flow.quiet_hours.from_, self.flow.quiet_hours.to, self.tz()
        ):
            return "quiet hours"
        if self.flow.frequency_cap and customer is not None:
            since = dates.now() - self.flow.frequency_cap
            recent = (
                self.session.connection()
                .execute(_RECENT_EMAILS, {"customer_id": customer.id, "since": since})
                .scalar_one()
            )
            if recent:
                return "frequency cap"
        return None

    def step_create_discount(self, step: Any) -> Outcome:
        """Create a unique single-use code for the customer (idempotent by the step's key)."""
        spec = step.create_discount
        key = self.key("discount")
        existing = None if self.dry_run else self._effect(key)
        if existing is not None and existing.status == "done" and existing.result:
            self.set_var(spec.as_, existing.result)
            return NEXT
        kind: Literal["percent", "fixed"] = "percent" if spec.percent is not None else "fixed"
        value = spec.percent if spec.percent is not None else spec.amount
        assert value is not None
        ends_at = dates.now() + spec.expires_in
        currency = self.shop.currency or ((self.run.context or {}).get("order") or {}).get("currency")
        if self.dry_run:
            code = f"{spec.prefix}PREVIEW".upper()
            platform_id = None
        else:
            customer = self.customer
            request = DiscountRequest(
                idempotency_key=f"encore-{self.shop.id}-{key}",
                kind=kind,
                value=value,
                prefix=spec.prefix,
                currency=currency,
                starts_at=dates.now(),
                ends_at=ends_at,
                minimum_subtotal=spec.minimum_subtotal,
                usage_limit=spec.usage_limit,
                customer_id=(
                    customer.platform_id
                    if customer and spec.restrict_to_customer and not customer.platform_id.startswith("email:")
                    else None
                ),
                customer_email=customer.email if customer and spec.restrict_to_customer else None,
                title=f"{self.flow.name} ({self.run.id})",
            )
            self._claim(key, "discount", existing)
            try:
                discount = connectors.get_connector(self.shop).create_discount(request)
            except PlatformError as exc:
                platform_error(self.shop.platform, exc)
                if exc.transient:
                    raise TransientStepError(f"discount not created yet: {exc.message}", exc.retry_after) from exc
                self._finish(key, "failed", {"error": exc.message, "status": exc.status})
                self.trace("error", f"discount not created: {exc.message}", status=exc.status)
                return Outcome("stop", reason=f"discount failed: {exc.message}")
            code, platform_id = discount.code, discount.platform_id
            ends_at = discount.ends_at or ends_at
        display = f"{value.normalize():f}%" if kind == "percent" else render.format_money(value, currency)
        local_end = ends_at.astimezone(self.tz())
        result = {
            "code": code,
            "kind": kind,
            "amount": str(value),
            "value": display,
            "expires_at": ends_at.astimezone(UTC).isoformat(),
            "expires_on": local_end.strftime("%d %B %Y"),
            "minimum_subtotal": str(spec.minimum_subtotal) if spec.minimum_subtotal is not None else None,
            "platform_id": platform_id,
        }
        if not self.dry_run:
            self._finish(key, "done", result)
            self.trace("discount", f"created code {code} ({display})", code=code, key=key)
        self.set_var(spec.as_, result)
        return NEXT

    def step_tag_customer(self, step: Any) -> Outcome:
        """Add tags on the platform and in the ledger."""
        tags = [expressions.render_string(t, self.context()) for t in step.tag_customer]
        customer = self.customer
        if customer is None or self.dry_run:
            return NEXT
        key = self.key("tag")
        existing = self._effect(key)
        if existing is not None and existing.status == "done":
            return NEXT

        self._claim(key, "tag", existing)
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

    def step_http(self, step: Any) -> Outcome:
        """POST the step's JSON (values rendered) with an Idempotency-Key header, to a public address only.

        A URL whose host is not public (`connectors.http.refusal`) and not in HTTP_STEP_ALLOW_HOSTS
        fails the step once, traced, without a retry; a redirect is not followed.
        """

        spec = step.http
        ctx = self.context()
        body = {k: expressions.render_string(v, ctx) if isinstance(v, str) else v for k, v in spec.json_.items()}
        if self.dry_run:
            return NEXT
        key = self.key("http")
        existing = self._effect(key)
        if existing is not None and existing.status == "done":
            return NEXT
        self._claim(key, "http", existing)
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

    # -- side-effect records ---------------------------------------------------------------------
    def _effect(self, key: str) -> FlowEffect | None:
        """The record of this step's side effect from an earlier attempt (none for a run begun in this session)."""
        if self.session.inserted(FlowRun, self.run.id):
            return None
        loaded = self.session.part(_Memo).effects.pop(self.run.id, None)
        if loaded is not None:
            return loaded.get(key)
        return self.session.get(FlowEffect, key)

    def _claim(self, key: str, kind: str, existing: FlowEffect | None = None) -> None:
        """Record (and commit) the intent before acting, so an interrupted act is known on retry.

        An effect claimed by an earlier attempt (`existing`) is acted on again under the same key.
        """
        if existing is not None:
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
                "marketing": kind == "email" and self.flow.marketing,
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

    def redeemed(self, code: str) -> bool:
        """Whether an order in the ledger used `code`, else what the platform says."""
        if self.dry_run:
            return False
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
