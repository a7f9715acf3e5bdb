"""Hub model-card templates (``*.md`` beside this file, shipped as package data).

Templates use ``string.Template`` placeholders (``$name``); ``render_template`` fills them and
fails loudly on a missing value, so a card never ships with a blank."""

from __future__ import annotations

from importlib import resources
from string import Template


def render_template(name: str, **values) -> str:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return Template(text).substitute(**{k: ("" if v is None else v) for k, v in values.items()})
