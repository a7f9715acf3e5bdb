"""Training: the AR loop that ``recipes/train.py`` drives with accelerate (it takes objects), IAR's
cluster-oriented loss, the helper that builds a model for a code-shard dataset, and a small VQ
tokenizer trainer for the quickstart. Imports are lazy (torch, accelerate load on use)."""

from __future__ import annotations

from .._lazy import attach

_LAZY = {
    "ARTrainingArguments": ".trainer",
    "ClusterOrientedLoss": ".losses",
    "TrainOutput": ".trainer",
    "TrainingError": ".trainer",
    "train": ".trainer",
    "latest_checkpoint": ".trainer",
    "prediction_entropy": ".trainer",
    "write_pipeline": ".trainer",
    "model_for_codes": ".setup",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)
