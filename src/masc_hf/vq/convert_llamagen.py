"""Conversion of an original LlamaGen VQ tokenizer checkpoint into a plain ``diffusers.VQModel``
(no subclass): keys renamed, 1x1 attention convolutions turned into linear weights, codebook rows
l2-normalised once. Design notes (the block-by-block mapping, why no quantizer change is needed):
docs/vq.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from .._checkpoints import read_state_dict
from .._io import check_output_dir, staged_dir
from .codebook import CODEBOOK_KEY, LLAMAGEN_VQ_WRAPPERS, VQMODEL_WEIGHTS_NAME, l2_normalize_rows

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import VQModel

logger = logging.getLogger(__name__)

GROUPNORM_GROUPS = 32  # LlamaGen's GroupNorm and diffusers' norm_num_groups
# Buffers of the original state dict that inference never reads.
DROPPED_KEYS = frozenset({"quantize.codebook_used"})
# What a conversion writes: all that overwrite=True may replace.
VQMODEL_FILES = frozenset({"config.json", VQMODEL_WEIGHTS_NAME})


# --------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class LlamaGenVQConfig:
    """The inference-relevant hyper-parameters of a LlamaGen VQ tokenizer (defaults: VQ-16)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        for name in ("codebook_size", "codebook_embed_dim", "ch", "z_channels", "num_res_blocks", "in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"VQ config: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.codebook_l2_norm, bool):
            raise CheckpointError(f"VQ config: codebook_l2_norm must be true or false, got {self.codebook_l2_norm!r}")
        if not self.ch_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise CheckpointError(f"VQ config: ch_mult must be a non-empty list of positive integers, got {list(self.ch_mult)}")
        if self.ch_mult[0] != 1:
            raise CheckpointError(
                f"VQ config: ch_mult must start with 1 to map onto diffusers' VQModel, got {list(self.ch_mult)} "
                "(diffusers' encoder conv_in outputs ch * ch_mult[0] channels, LlamaGen's outputs ch)"
            )
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % GROUPNORM_GROUPS]
        if bad:
            raise CheckpointError(
                f"VQ config: every channel count ch * ch_mult must be a multiple of {GROUPNORM_GROUPS} "
                f"(GroupNorm groups), got ch={self.ch}, ch_mult={list(self.ch_mult)} -> {bad}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LlamaGenVQConfig:
        """Read a LlamaGen VQ config.

        Two layouts are accepted: the fixture layout (``model_args`` with LlamaGen's ``ModelArgs``
        fields, plus optional ``encoder_kwargs`` / ``decoder_kwargs``; other top-level entries
        are ignored), or one flat mapping of the same field names plus ``ch``,
        ``num_res_blocks`` (and ``ch_mult`` for both sides). Training-only fields are ignored.
        """
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"VQ config must be a JSON object, got {type(raw).__name__}")
        if "model_args" in raw:
            sections = {"model_args": raw["model_args"], "encoder_kwargs": raw.get("encoder_kwargs", {}), "decoder_kwargs": raw.get("decoder_kwargs", {})}
        else:
            sections = {"config": raw}
        values: dict[str, tuple[str, Any]] = {}  # field -> (where it was read, value)
        for section, entries in sections.items():
            if not isinstance(entries, Mapping):
                raise CheckpointError(f"VQ config: {section} must be a JSON object, got {type(entries).__name__}")
            for name, value in entries.items():
                for field in _config_fields(section, name):
                    if field in values and values[field][1] != value:
                        where = values[field][0]
                        raise CheckpointError(
                            f"VQ config: {section}.{name} = {value!r} contradicts {where} = {values[field][1]!r}; make them agree"
                        )
                    values[field] = (f"{section}.{name}", value)
        settings = {field: value for field, (_, value) in values.items()}
        enc, dec = settings.pop("encoder_ch_mult", None), settings.pop("decoder_ch_mult", None)
        if enc is not None and dec is not None and list(enc) != list(dec):
            raise CheckpointError(
                f"VQ config: encoder_ch_mult {list(enc)} differs from decoder_ch_mult {list(dec)}; "
                "diffusers' VQModel shares block_out_channels between encoder and decoder"
            )
        if enc is not None or dec is not None:
            settings["ch_mult"] = enc if enc is not None else dec
        if settings.pop("norm_type", "group") != "group":
            raise CheckpointError("VQ config: only norm_type 'group' maps onto diffusers' VQModel")
        if settings.pop("resamp_with_conv", True) is not True:
            raise CheckpointError("VQ config: only resamp_with_conv true (convolutional down/upsampling) maps onto diffusers' VQModel")
        return cls(**settings)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LlamaGenVQConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"VQ config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"VQ config {path} is not readable JSON: {err}") from None
        return cls.from_dict(raw)

    def to_diffusers_config(self, sample_size: int = 256) -> dict[str, Any]:
        """Keyword arguments of ``diffusers.VQModel`` for this architecture."""
        levels = len(self.ch_mult)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * (levels - 1) + ["AttnDownEncoderBlock2D"],
            "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (levels - 1),
            "block_out_channels": [self.ch * m for m in self.ch_mult],
            "layers_per_block": self.num_res_blocks,
            "act_fn": "silu",
            "latent_channels": self.z_channels,
            "sample_size": sample_size,
            "num_vq_embeddings": self.codebook_size,
            "norm_num_groups": GROUPNORM_GROUPS,
            "vq_embed_dim": self.codebook_embed_dim,
            "scaling_factor": 1.0,  # LlamaGen does not rescale latents
            "norm_type": "group",
            "mid_block_add_attention": True,
            # decode(ids, force_not_quantize=True, shape=(B, h, w, C)) looks the ids up (as aMUSEd does).
            "lookup_from_codebook": True,
            "force_upcast": False,
        }


# The two released LlamaGen tokenizers (codebook 16384 x 8).
LLAMAGEN_VQ_PRESETS: dict[str, LlamaGenVQConfig] = {
    "VQ-16": LlamaGenVQConfig(),
    "VQ-8": LlamaGenVQConfig(ch_mult=(1, 2, 2, 4)),
}

_FLAT_FIELDS = {f for f in LlamaGenVQConfig.__dataclass_fields__ if f != "ch_mult"} | {
    "encoder_ch_mult",
    "decoder_ch_mult",
    "norm_type",
    "resamp_with_conv",
}
# Fields of LlamaGen's ModelArgs / Encoder / Decoder that only matter in training.
_TRAINING_ONLY = frozenset({"codebook_show_usage", "commit_loss_beta", "entropy_loss_ratio", "dropout_p", "dropout"})


def _config_fields(section: str, name: str) -> list[str]:
    """Config fields that an entry ``name`` of ``section`` sets ([] for training-only entries)."""
    if name in _TRAINING_ONLY:
        return []
    if name == "ch_mult":
        side = {"encoder_kwargs": ["encoder_ch_mult"], "decoder_kwargs": ["decoder_ch_mult"]}
        return side.get(section, ["encoder_ch_mult", "decoder_ch_mult"])
    if name in _FLAT_FIELDS:
        return [name]
    raise CheckpointError(
        f"VQ config: unknown field {section}.{name}; known fields: {sorted(_FLAT_FIELDS | {'ch_mult'})} "
        f"(training-only fields {sorted(_TRAINING_ONLY)} are ignored)"
    )


def resolve_vq_config(config: LlamaGenVQConfig | Mapping[str, Any] | str | os.PathLike | None) -> LlamaGenVQConfig:
    """A config from an instance, a mapping, a preset name (``"VQ-16"``, ``"VQ-8"``) or a JSON
    file; ``None`` means VQ-16."""
    if config is None:
        return LLAMAGEN_VQ_PRESETS["VQ-16"]
    if isinstance(config, LlamaGenVQConfig):
        return config
    if isinstance(config, Mapping):
        return LlamaGenVQConfig.from_dict(config)
    if isinstance(config, str) and config in LLAMAGEN_VQ_PRESETS and not Path(config).exists():
        return LLAMAGEN_VQ_PRESETS[config]
    return LlamaGenVQConfig.from_json(config)


# --------------------------------------------------------------------------------------------
# Key mapping: one table, read in both directions.

_RES_LEAVES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN_LEAVES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

# (LlamaGen module path, diffusers module path, {LlamaGen leaf: diffusers leaf}); {i}, {j} are indices.
_MODULE_RULES: list[tuple[str, str, dict[str, str]]] = [
    ("", "", {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}),
    ("quantize", "quantize", {"embedding": "embedding"}),
    ("encoder.conv_blocks.{i}.downsample", "encoder.down_blocks.{i}.downsamplers.0", {"conv": "conv"}),
    ("decoder.conv_blocks.{i}.upsample", "decoder.up_blocks.{i}.upsamplers.0", {"conv": "conv"}),
]
for _side, _blocks in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
    _MODULE_RULES += [
        (_side, _side, {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}),
        (f"{_side}.conv_blocks.{{i}}.res.{{j}}", f"{_side}.{_blocks}.{{i}}.resnets.{{j}}", _RES_LEAVES),
        (f"{_side}.conv_blocks.{{i}}.attn.{{j}}", f"{_side}.{_blocks}.{{i}}.attentions.{{j}}", _ATTN_LEAVES),
        (f"{_side}.mid.0", f"{_side}.mid_block.resnets.0", _RES_LEAVES),
        (f"{_side}.mid.1", f"{_side}.mid_block.attentions.0", _ATTN_LEAVES),
        (f"{_side}.mid.2", f"{_side}.mid_block.resnets.1", _RES_LEAVES),
    ]


def _key_pattern(module: str, leaves: list[str]) -> re.Pattern[str]:
    pieces = re.split(r"\{(\w+)\}", module)
    body = "".join(f"(?P<{p}>\\d+)" if n % 2 else re.escape(p) for n, p in enumerate(pieces))
    prefix = f"{body}\\." if module else ""
    alternatives = "|".join(re.escape(leaf) for leaf in sorted(leaves, key=len, reverse=True))
    return re.compile(f"^{prefix}(?P<leaf>{alternatives})\\.(?P<param>weight|bias)$")


def _compile_rules(reverse: bool) -> list[tuple[re.Pattern[str], str, dict[str, str]]]:
    compiled = []
    for original, diffusers_path, leaves in _MODULE_RULES:
        source, target, table = (diffusers_path, original, {v: k for k, v in leaves.items()}) if reverse else (original, diffusers_path, leaves)
        compiled.append((_key_pattern(source, list(table)), target, table))
    return compiled


_FORWARD_RULES = _compile_rules(reverse=False)
_REVERSE_RULES = _compile_rules(reverse=True)


def _apply_rules(key: str, rules: list[tuple[re.Pattern[str], str, dict[str, str]]]) -> str | None:
    for pattern, target, table in rules:
        match = pattern.match(key)
        if match:
            module = target.format(**{k: v for k, v in match.groupdict().items() if k not in ("leaf", "param")})
            return ".".join(p for p in (module, table[match["leaf"]], match["param"]) if p)
    return None


def diffusers_vq_key(original_key: str) -> str | None:
    """The diffusers ``VQModel`` key of a LlamaGen VQ state-dict key, or ``None`` when the key is
    not part of LlamaGen's layout (``quantize.codebook_used`` is handled by the caller)."""
    return _apply_rules(original_key, _FORWARD_RULES)


def llamagen_vq_key(diffusers_key: str) -> str | None:
    """The LlamaGen key of a diffusers ``VQModel`` key (inverse of :func:`diffusers_vq_key`)."""
    return _apply_rules(diffusers_key, _REVERSE_RULES)


def _as_diffusers_tensor(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """LlamaGen's 1x1-conv attention projections ``[out, in, 1, 1]`` as diffusers' Linear ``[out, in]``."""
    if _is_attention_projection(diffusers_key) and tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
        return tensor[:, :, 0, 0]
    return tensor


def _is_attention_projection(diffusers_key: str) -> bool:
    return ".attentions." in diffusers_key and re.search(r"\.(to_q|to_k|to_v|to_out\.0)\.weight$", diffusers_key) is not None


# --------------------------------------------------------------------------------------------
# Conversion


def empty_vqmodel(config: LlamaGenVQConfig, sample_size: int = 256) -> VQModel:
    """A diffusers ``VQModel`` of this architecture on the meta device (no memory allocated)."""
    from diffusers import VQModel

    with torch.device("meta"):
        return VQModel(**config.to_diffusers_config(sample_size=sample_size))


def expected_vq_shapes(config: LlamaGenVQConfig) -> dict[str, tuple[int, ...]]:
    """diffusers key -> shape of every tensor of the ``VQModel`` for ``config``."""
    return {key: tuple(t.shape) for key, t in empty_vqmodel(config).state_dict().items()}


def convert_llamagen_vq_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: LlamaGenVQConfig | None = None
) -> dict[str, torch.Tensor]:
    """Rename, reshape and check a LlamaGen VQ state dict for diffusers' ``VQModel``.

    Returns a new mapping (diffusers keys, contiguous tensors). The codebook rows are
    l2-normalised when ``config.codebook_l2_norm``; ``quantize.codebook_used`` is dropped.
    Raises ``CheckpointError`` naming foreign keys, or (in one message) shape mismatches, keys
    outside the configured architecture and missing keys, with the fix.
    """
    config = config or LLAMAGEN_VQ_PRESETS["VQ-16"]
    converted, foreign, problems = map_checked_state_dict(state_dict, expected_vq_shapes(config), diffusers_vq_key, llamagen_vq_key, DROPPED_KEYS)
    if foreign:
        raise CheckpointError(
            f"{len(foreign)} key(s) of the checkpoint are not part of a LlamaGen VQ tokenizer: {_some(foreign)}; "
            "pass the tokenizer's state dict (a GPT or discriminator checkpoint cannot be converted here)"
        )
    if problems:
        raise CheckpointError(
            f"the checkpoint does not fit the architecture {_describe(config)}: {'; '.join(problems)}. "
            "If it is another LlamaGen VQ (e.g. VQ-8: ch_mult [1, 2, 2, 4]), pass a config describing it "
            "(--config FILE like fixtures/llamagen/vq/config.json, or --config VQ-8); without one, VQ-16 is assumed"
        )

    if config.codebook_l2_norm:
        codebook = converted[CODEBOOK_KEY]
        normalized = l2_normalize_rows(codebook.detach().to(torch.float64).numpy())
        converted[CODEBOOK_KEY] = torch.from_numpy(normalized).to(codebook.dtype)
    return converted


def map_checked_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    rename: Callable[[str], str | None],
    original_name: Callable[[str], str | None],
    dropped: frozenset[str] = frozenset(),
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename an original VQ state dict onto a diffusers layout and check it against ``expected``
    (diffusers key -> shape). The one loop behind every VQ converter.

    Returns ``(converted, foreign, problems)``: the renamed contiguous tensors (attention 1x1 kernels
    as Linear weights); the keys ``rename`` does not know; one phrase per kind of misfit (wrong
    shapes, keys outside the architecture, missing tensors named by ``original_name``), in model order.
    """
    order = {key: n for n, key in enumerate(expected)}  # report problems in model order
    converted: dict[str, torch.Tensor] = {}
    foreign, unexpected, mismatched = [], [], []
    present = set()  # diffusers keys the checkpoint provides, whatever their shape
    for key, tensor in state_dict.items():
        if key in dropped:
            continue
        new_key = rename(key)
        if new_key is None:
            foreign.append(key)
            continue
        present.add(new_key)
        if new_key not in expected:
            unexpected.append(key)
        elif tuple(_as_diffusers_tensor(new_key, tensor).shape) != tuple(expected[new_key]):
            want = (*expected[new_key], 1, 1) if _is_attention_projection(new_key) else expected[new_key]
            mismatched.append((order[new_key], f"{key} is {list(tensor.shape)}, expected {list(want)}"))
        else:
            converted[new_key] = _as_diffusers_tensor(new_key, tensor).contiguous()
    missing = [original_name(k) or k for k in expected if k not in present]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) have the wrong shape ({_some([m for _, m in sorted(mismatched)])})")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) are not in this architecture ({_some(unexpected)})")
    if missing:
        problems.append(f"{len(missing)} tensor(s) are missing ({_some(missing)})")
    return converted, foreign, problems


def load_llamagen_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of an original LlamaGen VQ checkpoint: a ``.safetensors`` file, or a torch
    file read with ``weights_only=True`` whose state dict may sit under ``"ema"``, ``"model"``
    or ``"state_dict"`` (first present wins, as in LlamaGen's VQ scripts). See
    :func:`masc_hf._checkpoints.read_state_dict`."""
    return read_state_dict(path, wrappers=LLAMAGEN_VQ_WRAPPERS)


def load_llamagen_vq(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    config: LlamaGenVQConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    sample_size: int = 256,
) -> VQModel:
    """Convert in memory: a diffusers ``VQModel`` (eval mode) holding the checkpoint's weights."""
    config = resolve_vq_config(config)
    state_dict = checkpoint if isinstance(checkpoint, Mapping) else load_llamagen_state_dict(checkpoint)
    converted = convert_llamagen_vq_state_dict(state_dict, config)
    model = empty_vqmodel(config, sample_size=sample_size)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def convert_llamagen_vq(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: LlamaGenVQConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    sample_size: int = 256,
) -> Path:
    """Write a LlamaGen VQ checkpoint as a diffusers ``VQModel`` directory.

    ``out_dir`` receives ``config.json`` and ``diffusion_pytorch_model.safetensors`` and loads
    with ``diffusers.VQModel.from_pretrained(out_dir)``. The directory is written under a
    temporary name beside it and renamed when complete, so a failed run leaves nothing behind.
    ``overwrite`` replaces a previous conversion; a directory holding other files is refused.
    ``config``: see :func:`resolve_vq_config` (default VQ-16). ``sample_size`` is the image size
    recorded in the config (informational). Returns ``out_dir``.

    Example::

        convert_llamagen_vq("vq_ds16_c2i.pt", "llamagen-vq16")
        vqmodel = diffusers.VQModel.from_pretrained("llamagen-vq16")
    """
    config = resolve_vq_config(config)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, VQMODEL_FILES, overwrite=overwrite, error=CheckpointError)

    converted = convert_llamagen_vq_state_dict(load_llamagen_state_dict(checkpoint), config)
    write_model_dir(out_dir, converted, empty_vqmodel(config, sample_size=sample_size), overwrite=overwrite)
    logger.info("wrote diffusers VQModel (%s, %d tensors) to %s", _describe(config), len(converted), out_dir)
    return out_dir


def write_model_dir(out_dir: Path, tensors: Mapping[str, torch.Tensor], model: Any, *, overwrite: bool) -> None:
    """Write converted ``tensors`` and ``model``'s diffusers config as a model directory, staged beside
    ``out_dir`` and renamed into place (a failed run leaves nothing behind)."""
    from safetensors.torch import save_file

    with staged_dir(out_dir) as staging:
        save_file(dict(tensors), staging / VQMODEL_WEIGHTS_NAME, metadata={"format": "pt"})
        model.save_config(staging)
        check_output_dir(out_dir, VQMODEL_FILES, overwrite=overwrite, error=CheckpointError)  # again: it may have changed meanwhile


def _describe(config: LlamaGenVQConfig) -> str:
    fields = asdict(config)
    fields["ch_mult"] = list(config.ch_mult)
    for name, preset in LLAMAGEN_VQ_PRESETS.items():
        if preset == config:
            return f"{name} ({', '.join(f'{k}={v}' for k, v in fields.items())})"
    return ", ".join(f"{k}={v}" for k, v in fields.items())


def _some(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
