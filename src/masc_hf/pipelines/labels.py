"""Class names for class-conditional pipelines: ImageNet-1k's, shipped with the package, or any
``id2label`` a model was trained with (e.g. Fashion-MNIST's)."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources

from ..errors import MASCError

__all__ = ["ClassLabelError", "imagenet_id2label", "label_index", "resolve_class_labels"]


class ClassLabelError(MASCError):
    """An unknown class name or a class id out of range."""


@lru_cache(maxsize=1)
def imagenet_id2label() -> dict[int, str]:
    """ImageNet-1k ``{id: "name, synonym, ..."}`` in the standard order (synsets sorted by WordNet
    id), which is the order LlamaGen trained with (ImageFolder) and torchvision uses."""
    data = json.loads(resources.files(__package__).joinpath("imagenet_classes.json").read_text())
    return dict(enumerate(data["names"]))


def label_index(id2label: dict[int, str]) -> dict[str, int]:
    """Lower-cased lookup of every full label and every comma-separated synonym -> id.
    A synonym shared by two classes (ImageNet has a few, e.g. "crane") keeps its first id;
    the full label always resolves."""
    index: dict[str, int] = {}
    for i, label in sorted(id2label.items()):
        index.setdefault(label.strip().lower(), int(i))
    for i, label in sorted(id2label.items()):
        for name in label.split(","):
            index.setdefault(name.strip().lower(), int(i))
    return index


def resolve_class_labels(labels, id2label: dict[int, str], num_classes: int) -> list[int]:
    """ints, names, or a list mixing both -> a list of class ids in ``[0, num_classes)``.
    A bare string is one name (never a list of characters). Unknown names suggest the closest."""
    if isinstance(labels, (str, int)) or not hasattr(labels, "__iter__"):
        labels = [labels]
    if hasattr(labels, "tolist"):  # torch / numpy
        labels = labels.tolist()
        labels = labels if isinstance(labels, list) else [labels]
    index = None
    out = []
    for label in labels:
        if isinstance(label, str):
            key = label.strip().lower()
            if key.lstrip("-").isdigit():
                label = int(key)
            else:
                index = index if index is not None else label_index(id2label)
                if key not in index:
                    close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.6)
                    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; see pipeline.id2label for the names"
                    raise ClassLabelError(f"unknown class name {label!r}{hint}")
                label = index[key]
        if isinstance(label, bool) or not isinstance(label, int):
            raise ClassLabelError(f"class labels must be ints or names, got {label!r} ({type(label).__name__})")
        if not 0 <= label < num_classes:
            raise ClassLabelError(f"class id {label} is out of range [0, {num_classes}); the model has {num_classes} classes")
        out.append(label)
    if not out:
        raise ClassLabelError("no class labels given; pass at least one id or name")
    return out
