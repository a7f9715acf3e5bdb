"""Images -> token-code shards with a VQ tokenizer, on any number of processes, resumable
(``recipes/extract_codes.py`` is the command-line wrapper). Design notes: docs/data.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError
from .code_shards import CodeShardManifest, CodeShardWriter, codes_dtype_for
from .images import ImageStream
from .transforms import AUGMENTATIONS, extraction_views

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import VQModel

    from ..vq.dual_codebook import DualCodebookVQModel

logger = logging.getLogger(__name__)


def extract_codes(
    source: str | os.PathLike,
    vqmodel: VQModel | DualCodebookVQModel,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    image_size: int = 256,
    augment: str = "flip",
    batch_size: int = 64,
    shard_size: int = 10_000,
    rank: int | None = None,
    world_size: int | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    num_workers: int | None = None,
    progress: bool = True,
) -> CodeShardManifest | None:
    """Encode the images of ``source`` into token-code shards in ``out_dir``.

    Args:
        source: a Hub id, parquet shards or an image folder (see :mod:`masc_hf.data.images`).
        vqmodel: the VQ tokenizer in eval mode on the device to use: a diffusers ``VQModel`` (one
            id per position), or IAR2's ``DualCodebookVQModel`` (a semantic and a detail id per
            position: the shards hold both, see :class:`~masc_hf.data.CodeShardDataset`).
        out_dir: the shard directory; a rerun with the same arguments resumes in it.
        split: the dataset split.
        image_size: side of the square crops fed to the tokenizer (a multiple of its downsample
            factor); the token grid is ``image_size // factor`` on each side.
        augment: views per image, as in LlamaGen's extraction: ``"none"`` (centre crop),
            ``"flip"`` (centre crop and its mirror; LlamaGen's default) or ``"ten-crop"``.
        batch_size: images per tokenizer call (each brings ``A`` views).
        shard_size: stream examples per shard (a shard holds fewer when images are skipped).
        rank, world_size: this process and the number of processes; default: from
            ``torch.distributed`` when it is initialised (``accelerate launch`` does), else 0 and 1.
        image_column, label_column: dataset columns (``label_column=None``: every label is 0).
        num_workers: threads decoding and cropping images (default: ``min(8, CPU count)``).
        progress: show a tqdm bar (process 0 only) with images/s.

    Returns:
        The complete :class:`CodeShardManifest` once every process is done (on every process
        when ``torch.distributed`` is initialised, which waits for all), else ``None``.
    """
    rank, world_size = _rank_and_world(rank, world_size)
    if augment not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {augment!r}; choose one of {sorted(AUGMENTATIONS)}")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    from ..vq import downsample_factor, encode_images, is_dual_codebook, tokenizer_fingerprint

    factor = downsample_factor(vqmodel)
    if image_size % factor:
        raise DataError(f"image_size {image_size} is not a multiple of the tokenizer's downsample factor {factor}; use e.g. {image_size // factor * factor or factor}")
    channels = vqmodel.config.in_channels
    if channels not in (1, 3):
        raise DataError(f"the tokenizer takes {channels}-channel images; only grayscale (1) and RGB (3) are supported")
    if is_dual_codebook(vqmodel):
        num_tokens, num_detail_tokens = int(vqmodel.config.num_semantic_embeddings), int(vqmodel.config.num_detail_embeddings)

        def encode(views: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(ids.reshape(len(views), -1) for ids in vqmodel.encode_ids(views))

    else:
        num_tokens, num_detail_tokens = int(vqmodel.config.num_vq_embeddings), None

        def encode(views: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (encode_images(vqmodel, views),)

    stream = ImageStream(
        source,
        split=split,
        rank=rank,
        world_size=world_size,
        image_column=image_column,
        label_column=label_column,
        mode="RGB" if channels == 3 else "L",
    )
    settings = CodeShardManifest(
        tokenizer_fingerprint=tokenizer_fingerprint(vqmodel),
        num_tokens=num_tokens,
        image_size=image_size,
        grid_size=(image_size // factor, image_size // factor),
        augment=augment,
        num_augmentations=AUGMENTATIONS[augment],
        codes_dtype=codes_dtype_for(num_tokens),
        num_detail_tokens=num_detail_tokens,
        detail_codes_dtype=None if num_detail_tokens is None else codes_dtype_for(num_detail_tokens),
        shard_size=shard_size,
        world_size=world_size,
        source=str(source),
        split=split,
        class_names=stream.class_names,
    )
    writer = CodeShardWriter(out_dir, settings, rank=rank)
    if writer.is_done:
        logger.info("rank %d: all shards already written in %s", rank, out_dir)
    else:
        _write_rank(stream, writer, encode, batch_size, num_workers, progress)
    return _wait_for_all(writer)


def _write_rank(
    stream: ImageStream,
    writer: CodeShardWriter,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    batch_size: int,
    num_workers: int | None,
    progress: bool,
) -> None:
    settings = writer.manifest
    shard_size = settings.shard_size
    start = 0
    while writer.has_shard(start):
        start += 1
    rows = _rows_after(stream, writer, start)
    per_rank = stream.examples_per_rank
    # process 0's bar, scaled to all processes (they read equal parts): images and images/s in all
    bar = tqdm(
        total=per_rank,
        initial=min(start * shard_size, per_rank) if per_rank else start * shard_size,
        unit="img",
        unit_scale=settings.world_size if settings.world_size > 1 else False,
        desc=f"extract codes ({settings.augment}, {settings.image_size}px, {settings.world_size} process(es))",
        disable=not progress or writer.rank != 0,
        dynamic_ncols=True,
    )

    def views_of(example: dict[str, Any]) -> tuple[torch.Tensor | None, int]:
        image, label = stream.decode_example(example)
        return (None if image is None else extraction_views(image, settings.image_size, settings.augment)), label

    workers = num_workers or min(8, os.cpu_count() or 1)
    index, total_skipped = start, 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool, bar:
        while True:
            chunk = islice(rows, shard_size)
            if writer.has_shard(index):  # written by an earlier run beyond the resume point
                consumed = _consume(chunk)
                if consumed == 0:
                    break
                bar.update(consumed)
                index += 1
                continue
            ids_per_codebook = ([], []) if settings.is_dual_codebook else ([],)  # [n, A, L] arrays per batch
            dtypes = (settings.codes_dtype, settings.detail_codes_dtype)
            labels, num_raw, num_skipped = [], 0, 0
            for batch in _batched(_ordered_map(pool, views_of, chunk, ahead=2 * batch_size), batch_size):
                kept = [(views, label) for views, label in batch if views is not None]
                num_raw += len(batch)
                num_skipped += len(batch) - len(kept)
                if kept:
                    views = torch.cat([v for v, _ in kept])  # [b * A, C, S, S]
                    for out, ids, dtype in zip(ids_per_codebook, encode(views), dtypes):
                        out.append(ids.reshape(len(kept), settings.num_augmentations, settings.seq_len).cpu().numpy().astype(dtype))
                    labels.extend(label for _, label in kept)
                bar.update(len(batch))
                if num_skipped:
                    bar.set_postfix(skipped=total_skipped + num_skipped, refresh=False)
            if num_raw == 0:
                break
            shape = (0, settings.num_augmentations, settings.seq_len)
            codes, *detail = [np.concatenate(out) if out else np.zeros(shape, dtype) for out, dtype in zip(ids_per_codebook, dtypes)]
            writer.write_shard(
                index,
                codes,
                np.asarray(labels, dtype=np.int64),
                num_raw=num_raw,
                num_skipped=num_skipped,
                stream_state=stream.dataset.state_dict(),
                detail_ids=detail[0] if detail else None,
            )
            total_skipped += num_skipped
            index += 1
    if total_skipped:
        logger.warning("rank %d: skipped %d images that did not decode (named in the warnings above)", writer.rank, total_skipped)
    logger.info("rank %d: %d shard(s) in %s (%d written now)", writer.rank, index, writer.directory, index - start)
    writer.finish(index)


def _rows_after(stream: ImageStream, writer: CodeShardWriter, start: int) -> Iterator[dict[str, Any]]:
    """The undecoded rows after the first ``start`` shards: from the stream position saved with
    shard ``start - 1`` when it loads, else by reading and dropping the rows of those shards."""
    if start == 0:
        return iter(stream.dataset)
    logger.info("rank %d: resuming after %d finished shard(s) in %s", writer.rank, start, writer.directory)
    state = writer.shard_metadata(start - 1).get("stream_state")
    if state is not None:
        stream.dataset.load_state_dict(state)
        rows = iter(stream.dataset)
        try:  # datasets applies the state when iteration starts
            first = next(rows, None)
        except Exception as err:  # e.g. a state from another datasets version
            logger.warning("could not restore the stream position (%s: %s); re-reading %d shard(s) to skip them", type(err).__name__, err, start)
        else:
            return iter(()) if first is None else _prepend(first, rows)
        stream.dataset.load_state_dict(None)
    rows = iter(stream.dataset)
    _consume(islice(rows, start * writer.manifest.shard_size))
    return rows


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _consume(rows: Iterable[Any]) -> int:
    count = 0
    for _ in rows:
        count += 1
    return count


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], ahead: int) -> Iterator[Any]:
    """``map(fn, items)`` run in ``pool``, in order, with at most ``ahead`` items in flight
    (``Executor.map`` would read the whole stream first)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (
            torch.distributed.get_rank() if rank is None else rank,
            torch.distributed.get_world_size() if world_size is None else world_size,
        )
    if (rank or 0) != 0 or (world_size or 1) != 1:
        raise DataError(f"pass both rank and world_size (got rank={rank}, world_size={world_size}), or initialise torch.distributed")
    return 0, 1


def _wait_for_all(writer: CodeShardWriter) -> CodeShardManifest | None:
    """The complete manifest: after a barrier when torch.distributed runs, else if this process
    finished last (processes started by hand finish independently)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and writer.manifest.world_size > 1:
        torch.distributed.barrier()
    try:
        manifest = CodeShardManifest.load(writer.directory)
    except DataError:
        return None
    if not manifest.complete:
        return None
    if writer.rank == 0:
        logger.info(
            "code shards complete in %s: %d examples in %d shards, %d images skipped",
            writer.directory,
            manifest.num_examples,
            manifest.num_shards,
            manifest.num_skipped,
        )
    return manifest


def load_vqmodel(
    path: str | os.PathLike, torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> VQModel | DualCodebookVQModel:
    """A VQ tokenizer (eval mode) from a model directory or a pipeline directory holding one in
    ``vqvae/``: IAR2's ``DualCodebookVQModel`` when its ``config.json`` names that class
    (``_class_name``, which diffusers writes), else a diffusers ``VQModel``."""
    path = Path(path)
    subfolder = "vqvae" if not (path / "config.json").is_file() and (path / "vqvae" / "config.json").is_file() else None
    config_path = path / (subfolder or "") / "config.json"
    if not config_path.is_file():
        raise DataError(
            f"no VQModel in {path} (no config.json there or in vqvae/); convert a tokenizer with `masc-hf convert-vq` "
            "(or `convert_iar2_vq` for IAR2's) first"
        )
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise DataError(f"{config_path} is not a JSON model config ({err}); point --vq at a saved tokenizer directory") from None
    if class_name == "DualCodebookVQModel":
        from ..vq.dual_codebook import DualCodebookVQModel as model_class
    else:
        from diffusers import VQModel as model_class
    model = model_class.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype)
    return model.to(device).eval() if device is not None else model.eval()
