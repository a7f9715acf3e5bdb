"""A codebook as an array: validation (the one check every path makes once), the sha256
fingerprint and l2 normalisation. Numpy only; reading codebooks from files and models is
:mod:`masc_hf.vq.codebook`'s job.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import CodebookError

__all__ = [
    "as_codebook",
    "codebook_fingerprint",
    "l2_normalize",
]

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
        raise CodebookError(
            f"{name} has {bad.size} row(s) with NaN or inf (token ids {_some_ids(bad)}); "
            "fix or drop those rows before clustering"
        )
    # the fingerprint (and every tokenizer) stores float32: a value beyond its range would become inf there
    with np.errstate(over="ignore"):
        fits = np.isfinite(array.astype(np.float32)).all(axis=1)
    if not fits.all():
        bad = np.flatnonzero(~fits)
        raise CodebookError(
            f"{name} has {bad.size} row(s) with values beyond float32's range (largest |value| "
            f"{np.abs(array[bad]).max():.3g} > {np.finfo(np.float32).max:.3g}; token ids {_some_ids(bad)}); a VQ codebook is "
            "stored as float32: rescale the codebook or fix those rows"
        )
    return array


def _some_ids(ids: np.ndarray) -> str:
    return ", ".join(map(str, ids[:10])) + (" ..." if ids.size > 10 else "")


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
    return fingerprint_of_valid(as_codebook(codebook))


def fingerprint_of_valid(array: np.ndarray) -> str:
    """:func:`codebook_fingerprint` of an array :func:`as_codebook` already returned (no second check)."""
    n, d = array.shape
    digest = hashlib.sha256(f"{n},{d};".encode())
    digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()
