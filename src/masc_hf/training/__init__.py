"""Training: the LlamaGen loop that ``recipes/train.py`` drives with accelerate, and a small VQ
tokenizer trainer for the quickstart. Imports are lazy (torch, accelerate load on use)."""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "TrainingArguments": ".trainer",
    "TrainingError": ".trainer",
    "train": ".trainer",
    "latest_checkpoint": ".trainer",
    "prediction_entropy": ".trainer",
    "write_pipeline": ".trainer",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)

