"""Evaluation: the paper's protocol (sampling, FID/IS/Precision/Recall, prediction entropy, training
acceleration), the semantic replacement test, pictures of the clusters, and a small image classifier
for Fashion-MNIST-scale studies.

* ``sampling``: the paper's protocol, :func:`sample_images` (resumable, any number of processes,
  a seed per image) and :func:`pack_npz` (ADM ``.npz``); :func:`check_sample_folder`,
  :func:`check_npz_images`, :func:`load_npz_images` check sample folders and ``.npz`` files.
* ``fidelity``: :func:`calculate_metrics` (FID, IS, Precision/Recall with torch-fidelity against a
  folder, an ADM ``.npz`` or statistics), :func:`save_statistics`, :func:`resolve_inception_weights`.
* ``entropy``: :func:`entropy_per_position` (Eq. 6, teacher-forced on validation codes).
* ``acceleration``: :func:`training_acceleration`, :func:`steps_to_reach` (from eval logs).
* ``replacement``: :func:`replacement_test` (PSNR/SSIM/rFID of cluster-member replacement).
* ``gallery``, ``plots``: :func:`cluster_gallery`; training curves, entropy per position, a metric
  against the step, as PNG.
* ``classifier``: :class:`ImageClassifier`, :func:`train_classifier`, :func:`class_consistency`.
* ``frechet``: :func:`frechet_distance`, :func:`feature_statistics` (numpy + scipy only).

The namespace is lazy: ``import masc_hf.evaluation`` imports neither torch nor scipy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# public name -> module that defines it
_LAZY = {
    "EvalLogError": "masc_hf.evaluation.acceleration",
    "load_eval_log": "masc_hf.evaluation.acceleration",
    "steps_to_reach": "masc_hf.evaluation.acceleration",
    "training_acceleration": "masc_hf.evaluation.acceleration",
    "ClassifierError": "masc_hf.evaluation.classifier",
    "ImageClassifier": "masc_hf.evaluation.classifier",
    "ImageClassifierConfig": "masc_hf.evaluation.classifier",
    "class_consistency": "masc_hf.evaluation.classifier",
    "classifier_accuracy": "masc_hf.evaluation.classifier",
    "to_classifier_input": "masc_hf.evaluation.classifier",
    "train_classifier": "masc_hf.evaluation.classifier",
    "PredictionEntropy": "masc_hf.evaluation.entropy",
    "entropy_per_position": "masc_hf.evaluation.entropy",
    "FidelityError": "masc_hf.evaluation.fidelity",
    "INCEPTION_WEIGHTS_URL": "masc_hf.evaluation.fidelity",
    "InceptionWeightsError": "masc_hf.evaluation.fidelity",
    "calculate_metrics": "masc_hf.evaluation.fidelity",
    "default_inception_weights_path": "masc_hf.evaluation.fidelity",
    "resolve_inception_weights": "masc_hf.evaluation.fidelity",
    "save_statistics": "masc_hf.evaluation.fidelity",
    "FrechetError": "masc_hf.evaluation.frechet",
    "feature_statistics": "masc_hf.evaluation.frechet",
    "frechet_distance": "masc_hf.evaluation.frechet",
    "cluster_gallery": "masc_hf.evaluation.gallery",
    "token_tiles": "masc_hf.evaluation.gallery",
    "plot_entropy_per_position": "masc_hf.evaluation.plots",
    "plot_metric_vs_step": "masc_hf.evaluation.plots",
    "plot_rows": "masc_hf.evaluation.plots",
    "plot_training_curves": "masc_hf.evaluation.plots",
    "check_maps_against_tokenizer": "masc_hf.evaluation.replacement",
    "format_replacement_table": "masc_hf.evaluation.replacement",
    "images_as_array": "masc_hf.evaluation.replacement",
    "replacement_test": "masc_hf.evaluation.replacement",
    "structural_similarity": "masc_hf.evaluation.replacement",
    "SampleError": "masc_hf.evaluation.sampling",
    "check_npz_images": "masc_hf.evaluation.sampling",
    "check_sample_folder": "masc_hf.evaluation.sampling",
    "image_seed": "masc_hf.evaluation.sampling",
    "load_npz_images": "masc_hf.evaluation.sampling",
    "pack_npz": "masc_hf.evaluation.sampling",
    "sample_images": "masc_hf.evaluation.sampling",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .acceleration import EvalLogError, load_eval_log, steps_to_reach, training_acceleration
    from .classifier import (
        ClassifierError,
        ImageClassifier,
        ImageClassifierConfig,
        class_consistency,
        classifier_accuracy,
        to_classifier_input,
        train_classifier,
    )
    from .entropy import PredictionEntropy, entropy_per_position
    from .fidelity import (
        INCEPTION_WEIGHTS_URL,
        FidelityError,
        InceptionWeightsError,
        calculate_metrics,
        default_inception_weights_path,
        resolve_inception_weights,
        save_statistics,
    )
    from .frechet import FrechetError, feature_statistics, frechet_distance
    from .gallery import cluster_gallery, token_tiles
    from .plots import plot_entropy_per_position, plot_metric_vs_step, plot_rows, plot_training_curves
    from .replacement import (
        check_maps_against_tokenizer,
        format_replacement_table,
        images_as_array,
        replacement_test,
        structural_similarity,
    )
    from .sampling import (
        SampleError,
        check_npz_images,
        check_sample_folder,
        image_seed,
        load_npz_images,
        pack_npz,
        sample_images,
    )
