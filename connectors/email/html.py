"""HTML for mail clients: CSS from `<style>` blocks inlined into `style` attributes, a hidden preheader.

Many mail clients (Gmail's apps, Outlook) drop or ignore `<style>` blocks, so the rules are moved
onto the elements with `css-inline` (a maintained, fast inliner). At-rules such as `@media` can't be
inlined and stay in a `<style>` block for the clients that honour them. Remote stylesheets are never
fetched: a template must carry its CSS.
"""

from __future__ import annotations

import html as html_lib
import logging
import re

import css_inline
import markupsafe

log = logging.getLogger(__name__)

_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
PREHEADER_STYLE = (
    "display:none;max-height:0;max-width:0;opacity:0;overflow:hidden;"
    "mso-hide:all;font-size:1px;line-height:1px;color:transparent"
)


def inline_css(markup: str) -> str:
    """The document with its `<style>` rules inlined; unchanged (and a warning logged) if it can't be parsed."""
    if "<style" not in markup.lower():
        return markup
    try:
        return _INLINER.inline(markup)
    except (css_inline.InlineError, ValueError) as exc:
        log.warning("CSS could not be inlined; sending the HTML as written", extra={"error": str(exc)[:200]})
        return markup


def add_preheader(markup: str, preheader: str) -> str:
    """The document with a hidden preheader (the inbox preview line) as the first thing in `<body>`."""
    snippet = f'<div style="{PREHEADER_STYLE}">{html_lib.escape(preheader)}</div>'
    if any(form in markup for form in (html_lib.escape(preheader), str(markupsafe.escape(preheader)), preheader)):
        return markup  # the template shows it already
    match = _BODY_OPEN.search(markup)
    if match is None:
        return snippet + markup
    return markup[: match.end()] + snippet + markup[match.end() :]


def prepare(markup: str, preheader: str | None = None, *, inline: bool = True) -> str:
    """The HTML part as it is sent: preheader added, CSS inlined."""
    if preheader:
        markup = add_preheader(markup, preheader)
    return inline_css(markup) if inline else markup
