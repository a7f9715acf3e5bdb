"""Streamed image datasets, this process's part, decoded by us so a bad image cannot end a run.
Design notes (the sources it reads, how processes split a stream, why it decodes): docs/data.md.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError

logger = logging.getLogger(__name__)

# "name" or "owner/name"; anything else that is not an existing path is a typo'd local path
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class ImageStream:
    """One process's part of a streamed image dataset, as ``(PIL image, label)`` pairs.

    Args:
        source: a Hub id, parquet directory/file/glob, or image folder (see docs/data.md).
        split: the split to read (``"train"``; image folders and parquet files without split
            names only have ``"train"``).
        rank, world_size: this process's index and the number of processes.
        image_column: the column holding the images (``"image"``).
        label_column: the column holding integer class ids (``"label"``); ``None`` for an
            unlabelled dataset, whose examples all get label 0.
        mode: PIL mode images are converted to (``"RGB"``; ``"L"`` for grayscale; ``None`` keeps
            each image's own mode).

    Iterating yields ``(image, label)`` and skips images that do not decode;
    :attr:`num_skipped` counts them (over every pass). For code extraction, which needs the raw
    stream position, :attr:`dataset` (undecoded rows) and :func:`decode_example` are public.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        image_column: str = "image",
        label_column: str | None = "label",
        mode: str | None = "RGB",
    ) -> None:
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise DataError(f"rank must lie in [0, world_size) and world_size >= 1, got rank={rank!r}, world_size={world_size!r}")
        self.source = str(source)
        self.split = split
        self.rank = rank
        self.world_size = world_size
        self.image_column = image_column
        self.label_column = label_column
        self.mode = mode
        self.num_skipped = 0

        full = open_streaming_dataset(self.source, split=split)
        columns = list(full.features) if full.features is not None else None
        if columns is not None:
            if image_column not in columns:
                raise DataError(f"{self.source} has no image column {image_column!r}; its columns are {columns}; pass image_column=")
            if label_column is not None and label_column not in columns:
                raise DataError(
                    f"{self.source} has no label column {label_column!r}; its columns are {columns}; "
                    "pass label_column= (or None for an unlabelled dataset)"
                )
        self.class_names = _class_names(full.features, label_column)
        self.num_examples = _split_size(full, split)
        self.num_shards = full.num_shards

        from datasets import Image as ImageFeature
        from datasets.distributed import split_dataset_by_node

        undecoded = full.cast_column(image_column, ImageFeature(decode=False))
        self.dataset = split_dataset_by_node(undecoded, rank=rank, world_size=world_size)
        if world_size > 1:
            how = "whole shards" if full.num_shards % world_size == 0 else f"every {world_size}-th example"
            logger.info("%s: %d shard(s) over %d processes; rank %d reads %s", self.source, full.num_shards, world_size, rank, how)

    def __iter__(self) -> Iterator[tuple[Image.Image, int]]:
        seen = skipped = 0
        for example in self.dataset:
            seen += 1
            image, label = self.decode_example(example)
            if image is None:
                skipped += 1
                self.num_skipped += 1
                continue
            yield image, label
        if skipped:
            logger.warning("%s (rank %d): skipped %d of %d images that did not decode", self.source, self.rank, skipped, seen)

    @property
    def examples_per_rank(self) -> int | None:
        """Roughly how many examples this rank reads (from the split's size), or ``None`` if unknown."""
        if self.num_examples is None:
            return None
        return len(range(self.rank, self.num_examples, self.world_size))

    def decode_example(self, example: dict[str, Any]) -> tuple[Image.Image | None, int]:
        """``(image, label)`` of one undecoded row of :attr:`dataset`; ``image`` is ``None`` (and a
        warning logged) when it does not decode. Does not count; thread-safe."""
        label = 0 if self.label_column is None else int(example[self.label_column])
        value = example[self.image_column]
        name = (value.get("path") if isinstance(value, dict) else None) or f"an image of {self.source} with label {label}"
        return decode_image(value, mode=self.mode, name=name), label


def decode_image(value: Any, mode: str | None = "RGB", name: str | None = None) -> Image.Image | None:
    """Decode one undecoded ``datasets`` image (``{"bytes": ..., "path": ...}``, a path or a PIL
    image) fully (truncated files fail here, not later), converted to ``mode``. Returns ``None``
    and logs a warning naming the image (``name``, else its path) when it is corrupt, truncated
    or missing."""
    try:
        if isinstance(value, dict):
            data = value.get("bytes")
            image = Image.open(io.BytesIO(data) if data is not None else value["path"])
        else:
            image = value if isinstance(value, Image.Image) else Image.open(value)
        image.load()
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        return image
    except Exception as err:  # any decoder failure: PIL raises OSError, SyntaxError, ValueError, ...
        if name is None:
            name = value.get("path") if isinstance(value, dict) else str(value)
        logger.warning("skipping an image that does not decode (%s): %s: %s", name or "unnamed bytes", type(err).__name__, err)
        return None


def open_streaming_dataset(source: str, split: str = "train"):
    """``datasets.IterableDataset`` of ``split`` of ``source`` (a Hub id, parquet directory/file/
    glob, or image folder), streamed and not yet split between processes."""
    import datasets

    path = Path(source).expanduser()
    if glob.has_magic(source):
        files = sorted(glob.glob(str(path), recursive=True))
        if not files:
            raise DataError(f"no files match {source!r}; check the pattern (quote it so the shell does not expand it)")
        builder, kwargs = "parquet", {"data_files": {"train": files}}
    elif path.is_file():
        if path.suffix != ".parquet":
            raise DataError(f"{source} is a file but not a .parquet shard; pass a parquet file, a directory or a Hub id")
        builder, kwargs = "parquet", {"data_files": {"train": [str(path)]}}
    elif path.is_dir():
        # datasets finds the files and their splits (train-*.parquet, validation-*.parquet, or train/ ...)
        has_parquet = next(path.rglob("*.parquet"), None) is not None
        builder, kwargs = ("parquet" if has_parquet else "imagefolder"), {"data_dir": str(path)}
    elif not _HUB_ID.fullmatch(source):
        raise DataError(f"{source} does not exist; pass an existing directory, parquet file or glob, or a Hub id such as ILSVRC/imagenet-1k")
    else:
        builder, kwargs = source, {}
    try:
        return datasets.load_dataset(builder, split=split, streaming=True, **kwargs)
    except ValueError as err:
        if "split" in str(err).lower() or "Unknown split" in str(err):
            raise DataError(f"{source} has no split {split!r} ({err}); pass split=") from err
        raise DataError(f"could not open {source} with datasets ({err})") from err
    except Exception as err:  # network, authentication, missing dataset: keep the cause, add the fix
        hint = (
            "check the id, run `hf auth login` for gated datasets such as ImageNet, and unset HF_HUB_OFFLINE"
            if builder == source
            else "check that the files are readable images or parquet shards"
        )
        raise DataError(f"could not open {source} ({type(err).__name__}: {err}); {hint}") from err


def _class_names(features, label_column: str | None) -> list[str] | None:
    if features is None or label_column is None:
        return None
    names = getattr(features.get(label_column), "names", None)
    return list(names) if names else None


def _split_size(dataset, split: str) -> int | None:
    splits = getattr(dataset.info, "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return int(info.num_examples) if info is not None and info.num_examples else None
