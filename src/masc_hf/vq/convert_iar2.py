"""Conversion of IAR2's released dual-codebook tokenizer (``0485000.pt``, second stage) into a
:class:`~masc_hf.vq.dual_codebook.DualCodebookVQModel` directory.

The encoder, decoder and the two 1x1 convolutions use LlamaGen's VQ key mapping
(:mod:`masc_hf.vq.convert_llamagen`); only the quantizer is new: ``quantize.embedding.weight``
(semantic rows, kept raw: the model normalises them at use time, as the reference does) and
``quantize.embedding_second`` (detail rows). The usage counters ``quantize.codebook_used{,2}`` are
dropped. Key layout and quirks: docs/iar2-vq.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import check_output_dir
from ..errors import CheckpointError
from .convert_llamagen import (
    VQMODEL_FILES,
    LlamaGenVQConfig,
    _describe,
    _some,
    diffusers_vq_key,
    llamagen_vq_key,
    load_llamagen_state_dict,
    map_checked_state_dict,
    write_model_dir,
)

logger = logging.getLogger(__name__)

SEMANTIC_KEY = "quantize.embedding.weight"
DETAIL_KEY = "quantize.embedding_second"
# Our names of the two codebooks.
SEMANTIC_MODEL_KEY = "quantize.semantic_embedding.weight"
DETAIL_MODEL_KEY = "quantize.detail_embedding.weight"
DROPPED_KEYS = frozenset({"quantize.codebook_used", "quantize.codebook_used2"})
DEFAULT_SEMANTIC_CODEBOOK_SIZE = 256  # hard-coded in the reference quantizer


@dataclass(frozen=True)
class DualVQConfig:
    """A dual-codebook tokenizer: a LlamaGen VQ backbone whose ``codebook_size`` is the detail
    codebook (the reference's meaning), plus the semantic codebook's row count."""

    backbone: LlamaGenVQConfig = LlamaGenVQConfig(codebook_size=4096)
    semantic_codebook_size: int = DEFAULT_SEMANTIC_CODEBOOK_SIZE

    def __post_init__(self) -> None:
        size = self.semantic_codebook_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise CheckpointError(f"IAR2 VQ config: semantic_codebook_size must be a positive integer, got {size!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DualVQConfig:
        """The fixture's layout (``model_args`` + ``encoder_kwargs``/``decoder_kwargs``, as for a
        LlamaGen VQ) or a flat mapping; ``semantic_codebook_size`` may sit at the top level or in
        ``model_args`` (default 256)."""
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"IAR2 VQ config must be a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        size = raw.pop("semantic_codebook_size", None)
        if isinstance(raw.get("model_args"), Mapping):
            model_args = dict(raw["model_args"])
            inner = model_args.pop("semantic_codebook_size", None)
            if size is not None and inner is not None and size != inner:
                raise CheckpointError(f"IAR2 VQ config: semantic_codebook_size {size!r} contradicts model_args.semantic_codebook_size {inner!r}")
            size = size if size is not None else inner
            raw["model_args"] = model_args
        return cls(LlamaGenVQConfig.from_dict(raw), DEFAULT_SEMANTIC_CODEBOOK_SIZE if size is None else size)

    def model_kwargs(self, sample_size: int = 256) -> dict[str, Any]:
        """Keyword arguments of :class:`DualCodebookVQModel` for this architecture."""
        vq = self.backbone.to_diffusers_config(sample_size=sample_size)
        keep = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                "layers_per_block", "act_fn", "latent_channels", "sample_size", "norm_num_groups", "vq_embed_dim",
                "mid_block_add_attention")
        kwargs = {name: vq[name] for name in keep}
        kwargs.update(
            num_semantic_embeddings=self.semantic_codebook_size,
            num_detail_embeddings=self.backbone.codebook_size,
            codebook_l2_norm=self.backbone.codebook_l2_norm,
        )
        return kwargs

    def describe(self) -> str:
        return f"{self.semantic_codebook_size} semantic x {self.backbone.codebook_size} detail codes, backbone {_describe(self.backbone)}"


# The released tokenizer (VQ-16 backbone, 256 semantic x 4096 detail codes of dimension 8).
IAR2_VQ_PRESETS: dict[str, DualVQConfig] = {"IAR2-VQ-16": DualVQConfig()}


def resolve_dual_vq_config(config: DualVQConfig | Mapping[str, Any] | str | os.PathLike | None) -> DualVQConfig:
    """A config from an instance, a mapping, a preset name (``"IAR2-VQ-16"``) or a JSON file;
    ``None`` means the released tokenizer's architecture."""
    if config is None:
        return IAR2_VQ_PRESETS["IAR2-VQ-16"]
    if isinstance(config, DualVQConfig):
        return config
    if isinstance(config, Mapping):
        return DualVQConfig.from_dict(config)
    if isinstance(config, str) and config in IAR2_VQ_PRESETS and not Path(config).exists():
        return IAR2_VQ_PRESETS[config]
    path = Path(config)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"IAR2 VQ config file not found: {path} (or use the preset IAR2-VQ-16)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"IAR2 VQ config {path} is not readable JSON: {err}") from None
    return DualVQConfig.from_dict(raw)


def dual_vq_key(original_key: str) -> str | None:
    """Our key of an IAR2 tokenizer key, or ``None`` when it is not part of the layout."""
    if original_key == SEMANTIC_KEY:
        return SEMANTIC_MODEL_KEY
    if original_key == DETAIL_KEY:
        return DETAIL_MODEL_KEY
    if original_key.startswith("quantize."):
        return None
    return diffusers_vq_key(original_key)


def iar2_vq_key(model_key: str) -> str | None:
    """The reference's key of one of ours (inverse of :func:`dual_vq_key`)."""
    if model_key == SEMANTIC_MODEL_KEY:
        return SEMANTIC_KEY
    if model_key == DETAIL_MODEL_KEY:
        return DETAIL_KEY
    return None if model_key.startswith("quantize.") else llamagen_vq_key(model_key)


def empty_dual_vqmodel(config: DualVQConfig, sample_size: int = 256):
    """A :class:`DualCodebookVQModel` of this architecture on the meta device."""
    from .dual_codebook import DualCodebookVQModel

    with torch.device("meta"):
        return DualCodebookVQModel(**config.model_kwargs(sample_size=sample_size))


def convert_iar2_vq_state_dict(state_dict: Mapping[str, torch.Tensor], config: DualVQConfig | None = None) -> dict[str, torch.Tensor]:
    """Rename, reshape and check an IAR2 tokenizer state dict for :class:`DualCodebookVQModel`.

    Raises ``CheckpointError`` for a plain LlamaGen VQ (no detail codebook), foreign keys, or (in
    one message) wrong shapes, keys outside the architecture and missing tensors, with the fix.
    """
    config = config or IAR2_VQ_PRESETS["IAR2-VQ-16"]
    if DETAIL_KEY not in state_dict:
        if SEMANTIC_KEY in state_dict:
            raise CheckpointError(
                f"the checkpoint has no detail codebook ({DETAIL_KEY}): it is a plain LlamaGen VQ tokenizer "
                f"(codebook {list(state_dict[SEMANTIC_KEY].shape)}), not IAR2's dual-codebook one; convert it with "
                "`masc-hf convert-vq` instead"
            )
        raise CheckpointError(
            f"the checkpoint has neither codebook ({SEMANTIC_KEY}, {DETAIL_KEY}): it is not an IAR2 tokenizer state dict "
            "(an AR model or discriminator checkpoint cannot be converted here)"
        )
    expected = {key: tuple(t.shape) for key, t in empty_dual_vqmodel(config).state_dict().items()}
    converted, foreign, problems = map_checked_state_dict(state_dict, expected, dual_vq_key, iar2_vq_key, DROPPED_KEYS)
    if foreign:
        raise CheckpointError(
            f"{len(foreign)} key(s) of the checkpoint are not part of an IAR2 dual-codebook tokenizer: {_some(foreign)}; "
            "pass the tokenizer's state dict"
        )
    if problems:
        raise CheckpointError(
            f"the checkpoint does not fit the architecture {config.describe()}: {'; '.join(problems)}. "
            "Pass a config describing it (--config FILE like fixtures/iar2/vq/config.json); without one, the released "
            "tokenizer (IAR2-VQ-16) is assumed"
        )
    return converted


def load_iar2_vq(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    config: DualVQConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    sample_size: int = 256,
):
    """Convert in memory: a :class:`DualCodebookVQModel` (eval mode) holding the checkpoint's weights."""
    config = resolve_dual_vq_config(config)
    state_dict = checkpoint if isinstance(checkpoint, Mapping) else load_llamagen_state_dict(checkpoint)
    model = empty_dual_vqmodel(config, sample_size=sample_size)
    model.load_state_dict(convert_iar2_vq_state_dict(state_dict, config), strict=True, assign=True)
    return model.eval()


def convert_iar2_vq(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: DualVQConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    sample_size: int = 256,
) -> Path:
    """Write IAR2's tokenizer checkpoint (``.pt`` read with ``weights_only=True``, the state dict
    under ``"ema"``/``"model"``/``"state_dict"`` or bare; or a ``.safetensors`` with the reference's
    key names) as a :class:`DualCodebookVQModel` directory (``config.json`` +
    ``diffusion_pytorch_model.safetensors``), staged and renamed into place. Returns ``out_dir``.

    Example::

        convert_iar2_vq("0485000.pt", "iar2-vq")
        vq = masc_hf.DualCodebookVQModel.from_pretrained("iar2-vq")
    """
    config = resolve_dual_vq_config(config)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, VQMODEL_FILES, overwrite=overwrite, error=CheckpointError)
    converted = convert_iar2_vq_state_dict(load_llamagen_state_dict(checkpoint), config)
    write_model_dir(out_dir, converted, empty_dual_vqmodel(config, sample_size=sample_size), overwrite=overwrite)
    logger.info("wrote DualCodebookVQModel (%s, %d tensors) to %s", config.describe(), len(converted), out_dir)
    return out_dir
