"""A small CNN classifier for 28x28 grayscale images (Fashion-MNIST): class consistency of generated
samples, and a feature space for a "classifier FID" at Fashion-MNIST scale.
Design notes (what it measures, the inputs it takes): docs/evaluation.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._io import staged_dir
from ..data.pixels import images_to_tensor, is_pil_image
from ..errors import DataError, MASCError
from ..training.schedules import warmup_cosine_schedule

logger = logging.getLogger(__name__)

__all__ = [
    "ClassifierError",
    "ImageClassifier",
    "ImageClassifierConfig",
    "class_consistency",
    "classifier_accuracy",
    "to_classifier_input",
    "train_classifier",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_FILES = (CONFIG_NAME, WEIGHTS_NAME)


class ClassifierError(MASCError):
    """Bad classifier input (image shapes, value ranges, labels) or a saved classifier that cannot be read."""


@dataclass(frozen=True)
class ImageClassifierConfig:
    """The classifier's hyper-parameters: three conv stages of ``conv_channels`` (each conv 3x3 +
    BatchNorm + ReLU, 2x2 max-pool after the first two), a hidden layer of ``feature_dim`` (the
    features), ``num_classes`` outputs. Inputs are ``image_size`` square, gray, standardised with
    ``pixel_mean`` / ``pixel_std`` (Fashion-MNIST's training-set values). ``class_names`` are optional
    (index = label)."""

    num_classes: int = 10
    image_size: int = 28
    conv_channels: tuple[int, int, int] = (16, 32, 32)
    feature_dim: int = 128
    dropout: float = 0.2
    pixel_mean: float = 0.2860
    pixel_std: float = 0.3530
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_channels", tuple(int(c) for c in self.conv_channels))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        for name in ("num_classes", "image_size", "feature_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ClassifierError(f"classifier config: {name} must be a positive integer, got {value!r}")
        if self.num_classes < 2 or len(self.conv_channels) != 3 or min(self.conv_channels) < 1:
            raise ClassifierError(
                f"classifier config: need num_classes >= 2 and three positive conv_channels, got "
                f"{self.num_classes} and {list(self.conv_channels)}"
            )
        if self.image_size % 4:
            raise ClassifierError(f"classifier config: image_size must be a multiple of 4 (two 2x2 pools), got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0 or not self.pixel_std > 0:
            raise ClassifierError(f"classifier config: need 0 <= dropout < 1 and pixel_std > 0, got {self.dropout}, {self.pixel_std}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ClassifierError(f"classifier config: {len(self.class_names)} class_names for {self.num_classes} classes")

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["conv_channels"] = list(self.conv_channels)
        raw["class_names"] = list(self.class_names) if self.class_names is not None else None
        return raw


class ImageClassifier(nn.Module):
    """Small CNN for ``[B, 1, S, S]`` gray images standardised by :meth:`normalize`; see
    :class:`ImageClassifierConfig`. ``forward`` returns logits ``[B, num_classes]``; the public
    :meth:`predict` / :meth:`features` take raw images of any supported kind."""

    def __init__(self, config: ImageClassifierConfig | None = None, metrics: dict[str, Any] | None = None):
        super().__init__()
        self.config = config or ImageClassifierConfig()
        self.metrics = dict(metrics or {})  # e.g. test accuracy, saved beside the config
        c1, c2, c3 = self.config.conv_channels
        self.convs = nn.Sequential(
            _conv_block(1, c1), nn.MaxPool2d(2),
            _conv_block(c1, c2), nn.MaxPool2d(2),
            _conv_block(c2, c3),
        )
        side = self.config.image_size // 4
        self.hidden = nn.Sequential(nn.Flatten(), nn.Dropout(self.config.dropout), nn.Linear(c3 * side * side, self.config.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(self.config.dropout), nn.Linear(self.config.feature_dim, self.config.num_classes))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, S, S]`` in ``[0, 1]`` -> the network's standardised input."""
        return (images - self.config.pixel_mean) / self.config.pixel_std

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[B, feature_dim]`` of standardised ``pixels``."""
        return self.hidden(self.convs(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(pixels))

    @torch.no_grad()
    def predict(self, images: Any, *, center_crop: int | None = None, batch_size: int = 512) -> np.ndarray:
        """Predicted labels ``[n]`` int64 of ``images`` (see :func:`to_classifier_input`)."""
        return self._run(images, center_crop, batch_size, lambda x: self(x).argmax(dim=1)).numpy()

    @torch.no_grad()
    def predict_proba(self, images: Any, *, center_crop: int | None = None, batch_size: int = 512) -> np.ndarray:
        """Class probabilities ``[n, num_classes]`` float32 of ``images``."""
        return self._run(images, center_crop, batch_size, lambda x: self(x).softmax(dim=1)).numpy()

    @torch.no_grad()
    def features(self, images: Any, *, center_crop: int | None = None, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features ``[n, feature_dim]`` float32 of ``images``, for
        :func:`~masc_hf.evaluation.frechet.feature_statistics`."""
        return self._run(images, center_crop, batch_size, self.forward_features).numpy()

    def _run(self, images: Any, center_crop: int | None, batch_size: int, fn) -> torch.Tensor:
        pixels = to_classifier_input(images, self.config.image_size, center_crop=center_crop)
        if pixels.shape[0] == 0:
            raise ClassifierError("no images given")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            outputs = [fn(self.normalize(pixels[i : i + batch_size].to(device))).cpu() for i in range(0, pixels.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(outputs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (config + metrics) and ``model.safetensors`` atomically: a temporary
        directory renamed into place. An existing directory is replaced only if it holds nothing but
        a classifier's files."""
        from safetensors.torch import save_file

        target = Path(save_directory)
        if target.exists():
            if not target.is_dir():
                raise ClassifierError(f"{target} exists and is not a directory; choose a directory path")
            foreign = sorted(p.name for p in target.iterdir() if p.name not in _FILES)
            if foreign:
                raise ClassifierError(f"{target} holds files that are not a classifier's ({', '.join(foreign[:5])}); save into an empty or new directory")
        with staged_dir(target) as tmp:
            state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))
            payload = {"model_type": "masc_hf_image_classifier", **self.config.to_dict(), "metrics": self.metrics}
            (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        logger.info("saved classifier to %s", target)
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ImageClassifier:
        """Load a classifier written by :meth:`save_pretrained` (eval mode, CPU)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ClassifierError(f"{directory} is not a saved classifier: needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ClassifierError(f"could not read {config_path}: {err}") from err
        if raw.pop("model_type", None) != "masc_hf_image_classifier":
            raise ClassifierError(f"{config_path} does not describe a masc-hf image classifier")
        metrics = raw.pop("metrics", {})
        try:
            config = ImageClassifierConfig(**raw)
        except TypeError as err:
            raise ClassifierError(f"{config_path}: {err}") from err
        model = cls(config, metrics)
        try:
            model.load_state_dict(load_file(str(weights_path)))
        except (RuntimeError, OSError) as err:  # missing/unexpected keys, wrong shapes, corrupt file
            raise ClassifierError(f"{weights_path} does not fit the config beside it: {err}") from err
        return model.eval()


def to_classifier_input(images: Any, image_size: int = 28, *, center_crop: int | None = None) -> torch.Tensor:
    """Images of any supported kind as ``[n, 1, image_size, image_size]`` float32 in ``[0, 1]``.

    Accepted: a PIL image or a list of them (any mode); numpy arrays ``[n, H, W]`` or channels-last
    ``[n, H, W, C]`` (``C`` in 1, 3, 4; alpha dropped); torch tensors ``[n, H, W]`` or channels-first
    ``[n, C, H, W]``; a single image without the ``n`` axis is not accepted for arrays (add it).
    uint8 values are divided by 255; float values must lie in ``[0, 1]`` (map ``[-1, 1]`` images
    with ``(x + 1) / 2``). RGB becomes luma (PIL's ``"L"`` weights). ``center_crop``: a side to crop
    to first (e.g. 28 for a tokenizer's 32x32 padding); then other sizes are resized (bilinear,
    antialiased) to ``image_size``. The classifier's use of :func:`~masc_hf.data.pixels.images_to_tensor`.
    """
    try:
        tensor = images_to_tensor(_pil_as_arrays(images), value_range=(0.0, 1.0), channels=1, allow_float=True)
    except DataError as err:
        raise ClassifierError(str(err)) from err
    if center_crop is not None:
        height, width = tensor.shape[2:]
        if not 0 < center_crop <= min(height, width):
            raise ClassifierError(f"center_crop={center_crop} does not fit images of {height}x{width}")
        top, left = (height - center_crop) // 2, (width - center_crop) // 2
        tensor = tensor[:, :, top : top + center_crop, left : left + center_crop]
    if tuple(tensor.shape[2:]) != (image_size, image_size) and tensor.shape[0]:
        tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)
    return tensor.contiguous()


def classifier_accuracy(classifier: ImageClassifier, images: Any, labels: Any, **kwargs: Any) -> float:
    """Share of ``images`` whose predicted class equals ``labels`` ``[n]``."""
    predicted = classifier.predict(images, **kwargs)
    return _agreement(predicted, labels, classifier.config.num_classes)


def class_consistency(classifier: ImageClassifier, images: Any, labels: Any, **kwargs: Any) -> float:
    """Share of generated ``images`` that ``classifier`` assigns to their conditioning class ``labels``
    ``[n]`` (1.0: every sample looks like its class; ``1 / num_classes``: chance). ``kwargs`` go to
    :meth:`ImageClassifier.predict` (e.g. ``center_crop=28``)."""
    return classifier_accuracy(classifier, images, labels, **kwargs)


def train_classifier(
    images: Any,
    labels: Any,
    *,
    config: ImageClassifierConfig | None = None,
    epochs: float = 1.0,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    eval_images: Any = None,
    eval_labels: Any = None,
    progress: bool = True,
) -> tuple[ImageClassifier, dict[str, Any]]:
    """Train an :class:`ImageClassifier` on ``images`` (any kind :func:`to_classifier_input` takes;
    e.g. Fashion-MNIST uint8 ``[60000, 28, 28]``) and ``labels`` ``[n]`` in ``[0, num_classes)``.

    AdamW, its learning rate warmed up linearly from 0 to ``lr`` over the first 20% of the steps, then
    a cosine to ``lr / 100`` (:func:`~masc_hf.training.schedules.warmup_cosine_schedule`); ``epochs``
    passes (a fraction is allowed) in shuffled batches; deterministic for a ``seed`` on CPU; the
    caller's global RNG state is left as it was. With ``eval_images`` / ``eval_labels`` (e.g. the test
    split) the accuracy on them is measured at the end and stored in ``classifier.metrics["test_accuracy"]``.

    Returns ``(classifier, stats)``: the classifier in eval mode and ``steps``, ``seconds``, ``loss``
    (per step), ``train_accuracy`` (running, last epoch's batches) and ``test_accuracy`` if measured.
    """
    config = config or ImageClassifierConfig()
    pixels = to_classifier_input(images, config.image_size)
    targets = _as_labels(labels, pixels.shape[0], config.num_classes)
    if pixels.shape[0] == 0:
        raise ClassifierError("no training images given")
    if not epochs > 0 or batch_size < 1:
        raise ClassifierError(f"need epochs > 0 and batch_size >= 1, got {epochs} and {batch_size}")
    batch_size = min(batch_size, pixels.shape[0])
    steps_per_epoch = max(1, pixels.shape[0] // batch_size)
    steps = max(1, round(epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageClassifier(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = warmup_cosine_schedule(optimizer, warmup_steps=round(0.2 * steps), total_steps=steps, min_lr_ratio=0.01)
        stats: dict[str, Any] = {"loss": []}
        correct = seen = 0
        order, position = torch.randperm(pixels.shape[0], generator=generator), 0
        started = time.perf_counter()
        bar = tqdm(range(steps), desc="classifier", disable=not progress, dynamic_ncols=True)
        try:
            for step in bar:
                if position + batch_size > pixels.shape[0]:
                    order, position = torch.randperm(pixels.shape[0], generator=generator), 0
                    correct = seen = 0
                index = order[position : position + batch_size]
                position += batch_size
                logits = model(model.normalize(pixels[index]))
                loss = F.cross_entropy(logits, targets[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                stats["loss"].append(float(loss.detach()))
                correct += int((logits.detach().argmax(dim=1) == targets[index]).sum())
                seen += index.numel()
                if progress and step % 20 == 0:
                    bar.set_postfix({"loss": f"{stats['loss'][-1]:.3f}", "acc": f"{correct / seen:.3f}"}, refresh=False)
        finally:
            bar.close()
    model.eval()
    stats.update(steps=steps, seconds=time.perf_counter() - started, train_accuracy=correct / max(seen, 1))
    if eval_images is not None:
        if eval_labels is None:
            raise ClassifierError("eval_images given without eval_labels")
        stats["test_accuracy"] = classifier_accuracy(model, eval_images, eval_labels)
        model.metrics["test_accuracy"] = stats["test_accuracy"]
        logger.info("classifier: %d steps in %.0f s, test accuracy %.4f", steps, stats["seconds"], stats["test_accuracy"])
    else:
        logger.info("classifier: %d steps in %.0f s", steps, stats["seconds"])
    return model, stats


# --------------------------------------------------------------------------------------------
# Helpers


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())


def _pil_as_arrays(images: Any) -> Any:
    """PIL images of any mode and size as pixel arrays the converter takes: L and RGB as they are,
    other modes as gray; mixed modes or sizes all gray at the first image's size. Other input unchanged."""
    if is_pil_image(images):
        images = [images]
    if not (isinstance(images, Sequence) and images and all(is_pil_image(image) for image in images)):
        return images
    arrays = [np.asarray(image.convert("L") if image.mode not in ("L", "RGB") else image) for image in images]
    if len({a.shape for a in arrays}) > 1:
        arrays = [np.asarray(image.convert("L").resize(images[0].size)) for image in images]
    return arrays


def _as_labels(labels: Any, count: int, num_classes: int) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.shape != (count,) or not np.issubdtype(array.dtype, np.integer):
        raise ClassifierError(f"labels must be {count} integers (one per image), got {array.dtype} {list(array.shape)}")
    if count and (array.min() < 0 or array.max() >= num_classes):
        raise ClassifierError(f"labels must lie in [0, {num_classes}), got values in [{array.min()}, {array.max()}]")
    return torch.from_numpy(array.astype(np.int64))


def _agreement(predicted: np.ndarray, labels: Any, num_classes: int) -> float:
    targets = _as_labels(labels, predicted.shape[0], num_classes).numpy()
    if predicted.shape[0] == 0:
        raise ClassifierError("no images given")
    return float((predicted == targets).mean())
