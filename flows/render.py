"""Email templates: found in TEMPLATES_DIR, then the built-in templates/; HTML rendered, text derived.

The text part is a `<name>.txt` twin when one exists beside the HTML template, else the rendered HTML
converted to readable plain text (headings, paragraphs, lists, and links as `text (url)`).
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    Undefined,
    meta,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment

from encore.settings import get_settings

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_envs: dict[tuple[str, ...], SandboxedEnvironment] = {}


class _Lenient(Undefined):
    """Missing values render as nothing (an optional field absent for one customer must not fail a send)."""


def template_dirs() -> list[Path]:
    """Where templates are looked up, in order."""
    configured = get_settings().TEMPLATES_DIR
    return [p for p in (configured, BUILTIN_TEMPLATES) if p is not None]


def environment(strict: bool = False) -> SandboxedEnvironment:
    """The sandboxed template environment for the configured folders."""
    dirs = tuple(str(p) for p in template_dirs()) + (("strict",) if strict else ())
    env = _envs.get(dirs)
    if env is None:
        loader = ChoiceLoader([FileSystemLoader(str(p)) for p in template_dirs()])
        env = SandboxedEnvironment(loader=loader, autoescape=select_autoescape(["html", "htm"]),
                                   undefined=StrictUndefined if strict else _Lenient, trim_blocks=True,
                                   lstrip_blocks=True, auto_reload=True)
        env.filters["money"] = money
        _envs[dirs] = env
    return env


def reset() -> None:
    """Forget cached environments (tests change TEMPLATES_DIR)."""
    _envs.clear()


def money(value: Any, currency: str | None = None) -> str:
    """`12.5`, `EUR` -> `€12.50`."""
    from flows.steps import format_money

    return format_money(value, currency)


def exists(name: str) -> bool:
    """Whether a template can be found."""
    try:
        environment().loader.get_source(environment(), name)  # type: ignore[union-attr]
    except TemplateNotFound:
        return False
    return True


def sources(name: str) -> list[tuple[str, str]]:
    """The template's source and those it extends or includes, as (name, source)."""
    env = environment()
    seen: dict[str, str] = {}
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        source = env.loader.get_source(env, current)[0]  # type: ignore[union-attr]
        seen[current] = source
        pending.extend(n for n in meta.find_referenced_templates(env.parse(source)) if n)
    return list(seen.items())


def undeclared(name: str) -> set[str]:
    """The names a template (with its layout and includes) reads from its context."""
    env = environment()
    found: set[str] = set()
    for _, source in sources(name):
        found |= meta.find_undeclared_variables(env.parse(source))
    return found


def text_twin(name: str) -> str | None:
    """The `.txt` template beside an HTML one, when there is one."""
    stem, dot, _ = name.rpartition(".")
    if not dot:
        return None
    twin = stem + ".txt"
    return twin if exists(twin) else None


def render_email(name: str, context: dict[str, Any]) -> tuple[str, str]:
    """(html, text) of a template."""
    env = environment()
    html = env.get_template(name).render(context)
    twin = text_twin(name)
    text = env.get_template(twin).render(context) if twin else html_to_text(html)
    return html, text


class _TextParser(HTMLParser):
    _BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "tr", "table", "ul", "ol", "section", "header", "footer"}
    _SKIP = {"style", "script", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.links: list[str | None] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self.hidden and tag == "div":
            self.hidden += 1
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "div" and not self.hidden and "display:none" in (attributes.get("style") or "").replace(" ", ""):
            self.hidden = 1  # the preheader: shown by inboxes beside the subject, not part of the text
        if tag in self._BLOCKS:
            self.parts.append("\n\n")
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "a":
            self.links.append(attributes.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if self.hidden and tag == "div":
            self.hidden -= 1
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and not href.startswith(("#", "mailto:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self.skip and not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Readable plain text from an email's HTML."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    text = unescape("".join(parser.parts))
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
