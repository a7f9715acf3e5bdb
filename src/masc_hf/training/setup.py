"""From names and files to the objects :func:`~masc_hf.training.train` takes: a LlamaGen model that
fits a code-shard dataset (its vocabulary, sequence length and classes) and, for MASC, its map."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .trainer import TrainingError

__all__ = ["model_for_codes"]


def model_for_codes(
    train_dataset,
    *,
    preset: str | None = None,
    model_config: dict[str, Any] | str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    cluster_map=None,
    class_dropout_prob: float = 0.1,
    seed: int = 0,
):
    """A LlamaGen model for ``train_dataset`` (a :class:`~masc_hf.data.CodeShardDataset`).

    Exactly one source of the architecture: ``init_from`` (a saved model directory, e.g. the output
    of ``masc-hf convert-llamagen --cluster-map``), ``model_config`` (a dict or JSON file of
    ``LlamaGenConfig`` fields), or ``preset`` (``"GPT-B-256"``, ...). A new model's vocabulary,
    sequence length and classes follow the data (and ``cluster_map``: k cluster ids over N tokens).
    The data's class names become the config's ``id2label``. A new model's initial weights come from
    ``seed`` (the global RNG is left as it was).
    """
    import torch

    from ..models import LlamaGenConfig, LlamaGenForImageGeneration

    manifest = train_dataset.manifest
    class_names = train_dataset.class_names
    if init_from:
        model = LlamaGenForImageGeneration.from_pretrained(init_from)
    else:
        data_fields: dict[str, Any] = {"block_size": manifest.seq_len, "class_dropout_prob": class_dropout_prob}
        if class_names:
            data_fields["num_classes"] = len(class_names)
        if cluster_map is not None:
            data_fields.update(
                vocab_size=cluster_map.num_clusters, fine_vocab_size=manifest.num_tokens, cluster_map_fingerprint=cluster_map.fingerprint
            )
        else:
            data_fields["vocab_size"] = manifest.num_tokens
        if model_config is not None:
            base = model_config if isinstance(model_config, dict) else json.loads(Path(model_config).read_text())
            config = LlamaGenConfig(**{**base, **data_fields})
        elif preset:
            config = LlamaGenConfig.from_preset(preset, **data_fields)
        else:
            raise TrainingError("no model given: pass a preset (e.g. GPT-B-256), a model config, or init_from")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaGenForImageGeneration(config)
    if class_names and len(class_names) == model.config.num_classes:
        model.config.id2label = dict(enumerate(class_names))
        model.config.label2id = {name: i for i, name in enumerate(class_names)}
    return model
