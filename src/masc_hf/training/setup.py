"""From names and files to the objects :func:`~masc_hf.training.train` takes: a LlamaGen model that
fits a code-shard dataset (its vocabulary, sequence length and classes) and, for MASC, its map; or an
IAR2 model for dual-codebook codes."""

from __future__ import annotations

import difflib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ModelConfigError
from .trainer import TrainingError, require_dual_codebook, require_single_codebook

MODEL_KINDS = ("llamagen", "iar2")

__all__ = ["model_for_codes"]

# Keys of a saved config.json that are not LlamaGenConfig fields: accepted, and these four dropped.
_SAVED_ONLY_KEYS = ("_name_or_path", "architectures", "transformers_version", "model_type")


def model_for_codes(
    train_dataset,
    *,
    preset: str | None = None,
    model_config: dict[str, Any] | str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    cluster_map=None,
    class_dropout_prob: float = 0.1,
    seed: int = 0,
    kind: str | None = None,
):
    """A LlamaGen model for ``train_dataset`` (a :class:`~masc_hf.data.CodeShardDataset`), or an IAR2
    model for dual-codebook codes.

    ``kind``: ``"llamagen"`` or ``"iar2"``; ``None`` follows the preset's family (``GPT-...`` or
    ``IAR2-...``), else picks IAR2 for dual-codebook codes (IAR2's tokenizer) and LlamaGen otherwise. An IAR2 ``preset`` is ``"IAR2-B"`` ... ``"IAR2-XXL"`` (the
    backbone sizes; sequence length, vocabularies and classes follow the data), a ``model_config``
    holds ``IAR2Config`` fields.

    Exactly one source of the architecture: ``init_from`` (a saved model directory, e.g. the output
    of ``masc-hf convert-llamagen --cluster-map``), ``model_config`` (a dict or JSON file of
    ``LlamaGenConfig`` fields), or ``preset`` (``"GPT-B-256"``, ...). A new model's vocabulary,
    sequence length and classes follow the data (and ``cluster_map``: k cluster ids over N tokens).
    The data's class names become the config's ``id2label``, and the code shards' tokenizer
    fingerprint its ``tokenizer_fingerprint``. A new model's initial weights come from ``seed`` (the
    global RNG is left as it was). A ``model_config`` key that is not a ``LlamaGenConfig`` field is
    refused with the closest field name, and so is a ``class_dropout_prob`` in it that differs from
    the argument (one setting, one place).
    """
    from ..models import LlamaGenConfig, LlamaGenForImageGeneration

    if kind is None:  # a preset names its family; otherwise the codes decide (pairs: IAR2)
        named = str(preset or "").strip().upper()
        if named.startswith("IAR2"):
            kind = "iar2"
        elif named.startswith("GPT"):
            kind = "llamagen"
        else:
            kind = "iar2" if getattr(train_dataset, "is_dual_codebook", False) else "llamagen"
    if kind not in MODEL_KINDS:
        raise TrainingError(f"model kind {kind!r} does not exist; use one of {', '.join(MODEL_KINDS)}")
    manifest, class_names = train_dataset.manifest, train_dataset.class_names
    data_fields: dict[str, Any] = {
        "block_size": manifest.seq_len,
        "class_dropout_prob": class_dropout_prob,
        "tokenizer_fingerprint": manifest.tokenizer_fingerprint,
    }
    if class_names:
        data_fields["num_classes"] = len(class_names)
    if kind == "iar2":
        from ..models import IAR2Config, IAR2ForImageGeneration

        require_dual_codebook(train_dataset, cluster_map)
        data_fields.update(semantic_vocab_size=manifest.num_tokens, detail_vocab_size=manifest.num_detail_tokens)
        classes, example = (IAR2Config, IAR2ForImageGeneration), ("IAR2-B", "masc-hf convert-iar2")
    else:
        require_single_codebook(train_dataset)
        if cluster_map is not None:
            data_fields.update(
                vocab_size=cluster_map.num_clusters, fine_vocab_size=manifest.num_tokens, cluster_map_fingerprint=cluster_map.fingerprint
            )
        else:
            data_fields.update(vocab_size=manifest.num_tokens, fine_vocab_size=None, cluster_map_fingerprint=None)
        classes, example = (LlamaGenConfig, LlamaGenForImageGeneration), ("GPT-B-256", "masc-hf convert-llamagen")
    model = _build_model(*classes, example, data_fields, preset, model_config, init_from, class_dropout_prob, seed)
    if class_names and len(class_names) == model.config.num_classes:
        model.config.id2label = dict(enumerate(class_names))
        model.config.label2id = {name: i for i, name in enumerate(class_names)}
    return model


def _build_model(config_class, model_class, example: tuple[str, str], data_fields: dict, preset, model_config, init_from,
                 class_dropout_prob: float, seed: int):
    """A model of ``model_class`` from exactly one source (``init_from``, ``model_config`` or ``preset``),
    its data-given fields set from ``data_fields`` (``example``: a preset and the converter to name in errors)."""
    import torch

    if init_from:
        try:
            model = model_class.from_pretrained(init_from)
        except OSError as err:
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TrainingError(
                f"init_from={str(init_from)!r} is not a loadable model ({first_line}); pass a save_pretrained directory "
                f"(e.g. a run's output_dir/model or {example[1]} output)"
            ) from None
        if model.config.tokenizer_fingerprint is None:  # trained on these codes from now on
            model.config.tokenizer_fingerprint = data_fields["tokenizer_fingerprint"]
        return model
    if model_config is not None:
        base = read_model_config(model_config, config_class)
        if "class_dropout_prob" in base and base["class_dropout_prob"] != class_dropout_prob:
            raise TrainingError(
                f"the model config sets class_dropout_prob={base['class_dropout_prob']!r} but class_dropout_prob="
                f"{class_dropout_prob!r} was passed (--class_dropout_prob); drop it from the model config and pass the value "
                "you want"
            )
        try:
            config = config_class(**{**base, **data_fields})
        except ModelConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise TrainingError(
                f"the model config has a value of the wrong type ({err}); sizes and rates are JSON numbers, e.g. {{\"hidden_size\": 768}}"
            ) from None
    elif preset:
        config = config_class.from_preset(preset, **data_fields)
    else:
        raise TrainingError(f"no model given: pass a preset (e.g. {example[0]}), a model config, or init_from")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config)


def read_model_config(model_config: dict[str, Any] | str | os.PathLike, config_class=None) -> dict[str, Any]:
    """The fields of ``config_class`` (default ``LlamaGenConfig``) in a dict or JSON file (a saved
    ``config.json`` works too); an unreadable file, a JSON value that is not an object, or an unknown
    key is a :class:`TrainingError`."""
    from ..models import LlamaGenConfig

    config_class = config_class or LlamaGenConfig
    name = config_class.__name__

    if not isinstance(model_config, (str, os.PathLike)):
        base, where = model_config, "the model config"
    else:
        path = Path(model_config)
        where = f"model config {str(path)!r}"
        if path.is_dir():
            raise TrainingError(f"{where} is a directory; pass its config.json, or pass a saved model directory as init_from")
        if not path.is_file():
            raise TrainingError(f"{where} does not exist; pass a JSON file of {name} fields, e.g. {{\"hidden_size\": 768}}")
        try:
            base = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TrainingError(f"{where} is not valid JSON ({err}); write a JSON object of {name} fields") from None
    if not isinstance(base, dict):
        kinds = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
        kind = kinds.get(type(base), type(base).__name__)
        raise TrainingError(f"{where} must be a JSON object of {name} fields (e.g. {{\"hidden_size\": 768}}), not a {kind}")
    if base.get("model_type", config_class.model_type) != config_class.model_type:
        raise TrainingError(
            f"{where} is a {base['model_type']!r} config, not {name.removesuffix('Config')}'s ({config_class.model_type!r}); pass {name} fields"
        )
    fields = sorted(set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"})
    aliases = sorted(config_class.attribute_map)  # the reference's ModelArgs names (dim, n_layer, ...)
    saved = set(config_class().to_dict()) | {"torch_dtype"}  # what save_pretrained writes besides the fields
    unknown = [key for key in base if key not in fields and key not in aliases and key not in saved]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), fields + aliases, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise TrainingError(f"{where} has unknown key(s) {', '.join(hints)}; {name}'s fields are {', '.join(fields)}")
    return {key: value for key, value in base.items() if key not in _SAVED_ONLY_KEYS}
