"""Previews: render a flow's emails for a sample customer, without sending or creating anything."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from encore_retention.core import events as ev
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import dates
from encore_retention.flows.loader import FlowFile
from encore_retention.flows.models import FlowRun
from encore_retention.flows.schema import IfStep, SendEmailStep
from encore_retention.flows.steps import StepRunner, position_label


@dataclass
class Preview:
    """One rendered email of a flow."""

    step: str
    template: str
    subject: str
    html: str
    text: str


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
    )


def render_flow(flow_file: FlowFile, data: dict[str, Any]) -> list[Preview]:
    """Every email of a flow (both sides of each `if`) rendered for the sample customer."""
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
    runner = StepRunner(None, run, flow_file.flow, shop, _customer(data), dry_run=True)  # type: ignore[arg-type]
    previews: list[Preview] = []

    def walk(steps: list[Any], prefix: list[Any]) -> None:
        for index, step in enumerate(steps):
            run.position = [*prefix, index]
            if isinstance(step, IfStep):
                walk(step.then, [*prefix, index, "then"])
                walk(step.else_, [*prefix, index, "else"])
                continue
            if step.__class__.__name__ in ("WaitStep", "StopStep", "HttpStep", "TagCustomerStep"):
                continue
            before = len(runner.rendered)
            runner.run_step(step)
            if isinstance(step, SendEmailStep) and len(runner.rendered) > before:
                item = runner.rendered[-1]

                previews.append(
                    Preview(position_label(run.position), item["template"], item["subject"], item["html"], item["text"])
                )

    walk(flow_file.flow.steps, [])
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
