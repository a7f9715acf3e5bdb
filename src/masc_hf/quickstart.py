"""The Fashion-MNIST quickstart: the whole MASC loop on real data, on one CPU, in minutes.

Steps (each through the library's real code path):

1. Fashion-MNIST (real images, 10 classes) from ``/usr/share/datasets/fashion-mnist`` or the Hub.
2. A small VQ tokenizer (a diffusers ``VQModel``) trained on the training images.
3. Token codes of every training image (and its mirror) with ``extract_codes``, from a parquet copy
   of the images, exactly as ImageNet goes through ``recipes/extract_codes.py``.
4. A MASC cluster map of the tokenizer's codebook (k = N / 2).
5. A small LlamaGen trained on the cluster ids with ``masc_hf.training.train`` (the code behind
   ``recipes/train.py``), given the map and the tokenizer as objects; it also writes a
   ``MASCPipeline`` directory.
6. ``samples.png``: one row per class, named; and class consistency: the share of generated images
   that a classifier trained on the real training images assigns to their conditioning class,
   beside that classifier's accuracy on the real test set.

``system="iar2"`` runs IAR2's loop instead (:func:`run_iar2_quickstart`): a dual-codebook tokenizer
trained in its two stages, (semantic, detail) codes, a small IAR2 model, the same samples and figures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._io import atomic_path, staged_dir, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["IAR2_QUICKSTART_PRESETS", "IAR2QuickstartSettings", "QuickstartSettings", "QUICKSTART_PRESETS", "run_iar2_quickstart", "run_quickstart"]


@dataclass
class QuickstartSettings:
    vq_preset: str = "quickstart"
    vq_steps: int | None = None  # None: the preset's
    num_embeddings: int = 256
    num_clusters: int = 128
    train_examples: int | None = 30000  # None: all 60000
    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 4
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 1e-3
    guidance_scale: float = 3.0
    samples_per_class: int = 50
    grid_columns: int = 8
    classifier_epochs: float = 1.0
    seed: int = 0


# Sized for a 2-core CPU: "default" measured at 4.4 min on an idle machine (67.6% class consistency; 11-14 min on busier ones), "fast" less.
QUICKSTART_PRESETS = {
    "default": QuickstartSettings(),
    "fast": QuickstartSettings(vq_preset="fast", train_examples=20000, steps=400, samples_per_class=30, classifier_epochs=0.5),
}


@dataclass
class IAR2QuickstartSettings:
    """The IAR2 quickstart: a 16 semantic x 64 detail tokenizer (two stages), a small IAR2."""

    semantic_embeddings: int = 16
    detail_embeddings: int = 64
    semantic_steps: int = 250
    detail_steps: int = 250
    train_examples: int | None = 30000
    hidden_size: int = 192
    num_layers: int = 3
    head_layers: int = 1
    num_heads: int = 4
    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 1e-3
    semantic_guidance: tuple[float, float] = (1.0, 3.0)
    detail_guidance: tuple[float, float] = (1.0, 3.0)
    attention_guidance_weight: float = 1.0
    samples_per_class: int = 50
    grid_columns: int = 8
    classifier_epochs: float = 1.0
    seed: int = 0


IAR2_QUICKSTART_PRESETS = {
    "default": IAR2QuickstartSettings(),
    "fast": IAR2QuickstartSettings(semantic_steps=120, detail_steps=120, train_examples=20000, steps=250, samples_per_class=30, classifier_epochs=0.5),
}


def _stage(name: str):
    logger.info("== %s", name)
    return time.perf_counter()


def run_quickstart(
    out_dir: str | Path, preset: str = "default", settings: QuickstartSettings | None = None, progress: bool = True, system: str = "masc"
) -> dict:
    """Run the quickstart into ``out_dir``; returns the figures it printed (also in ``report.json``).
    ``system="iar2"``: IAR2's loop (:func:`run_iar2_quickstart`)."""
    if system == "iar2":
        return run_iar2_quickstart(out_dir, preset, settings, progress)
    if system != "masc":
        raise ValueError(f"system must be 'masc' or 'iar2', got {system!r}")
    import torch

    from .clustering import build_cluster_map
    from .data import CodeShardDataset
    from .pipelines import MASCPipeline
    from .vq import export_codebook
    from .training import model_for_codes, train

    settings = settings or QUICKSTART_PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    timings: dict[str, float] = {}

    prepared = prepare_tokenizer_and_codes(out, settings, progress=progress, timings=timings)
    train_set, test_set, class_names = prepared["train_set"], prepared["test_set"], prepared["class_names"]
    vqvae, vq_stats, vq_dir, codes_dir = prepared["vqvae"], prepared["vq_stats"], prepared["vq_dir"], prepared["codes_dir"]

    t = _stage("4/6 MASC cluster map")
    codebook = export_codebook(vqvae)
    cluster_map = build_cluster_map(codebook, settings.num_clusters, method="masc", source_tokenizer="quickstart VQ (Fashion-MNIST)")
    cluster_map.save_pretrained(out / "cluster_map")  # an artifact to inspect; the run uses the object
    timings["map"] = time.perf_counter() - t

    t = _stage("5/6 LlamaGen on cluster ids")
    dataset = CodeShardDataset(codes_dir, cluster_map=cluster_map, seed=settings.seed)
    model_config = {
        "hidden_size": settings.hidden_size,
        "num_hidden_layers": settings.num_layers,
        "num_attention_heads": settings.num_heads,
        "multiple_of": 64,
        "token_dropout": 0.1,
        "resid_dropout": 0.1,
        "ffn_dropout": 0.1,
    }
    model = model_for_codes(dataset, model_config=model_config, cluster_map=cluster_map, seed=settings.seed)
    model.generation_config.guidance_scale = settings.guidance_scale
    output = train(
        model,
        dataset,
        _training_arguments(settings, out, progress),
        cluster_map=cluster_map,
        vqvae=vqvae,
    )
    timings["train"] = time.perf_counter() - t

    t = _stage("6/6 samples and class consistency")
    pipe = MASCPipeline(transformer=output.model, vqvae=vqvae, cluster_map=cluster_map, id2label=dict(enumerate(class_names)))
    consistency, accuracy = _samples_and_consistency(pipe, settings, class_names, train_set, test_set, out, progress)
    timings["samples"] = time.perf_counter() - t

    report = {
        "class_consistency": consistency,
        "classifier_test_accuracy": accuracy,
        "chance": 0.1,
        "vq": {k: v for k, v in vq_stats.items() if isinstance(v, (int, float, str))},
        "final_loss": output.loss,
        "final_entropy_normalized": output.history[-1]["entropy_normalized"] if output.history else None,
        "samples": str(out / "samples.png"),
        "pipeline": output.pipeline_dir,
        "seconds": timings,
        "settings": asdict(settings),
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _training_arguments(settings, out: Path, progress: bool):
    """The quickstarts' training run: ``settings.steps`` of ``settings.batch_size``, a short warm-up, two checkpoints."""
    from .training import ARTrainingArguments

    return ARTrainingArguments(
        output_dir=str(out / "run"), max_steps=settings.steps, global_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, warmup_steps=min(100, settings.steps // 10), mixed_precision="no",
        checkpoint_every=max(settings.steps // 2, 1), log_every=50, seed=settings.seed, log_with=None, progress=progress,
    )


def _samples_and_consistency(pipe, settings, class_names, train_set, test_set, out: Path, progress: bool, **sampling) -> tuple[float, float]:
    """``samples.png`` (one row per class) from ``pipe``, and the share of samples a classifier trained on
    the real training images gives their class, with that classifier's real test accuracy."""
    import numpy as np
    import torch

    from .evaluation.classifier import class_consistency, train_classifier
    from .pipelines.grid import save_image_grid

    pipe.set_progress_bar_config(disable=not progress)
    n = settings.samples_per_class
    generator = torch.Generator().manual_seed(settings.seed)
    samples = pipe(list(range(10)), num_images_per_label=n, generator=generator, output_type="pil", **sampling).images
    columns = min(settings.grid_columns, n)
    grid_images = [samples[c * n + j] for c in range(10) for j in range(columns)]
    save_image_grid([im.resize((64, 64), resample=0) for im in grid_images], rows=10, row_labels=class_names, path=out / "samples.png")
    classifier, classifier_stats = train_classifier(
        train_set.images, train_set.labels, epochs=settings.classifier_epochs, seed=settings.seed,
        eval_images=test_set.images, eval_labels=test_set.labels, progress=progress,
    )
    consistency = class_consistency(classifier, samples, np.repeat(np.arange(10), n), center_crop=28)
    return consistency, classifier_stats["test_accuracy"]


def _fashion_mnist(settings, timings: dict):
    """Fashion-MNIST's splits, the training subset ``settings.train_examples`` and the class names."""
    import numpy as np

    from .data.fashion_mnist import load_fashion_mnist

    t = _stage("1/6 Fashion-MNIST")
    train_set, test_set = load_fashion_mnist("train"), load_fashion_mnist("test")
    images, labels = train_set.images, train_set.labels
    if settings.train_examples:
        keep = np.random.default_rng(settings.seed).permutation(len(labels))[: settings.train_examples]
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    timings["data"] = time.perf_counter() - t
    return train_set, test_set, images, labels, list(train_set.class_names)


def run_iar2_quickstart(
    out_dir: str | Path, preset: str = "default", settings: IAR2QuickstartSettings | None = None, progress: bool = True
) -> dict:
    """IAR2's loop on Fashion-MNIST into ``out_dir``: the dual-codebook tokenizer (semantic stage, then
    detail stage), (semantic, detail) codes, a small IAR2 trained with ``masc_hf.training.train``,
    ``samples.png`` and class consistency. Returns the figures (also in ``report.json``)."""
    import torch

    from .data import CodeShardDataset
    from .data.extract import extract_codes
    from .pipelines import IAR2Pipeline
    from .training import model_for_codes, train
    from .training.dual_vq_trainer import evaluate_dual_vq_tokenizer, train_dual_vq_tokenizer

    settings = settings or IAR2_QUICKSTART_PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    timings: dict[str, float] = {}
    train_set, test_set, images, labels, class_names = _fashion_mnist(settings, timings)

    t = _stage("2/6 dual-codebook tokenizer: semantic stage, then detail stage")
    sizes = dict(num_semantic_embeddings=settings.semantic_embeddings, num_detail_embeddings=settings.detail_embeddings, seed=settings.seed)
    train_dual_vq_tokenizer(images, "semantic", output_dir=out / "vq-semantic", steps=settings.semantic_steps, progress=progress, **sizes)
    vqvae, vq_stats = train_dual_vq_tokenizer(
        images, "detail", output_dir=out / "vq", init=out / "vq-semantic", steps=settings.detail_steps, progress=progress, **sizes
    )
    vq_stats = {k: v for k, v in vq_stats.items() if isinstance(v, (int, float, str))}
    vq_stats.update(evaluate_dual_vq_tokenizer(vqvae, test_set.images[:1000]))
    image_size = vqvae.config.sample_size
    timings["vq"] = time.perf_counter() - t

    t = _stage("3/6 (semantic, detail) codes")
    parquet_dir = write_image_parquet(images, labels, class_names, (image_size - images.shape[-1]) // 2, out / "data", "train")
    codes_dir = out / "codes"
    extract_codes(parquet_dir, vqvae.eval(), codes_dir, image_size=image_size, augment="flip", batch_size=256, shard_size=20000, progress=progress)
    timings["codes"] = time.perf_counter() - t

    t = _stage("4/6 IAR2 on (semantic, detail) pairs")
    dataset = CodeShardDataset(codes_dir, seed=settings.seed)
    model_config = {
        "hidden_size": settings.hidden_size, "num_hidden_layers": settings.num_layers, "num_attention_heads": settings.num_heads,
        "head_layers": settings.head_layers, "multiple_of": 64, "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1,
    }
    model = model_for_codes(dataset, model_config=model_config, seed=settings.seed, kind="iar2")
    model.generation_config.semantic_guidance = list(settings.semantic_guidance)
    model.generation_config.detail_guidance = list(settings.detail_guidance)
    model.generation_config.attention_guidance_weight = settings.attention_guidance_weight
    output = train(
        model,
        dataset,
        _training_arguments(settings, out, progress),
        vqvae=vqvae,
    )
    timings["train"] = time.perf_counter() - t

    t = _stage("5/6 samples and class consistency")
    pipe = IAR2Pipeline(transformer=output.model, vqvae=vqvae, id2label=dict(enumerate(class_names)))
    consistency, accuracy = _samples_and_consistency(pipe, settings, class_names, train_set, test_set, out, progress)
    timings["samples"] = time.perf_counter() - t

    last = output.history[-1] if output.history else {}
    report = {
        "system": "iar2",
        "class_consistency": consistency,
        "classifier_test_accuracy": accuracy,
        "chance": 0.1,
        "vq": vq_stats,
        "final_loss": output.loss,
        "final_semantic_loss": last.get("semantic_loss"),
        "final_detail_loss": last.get("detail_loss"),
        "samples": str(out / "samples.png"),
        "pipeline": output.pipeline_dir,
        "seconds": timings,
        "settings": asdict(settings),
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def prepare_tokenizer_and_codes(
    out: Path, settings: QuickstartSettings, *, progress: bool = True, timings: dict | None = None, reuse: bool = False
) -> dict:
    """Steps 1-3: Fashion-MNIST, the VQ tokenizer (``out/vq``) and the training codes (``out/codes``).

    ``reuse``: keep a tokenizer already saved in ``out/vq`` instead of training a new one (the code
    extraction resumes or skips by itself).

    Shared with ``recipes/reproduce_table1.py``, so every Table 1 run sees the quickstart's data and
    tokenizer. Returns the data sets, class names, the tokenizer, its figures and the two paths.
    """
    from .data.extract import extract_codes
    from .training.vq_trainer import evaluate_vq_tokenizer, train_vq_tokenizer

    timings = {} if timings is None else timings
    train_set, test_set, images, labels, class_names = _fashion_mnist(settings, timings)

    t = _stage("2/6 VQ tokenizer")
    vq_dir = out / "vq"
    if reuse and (vq_dir / "config.json").is_file():
        from diffusers import VQModel

        vqvae = VQModel.from_pretrained(vq_dir).eval()
        vq_stats = {"config": dict(vqvae.config), "reused": str(vq_dir)}
        vq_stats["config"]["image_size"] = vqvae.config.sample_size
    else:
        vq_overrides = {"steps": settings.vq_steps} if settings.vq_steps else {}
        vqvae, vq_stats = train_vq_tokenizer(
            images, settings.vq_preset, num_embeddings=settings.num_embeddings, seed=settings.seed, progress=progress, **vq_overrides
        )
        with staged_dir(vq_dir) as staging:  # atomic: a killed run leaves no half-written tokenizer
            vqvae.save_pretrained(staging)
    vq_stats.update(evaluate_vq_tokenizer(vqvae, test_set.images[:1000]))
    image_size = int(vq_stats["config"]["image_size"])
    pad = (image_size - images.shape[-1]) // 2  # the tokenizer sees 28x28 images padded (black) to 32x32
    timings["vq"] = time.perf_counter() - t

    t = _stage("3/6 token codes")
    parquet_dir = write_image_parquet(images, labels, class_names, pad, out / "data", "train")
    codes_dir = out / "codes"
    extract_codes(parquet_dir, vqvae.eval(), codes_dir, image_size=image_size, augment="flip", batch_size=256, shard_size=20000, progress=progress)
    timings["codes"] = time.perf_counter() - t
    return {
        "train_set": train_set, "test_set": test_set, "class_names": class_names, "vqvae": vqvae,
        "vq_stats": vq_stats, "vq_dir": vq_dir, "codes_dir": codes_dir, "pad": pad, "image_size": image_size,
    }


def write_image_parquet(images, labels, class_names: list[str], pad: int, directory: Path, name: str) -> Path:
    """``directory/<name>.parquet`` of uint8 gray ``images`` ``[n, H, W]`` padded (black) by ``pad``
    pixels per side, with their labels; kept if already there. Returns ``directory``."""
    import numpy as np
    import PIL.Image
    from datasets import ClassLabel, Dataset, Features, Image

    directory = Path(directory)
    target = directory / f"{name}.parquet"
    if not target.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        features = Features({"image": Image(), "label": ClassLabel(names=class_names)})
        table = Dataset.from_dict(
            {"image": [PIL.Image.fromarray(np.pad(im, pad)) for im in images], "label": [int(x) for x in labels]}, features=features
        )
        with atomic_path(target) as tmp:
            table.to_parquet(str(tmp))
    return directory
