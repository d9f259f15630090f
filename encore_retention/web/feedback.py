"""`GET|POST /feedback/<token>`: the landing page of the 1-to-5 links of "How was your order?".

GET shows the score the link names, changeable, with an optional comment box, and records nothing:
mail scanners and link previews open links, and must not answer for the customer. Only the page's
POST records, with the form's own signed field (a cross-site post, or a client posting to the link
blindly, records nothing). An answer is kept once per customer and order (`core.feedback`): a second
post shows the first answer. A recorded answer becomes a `feedback.received` event, queued for the
worker like a webhook's; should the queue not answer, the page says to try again, and the next post
queues the event it missed. A forged link, or one whose customer was erased, gets a 404.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from flask import Blueprint, render_template_string, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select

from encore_retention.core import events as ev
from encore_retention.core import feedback
from encore_retention.core.queue import enqueue_event
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.core.store.unit import Unit
from encore_retention.flows.models import FlowRun

log = logging.getLogger("encore.feedback")

blueprint = Blueprint("feedback", __name__)

FORM_SALT = "encore-feedback-form"
FORM_MAX_AGE = 7 * 24 * 3600  # a page left open for a week is answered after a reload
LABELS = {1: "Very poor", 2: "Poor", 3: "OK", 4: "Good", 5: "Excellent"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#222}
fieldset{border:0;padding:0;margin:1rem 0;display:flex;gap:.5rem;flex-wrap:wrap}
label.score{border:1px solid #bbb;border-radius:4px;padding:.4rem .7rem;cursor:pointer}
textarea{width:100%;min-height:6rem;font:inherit;box-sizing:border-box}
button{font-size:1rem;padding:.6rem 1.2rem;border:0;border-radius:4px;background:#222;color:#fff;cursor:pointer}</style>
</head><body>
<h1>{{ title }}</h1>
{% if state == "ask" %}
<p>{{ shop }} asked how your order{{ order }} went.{% if problem %} <strong>{{ problem }}</strong>{% endif %}</p>
<form method="post" id="feedback">
<input type="hidden" name="confirm" value="{{ confirm }}">
<fieldset><legend>Your score, from 1 (very poor) to 5 (excellent)</legend>
{% for value, label in labels %}<label class="score"><input type="radio" name="score" value="{{ value }}"
{% if value == score %} checked{% endif %}> {{ value }} · {{ label }}</label>{% endfor %}
</fieldset>
<p><label for="comment">Anything you would like to tell us? (optional)</label><br>
<textarea id="comment" name="comment" maxlength="{{ comment_max }}"></textarea></p>
<button type="submit">Send my answer</button>
</form>
{% elif state == "done" %}
<p>Thank you: your answer ({{ score }} out of 5) reached {{ shop }}.</p>
{% if comment %}<p>Your comment: “{{ comment }}”</p>{% endif %}
{% elif state == "retry" %}
<p>Your answer could not be passed on just now. Please try again in a minute: nothing is counted twice.</p>
{% else %}
<p>This feedback link is not valid. Reply to the email instead: it reaches the store.</p>
{% endif %}
</body></html>"""


def _confirmer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_settings().secret_key, salt=FORM_SALT)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def form_token(token: str) -> str:
    """The form's signed field: it ties a POST to a page shown for this very link, within FORM_MAX_AGE."""
    return _confirmer().dumps(_digest(token))


def form_confirmed(token: str, given: str) -> bool:
    """Whether a POST carries the field of a page shown for this link."""
    try:
        value = _confirmer().loads(given, max_age=FORM_MAX_AGE)
    except (SignatureExpired, BadSignature):
        return False
    return isinstance(value, str) and hmac.compare_digest(value, _digest(token))


def _page(status: int = 200, **values: Any):
    return render_template_string(PAGE, labels=list(LABELS.items()), comment_max=feedback.COMMENT_MAX, **values), status


def _invalid():
    return _page(404, title="Link not valid", state="invalid")


def _found(session: Unit, asked: feedback.Asked) -> tuple[Shop, Customer] | None:
    """The shop and customer a link names, None when either is gone (erased, uninstalled)."""
    shop = session.get(Shop, asked.shop_id)
    customer = session.get(Customer, asked.customer_id)
    if shop is None or customer is None or customer.shop_id != shop.id:
        return None
    return shop, customer


def _asking_order(session: Unit, asked: feedback.Asked) -> ev.Order | None:
    """The order asked about as the asking run kept it (its lines, for a review link), when the run is still there."""
    if not asked.run_id:
        return None
    stored = session.execute(
        select(FlowRun.context).where(FlowRun.id == asked.run_id, FlowRun.customer_id == asked.customer_id)
    ).scalar_one_or_none()
    order = (stored or {}).get("order")
    if not order or (asked.order_id and str(order.get("id")) != asked.order_id):
        return None
    try:
        return ev.Order.model_validate(order)
    except ValueError:
        return None


def _order_label(order_id: str | None, order: ev.Order | None) -> str:
    number = (order.number if order is not None else None) or order_id
    return f" #{str(number).lstrip('#')}" if number else ""


def _done(shop: Shop, answer: Any):
    name = shop.name or shop.domain
    return _page(title="Thank you", state="done", shop=name, score=answer.score, comment=answer.comment)


@blueprint.get("/feedback/<token>")
def ask(token: str):
    """The page of a feedback link: the score to confirm and a comment box (GET never records)."""
    asked = feedback.read_token(token)
    if asked is None:
        return _invalid()
    with session_scope() as session:
        found = _found(session, asked)
        if found is None:
            return _invalid()
        shop, _ = found
        answer = feedback.answer_of(session, asked)
        if answer is not None:
            return _done(shop, answer)
        order = _asking_order(session, asked)
        name = shop.name or shop.domain
    return _page(
        title="How was your order?",
        state="ask",
        shop=name,
        order=_order_label(asked.order_id, order),
        score=asked.score,
        confirm=form_token(token),
    )


@blueprint.post("/feedback/<token>")
def answer(token: str):
    """Record the answer once and queue its `feedback.received` event."""
    asked = feedback.read_token(token)
    if asked is None:
        return _invalid()
    score = ev.integer(request.form.get("score"))
    score = score if score in feedback.SCORES else asked.score
    comment = feedback.clean_comment(request.form.get("comment"))
    with session_scope() as session:
        found = _found(session, asked)
        if found is None:
            return _invalid()
        shop, customer = found
        if feedback.answer_of(session, asked) is None and not form_confirmed(token, request.form.get("confirm", "")):
            order = _asking_order(session, asked)
            return _page(
                400,
                title="How was your order?",
                state="ask",
                shop=shop.name or shop.domain,
                order=_order_label(asked.order_id, order),
                score=score,
                confirm=form_token(token),
                problem="Please confirm with the button below.",
            )
        row, new = feedback.record_answer(session, asked, score, comment)
        session.commit()
        if not row.queued:  # new, or an earlier post whose event did not reach the queue
            event = feedback.answer_event(shop, customer, row, _asking_order(session, asked))
            try:
                enqueue_event(event)
            except Exception:  # noqa: BLE001 - Redis unreachable: kept, and queued at the next post
                log.exception("feedback recorded, its event not queued", extra={"shop_id": shop.id})
                return _page(503, title="Please try again", state="retry")
            session.stage(row, queued=True)
            session.commit()
        log.info("feedback recorded", extra={"shop_id": shop.id, "score": row.score, "new": new})
        return _done(shop, row)
