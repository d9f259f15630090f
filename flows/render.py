"""Email templates: found in TEMPLATES_DIR, then the built-in templates/; HTML rendered, text derived.

The text part is a `<name>.txt` twin when one exists beside the HTML template, else the HTML template's
text version: its markup converted once to readable plain text (headings, paragraphs, lists, links
as `text (url)`) with its Jinja tags kept, rendered like the HTML.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    DictLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment

from encore_retention.core import resources
from encore_retention.core.settings import get_settings

# The repository's templates/, shipped as this package (mapped in pyproject.toml).
BUILTIN_TEMPLATES = resources.folder("encore_retention.flows.templates")

_envs: dict[tuple[str, ...], SandboxedEnvironment] = {}


class _Lenient(Undefined):
    """Missing values render as nothing (an optional field absent for one customer must not fail a send)."""


CURRENCY_SYMBOLS = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "CAD": "CA$",
    "AUD": "A$",
    "NZD": "NZ$",
    "CHF": "CHF ",
    "INR": "₹",
}


def format_money(value: Any, currency: str | None = None) -> str:
    """An amount with its currency (`€12.50`, `12.50 SEK`)."""
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return str(value)
    if not currency:
        return f"{amount}"
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


def template_dirs() -> list[Path]:
    """Where templates are looked up, in order."""
    configured = get_settings().TEMPLATES_DIR
    return [p for p in (configured, BUILTIN_TEMPLATES) if p is not None]


def fingerprint() -> tuple[Any, ...]:
    """The template folders and, for TEMPLATES_DIR, each file's name, time and size: it changes when a template does.

    The built-in templates change only with Encore itself. A flow skipped for a broken template is
    loaded again once the template is mended, without a restart.
    """
    configured = get_settings().TEMPLATES_DIR
    found: list[Any] = [str(p) for p in template_dirs()]
    if configured is not None:
        for folder, _, files in os.walk(configured):
            for file in files:
                try:
                    stat = os.stat(os.path.join(folder, file))
                except OSError:
                    continue
                found.append((folder, file, stat.st_mtime_ns, stat.st_size))
    return tuple(found)


@dataclass(frozen=True)
class Pinned:
    """The templates of one flow version (name -> source): what its runs render, whatever the files say now."""

    digest: str
    sources: dict[str, str]

    def has(self, name: str) -> bool:
        """Whether the version holds a template of that name."""
        return name in self.sources


def environment(strict: bool = False, pinned: Pinned | None = None) -> SandboxedEnvironment:
    """The sandboxed template environment for the configured folders (a flow version's templates first)."""
    dirs = tuple(str(p) for p in template_dirs()) + (("strict",) if strict else ())
    dirs += ("pinned", pinned.digest) if pinned is not None else ()
    env = _envs.get(dirs)
    if env is None:
        loaders: list[BaseLoader] = [FileSystemLoader(str(p)) for p in template_dirs()]
        if pinned is not None:
            loaders.insert(0, DictLoader(pinned.sources))
            if len(_envs) > 512:  # a version's environment is kept while it may have waiting runs; bounded
                _envs.clear()
        loader = ChoiceLoader(loaders)
        env = SandboxedEnvironment(
            loader=loader,
            autoescape=select_autoescape(["html", "htm"]),
            undefined=StrictUndefined if strict else _Lenient,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,
        )
        env.filters["money"] = money
        _envs[dirs] = env
    return env


def reset() -> None:
    """Forget cached environments (tests change TEMPLATES_DIR)."""
    _envs.clear()


def money(value: Any, currency: str | None = None) -> str:
    """`12.5`, `EUR` -> `€12.50`."""

    return format_money(value, currency)


def exists(name: str) -> bool:
    """Whether a template can be found (an unreadable one exists: `check` says what is wrong with it)."""
    try:
        environment().loader.get_source(environment(), name)  # type: ignore[union-attr]
    except TemplateNotFound:
        return False
    except (OSError, UnicodeDecodeError):
        return True
    return True


@dataclass(frozen=True)
class TemplateProblem:
    """What stops a template from rendering, at the file and line where it is."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def check(
    name: str,
    collect: list[tuple[str, nodes.Template]] | None = None,
    sources: dict[str, str] | None = None,
) -> tuple[set[str], list[TemplateProblem]]:
    """The names a template (with its layout, includes and imports) reads from its context, and what is broken.

    Each template it names is loaded, parsed and compiled as rendering would: a missing `include`,
    `extends` or `import`, a syntax error, an unknown filter, a macro imported that the other template
    does not define, or a file that is not UTF-8 is found here, at its own file and line, instead of
    when a customer's email is rendered. Given a list, `collect` receives each template's (file, parsed tree);
    given a dict, `sources` each one's source.
    """
    env = environment()
    problems: list[TemplateProblem] = []
    parsed: dict[str, nodes.Template | None] = {}
    imports: list[tuple[str, int, str, set[str]]] = []  # (file, line, template imported, names it must define)
    pending: list[tuple[str, str, int, str]] = [(name, "", 0, "")]  # (template, referring file, line, verb)
    while pending:
        current, referrer, line, verb = pending.pop()
        if current in parsed:
            continue
        parsed[current] = None
        try:
            source, filename, _ = env.loader.get_source(env, current)  # type: ignore[union-attr]
        except TemplateNotFound:
            looked = ", ".join(str(p) for p in template_dirs())
            problems.append(
                TemplateProblem(referrer, line, f"{verb} {current!r}, which does not exist (looked in: {looked})")
            )
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(TemplateProblem(referrer or current, line or 1, f"cannot read {current!r}: {exc}"))
            continue
        file = filename or current
        try:
            tree = env.parse(source, current, filename)
        except TemplateSyntaxError as exc:
            problems.append(TemplateProblem(file, exc.lineno, exc.message or str(exc)))
            continue
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            names = _constant_names(node.template)  # type: ignore[attr-defined] # the four all have one
            if isinstance(node, nodes.Include) and (node.ignore_missing or any(exists(n) for n in names)):
                names = [n for n in names if exists(n)]  # the first found is the one rendered
            verb = {nodes.Extends: "extends", nodes.Include: "includes"}.get(type(node), "imports")
            pending.extend((n, file, node.lineno, verb) for n in names)
            if isinstance(node, nodes.FromImport) and names:
                imports.append((file, node.lineno, names[0], {n if isinstance(n, str) else n[0] for n in node.names}))
            elif isinstance(node, nodes.Import) and names:
                imports.extend(
                    (file, attribute.lineno, names[0], {attribute.attr})
                    for attribute in tree.find_all(nodes.Getattr)
                    if isinstance(attribute.node, nodes.Name) and attribute.node.name == node.target
                )
        try:  # what only compiling finds: unknown filters and tests, a bad `from … import _private`
            env.compile(env.parse(source, current, filename), current, filename)
        except TemplateSyntaxError as exc:
            problems.append(TemplateProblem(file, exc.lineno, exc.message or str(exc)))
            continue
        parsed[current] = tree
        if collect is not None:
            collect.append((file, tree))
        if sources is not None:
            sources[current] = source
    for file, line, imported, wanted in imports:
        exporter = parsed.get(imported)
        if exporter is not None:  # a missing or broken one is reported already
            problems.extend(
                TemplateProblem(file, line, f"{imported!r} defines no macro or variable {missing!r}")
                for missing in sorted(wanted - _top_level_names(exporter))
            )
    trees = [tree for tree in parsed.values() if tree is not None]
    # A name set at the top of one (a child's `{% set title %}`) is seen by the others (its layout).
    bound = set().union(*(_top_level_names(tree) for tree in trees))
    used = set().union(*(meta.find_undeclared_variables(tree) for tree in trees)) - bound
    return used, sorted(set(problems), key=lambda p: (p.file, p.line, p.message))


def _constant_names(node: nodes.Node) -> list[str]:
    """The template names an `extends`/`include`/`import` gives as constants (a list for `include [a, b]`)."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (nodes.List, nodes.Tuple)):
        found = [item.value for item in node.items if isinstance(item, nodes.Const) and isinstance(item.value, str)]
        return found if len(found) == len(node.items) else []
    return []


def _top_level_names(tree: nodes.Template) -> set[str]:
    """What a template defines at its top (macros, `set`, imports): visible in its blocks, exported to importers."""
    names: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, nodes.Macro):
            names.add(node.name)
        elif isinstance(node, (nodes.Assign, nodes.AssignBlock)):
            target = node.target
            names |= {target.name} if isinstance(target, nodes.Name) else {n.name for n in target.find_all(nodes.Name)}
        elif isinstance(node, nodes.Import):
            names.add(node.target)
        elif isinstance(node, nodes.FromImport):
            names |= {n if isinstance(n, str) else n[1] for n in node.names}
        elif isinstance(node, nodes.If):
            body.extend([*node.body, *node.elif_, *node.else_])
    return names


def text_twin(name: str) -> str | None:
    """The `.txt` template beside an HTML one, when there is one."""
    stem, dot, _ = name.rpartition(".")
    if not dot:
        return None
    twin = stem + ".txt"
    return twin if exists(twin) else None


def render_email(name: str, context: dict[str, Any], pinned: Pinned | None = None) -> tuple[str, str]:
    """(html, text) of a template, from a flow version's templates when `pinned` holds it.

    The text is the `.txt` twin's when there is one; else the HTML template's own text version (see
    `text_source`) rendered with the same context, or, if that version does not compile, the
    rendered HTML converted.
    """
    if pinned is not None and not pinned.has(name):
        pinned = None  # a version from before its templates were kept: the files, as then
    env = environment(pinned=pinned)
    html = env.get_template(name).render(context)
    twin = (name.rpartition(".")[0] + ".txt") if pinned is not None else text_twin(name)
    if twin and (pinned.has(twin) if pinned is not None else True):
        return html, env.get_template(twin).render(context)
    try:
        template = text_environment(pinned).get_template(name)
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

    parser = _TextParser(
        statements=lambda data: "".join(
            tags[int(index)] for index in _MARK.findall(data) if tags[int(index)].startswith("{%")
        )
    )
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


def text_environment(pinned: Pinned | None = None) -> SandboxedEnvironment:
    """The environment rendering the text versions (no HTML escaping: the output is plain text)."""
    html_env = environment(pinned=pinned)
    dirs = tuple(str(p) for p in template_dirs()) + ("text",)
    dirs += ("pinned", pinned.digest) if pinned is not None else ()
    env = _envs.get(dirs)
    if env is None:
        assert html_env.loader is not None
        env = SandboxedEnvironment(
            loader=_TextLoader(html_env.loader),
            autoescape=False,
            undefined=_Lenient,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,
        )
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
