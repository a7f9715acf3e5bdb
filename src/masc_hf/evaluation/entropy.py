"""Prediction entropy per token position (the MASC paper's Eq. 6, position by position), teacher-forced
on validation codes, in bits and normalised by ``log2(V)``. Design notes: docs/evaluation.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ClusterMapMismatchError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from ..clustering import MASCClusterMap

__all__ = ["PredictionEntropy", "entropy_per_position"]


@dataclass(frozen=True)
class PredictionEntropy:
    """``per_position``: float64 ``[L]``, mean entropy in bits at each token position (row-major
    over the token grid); ``mean``: their mean (Eq. 6 over all positions, what training logs as
    ``entropy``); ``normalized``: ``mean / log2(vocab_size)`` (``entropy_normalized``)."""

    per_position: np.ndarray
    mean: float
    normalized: float
    vocab_size: int
    num_examples: int


@torch.no_grad()
def entropy_per_position(
    model,
    codes: str | os.PathLike | tuple[Any, Any],
    cluster_map: MASCClusterMap | None = None,
    *,
    batch_size: int = 64,
    max_examples: int | None = None,
    progress: bool = False,
) -> PredictionEntropy:
    """Teacher-forced prediction entropy of ``model`` per position over validation codes.

    Args:
        model: a ``LlamaGenForImageGeneration`` (flat, or MASC: then pass its ``cluster_map``).
        codes: a code-shard directory (:class:`~masc_hf.data.CodeShardDataset`, first view of each
            image), or ``(codes [N, L], labels [N])`` (numpy or torch): fine token ids, or cluster
            ids for a MASC model when no ``cluster_map`` is given.
        cluster_map: the map a MASC model was trained with (checked against the model and the
            shards); fine ids are mapped to cluster ids with it.
        batch_size: images per forward pass.
        max_examples: use only the first ``max_examples`` images.
        progress: show a tqdm bar.

    Returns:
        :class:`PredictionEntropy`.
    """
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from ..models.ar import entropy_bits

    config = model.config
    if cluster_map is not None:
        from ..pipelines.pairing import check_map_fits_model

        check_map_fits_model(cluster_map, model)  # N, k and the map's fingerprint
    if isinstance(codes, (str, os.PathLike)):
        from ..data.code_shards import CodeShardDataset

        dataset = CodeShardDataset(codes, cluster_map=cluster_map, augmentation=0)
        dataset.require_single_codebook("the prediction entropy of a LlamaGen model")
        if config.is_masc and cluster_map is None:
            raise ClusterMapMismatchError(
                f"the model predicts k={config.vocab_size} clusters but the shards in {codes} hold codebook ids; "
                "pass the cluster map the model was trained with"
            )
        length = dataset.seq_len
    else:
        ids, labels = (torch.as_tensor(np.asarray(part) if not isinstance(part, torch.Tensor) else part) for part in codes)
        if ids.ndim != 2 or labels.shape != ids.shape[:1] or ids.dtype.is_floating_point or labels.dtype.is_floating_point:
            raise DataError(f"codes must be integer (codes [N, L], labels [N]), got {list(ids.shape)} and {list(labels.shape)}")
        ids = cluster_map.encode(ids.long()) if cluster_map is not None else ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
            raise DataError(
                f"code ids lie in [{int(ids.min())}, {int(ids.max())}] but the model's vocabulary is [0, {config.vocab_size}); "
                "pass fine ids with the model's cluster map, or ids of the model's own vocabulary"
            )
        dataset = TensorDataset(ids, labels.long())
        length = ids.shape[1]
    if length != config.block_size:
        raise DataError(f"the codes hold {length} tokens per image but the model's block_size is {config.block_size}")
    if max_examples is not None:
        dataset = Subset(dataset, range(min(int(max_examples), len(dataset))))
    if len(dataset) == 0:
        raise DataError("no validation codes to compute the entropy over")

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = np.zeros(length, dtype=np.float64)
    count = 0
    try:
        for batch_codes, batch_labels in tqdm(DataLoader(dataset, batch_size=batch_size), desc="entropy", disable=not progress):
            batch_codes, batch_labels = batch_codes.to(device), batch_labels.to(device)
            logits = model(input_ids=batch_codes[:, :-1], class_labels=batch_labels).logits  # [B, L, V]
            totals += entropy_bits(logits).sum(dim=0).double().cpu().numpy()  # Eq. 6 per position, summed over rows
            count += batch_codes.shape[0]
    finally:
        model.train(was_training)
    per_position = totals / count
    mean = float(per_position.mean())
    return PredictionEntropy(
        per_position=per_position,
        mean=mean,
        normalized=mean / math.log2(config.vocab_size),
        vocab_size=int(config.vocab_size),
        num_examples=count,
    )
