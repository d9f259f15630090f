"""Signed feedback links ("How was your order?", answered 1 to 5) and the recording of an answer.

A feedback email shows five links, one per score. Each is a signed token (itsdangerous, SECRET_KEY)
naming the shop, the customer's ledger row, the order asked about (and the run that asked) and the
score; it names no address. Opening a link changes nothing (mail scanners fetch links): the landing
page (`web/feedback.py`) shows the score with an optional comment box, and only its POST records.

`record_answer` keeps one answer per customer and order (a link clicked twice records once) and
`answer_event` makes the `feedback.received` event the worker applies: the ledger keeps the score as
the customer's `feedback_score`, and flows trigger on it (`event.score`, `event.order_id`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, NamedTuple

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select

from encore_retention.core import events as ev
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import Customer, Feedback, Shop, utcnow
from encore_retention.core.store.unit import Unit

SALT = "encore-feedback"
SCORES = (1, 2, 3, 4, 5)
COMMENT_MAX = 2000
TOPIC = "encore/feedback"


class Asked(NamedTuple):
    """What a feedback link names: the shop, the customer's ledger row, the order (None: the run alone), the score."""

    shop_id: int
    customer_id: int
    order_id: str | None
    run_id: int
    score: int

    @property
    def subject(self) -> str:
        """What was asked about, once per customer: the order, else the run that asked."""
        return f"order:{self.order_id}" if self.order_id else f"run:{self.run_id}"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(get_settings().secret_key, salt=SALT)


def make_token(asked: Asked) -> str:
    """The signed token of one answer's link."""
    return _serializer().dumps(list(asked))


def read_token(token: str) -> Asked | None:
    """What a token names, or None when it is forged, mangled or out of range."""
    try:
        shop_id, customer_id, order_id, run_id, score = _serializer().loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    ints = (shop_id, customer_id, run_id, score)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in ints) or score not in SCORES:
        return None
    if order_id is not None and (not isinstance(order_id, str) or len(order_id) > ev.KEY_MAX):
        return None
    return Asked(shop_id, customer_id, order_id, run_id, score)


def feedback_url(asked: Asked) -> str:
    """The public link of one answer."""
    return f"{get_settings().APP_URL.rstrip('/')}/feedback/{make_token(asked)}"


class FeedbackLinks:
    """`feedback_url(score)` in an email template: the signed link answering the run's order with `score`."""

    __slots__ = ("shop_id", "customer_id", "order_id", "run_id")

    def __init__(self, shop_id: int, customer_id: int, order_id: str | None, run_id: int) -> None:
        self.shop_id, self.customer_id, self.order_id, self.run_id = shop_id, customer_id, order_id, run_id

    def __call__(self, score: Any) -> str:
        """The link for a score from 1 to 5 (ValueError for another)."""
        if isinstance(score, bool) or score not in SCORES:
            raise ValueError(f"feedback_url: a score is 1, 2, 3, 4 or 5, not {score!r}")
        return feedback_url(Asked(self.shop_id, self.customer_id, self.order_id, self.run_id, int(score)))

    def __repr__(self) -> str:
        return f"FeedbackLinks(order={self.order_id!r}, run={self.run_id})"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_comment(text: Any) -> str | None:
    """A comment as kept: control characters removed, spaces trimmed, at most COMMENT_MAX characters; None if empty."""
    if not isinstance(text, str):
        return None
    cleaned = _CONTROL.sub("", text).strip()[:COMMENT_MAX]
    return cleaned or None


def answer_of(session: Unit, asked: Asked) -> Feedback | None:
    """The answer already recorded for what a link asks about, if any."""
    return session.execute(
        select(Feedback).where(
            Feedback.shop_id == asked.shop_id,
            Feedback.customer_id == asked.customer_id,
            Feedback.subject == asked.subject,
        )
    ).scalar_one_or_none()


def record_answer(session: Unit, asked: Asked, score: int, comment: str | None) -> tuple[Feedback, bool]:
    """Record an answer once (the row and whether this call made it); a second answer finds the first."""
    values = {
        "shop_id": asked.shop_id,
        "customer_id": asked.customer_id,
        "subject": asked.subject,
        "run_id": asked.run_id or None,
        "order_id": asked.order_id,
        "score": score,
        "comment": comment,
        "queued": False,
        "created_at": utcnow(),
    }
    made = session.insert_new(Feedback, values, ["shop_id", "customer_id", "subject"], attach=False)
    row = answer_of(session, asked)
    assert row is not None
    return row, made is not None


def answer_event(shop: Shop, customer: Customer, answer: Feedback, order: ev.Order | None = None) -> ev.Event:
    """The `feedback.received` event of a recorded answer (its id is the answer's: applied once however often queued).

    `order` is the order asked about as the asking run saw it (its lines, for a review link), when known.
    """
    key = customer.platform_id
    who = ev.Customer(email=key.removeprefix("email:")) if key.startswith("email:") else ev.Customer(id=key)
    if order is None and answer.order_id:
        order = ev.Order(id=answer.order_id)
    at: datetime = answer.created_at
    return ev.Event(
        id=f"encore-feedback-{answer.id}",
        type=ev.EventType.FEEDBACK_RECEIVED,
        platform=shop.platform,
        shop=shop.domain,
        topic=TOPIC,
        occurred_at=at,
        customer=who,
        order=order,
        data={
            "score": answer.score,
            "comment": answer.comment,
            "order_id": answer.order_id,
            "order_number": order.number if order is not None else None,
        },
    )
