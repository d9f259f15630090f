"""Conditions and inline templates: Jinja2's sandboxed expression compiler over customer, order, shop, event.

This is the one evaluator of the engine, the simulator and previews. The commonest shapes, a field
compared with a number (`customer.orders_count == 3`) and text made of fields (`Hi {{ customer.first_name
or 'friend' }}`), are compiled once into plain Python that gives Jinja's answer; whenever a value is
not the plain case (a missing key, an attribute of another kind), the Jinja-compiled form answers.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

# The names an expression or a template may use; each step's `as:` name adds one.
NAMES = frozenset(
    {"customer", "order", "checkout", "shop", "run", "event", "unsubscribe_url", "now", "subject", "preheader"}
    | {"feedback_url", "segment"}
)

_env = SandboxedEnvironment(autoescape=False)


def define_global(name: str, value: Any) -> None:
    """Make a function every expression and inline template can call (`segment('vip')`, from `flows.segments`)."""
    _env.globals[name] = value


class ExpressionError(ValueError):
    """An expression that does not compile, or fails when evaluated."""


_FIELD = r"([a-z]\w*)\.([a-z]\w*)"
_SIMPLE_CONDITION = re.compile(rf"^\s*(not\s+)?{_FIELD}\s*(?:(==|!=|>=|<=|>|<)\s*(-?(?:0|[1-9]\d*)))?\s*$")
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_PLACEHOLDER = re.compile(rf"\{{\{{\s*{_FIELD}(?:\s+or\s+'([^'{{}}\\]*)')?\s*\}}\}}")
_PLAIN = object()  # not the plain case: Jinja answers
_DICT_ATTRIBUTES = frozenset(dir(dict))  # `d.items` is the method, not the key, in Jinja too
# The sandbox's answer to "may a template read `attr` of this object", which goes by the object's type and the name.
_SAFE: dict[tuple[type, str], bool] = {}


def _field(holder: Any, attr: str) -> Any:
    """`holder.attr` as Jinja's sandbox reads it, when that is plain: a dict's key, or a data attribute."""
    if type(holder) is dict:
        return holder.get(attr, _PLAIN) if attr not in _DICT_ATTRIBUTES else _PLAIN
    value = getattr(holder, attr, _PLAIN)
    if value is _PLAIN or holder is None or callable(value):
        return _PLAIN
    safe = _SAFE.get((type(holder), attr))
    if safe is None:
        if len(_SAFE) > 4096:
            _SAFE.clear()
        safe = _SAFE[(type(holder), attr)] = _env.is_safe_attribute(holder, attr, value)
    return value if safe else _PLAIN


def _fast_condition(source: str, compiled: Any) -> Callable[[dict[str, Any]], Any]:
    """Plain Python for `name.field`, `not name.field` and `name.field <op> integer` (else `compiled`)."""

    def jinja(context: dict[str, Any]) -> Any:
        return compiled(**context)

    match = _SIMPLE_CONDITION.match(source)
    if match is None:
        return jinja
    negate, name, attr, op, number = match.groups()
    if negate and op:
        return jinja
    compare, operand = (_COMPARE[op], int(number)) if op else (None, 0)

    plain_key = attr not in _DICT_ATTRIBUTES

    def fast(context: dict[str, Any]) -> Any:
        holder = context.get(name)
        value = holder.get(attr, _PLAIN) if plain_key and type(holder) is dict else _field(holder, attr)
        if value is _PLAIN:
            return compiled(**context)
        if compare is not None:
            return compare(value, operand)
        return not value if negate else value

    return fast


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Callable[[dict[str, Any]], Any]:
    """A callable evaluating `source` against a context dict (compiled once per process)."""
    try:
        compiled = _env.compile_expression(source, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad expression {source!r}: {exc.message}") from None
    return _fast_condition(source, compiled)


def evaluate(source: str, context: dict[str, Any]) -> Any:
    """The value of an expression in `context`."""
    function = compile_expression(source)
    try:
        return function(context)
    except Exception as exc:  # noqa: BLE001 - a marketer's expression may fail in many ways; report it
        raise ExpressionError(f"expression {source!r} failed: {exc}") from None


def holds(source: str, context: dict[str, Any]) -> bool:
    """Whether a condition holds (undefined names and attributes count as false)."""
    function = compile_expression(source)
    try:
        return bool(function(context))
    except Exception as exc:  # noqa: BLE001 - as `evaluate`
        raise ExpressionError(f"expression {source!r} failed: {exc}") from None


def names_in_expression(source: str) -> set[str]:
    """The top-level names an expression reads."""
    return meta.find_undeclared_variables(_env.parse("{{ (" + source + ") }}"))


@lru_cache(maxsize=1024)
def compile_string(source: str) -> Any:
    """An inline template (a subject, a URL, a JSON value)."""
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad template text {source!r}: {exc.message}") from None


@lru_cache(maxsize=1024)
def _fast_text(source: str) -> Callable[[dict[str, Any]], Any] | None:
    """Plain Python for text whose only template parts are `{{ name.field }}` or `{{ name.field or 'text' }}`."""
    if "{%" in source or "{#" in source or "{{" in _PLACEHOLDER.sub("", source):
        return None
    parts = _PLACEHOLDER.split(source)

    def render(context: dict[str, Any]) -> Any:
        out = []
        for index in range(0, len(parts) - 1, 4):
            out.append(parts[index])
            name, attr, fallback = parts[index + 1], parts[index + 2], parts[index + 3]
            value = _field(context.get(name), attr) if name in context else _PLAIN
            if value is _PLAIN:
                return _PLAIN
            out.append(fallback if fallback is not None and not value else str(value))
        out.append(parts[-1])
        return "".join(out)

    return render


def render_string(source: str, context: dict[str, Any]) -> str:
    """Render an inline template."""
    if "{" not in source:
        return source
    fast = _fast_text(source)
    if fast is not None:
        text = fast(context)
        if text is not _PLAIN:
            return str(text)
    return compile_string(source).render(context)


def names_in_string(source: str) -> set[str]:
    """The top-level names an inline template reads."""
    return meta.find_undeclared_variables(_env.parse(source))
