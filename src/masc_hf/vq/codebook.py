"""Reading a VQ codebook from any source: the ``[N, d]`` vectors a tokenizer's decoder receives.

One family, one entry point (:func:`load_codebook`): ``.npy`` and ``.safetensors`` arrays, original
LlamaGen VQ checkpoints (rows l2-normalised, as LlamaGen looks them up) and diffusers ``VQModel``
directories or instances. Loaders only read; the array is validated once, by whoever uses it
(:func:`masc_hf.clustering.as_codebook`, via ``build_cluster_map`` or ``codebook_fingerprint``).

Only numpy and safetensors here; torch is imported on demand (a ``.pt`` checkpoint, a model
instance, bfloat16 weights), so building a map from a file costs no torch. A LlamaGen checkpoint
and its conversion give bit-identical arrays (both normalise with :func:`l2_normalize_rows`), so
their codebook fingerprints agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._checkpoints import TORCH_SUFFIXES
from ..clustering.codebook import codebook_fingerprint
from ..clustering.codebook import l2_normalize as l2_normalize_rows  # one implementation for every loader
from ..errors import CodebookError

# Name of the codebook in LlamaGen state dicts, and in diffusers' VQModel.
CODEBOOK_KEY = "quantize.embedding.weight"
LLAMAGEN_CODEBOOK_KEY = CODEBOOK_KEY  # the name masc_hf.clustering exported before this module existed
VQMODEL_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_VQMODEL_INDEX = VQMODEL_WEIGHTS_NAME + ".index.json"
# Where LlamaGen's VQ scripts look for the state dict in a .pt file, in their order.
LLAMAGEN_VQ_WRAPPERS = ("ema", "model", "state_dict")


def load_codebook(source: Any, tensor: str | None = None) -> tuple[np.ndarray, str]:
    """``(codebook [N, d], description)`` from any source a user names.

    ``source``: a diffusers ``VQModel`` (instance or directory, also a pipeline directory with
    ``vqvae/``: the codebook as the decoder sees it), a ``DualCodebookVQModel`` (instance or
    directory; ``tensor`` is ``"semantic"`` or ``"detail"``, see :func:`load_dual_codebook`), an original LlamaGen VQ checkpoint
    (``.pt``/``.pth``/``.ckpt``/``.bin``: rows l2-normalised as the tokenizer uses them), or a
    ``.npy`` / ``.safetensors`` array file (see :func:`read_codebook_file`; ``tensor`` names the array).
    """
    if hasattr(source, "quantize"):
        if hasattr(source.quantize, "semantic_embedding"):
            return load_dual_codebook(source, tensor), f"{codebook_source_name(source)} ({tensor} codebook of a DualCodebookVQModel)"
        return load_codebook_from_vqmodel(source), f"{codebook_source_name(source)} (diffusers VQModel)"
    path = Path(source)
    if path.is_dir():
        if _dual_config(path) is not None:
            return load_dual_codebook(path, tensor), f"{path.name} ({tensor} codebook of a DualCodebookVQModel)"
        return load_codebook_from_vqmodel(path), f"{path.name} (diffusers VQModel)"
    if path.suffix.lower() in TORCH_SUFFIXES:
        return load_codebook_from_llamagen_checkpoint(path), f"{path.name} (LlamaGen VQ checkpoint, l2-normalised)"
    return read_codebook_file(path, tensor=tensor)


def load_codebook_from_vqmodel(path_or_model: Any) -> np.ndarray:
    """The codebook of a diffusers ``VQModel``: ``[N, d]`` float32, rows as the decoder receives
    them (unit rows for a converted LlamaGen tokenizer; nothing is renormalised here).

    ``path_or_model``: a ``VQModel`` instance; a directory holding
    ``diffusion_pytorch_model.safetensors`` (``masc-hf convert-vq`` output, ``save_pretrained``
    output, or a pipeline directory with a ``vqvae/`` subfolder); or that ``.safetensors`` file.
    Reading from disk does not import torch (except for bfloat16 weights).
    """
    quantize = getattr(path_or_model, "quantize", None)
    if hasattr(quantize, "semantic_embedding") or (quantize is None and _dual_config(Path(path_or_model)) is not None):
        raise CodebookError(
            f"{codebook_source_name(path_or_model)} is a dual-codebook tokenizer (DualCodebookVQModel): read one of its "
            "codebooks with load_codebook(source, tensor='semantic' or 'detail') (CLI: --tensor semantic|detail)"
        )
    if quantize is not None:
        weight = quantize.embedding.weight.detach()
        return weight.float().cpu().numpy().copy()
    weights = _vqmodel_weights_file(Path(path_or_model))
    return _read_tensor(weights, CODEBOOK_KEY, np.float32)


DUAL_CODEBOOK_KEYS = {"semantic": "quantize.semantic_embedding.weight", "detail": "quantize.detail_embedding.weight"}
IAR2_DETAIL_KEY = "quantize.embedding_second"  # the detail codebook in IAR2's original checkpoints


def load_dual_codebook(path_or_model: Any, which: str | None) -> np.ndarray:
    """One codebook of a ``DualCodebookVQModel`` (instance or directory), ``[N, d]`` float32, rows
    as the decoder receives them: ``which="semantic"`` (l2-normalised when the model normalises)
    or ``"detail"`` (raw). A MASC map can be built over either."""
    if which not in DUAL_CODEBOOK_KEYS:
        raise CodebookError(
            f"a dual-codebook tokenizer has two codebooks: choose one with --tensor semantic or --tensor detail "
            f"(tensor='semantic' / 'detail'), got {which!r}"
        )
    quantize = getattr(path_or_model, "quantize", None)
    if quantize is not None:
        rows = quantize.semantic_rows() if which == "semantic" else quantize.detail_rows()
        return rows.detach().float().cpu().numpy().copy()
    path = Path(path_or_model)
    folder = path if (path / "config.json").is_file() else path / "vqvae"
    config = _dual_config(path) or {}
    array = _read_tensor(_vqmodel_weights_file(folder, DUAL_CODEBOOK_KEYS[which]), DUAL_CODEBOOK_KEYS[which], np.float64)
    if which == "semantic" and config.get("codebook_l2_norm", True):
        array = _normalized(array)
    return array.astype(np.float32)


def _dual_config(path: Path) -> dict | None:
    """The config of a ``DualCodebookVQModel`` directory (or of a pipeline's ``vqvae/``), else None."""
    for folder in (path, path / "vqvae"):
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(config, dict) and config.get("_class_name") == "DualCodebookVQModel":
            return config
    return None


# Same function, the name the tokenizer helpers use for it.
export_codebook = load_codebook_from_vqmodel


def is_dual_codebook(vqmodel: Any) -> bool:
    """Whether ``vqmodel`` gives a ``(semantic, detail)`` id pair per latent position (IAR2's
    ``DualCodebookVQModel``) rather than one id (a diffusers ``VQModel``)."""
    return callable(getattr(vqmodel, "semantic_codebook", None)) and callable(getattr(vqmodel, "detail_codebook", None))


def tokenizer_fingerprint(vqmodel: Any) -> str:
    """sha256 hex digest of the id space of a tokenizer: what code shards, models and cluster maps
    record to tell tokenizers apart.

    A diffusers ``VQModel`` (instance or directory, see :func:`load_codebook_from_vqmodel`): the
    ``codebook_fingerprint`` of its codebook. A ``DualCodebookVQModel``: sha256 of
    ``"dual-codebook;<semantic>;<detail>"`` over the codebook fingerprints of both codebooks as the
    decoder receives them (``semantic_codebook()``, ``detail_codebook()``), so a change to either
    codebook changes it, and it never equals a single codebook's fingerprint.
    """
    if is_dual_codebook(vqmodel):
        semantic = codebook_fingerprint(vqmodel.semantic_codebook())
        detail = codebook_fingerprint(vqmodel.detail_codebook())
        return hashlib.sha256(f"dual-codebook;{semantic};{detail}".encode()).hexdigest()
    return codebook_fingerprint(load_codebook_from_vqmodel(vqmodel))


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
        if IAR2_DETAIL_KEY in _safetensors_keys(path):
            raise CodebookError(_dual_original_message(path))
        raw = _read_tensor(path, CODEBOOK_KEY, np.float64)
    elif path.suffix in TORCH_SUFFIXES:
        from .._checkpoints import read_state_dict

        state_dict = read_state_dict(path, wrappers=LLAMAGEN_VQ_WRAPPERS)
        if IAR2_DETAIL_KEY in state_dict:
            raise CodebookError(_dual_original_message(path))
        if CODEBOOK_KEY not in state_dict:
            raise CodebookError(_missing_key_message(path, list(state_dict)))
        raw = state_dict[CODEBOOK_KEY].detach().double().numpy()
    else:
        raise CodebookError(f"{path}: unknown checkpoint format {path.suffix!r}; expected .safetensors or one of {list(TORCH_SUFFIXES)}")
    return _normalized(raw)


def read_codebook_file(path: str | os.PathLike, tensor: str | None = None) -> tuple[np.ndarray, str]:
    """Read a codebook array from ``.npy`` or ``.safetensors``; returns ``(codebook [N, d], description)``.

    For ``.safetensors``: ``tensor`` names the array; without it, a LlamaGen VQ state dict is
    recognised by ``quantize.embedding.weight`` (rows l2-normalised, as the tokenizer uses them),
    and a file holding exactly one 2-D tensor uses that one.
    """
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"codebook file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if tensor is not None:
            raise CodebookError(f"--tensor {tensor!r} only applies to .safetensors files, not {path.name}")
        try:
            return np.load(path, allow_pickle=False), f"{path.name}"
        except ValueError as err:
            raise CodebookError(f"{path} is not a plain numpy array file ({err}); save it with np.save") from err
    if suffix == ".safetensors":
        tensor = _codebook_tensor_name(path, tensor)
        if tensor == CODEBOOK_KEY and IAR2_DETAIL_KEY in _safetensors_keys(path):
            raise CodebookError(_dual_original_message(path))
        array = _read_tensor(path, tensor, np.float64)
        if tensor == CODEBOOK_KEY:  # LlamaGen looks rows up l2-normalised: cluster what it uses
            return _normalized(array), f"{path.name}:{tensor} (l2-normalised, LlamaGen VQ)"
        return array, f"{path.name}:{tensor}"
    raise CodebookError(
        f"unsupported codebook file {path.name!r}: use .npy, .safetensors, an original LlamaGen VQ "
        "checkpoint (.pt) or a diffusers VQModel directory"
    )


def _codebook_tensor_name(path: Path, tensor: str | None) -> str:
    """The tensor of a ``.safetensors`` file that holds the codebook (see :func:`read_codebook_file`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            keys = list(handle.keys())
            if tensor is None and CODEBOOK_KEY in keys:
                return CODEBOOK_KEY
            if tensor is None:
                two_d = [k for k in keys if len(handle.get_slice(k).get_shape()) == 2]
                if len(two_d) != 1:
                    raise CodebookError(
                        f"{path} holds {len(keys)} tensors ({', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}); "
                        "name the codebook with --tensor NAME"
                    )
                return two_d[0]
    except SafetensorError as err:
        raise CodebookError(f"{path} is not a readable safetensors file ({err})") from err
    if tensor not in keys:
        raise CodebookError(f"{path} has no tensor {tensor!r}; it has: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    return tensor


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


def _vqmodel_weights_file(path: Path, key: str = CODEBOOK_KEY) -> Path:
    """The safetensors file holding tensor ``key`` (the codebook) of a VQModel directory (or the file itself)."""
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
            if key in weight_map:
                return folder / weight_map[key]
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


def _normalized(array: np.ndarray) -> np.ndarray:
    """LlamaGen's lookup rows (l2-normalised); anything not ``[N, d]`` is left for validation to name."""
    return l2_normalize_rows(array) if array.ndim == 2 else array


def _missing_key_message(path: Path, keys: list[str]) -> str:
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    return (
        f"{path} has no {CODEBOOK_KEY!r} among its {len(keys)} tensors ({shown}); "
        "expected a LlamaGen VQ tokenizer checkpoint (GPT checkpoints carry no codebook)"
    )


def _dual_original_message(path: Path) -> str:
    return (
        f"{path} is an IAR2 dual-codebook tokenizer checkpoint (it has {IAR2_DETAIL_KEY}): convert it with "
        "`masc-hf convert-iar2-vq` and pass the converted directory with --tensor semantic or --tensor detail"
    )


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as err:
        raise CodebookError(f"{path} is not a readable safetensors file: {err}") from None
