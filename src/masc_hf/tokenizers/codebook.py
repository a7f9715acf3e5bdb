"""Codebook export: the ``[N, d]`` vectors a VQ tokenizer's decoder receives, as numpy arrays.

This module imports numpy and safetensors only; torch is imported on demand (reading a ``.pt``
checkpoint, or a model instance), so the clustering layer can read codebooks cheaply.

Both loaders return bit-identical arrays for a (float32) LlamaGen checkpoint and its conversion,
because both normalise with :func:`l2_normalize_rows` (the converter uses it once; the converted
model stores unit rows, read back as they are), so codebook fingerprints agree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._checkpoints import TORCH_SUFFIXES
from ..errors import CodebookError
from ..clustering.codebook import l2_normalize as l2_normalize_rows  # one implementation for every loader

# Name of the codebook in LlamaGen state dicts, and in diffusers' VQModel.
CODEBOOK_KEY = "quantize.embedding.weight"
VQMODEL_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_VQMODEL_INDEX = VQMODEL_WEIGHTS_NAME + ".index.json"
# Where LlamaGen's VQ scripts look for the state dict in a .pt file, in their order.
LLAMAGEN_VQ_WRAPPERS = ("ema", "model", "state_dict")


def load_codebook_from_vqmodel(path_or_model: Any) -> np.ndarray:
    """The codebook of a diffusers ``VQModel``: ``[N, d]`` float32, rows as the decoder receives
    them (unit rows for a converted LlamaGen tokenizer; nothing is renormalised here).

    ``path_or_model``: a ``VQModel`` instance; a directory holding
    ``diffusion_pytorch_model.safetensors`` (``masc-hf convert-vq`` output, ``save_pretrained``
    output, or a pipeline directory with a ``vqvae/`` subfolder); or that ``.safetensors`` file.
    Reading from disk does not import torch (except for bfloat16 weights).
    """
    quantize = getattr(path_or_model, "quantize", None)
    if quantize is not None:
        weight = quantize.embedding.weight.detach()
        return _checked(weight.float().cpu().numpy().copy(), type(path_or_model).__name__)
    weights = _vqmodel_weights_file(Path(path_or_model))
    return _checked(_read_tensor(weights, CODEBOOK_KEY, np.float32), weights)


# Same function, the name the tokenizer helpers use for it.
export_codebook = load_codebook_from_vqmodel


def load_codebook_from_llamagen_checkpoint(path: str | os.PathLike) -> np.ndarray:
    """The l2-normalised codebook of an original LlamaGen VQ checkpoint, ``[N, d]`` float32.

    ``path``: a ``.safetensors`` state dict with LlamaGen's key names, or a torch checkpoint
    (``.pt``/``.pth``/``.ckpt``/``.bin``, read with ``weights_only=True``; the state dict may sit
    under ``"ema"``/``"model"``/``"state_dict"``). The key is ``quantize.embedding.weight``.
    Equals :func:`load_codebook_from_vqmodel` of the converted model, bit for bit.
    """
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"LlamaGen VQ checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        raw = _read_tensor(path, CODEBOOK_KEY, np.float64)
    elif path.suffix in TORCH_SUFFIXES:
        from .._checkpoints import read_state_dict

        state_dict = read_state_dict(path, wrappers=LLAMAGEN_VQ_WRAPPERS)
        if CODEBOOK_KEY not in state_dict:
            raise CodebookError(_missing_key_message(path, list(state_dict)))
        raw = state_dict[CODEBOOK_KEY].detach().double().numpy()
    else:
        raise CodebookError(f"{path}: unknown checkpoint format {path.suffix!r}; expected .safetensors or one of {list(TORCH_SUFFIXES)}")
    return _checked(l2_normalize_rows(raw), path)


def codebook_source_name(source: Any) -> str:
    """A short human-readable name of where a codebook came from, for cluster-map metadata:
    the file or directory name, or a model's ``_name_or_path`` (its class name if unset)."""
    if hasattr(source, "quantize"):
        config = getattr(source, "config", None)
        name = getattr(config, "_name_or_path", None) if config is not None else None
        return Path(str(name)).name if name else type(source).__name__
    path = Path(source)
    if path.is_dir() and not (path / VQMODEL_WEIGHTS_NAME).is_file() and (path / "vqvae" / VQMODEL_WEIGHTS_NAME).is_file():
        return f"{path.resolve().name}/vqvae"
    return path.resolve().name


# --------------------------------------------------------------------------------------------


def _vqmodel_weights_file(path: Path) -> Path:
    """The safetensors file holding the codebook of a VQModel directory (or the file itself)."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CodebookError(f"{path}: a diffusers VQModel codebook is read from safetensors weights; got {path.suffix!r}")
        return path
    if not path.is_dir():
        raise CodebookError(f"VQModel directory not found: {path}")
    for folder in (path, path / "vqvae"):
        if (folder / VQMODEL_WEIGHTS_NAME).is_file():
            return folder / VQMODEL_WEIGHTS_NAME
        if (folder / _VQMODEL_INDEX).is_file():  # sharded weights: find the shard with the codebook
            weight_map = json.loads((folder / _VQMODEL_INDEX).read_text()).get("weight_map", {})
            if CODEBOOK_KEY in weight_map:
                return folder / weight_map[CODEBOOK_KEY]
    raise CodebookError(
        f"{path} holds no diffusers VQModel weights ({VQMODEL_WEIGHTS_NAME}, here or in vqvae/); "
        "convert a LlamaGen checkpoint with `masc-hf convert-vq`, or save the model with "
        "VQModel.save_pretrained(dir, safe_serialization=True)"
    )


def _read_tensor(path: Path, key: str, dtype: type) -> np.ndarray:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            if key not in handle.keys():
                raise CodebookError(_missing_key_message(path, list(handle.keys())))
            try:
                return handle.get_tensor(key).astype(dtype)
            except TypeError:  # bfloat16 has no numpy dtype
                pass
    except (SafetensorError, OSError) as err:
        raise CodebookError(f"{path} is not a readable safetensors file: {err}") from None
    import torch
    from safetensors.torch import load_file

    return load_file(path)[key].to(torch.float64).numpy().astype(dtype)


def _missing_key_message(path: Path, keys: list[str]) -> str:
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    return (
        f"{path} has no {CODEBOOK_KEY!r} among its {len(keys)} tensors ({shown}); "
        "expected a LlamaGen VQ tokenizer checkpoint (GPT checkpoints carry no codebook)"
    )


def _checked(codebook: np.ndarray, source: Any) -> np.ndarray:
    if codebook.ndim != 2 or codebook.shape[0] < 1 or codebook.shape[1] < 1:
        raise CodebookError(f"codebook from {source} has shape {list(codebook.shape)}; expected [N, d]")
    if not np.isfinite(codebook).all():
        raise CodebookError(f"codebook from {source} holds NaN or inf values; the checkpoint is corrupt")
    return codebook
