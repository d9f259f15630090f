"""Previews: render a flow's emails for a sample customer, without sending or creating anything."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from encore_retention.connectors import email as email_api
from encore_retention.connectors.base import Discount, DiscountRequest
from encore_retention.core import events as ev
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import dates, rules
from encore_retention.flows.loader import FlowFile
from encore_retention.flows.models import FlowRun
from encore_retention.flows.rules import NEXT, Outcome, position_label
from encore_retention.flows.steps import EmailDraft, StepRunner, branches, shop_view, walk


@dataclass
class Preview:
    """One rendered email of a flow."""

    step: str
    template: str
    subject: str
    html: str
    text: str
    version: str = ""
    """The flow version shown (its digest's start): the templates of the files as they are now."""
    staff: bool = False
    """A `notify` step's alert to the store's staff, not an email to the customer."""


@dataclass
class PreviewRunner(StepRunner):
    """The engine's runner without a store or effects: every email is rendered and kept, nothing is checked,
    sent, created or recorded (a code reads PREFIXPREVIEW)."""

    rendered: list[Preview] = field(default_factory=list)
    codes: Callable[[DiscountRequest], Discount] | None = None
    """Who makes a `create_discount`'s code (a test send's real codes); None: the placeholder."""
    traced = False

    def trace(self, kind: str, message: str, **detail: Any) -> None:
        """A preview keeps no trace."""

    def recall(self, key: str) -> Any:
        """A preview has no earlier attempt."""
        return None

    def marketing_block(self, address: str, again: bool = False) -> str | None:
        """A preview shows every email, whatever the consent, the list, the hour or the cap."""
        return None

    def behind_another(self) -> bool:
        """A preview's email waits for no other."""
        return False

    def counted(self, outcome: str) -> None:
        """A preview counts nothing."""

    def redeemed(self, code: str) -> bool:
        """A preview's code is never used."""
        return False

    def deliver(self, email: EmailDraft, message: email_api.OutgoingEmail) -> Outcome:
        """Keep the rendered email."""
        label = position_label(self.run.position)
        self.rendered.append(
            Preview(label, email.spec.template, message.subject, message.html, message.text, staff=email.staff)
        )
        return NEXT

    def make_discount(self, key: str, request: DiscountRequest, earlier: Any) -> Discount | Outcome:
        """A placeholder code, made nowhere (unless the runner was given `codes`, which makes it)."""
        if self.codes is not None:
            return self.codes(request)
        return Discount(
            code=f"{request.prefix}PREVIEW".upper(), kind=request.kind, value=request.value, platform_id=None
        )

    def discount_made(self, key: str, result: dict[str, Any]) -> None:
        """Nothing is recorded."""

    def tag(self, key: str, tags: list[str], earlier: Any) -> Outcome:
        """Nothing is tagged."""
        return NEXT

    def post(self, key: str, spec: Any, body: dict[str, Any], earlier: Any) -> Outcome:
        """Nothing is posted."""
        return NEXT

    def fetch_link(self, key: str, kind: str, earlier: Any) -> str | Outcome:
        """A stand-in link, the platform not asked: the store's account page, or its review page (else the store)."""
        shop = shop_view(self.shop)
        if kind == "account_invite":
            return f"{shop['url'].rstrip('/')}/account"
        return rules.review_target(shop, None)


def sample(path: Path) -> dict[str, Any]:
    """A sample file (JSON or YAML): customer fields, optionally with `order`, `checkout` and `shop`."""
    data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of customer fields")
    return data


def _customer(data: dict[str, Any]) -> Customer:
    fields = {k: v for k, v in data.items() if k not in ("order", "checkout", "shop")}
    birthday = ev.parse_date(str(fields["birthday"])) if fields.get("birthday") else None
    return Customer(
        id=0,
        shop_id=0,
        platform_id=str(fields.get("id", "preview")),
        email=fields.get("email"),
        first_name=fields.get("first_name"),
        last_name=fields.get("last_name"),
        locale=fields.get("locale"),
        timezone=fields.get("timezone"),
        birthday=birthday,
        email_consent=fields.get("email_consent", True),
        tags=list(fields.get("tags") or []),
        has_account=fields.get("has_account"),
        orders_count=int(fields.get("orders_count", 0)),
        total_spent=Decimal(str(fields.get("total_spent", "0"))),
        first_order_at=ev.parse_datetime(fields.get("first_order_at")),
        last_order_at=ev.parse_datetime(fields.get("last_order_at")),
        predicted_next_order=ev.parse_datetime(fields.get("predicted_next_order")),
    )


def render_flow(
    flow_file: FlowFile,
    data: dict[str, Any],
    *,
    codes: Callable[[DiscountRequest], Discount] | None = None,
    until: str | None = None,
) -> list[Preview]:
    """Every email of a flow (both sides of each `if`) rendered for the sample customer.

    `codes` makes the codes of `create_discount` steps (default: a placeholder, made nowhere); `until`
    stops after the step at that label (so that no step after the email wanted is run).
    """
    shop_data = data.get("shop") or {}
    shop = Shop(
        id=0,
        platform="preview",
        domain=shop_data.get("domain", "shop.example.com"),
        name=shop_data.get("name", "Example Shop"),
        email=shop_data.get("email", "hello@shop.example.com"),
        currency=shop_data.get("currency", "EUR"),
        timezone=shop_data.get("timezone"),
        active=True,
    )
    context = {
        "event": {"type": "preview", "occurred_at": dates.now().isoformat()},
        "order": ev.Order.model_validate(data["order"]).model_dump(mode="json") if data.get("order") else None,
        "checkout": (
            ev.Checkout.model_validate(data["checkout"]).model_dump(mode="json") if data.get("checkout") else None
        ),
        "vars": {},
    }
    run = FlowRun(
        id=0,
        flow_key=flow_file.key,
        flow_name=flow_file.flow.name,
        context=context,
        position=[0],
        started_at=datetime.now(UTC),
    )
    runner = PreviewRunner(None, run, flow_file.flow, shop, _customer(data), codes=codes)  # type: ignore[arg-type]
    previews: list[Preview] = []
    for position, step in walk(flow_file.flow.steps):
        if branches(step):  # both sides are walked
            continue
        run.position = position
        before = len(runner.rendered)
        runner.run_step(step)
        if len(runner.rendered) > before:
            item = runner.rendered[-1]
            previews.append(
                Preview(
                    position_label(position),
                    item.template,
                    item.subject,
                    item.html,
                    item.text,
                    flow_file.digest[:12],
                    item.staff,
                )
            )
        if until is not None and position_label(position) == until:
            break
    return previews


def write(previews: list[Preview], flow_key: str, out: Path) -> list[Path]:
    """Write each preview as `<flow>-<n>-<template>.html` (and `.txt`); returns the HTML paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, preview in enumerate(previews, 1):
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", preview.template.rsplit(".", 1)[0])
        html_path = out / f"{flow_key}-{number}-{stem}.html"
        html_path.write_text(preview.html, encoding="utf-8")
        html_path.with_suffix(".txt").write_text(f"Subject: {preview.subject}\n\n{preview.text}", encoding="utf-8")
        paths.append(html_path)
    return paths
