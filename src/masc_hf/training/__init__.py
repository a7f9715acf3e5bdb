"""Training: the LlamaGen loop that ``recipes/train.py`` drives with accelerate, and a small VQ
tokenizer trainer for the quickstart. Imports are lazy (torch, accelerate load on use)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainingArguments": ".trainer",
    "TrainingError": ".trainer",
    "train": ".trainer",
    "latest_checkpoint": ".trainer",
    "prediction_entropy": ".trainer",
    "write_pipeline": ".trainer",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
