"""One entry point for every codebook source the CLI accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..clustering.codebook import read_codebook_file
from ..errors import CodebookError


def load_codebook(path: str | Path, tensor: str | None = None) -> tuple[np.ndarray, str]:
    """``(codebook [N, d] float64, description)`` from a ``.npy`` / ``.safetensors`` file, an
    original LlamaGen VQ checkpoint (``.pt``/``.pth``/``.ckpt``; rows l2-normalised as the
    tokenizer uses them) or a diffusers ``VQModel`` directory (its codebook as the decoder sees it)."""
    path = Path(path)
    if path.is_dir():
        from .codebook import load_codebook_from_vqmodel

        return np.asarray(load_codebook_from_vqmodel(path), dtype=np.float64), f"{path.name} (diffusers VQModel)"
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):
        if not path.is_file():
            raise CodebookError(f"codebook file {str(path)!r} does not exist")
        from .codebook import load_codebook_from_llamagen_checkpoint

        return (
            np.asarray(load_codebook_from_llamagen_checkpoint(path), dtype=np.float64),
            f"{path.name} (LlamaGen VQ checkpoint, l2-normalised)",
        )
    return read_codebook_file(path, tensor=tensor)
