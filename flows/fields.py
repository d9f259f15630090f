"""What each name of a flow's expressions and templates has, so lint catches `customer.frist_name`.

`customer`, `shop`, `event` and `run` are the dictionaries the engine builds (`flows.steps`), `order`
and `checkout` the canonical models (`core.events`), and each `create_discount`'s `as:` name a
discount. `uses` finds every `name.attribute` (and `name['attribute']`) in a parsed Jinja tree;
`problem` says what is wrong with one, suggesting the nearest field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

from encore_retention.core import events as ev

CUSTOMER = frozenset(
    {
        "id",
        "email",
        "first_name",
        "last_name",
        "phone",
        "locale",
        "timezone",
        "orders_count",
        "total_spent",
        "first_order_at",
        "last_order_at",
        "predicted_next_order",
        "birthday",
        "email_consent",
        "tags",
        "has_account",
        "created_at",
        "feedback_score",
        "feedback_at",
    }
)
SHOP = frozenset(
    {"id", "name", "domain", "url", "email", "staff_email", "email_from", "reply_to", "currency", "timezone"}
    | {"platform", "review_url"}
)
# `score`, `comment` and `order_id`: the answer a `feedback.received` event carries (other events have none).
EVENT = frozenset({"id", "type", "occurred_at", "topic", "score", "comment", "order_id"})
RUN = frozenset({"id", "started_at", "flow"})
DISCOUNT = frozenset({"code", "kind", "amount", "value", "expires_at", "expires_on", "minimum_subtotal", "redeemed"})
# The views that are dictionaries answer their methods too (`customer.get('tags')`).
DICT_METHODS = frozenset({"get", "items", "keys", "values"})


def _model_fields(model: type[ev.BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields) | frozenset(model.model_computed_fields)


FIELDS: dict[str, frozenset[str]] = {
    "customer": CUSTOMER | DICT_METHODS,
    "shop": SHOP | DICT_METHODS,
    "event": EVENT | DICT_METHODS,
    "run": RUN | DICT_METHODS,
    "order": _model_fields(ev.Order),
    "checkout": _model_fields(ev.Checkout),
}


def fields_of(name: str, discounts: frozenset[str] | set[str] = frozenset()) -> frozenset[str] | None:
    """The fields of a name, None for one whose fields aren't checked (`now`, `unsubscribe_url`, unknown names)."""
    if name in discounts:
        return DISCOUNT
    return FIELDS.get(name)


def uses(tree: nodes.Node) -> Iterator[tuple[int, str, str]]:
    """(line, name, attribute) of every `name.attribute` and `name['attribute']` in a tree.

    Names the template binds itself (`{% set %}`, loop and macro variables) are left out: they are not the context's.
    """
    bound = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if not isinstance(target, nodes.Name) or target.ctx != "load" or target.name in bound:
            continue
        if isinstance(node, nodes.Getattr):
            yield node.lineno, target.name, node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield node.lineno, target.name, node.arg.value


def problem(name: str, attribute: str, discounts: frozenset[str] | set[str] = frozenset()) -> str | None:
    """What is wrong with `name.attribute`, with the nearest field when there is one; None when it exists."""
    known = fields_of(name, discounts)
    if known is None or attribute in known:
        return None
    nearest = difflib.get_close_matches(attribute, sorted(known - DICT_METHODS), n=1, cutoff=0.6)
    hint = f"did you mean `{nearest[0]}`?" if nearest else f"its fields: {', '.join(sorted(known - DICT_METHODS))}"
    return f"`{name}` has no field `{attribute}` ({hint})"


_parser = SandboxedEnvironment()


def in_expression(source: str) -> Iterator[tuple[int, str, str]]:
    """The `name.attribute` uses of a condition or `if:` expression (none when it doesn't parse)."""
    try:
        return uses(_parser.parse("{{ (" + source + ") }}"))
    except TemplateSyntaxError:
        return iter(())


def in_text(source: str) -> Iterator[tuple[int, str, str]]:
    """The `name.attribute` uses of an inline template (a subject, a header, a JSON value)."""
    try:
        return uses(_parser.parse(source))
    except TemplateSyntaxError:
        return iter(())
