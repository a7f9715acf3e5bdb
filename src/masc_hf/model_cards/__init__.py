"""Hub model-card templates (``*.md`` beside this file, shipped as package data).

Templates use ``string.Template`` placeholders (``$name``); ``render_template`` fills them and
fails loudly on a missing value, so a card never ships with a blank. Every value is inline text
and is escaped (:func:`escape_markdown`) unless the caller built it as :class:`Markdown` from
escaped pieces: a map's method or source string comes from a user or a downloaded config, and must
not add front matter, HTML, links or table cells to the card."""

from __future__ import annotations

import html
import re
from importlib import resources
from string import Template

__all__ = ["Markdown", "escape_markdown", "render_card", "render_template"]

# inline markdown: code spans, emphasis, links and images, tables, strikethrough, escapes
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


class Markdown(str):
    """Markdown a caller assembled from escaped values: inserted into a template as it is."""


def escape_markdown(value) -> str:
    """``value`` as text that renders as itself on one line of a markdown card: whitespace runs
    (newlines included) and control characters become one space, ``&``, ``<`` and ``>`` HTML
    entities, markdown punctuation backslash-escaped."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    text = " ".join(text.split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def render_template(name: str, **values) -> str:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return Template(text).substitute(**{key: _inline(value) for key, value in values.items()})


def render_card(name: str, **values):
    """The filled template as a ``huggingface_hub.ModelCard`` (its YAML metadata parsed and checked:
    a card with broken metadata fails here, not on the Hub)."""
    from huggingface_hub import ModelCard

    return ModelCard(render_template(name, **values))


def _inline(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Markdown):
        return str(value)
    return escape_markdown(value)
