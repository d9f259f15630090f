"""Email templates: found in TEMPLATES_DIR, then the built-in templates/; HTML rendered, text derived.

The text part is a `<name>.txt` twin when one exists beside the HTML template, else the HTML template's
text version: its markup converted once to readable plain text (headings, paragraphs, lists, links
as `text (url)`) with its Jinja tags kept, rendered like the HTML.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
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
    """(html, text) of a template.

    The text is the `.txt` twin's when there is one; else the HTML template's own text version (see
    `text_source`) rendered with the same context, or, if that version does not compile, the
    rendered HTML converted.
    """
    env = environment()
    html = env.get_template(name).render(context)
    twin = text_twin(name)
    if twin:
        return html, env.get_template(twin).render(context)
    try:
        template = text_environment().get_template(name)
    except TemplateSyntaxError:
        return html, html_to_text(html)
    return html, tidy_text(template.render(context))


# ---- the text part: an HTML template's text version, made once per template -----------------------

_JINJA_TAG = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)
_MARK = re.compile(r"\x00(\d+)\x00")


def text_source(source: str) -> str:
    """An HTML template's source as the source of a plain-text template: Jinja tags kept, markup converted.

    Rendering it gives what `html_to_text` gives for the rendered HTML, at the cost of a Jinja render
    instead of an HTML parse per email. Jinja tags are set aside while the markup is converted (so
    that `<` in an expression is not taken for a tag); a statement in a hidden part (the preheader,
    `<head>`) is kept, so that every block still closes.
    """
    tags: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"\x00{len(tags) - 1}\x00"

    parser = _TextParser(statements=lambda data: "".join(
        tags[int(index)] for index in _MARK.findall(data) if tags[int(index)].startswith("{%")))
    parser.feed(_JINJA_TAG.sub(set_aside, source))
    parser.close()
    text = unescape("".join(parser.parts))
    return _MARK.sub(lambda match: tags[int(match.group(1))], text)


class _TextLoader(BaseLoader):
    """The email templates' text versions (`text_source` of each HTML template), reloaded when a file changes."""

    def __init__(self, loader: BaseLoader) -> None:
        self.loader = loader

    def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Any]:
        source, filename, uptodate = self.loader.get_source(environment, template)
        return text_source(source), filename, uptodate


def text_environment() -> SandboxedEnvironment:
    """The environment rendering the text versions (no HTML escaping: the output is plain text)."""
    html_env = environment()
    dirs = tuple(str(p) for p in template_dirs()) + ("text",)
    env = _envs.get(dirs)
    if env is None:
        assert html_env.loader is not None
        env = SandboxedEnvironment(loader=_TextLoader(html_env.loader), autoescape=False, undefined=_Lenient,
                                   trim_blocks=True, lstrip_blocks=True, auto_reload=True)
        env.filters["money"] = money
        _envs[dirs] = env
    return env


class _TextParser(HTMLParser):
    _BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "tr", "table", "ul", "ol", "section", "header", "footer"}
    _SKIP = {"style", "script", "head", "title"}

    def __init__(self, statements: Any = None) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.links: list[str | None] = []
        self.hidden = 0
        self.statements = statements  # what of skipped text must stay (a template's Jinja statements)

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
        elif self.statements is not None:
            self.parts.append(self.statements(data))


def html_to_text(html: str) -> str:
    """Readable plain text from an email's HTML."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    return tidy_text(unescape("".join(parser.parts)))


def tidy_text(text: str) -> str:
    """Lines stripped, at most one blank line between paragraphs, one newline at the end."""
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
