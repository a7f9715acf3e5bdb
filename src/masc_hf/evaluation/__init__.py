"""Evaluation: a small image classifier (class consistency, a feature space for Fréchet distances at
Fashion-MNIST scale) and the Fréchet distance.

* ``classifier``: :class:`ImageClassifier`, :func:`train_classifier`, :func:`class_consistency`.
* ``frechet``: :func:`frechet_distance`, :func:`feature_statistics` (numpy + scipy only).

The namespace is lazy: ``import masc_hf.evaluation`` imports neither torch nor scipy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# public name -> module that defines it
_LAZY = {
    "ClassifierError": "masc_hf.evaluation.classifier",
    "ImageClassifier": "masc_hf.evaluation.classifier",
    "ImageClassifierConfig": "masc_hf.evaluation.classifier",
    "class_consistency": "masc_hf.evaluation.classifier",
    "classifier_accuracy": "masc_hf.evaluation.classifier",
    "to_classifier_input": "masc_hf.evaluation.classifier",
    "train_classifier": "masc_hf.evaluation.classifier",
    "FrechetError": "masc_hf.evaluation.frechet",
    "feature_statistics": "masc_hf.evaluation.frechet",
    "frechet_distance": "masc_hf.evaluation.frechet",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .classifier import (
        ClassifierError,
        ImageClassifier,
        ImageClassifierConfig,
        class_consistency,
        classifier_accuracy,
        to_classifier_input,
        train_classifier,
    )
    from .frechet import FrechetError, feature_statistics, frechet_distance
