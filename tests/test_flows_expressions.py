"""The one expression evaluator: its plain-Python forms of the commonest shapes give Jinja's answers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from encore_retention.core import events as ev
from encore_retention.flows import expressions, loader
from encore_retention.flows.steps import DiscountView, walk


def _jinja_condition(source: str, context: dict[str, Any]) -> Any:
    try:
        return bool(expressions._env.compile_expression(source, undefined_to_none=False)(**context))
    except Exception:  # noqa: BLE001 - a failing expression counts as false
        return False


def _evaluated(source: str, context: dict[str, Any]) -> Any:
    try:
        return expressions.holds(source, context)
    except expressions.ExpressionError:
        return False


@pytest.mark.parametrize(
    "condition",
    [
        "customer.orders_count == 3",
        "customer.email_consent",
        "not customer.email_consent",
        "customer.orders_count >= 1",
        "not customer.tags",
        "customer.total_spent > 50",
        "customer.orders_count != 0",
        "customer.email_consent == 1",
        "customer.orders_count < 2",
        "customer.missing == 1",
        "customer.items",
        "checkout.email",
    ],
)
def test_the_plain_conditions_agree_with_jinja(condition):
    assert expressions.compile_expression(condition) is not None
    for view in (
        {"orders_count": 3, "email_consent": True, "tags": [], "total_spent": Decimal("10")},
        {"orders_count": 1, "email_consent": False, "tags": ["a"], "total_spent": Decimal("100.5")},
        {"orders_count": None, "email_consent": None, "tags": None, "total_spent": Decimal("0")},
        {},
    ):
        context = {"customer": view, "checkout": None}
        assert _evaluated(condition, context) == _jinja_condition(condition, context), (condition, view)


def test_the_plain_texts_agree_with_jinja():
    code = {"code": "X", "kind": "fixed", "amount": "10", "value": "€10.00", "expires_at": None}
    contexts = [
        {
            "customer": {"first_name": "Ada"},
            "shop": {"name": "Tea", "email": "hi@tea.example"},
            "order": ev.Order(id="1", number="1001"),
            "reward": DiscountView(code, None),
            "event": {"type": "feedback.received", "score": 2},
        },
        {
            "customer": {"first_name": None},
            "shop": {"name": None, "email": None},
            "order": ev.Order(id="1"),
            "reward": DiscountView({**code, "value": "10%"}, None),
            "event": {"type": "order.refunded"},
        },
        {"customer": {}, "shop": {}, "order": None, "reward": None, "event": {}},
    ]
    texts = ["{{ customer.first_name | upper }}", "{{ customer.items }}", "a {{ customer.first_name or 'x' }} b"]
    for flow_file in loader.load_dir(loader.LIBRARY)[0]:
        for _, step in walk(flow_file.flow.steps):
            email = getattr(step, "send_email", None)
            if email is not None:
                texts += [t for t in (email.subject, email.reply_to, email.preheader) if t]
            made = getattr(step, "create_discount", None)
            if made is not None:  # every code a library subject may name, as `reward` is in each context
                for context in contexts:
                    context[made.as_] = context["reward"]
    for text in texts:
        for context in contexts:
            assert expressions.render_string(text, context) == expressions.compile_string(text).render(context), text
    assert expressions._fast_text("{{ customer.first_name | upper }}") is None
    assert expressions._fast_text("Thank you, {{ customer.first_name or 'friend' }}!") is not None
