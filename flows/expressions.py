"""Conditions and inline templates: Jinja2's sandboxed expression compiler over customer, order, shop, event."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

# The names an expression or a template may use; each step's `as:` name adds one.
NAMES = frozenset(
    {"customer", "order", "checkout", "shop", "run", "event", "unsubscribe_url", "now", "subject", "preheader"}
)

_env = SandboxedEnvironment(autoescape=False)


class ExpressionError(ValueError):
    """An expression that does not compile, or fails when evaluated."""


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Any:
    """A callable evaluating `source` against a context (compiled once per process)."""
    try:
        return _env.compile_expression(source, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad expression {source!r}: {exc.message}") from None


def evaluate(source: str, context: dict[str, Any]) -> Any:
    """The value of an expression in `context`."""
    function = compile_expression(source)
    try:
        return function(**context)
    except Exception as exc:  # noqa: BLE001 - a marketer's expression may fail in many ways; report it
        raise ExpressionError(f"expression {source!r} failed: {exc}") from None


def holds(source: str, context: dict[str, Any]) -> bool:
    """Whether a condition holds (undefined names and attributes count as false)."""
    return bool(evaluate(source, context))


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


def render_string(source: str, context: dict[str, Any]) -> str:
    """Render an inline template."""
    if "{" not in source:
        return source
    return compile_string(source).render(context)


def names_in_string(source: str) -> set[str]:
    """The top-level names an inline template reads."""
    return meta.find_undeclared_variables(_env.parse(source))
