"""Codebook arrays: validation, the sha256 fingerprint, l2 normalisation and .npy/.safetensors files.

Only numpy and safetensors' numpy API here; original ``.pt`` checkpoints and diffusers ``VQModel``
directories are read by ``masc_hf.tokenizers`` (they need torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CodebookError

__all__ = [
    "LLAMAGEN_CODEBOOK_KEY",
    "as_codebook",
    "codebook_fingerprint",
    "l2_normalize",
    "read_codebook_file",
]

# Where LlamaGen's VQ state dict keeps its codebook (rows l2-normalised at use time).
LLAMAGEN_CODEBOOK_KEY = "quantize.embedding.weight"


def as_codebook(codebook: Any, name: str = "codebook") -> np.ndarray:
    """Validate ``codebook`` (numpy array, torch tensor or nested list) and return it as a
    C-contiguous float64 array ``[N, d]``. Raises :class:`CodebookError` naming the problem."""
    if hasattr(codebook, "detach") and hasattr(codebook, "cpu"):  # torch.Tensor, without importing torch
        codebook = codebook.detach().cpu()
        if str(codebook.dtype) == "torch.bfloat16":
            codebook = codebook.float()
        codebook = codebook.numpy()
    try:
        array = np.asarray(codebook)
    except (TypeError, ValueError) as err:
        raise CodebookError(f"{name} could not be read as an array ({err}); pass a float array of shape [N, d]") from err
    if array.dtype == object or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise CodebookError(f"{name} has dtype {array.dtype}; pass a real-valued float array of shape [N, d]")
    if array.ndim != 2:
        raise CodebookError(
            f"{name} must be 2-D [N, d] (one row per token), got shape {tuple(array.shape)}; "
            "reshape it, e.g. codebook.reshape(N, -1)"
        )
    n, d = array.shape
    if n < 2:
        raise CodebookError(f"{name} has N={n} rows; a cluster map needs at least 2 tokens")
    if d < 1:
        raise CodebookError(f"{name} has d={d} columns; each token needs at least one coordinate")
    array = np.ascontiguousarray(array, dtype=np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(map(str, bad[:10])) + (" ..." if bad.size > 10 else "")
        raise CodebookError(
            f"{name} has {bad.size} row(s) with NaN or inf (token ids {shown}); "
            "fix or drop those rows before clustering"
        )
    return array


def l2_normalize(codebook: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit l2 norm, as LlamaGen's quantizer looks them up; ``[N, d]`` float32.

    Computed in float64 and rounded once, so every loader (original ``.pt``, ``.safetensors``,
    converted ``VQModel``) gets the same bits on any machine; within 1 ulp of
    ``torch.nn.functional.normalize``. All-zero rows stay zero (eps 1e-12)."""
    rows = np.asarray(codebook, dtype=np.float64)
    norms = np.sqrt(np.einsum("nd,nd->n", rows, rows))[:, None]
    return (rows / np.maximum(norms, eps)).astype(np.float32)


def codebook_fingerprint(codebook: Any) -> str:
    """sha256 hex digest identifying a codebook: over ``b"N,d;"`` then the rows as little-endian
    float32 in C order. float32 because that is what tokenizers store: the same codebook read from
    a numpy file, a torch checkpoint or a diffusers model gets the same fingerprint."""
    array = as_codebook(codebook)
    n, d = array.shape
    digest = hashlib.sha256(f"{n},{d};".encode())
    digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def read_codebook_file(path: str | Path, tensor: str | None = None) -> tuple[np.ndarray, str]:
    """Read a codebook from ``.npy`` or ``.safetensors``; returns ``(codebook [N, d], description)``.

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
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise CodebookError(f"{path} is not a plain numpy array file ({err}); save it with np.save") from err
        return as_codebook(array, name=str(path)), f"{path.name}"
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as handle:
                keys = list(handle.keys())
                if tensor is None and LLAMAGEN_CODEBOOK_KEY in keys:
                    tensor = LLAMAGEN_CODEBOOK_KEY
                if tensor is None:
                    two_d = [k for k in keys if len(handle.get_slice(k).get_shape()) == 2]
                    if len(two_d) != 1:
                        raise CodebookError(
                            f"{path} holds {len(keys)} tensors ({', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}); "
                            "name the codebook with --tensor NAME"
                        )
                    tensor = two_d[0]
                if tensor not in keys:
                    raise CodebookError(
                        f"{path} has no tensor {tensor!r}; it has: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                    )
                array = as_codebook(handle.get_tensor(tensor), name=f"{path}:{tensor}")
        except SafetensorError as err:
            raise CodebookError(f"{path} is not a readable safetensors file ({err})") from err
        if tensor == LLAMAGEN_CODEBOOK_KEY:  # LlamaGen looks rows up l2-normalised: cluster what it uses
            return l2_normalize(array), f"{path.name}:{tensor} (l2-normalised, LlamaGen VQ)"
        return array, f"{path.name}:{tensor}"
    raise CodebookError(
        f"unsupported codebook file {path.name!r}: use .npy, .safetensors, an original LlamaGen VQ "
        "checkpoint (.pt) or a diffusers VQModel directory"
    )
