"""Convert LlamaGen's original class-conditional checkpoints into Hugging Face model directories.

An original checkpoint is a ``.pt`` file (the state dict under ``"model"``, ``"ema"`` or ``"module"``,
or a bare state dict) or a ``.safetensors`` file with the reference's key names. The result is a
directory with ``config.json`` and ``model.safetensors`` that ``AutoModel.from_pretrained`` loads
after ``import masc_hf``. Optionally the flat checkpoint becomes the starting point of a MASC model:
every non-vocabulary weight is copied, the token embedding and output head are re-initialised at
the cluster map's size k.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..._checkpoints import read_state_dict
from ..._io import check_output_dir, staged_dir
from ...errors import CheckpointError
from .configuration_llamagen import LlamaGenConfig
from .modeling_llamagen import LlamaGenForImageGeneration, default_generation_config

logger = logging.getLogger(__name__)

# Original key (regex) -> our key. Layer indices carry over.
_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^cls_embedding\.embedding_table\.weight$"), "class_embedding.weight"),
    (re.compile(r"^tok_embeddings\.weight$"), "embed_tokens.weight"),
    (re.compile(r"^layers\.(\d+)\.attention\.wqkv\.weight$"), r"layers.\1.self_attn.qkv_proj.weight"),
    (re.compile(r"^layers\.(\d+)\.attention\.wo\.weight$"), r"layers.\1.self_attn.o_proj.weight"),
    (re.compile(r"^layers\.(\d+)\.feed_forward\.w1\.weight$"), r"layers.\1.mlp.gate_proj.weight"),
    (re.compile(r"^layers\.(\d+)\.feed_forward\.w3\.weight$"), r"layers.\1.mlp.up_proj.weight"),
    (re.compile(r"^layers\.(\d+)\.feed_forward\.w2\.weight$"), r"layers.\1.mlp.down_proj.weight"),
    (re.compile(r"^layers\.(\d+)\.attention_norm\.weight$"), r"layers.\1.input_layernorm.weight"),
    (re.compile(r"^layers\.(\d+)\.ffn_norm\.weight$"), r"layers.\1.post_attention_layernorm.weight"),
    (re.compile(r"^norm\.weight$"), "norm.weight"),
    (re.compile(r"^output\.weight$"), "lm_head.weight"),
]
# Tensors the reference may hold that are rebuilt at run time, never weights.
_IGNORED_KEYS = re.compile(r"^(freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache)$")
# Our keys whose size is the vocabulary (re-initialised when starting a MASC model).
VOCABULARY_KEYS = ("embed_tokens.weight", "lm_head.weight")
# What a conversion writes: all that overwrite=True may replace.
MODEL_FILES = frozenset({"config.json", "generation_config.json", "model.safetensors"})
_STATE_DICT_KEYS = ("model", "ema", "module", "state_dict")


def hf_key(original_key: str) -> str | None:
    """Our name for an original LlamaGen key; None for a key that is rebuilt at run time (``freqs_cis``)."""
    if _IGNORED_KEYS.match(original_key):
        return None
    for pattern, replacement in _KEY_RULES:
        if pattern.match(original_key):
            return pattern.sub(replacement, original_key)
    raise CheckpointError(
        f"unexpected key {original_key!r} in the checkpoint: not a key of LlamaGen's class-conditional "
        "transformer (is this a text-to-image or VQ checkpoint?)"
    )


def load_original_state_dict(path: str | os.PathLike, state_dict_key: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of an original LlamaGen checkpoint (``.pt``/``.pth``/``.bin`` or ``.safetensors``).

    ``state_dict_key`` picks the entry of a ``.pt`` dict; by default the dict itself when it holds
    tensors, else the first of ``model``, ``ema``, ``module``, ``state_dict`` present (``model`` first,
    as the reference's sampling scripts). See :func:`masc_hf._checkpoints.read_state_dict`.
    """
    return read_state_dict(path, wrappers=_STATE_DICT_KEYS, state_dict_key=state_dict_key)


def convert_state_dict(
    original: dict[str, torch.Tensor],
    config: LlamaGenConfig,
    *,
    source: str = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename an original state dict to our keys and check every shape against ``config``.

    Raises :class:`CheckpointError` naming the key, both shapes and the fix on any missing,
    unexpected or mis-shaped tensor.
    """
    return rename_and_check(
        original, expected_shapes(config), hf_key, source, f"num_hidden_layers={config.num_hidden_layers}", lambda key: _shape_hint(key, config)
    )


def rename_and_check(
    original: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    rename,
    source: str,
    layers: str,
    shape_hint=lambda key: "",
) -> dict[str, torch.Tensor]:
    """The one strict conversion loop of the AR converters: ``rename`` each original key (``None``: a
    run-time tensor, skipped), and refuse an unknown key, a wrong shape (``shape_hint(key)`` appended)
    or a missing weight, naming the key and the fix. ``layers`` describes the config's depth."""
    converted: dict[str, torch.Tensor] = {}
    for original_key, tensor in original.items():
        key = rename(original_key)
        if key is None:
            logger.debug("skipping %s (rebuilt at run time)", original_key)
            continue
        if key not in expected:
            raise CheckpointError(
                f"{source} has {original_key!r} but the config has no such weight ({layers}); "
                "pick the preset or --config that matches the checkpoint"
            )
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(
                f"shape mismatch for {original_key!r} (ours {key!r}): {source} has {list(tensor.shape)}, the config "
                f"expects {list(expected[key])}; pick the preset or --config that matches the checkpoint" + shape_hint(key)
            )
        converted[key] = tensor
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} weight(s) the config needs, e.g. {missing[:3]}; "
            "is it truncated, or does the preset have more layers than the checkpoint?"
        )
    return converted


def _shape_hint(key: str, config: LlamaGenConfig) -> str:
    if key in VOCABULARY_KEYS:
        return f" (vocab_size={config.vocab_size}: use the codebook size the checkpoint was trained with)"
    if key == "class_embedding.weight":
        return f" (num_classes={config.num_classes} plus one null row when class_dropout_prob > 0)"
    return f" (hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size})"


def expected_shapes(config: LlamaGenConfig) -> dict[str, tuple[int, ...]]:
    """Our state-dict keys and shapes for ``config``, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = LlamaGenForImageGeneration(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def original_key_map(original_keys: list[str]) -> dict[str, str]:
    """original key -> our key for every weight key (run-time tensors such as ``freqs_cis`` left out)."""
    return {key: new for key in original_keys if (new := hf_key(key)) is not None}


def convert_llamagen_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: LlamaGenConfig,
    *,
    cluster_map: Any = None,
    state_dict_key: str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Convert an original LlamaGen checkpoint into an HF directory (written atomically).

    Args:
        checkpoint: original ``.pt`` or ``.safetensors`` file.
        out_dir: directory to create (config.json + model.safetensors).
        config: the architecture (e.g. ``LlamaGenConfig.from_preset("GPT-XL-384")``), flat (vocab_size N).
        cluster_map: a ``MASCClusterMap`` over the checkpoint's N ids: write the starting point of a
            MASC model instead (non-vocabulary weights copied, embedding and head re-initialised at k).
        state_dict_key: entry of a ``.pt`` dict holding the weights (default: model, ema, module).
        dtype: cast floating weights (e.g. ``torch.bfloat16``); default keeps the checkpoint's.
        overwrite: replace a previous conversion in ``out_dir`` (a directory holding other files is refused).
        seed: seed of the re-initialised MASC embedding.

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, MODEL_FILES, overwrite=overwrite, error=CheckpointError)
    if config.is_masc:
        raise CheckpointError(
            "the config already describes a MASC model; convert with the flat config (vocab_size = codebook size) "
            "and pass the cluster map to make a MASC starting point"
        )
    original = load_original_state_dict(checkpoint, state_dict_key)
    source = f"checkpoint {Path(checkpoint).name!r}"

    weights = convert_state_dict(original, config, source=source)
    if cluster_map is None:
        out_config = copy.deepcopy(config)
    else:
        from ...clustering import check_cluster_map

        check_cluster_map(cluster_map, num_tokens=config.vocab_size, what=f"the flat checkpoint {Path(checkpoint).name!r}")
        out_config = LlamaGenConfig.from_dict(
            {
                **config.to_dict(),
                "vocab_size": int(cluster_map.num_clusters),
                "fine_vocab_size": config.vocab_size,
                "cluster_map_fingerprint": cluster_map.fingerprint,
            }
        )
        weights.update(_fresh_vocabulary_weights(out_config, seed, weights["embed_tokens.weight"].dtype))
        logger.info(
            "MASC start: copied %d weights, re-initialised embedding and head at k=%d (from N=%d)",
            len(weights) - len(VOCABULARY_KEYS), out_config.vocab_size, config.vocab_size,
        )

    if dtype is not None:
        weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
        out_config.dtype = dtype
    _write_atomically(out_dir, out_config, weights, overwrite)
    logger.info("wrote %s (%d tensors)", out_dir, len(weights))
    return out_dir


def _fresh_vocabulary_weights(config: LlamaGenConfig, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Token embedding and head of size k, initialised as the model's ``_init_weights`` does."""
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(config.vocab_size, config.hidden_size, generator=generator) * config.initializer_range
    head = torch.zeros(config.vocab_size, config.hidden_size)  # the reference zero-initialises the head
    return {"embed_tokens.weight": embedding.to(dtype), "lm_head.weight": head.to(dtype)}


def _write_atomically(out_dir: Path, config: LlamaGenConfig, weights: dict[str, torch.Tensor], overwrite: bool) -> None:
    write_model_dir(out_dir, config, weights, LlamaGenForImageGeneration.__name__, default_generation_config(config), overwrite)


def write_model_dir(out_dir: Path, config, weights: dict[str, torch.Tensor], architecture: str, generation_config, overwrite: bool) -> None:
    """A converted model directory (config, generation config, safetensors weights), staged and renamed into place."""
    with staged_dir(out_dir) as staging:
        config.architectures = [architecture]
        config.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        save_file({key: value.contiguous() for key, value in weights.items()}, str(staging / "model.safetensors"), metadata={"format": "pt"})
        check_output_dir(out_dir, MODEL_FILES, overwrite=overwrite, error=CheckpointError)  # again: it may have changed meanwhile


def load_config_file(path: str | os.PathLike) -> LlamaGenConfig:
    """A config from a JSON file: LlamaGen ``ModelArgs`` (optionally under ``model_args``) or our own config.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read config {str(path)!r} as JSON ({err}); pass a LlamaGen ModelArgs JSON") from err
    if not isinstance(data, dict):
        raise CheckpointError(
            f"config {str(path)!r} holds a JSON {type(data).__name__}, not an object; pass a LlamaGen ModelArgs JSON "
            'like {"dim": 768, "n_layer": 12, ...}'
        )
    if data.get("model_type") == LlamaGenConfig.model_type:
        return LlamaGenConfig(**{key: value for key, value in data.items() if key != "model_type"})
    return LlamaGenConfig.from_model_args(data)
