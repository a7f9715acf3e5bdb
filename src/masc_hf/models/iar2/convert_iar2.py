"""Convert IAR2's released class-conditional checkpoints (``IAR2-{B,L,XL,XXL}``) into Hugging Face
model directories that ``AutoModel.from_pretrained`` loads after ``import masc_hf``.

The backbone and head blocks use LlamaGen's key table (:mod:`masc_hf.models.llamagen.convert_llamagen`);
the converted config sets ``rope_cell_repeat=2``, the RoPE layout the released weights were trained with.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path

import torch

from ..._io import check_output_dir
from ...errors import CheckpointError
from ..llamagen.convert_llamagen import MODEL_FILES, hf_key as llamagen_key, load_original_state_dict, rename_and_check, write_model_dir
from .configuration_iar2 import IAR2Config
from .modeling_iar2 import IAR2ForImageGeneration, default_generation_config

logger = logging.getLogger(__name__)

# Original key prefix -> ours, for the parts IAR2 adds to LlamaGen's layout.
_PREFIXES = {
    "tok_embeddings1.": "embed_semantic.",
    "tok_embeddings2.": "embed_detail.",
    "aggregation_layer.": "fusion.",
    "mlp1.": "head.context.neighbour_mlp.",
    "mlp2.": "head.context.context_mlp.",
    "output1.": "head.semantic_out.",
    "output2.": "head.detail_out.",
}
# Run-time tensors the reference may hold (rotary table, causal mask, generation caches): never weights.
_IGNORED_KEYS = re.compile(r"^(freqs_cis|causal_mask|(layers|factorized_blocks)\.\d+\.attention\.kv_cache\.[kv]_cache)$")


def iar2_key(original_key: str) -> str | None:
    """Our name for an original IAR2 key; ``None`` for a run-time tensor."""
    if _IGNORED_KEYS.match(original_key):
        return None
    if original_key == "norm.weight":  # in IAR2 the only norm after the blocks is the head's
        return "head.norm.weight"
    for prefix, ours in _PREFIXES.items():
        if original_key.startswith(prefix):
            return ours + original_key[len(prefix):]
    if original_key.startswith("factorized_blocks."):
        return "head." + _backbone_key(original_key[len("factorized_"):].replace("blocks.", "layers.", 1), original_key)
    return _backbone_key(original_key, original_key)


def _backbone_key(key: str, original_key: str) -> str:
    try:
        mapped = llamagen_key(key)
    except CheckpointError:
        mapped = None
    if mapped is None or not (mapped.startswith("layers.") or mapped == "class_embedding.weight"):
        raise CheckpointError(
            f"unexpected key {original_key!r} in the checkpoint: not a key of IAR2's class-conditional transformer "
            "(is this the tokenizer, or a LlamaGen GPT checkpoint?)"
        )
    return mapped


def expected_shapes(config: IAR2Config) -> dict[str, tuple[int, ...]]:
    """Our state-dict keys and shapes for ``config``, computed on the meta device."""
    with torch.device("meta"):
        model = IAR2ForImageGeneration(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def convert_iar2_state_dict(original: dict[str, torch.Tensor], config: IAR2Config, *, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Rename an original IAR2 state dict to our keys and check every shape against ``config`` (strict)."""
    if not any(key.startswith("factorized_blocks.") or key.startswith("tok_embeddings1.") for key in original):
        if "tok_embeddings.weight" in original:
            raise CheckpointError(f"{source} is a LlamaGen GPT checkpoint (tok_embeddings.weight), not IAR2; convert it with `masc-hf convert-llamagen`")
    return rename_and_check(
        original, expected_shapes(config), iar2_key, source,
        f"num_hidden_layers={config.num_hidden_layers}, head_layers={config.head_layers}",
        lambda key: f" (hidden_size={config.hidden_size}, semantic x detail vocabulary {config.semantic_vocab_size} x "
        f"{config.detail_vocab_size}, num_classes={config.num_classes})",
    )


def load_config_file(path: str | os.PathLike) -> IAR2Config:
    """A config from a JSON file: IAR2 ``ModelArgs`` (optionally under ``model_args``) or our own config.json.
    An ``ModelArgs`` file describes a released-style model, so ``rope_cell_repeat`` becomes 2."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read config {str(path)!r} as JSON ({err}); pass an IAR2 ModelArgs JSON") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"config {str(path)!r} holds a JSON {type(data).__name__}, not an object; pass an IAR2 ModelArgs JSON")
    if data.get("model_type") == IAR2Config.model_type:
        return IAR2Config(**{key: value for key, value in data.items() if key != "model_type"})
    return IAR2Config.from_model_args(data, rope_cell_repeat=2)


def convert_iar2_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: IAR2Config,
    *,
    state_dict_key: str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an original IAR2 checkpoint (``.pt`` read with ``weights_only=True``, the state dict bare or
    under ``model``/``ema``/``module``/``state_dict``; or ``.safetensors``) into ``out_dir``
    (``config.json``, ``generation_config.json``, ``model.safetensors``), written atomically.

    ``config``: e.g. ``IAR2Config.from_preset("IAR2-B", rope_cell_repeat=2)``; a config with
    ``rope_cell_repeat=1`` is refused (the released weights need 2).
    """
    if config.rope_cell_repeat != 2:
        raise CheckpointError(
            f"rope_cell_repeat={config.rope_cell_repeat}: IAR2's released weights were trained with every RoPE cell repeated "
            "twice; convert with rope_cell_repeat=2 (the presets and ModelArgs configs set it)"
        )
    out_dir = Path(out_dir)
    check_output_dir(out_dir, MODEL_FILES, overwrite=overwrite, error=CheckpointError)
    original = load_original_state_dict(checkpoint, state_dict_key)
    weights = convert_iar2_state_dict(original, config, source=f"checkpoint {Path(checkpoint).name!r}")
    out_config = copy.deepcopy(config)
    if dtype is not None:
        weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
        out_config.dtype = dtype
    write_model_dir(out_dir, out_config, weights, IAR2ForImageGeneration.__name__, default_generation_config(), overwrite)
    logger.info("wrote %s (%d tensors)", out_dir, len(weights))
    return out_dir
