"""The admin's email previews: any flow's email, for a sample or a real customer, desktop and mobile."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, abort, flash, g, get_flashed_messages, redirect, render_template, request, url_for
from markupsafe import escape

from encore_retention.connectors.base import PlatformError
from encore_retention.connectors.email import PermanentEmailError, TransientEmailError
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import parse_id
from encore_retention.flows import loader, trial
from encore_retention.flows import preview as previews
from encore_retention.web.admin.auth import blueprint
from encore_retention.web.admin.customers import customer_or_404
from encore_retention.web.admin.flows import flow_choices

log = logging.getLogger("encore.admin")
WIDTHS = {"desktop": 680, "mobile": 375}


def render_preview(flow_key: str, step: str | None, customer_id: int | None) -> tuple[Any, list[Any], Any]:
    """(the flow file, its rendered emails, the selected one) for a sample or a real customer."""

    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None:
        abort(404, f"no flow {flow_key!r}")
    data = _sample(customer_id).data
    rendered = previews.render_flow(flow_file, data)
    selected = next((p for p in rendered if p.step == step), rendered[0] if rendered else None)
    return flow_file, rendered, selected


def _sample(customer_id: int | None) -> trial.Sample:
    """Whom the preview or test send is for: the viewer's customer (else 404), or Ada in the viewer's first store."""
    with session_scope() as db:
        row = customer_or_404(db, customer_id) if customer_id is not None else None
        return trial.sample_for(db, row, shop_ids=g.viewer.shop_ids)


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
        sent=" ".join(get_flashed_messages()),
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


@blueprint.post("/preview/test-send")
def preview_test_send():
    """Send the previewed email to the address given, marked as a test (nothing recorded; a code is a placeholder
    unless `real_codes` is ticked, then the store makes it as a test code for that address)."""
    flow_key = request.form.get("flow", "")
    step = request.form.get("step") or None
    to = (request.form.get("to") or "").strip()
    raw_customer = request.form.get("customer") or ""
    customer_id = parse_id(raw_customer) if raw_customer else None
    if raw_customer and customer_id is None:
        abort(400, "not a customer id")
    flow_file = loader.registry().flows.get(flow_key)
    if flow_file is None:
        abort(404, f"no flow {flow_key!r}")
    sample = _sample(customer_id)
    try:
        sent = trial.send_tests(
            flow_file, to, sample.data, step, sample.shop, codes=bool(request.form.get("real_codes"))
        )
    except ValueError as exc:
        said = f"not sent: {exc}"
    except (TransientEmailError, PermanentEmailError) as exc:
        said = f"not sent: the mail server refused it ({type(exc).__name__})"
    except PlatformError as exc:
        said = f"not sent: the store did not make the test code ({exc.message[:150]})"
    else:
        codes = [code for item in sent for code in item.codes]
        said = f"test sent to {to}: " + "; ".join(item.subject for item in sent)
        said += f" (real test code {', '.join(codes)})" if codes else ""
    log.info("test email from the admin", extra={"flow": flow_key, "step": step, "sent": not said.startswith("not")})
    flash(said[:300])  # shown once, from the session: a link can't put words on the page
    return redirect(url_for("admin.preview", flow=flow_key, step=step, customer=customer_id))
