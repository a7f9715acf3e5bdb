"""Hub model-card templates (``*.md`` beside this file, shipped as package data).

Templates use ``string.Template`` placeholders (``$name``); ``render_template`` fills them and
fails loudly on a missing value, so a card never ships with a blank."""

from __future__ import annotations

from importlib import resources
from string import Template


def render_template(name: str, **values) -> str:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return Template(text).substitute(**{k: ("" if v is None else v) for k, v in values.items()})


def render_card(name: str, **values):
    """The filled template as a ``huggingface_hub.ModelCard`` (its YAML metadata parsed and checked:
    a card with broken metadata fails here, not on the Hub)."""
    from huggingface_hub import ModelCard

    return ModelCard(render_template(name, **values))
