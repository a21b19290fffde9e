"""Model and prompt text as annotators expect to read it: Markdown rendered, then sanitised.

Prompts and responses are usually Markdown: fenced code, lists, `inline code`, emphasis,
tables. `render_markdown` turns that into HTML in two steps, each done by a maintained
library rather than by regular expressions:

1. markdown-it-py (CommonMark, plus tables and strikethrough) with raw HTML turned off,
   so `<script>` or `<img onerror=...>` typed into a response is shown as text. It also
   refuses `javascript:`, `vbscript:`, `file:` and `data:` link targets.
2. nh3 (the Rust `ammonia` sanitiser) keeps only the tags and attributes listed below,
   whatever step 1 produced: a second, independent line of defence. Links may only be
   http(s) or mailto and get `rel="noopener noreferrer"`. Images are shown as the text
   "[image: alt]" instead (the page's Content-Security-Policy would block outside images
   anyway, and loading them would tell their server who is annotating).

The result is marked safe for Jinja, which escapes everything else.
"""
from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markupsafe import Markup

ALLOWED_TAGS = {"p", "br", "hr", "pre", "code", "em", "strong", "del", "blockquote", "ul", "ol", "li",
                "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}  # no style: the CSP forbids inline styles
LINK_SCHEMES = {"http", "https", "mailto"}
MAX_RENDER_CHARS = 200_000  # longer text is shown as plain text (rendering cost grows with it)

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"])


def _image_as_text(renderer, tokens, index, options, env) -> str:
    """`![alt](url)` is shown as "[image: alt]" (escaped text), so the annotator knows one was there."""
    alt = renderer.renderInlineAsText(tokens[index].children or [], options, env)
    return escapeHtml(f"[image: {alt}]" if alt else "[image]")


_parser.add_render_rule("image", _image_as_text)


def render_markdown(text: str | None) -> Markup:
    """Markdown text -> sanitised HTML, safe to put in a page as is."""
    text = text or ""
    if len(text) > MAX_RENDER_CHARS:
        return Markup("<pre>{}</pre>").format(text)
    html = _parser.render(text)
    clean = nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=LINK_SCHEMES,
                      link_rel="noopener noreferrer", strip_comments=True)
    return Markup(clean)
