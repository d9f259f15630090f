"""The admin's email previews: any flow's email, for a sample or a real customer, desktop and mobile."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, abort, g, render_template, request
from markupsafe import escape
from sqlalchemy import select

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Order, Shop, parse_id
from encore_retention.flows import loader
from encore_retention.flows import preview as previews
from encore_retention.web.admin.auth import blueprint
from encore_retention.web.admin.customers import customer_or_404
from encore_retention.web.admin.flows import flow_choices

log = logging.getLogger("encore.admin")
SAMPLE_CUSTOMER: dict[str, Any] = {
    "id": "sample",
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "orders_count": 1,
    "total_spent": "84.00",
    "email_consent": True,
    "birthday": "1990-12-10",
    "tags": ["vip"],
    "order": {
        "id": "1001",
        "number": "1001",
        "total": "84.00",
        "subtotal": "76.00",
        "currency": "EUR",
        "line_items": [
            {"title": "Linen shirt", "quantity": 1, "price": "56.00"},
            {"title": "Canvas tote", "quantity": 1, "price": "20.00"},
        ],
    },
    "checkout": {
        "token": "sample-checkout",
        "email": "ada@example.com",
        "total": "76.00",
        "currency": "EUR",
        "recovery_url": "https://shop.example.com/checkouts/sample/recover",
        "line_items": [{"title": "Linen shirt", "quantity": 1, "price": "56.00"}],
    },
}
WIDTHS = {"desktop": 680, "mobile": 375}


def customer_sample(customer: Customer, shop: Shop | None, db: Any) -> dict[str, Any]:
    """A preview sample from a real customer: ledger fields, their latest order, their shop."""
    data: dict[str, Any] = {
        "id": customer.platform_id,
        "email": customer.email,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "locale": customer.locale,
        "timezone": customer.timezone,
        "birthday": customer.birthday.isoformat() if customer.birthday else None,
        "email_consent": bool(customer.email_consent),
        "tags": list(customer.tags or []),
        "orders_count": customer.orders_count or 0,
        "total_spent": str(customer.total_spent or 0),
        "first_order_at": customer.first_order_at.isoformat() if customer.first_order_at else None,
        "last_order_at": customer.last_order_at.isoformat() if customer.last_order_at else None,
    }
    latest = db.execute(
        select(Order).where(Order.customer_id == customer.id).order_by(Order.placed_at.desc()).limit(1)
    ).scalar_one_or_none()
    if latest is not None:
        data["order"] = {
            "id": latest.platform_id,
            "number": latest.number,
            "total": str(latest.total or 0),
            "currency": latest.currency,
            "created_at": latest.placed_at.isoformat() if latest.placed_at else None,
            "discount_codes": list(latest.discount_codes or []),
        }
    else:
        data["order"] = SAMPLE_CUSTOMER["order"]
    data["checkout"] = {**SAMPLE_CUSTOMER["checkout"], "email": customer.email}
    if shop is not None:
        data["shop"] = {
            "domain": shop.domain,
            "name": shop.name or shop.domain,
            "email": shop.email,
            "currency": shop.currency or "EUR",
            "timezone": shop.timezone,
        }
    return data


def render_preview(flow_key: str, step: str | None, customer_id: int | None) -> tuple[Any, list[Any], Any]:
    """(the flow file, its rendered emails, the selected one) for a sample or a real customer."""

    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None:
        abort(404, f"no flow {flow_key!r}")
    if customer_id is not None:
        with session_scope() as db:
            row = customer_or_404(db, customer_id)
            data = customer_sample(row, db.get(Shop, row.shop_id), db)
    else:
        data = dict(SAMPLE_CUSTOMER)
        with session_scope() as db:
            shop = db.execute(
                select(Shop).where(Shop.id.in_(g.viewer.shop_ids or [-1])).order_by(Shop.id).limit(1)
            ).scalar_one_or_none()
            if shop is not None:
                data["shop"] = {
                    "domain": shop.domain,
                    "name": shop.name or shop.domain,
                    "email": shop.email,
                    "currency": shop.currency or "EUR",
                    "timezone": shop.timezone,
                }
    rendered = previews.render_flow(flow_file, data)
    selected = next((p for p in rendered if p.step == step), rendered[0] if rendered else None)
    return flow_file, rendered, selected


def _customer_arg() -> int | None:
    """The `customer` a preview is for: none (the sample customer), or a row id (else no such customer, 404)."""
    value = request.args.get("customer", "")
    if not value:
        return None
    customer_id = parse_id(value)
    if customer_id is None:
        abort(404, f"no customer {value[:40]!r}")
    return customer_id


@blueprint.get("/preview")
def preview():
    """A flow's email at desktop and mobile width, for the sample or a real customer."""
    choices = flow_choices()
    flow_key = request.args.get("flow") or next((key for key, _, steps in choices if steps), None)
    if flow_key is None:
        return render_template(
            "admin/preview.html",
            choices=choices,
            flow=None,
            rendered=[],
            selected=None,
            widths=WIDTHS,
            customer_id=None,
            error=None,
        )
    customer_id = _customer_arg()
    flow_file, rendered, selected, error = _render_preview(flow_key, customer_id)
    return render_template(
        "admin/preview.html",
        choices=choices,
        flow=flow_file,
        flow_key=flow_key,
        rendered=rendered,
        selected=selected,
        widths=WIDTHS,
        customer_id=customer_id,
        error=error,
    )


def _render_preview(flow_key: str, customer_id: int | None) -> tuple[Any, list[Any], Any, str | None]:
    """`render_preview` for the request's step, with the error a template raised (shown to the marketer,
    never a 500) as the last item."""
    try:
        return (*render_preview(flow_key, request.args.get("step"), customer_id), None)
    except Exception as exc:
        if getattr(exc, "code", None) == 404:
            raise
        log.warning("preview failed", extra={"flow": flow_key, "error": str(exc)[:300]})
        return None, [], None, f"{type(exc).__name__}: {exc}"


@blueprint.get("/preview/email")
def preview_email():
    """The rendered HTML of one email (shown in the preview's frames; scripts never run there)."""
    _, _, selected, error = _render_preview(request.args.get("flow", ""), _customer_arg())
    if error is not None:
        return Response(
            f"<p>This email can't be rendered: {escape(error)}</p>",
            status=422,
            content_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": "script-src 'none'; frame-ancestors 'self'"},
        )
    if selected is None:
        abort(404, "this flow sends no email")
    response = Response(selected.html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = "script-src 'none'; frame-ancestors 'self'"
    return response
