"""The VQ image tokenizer: LlamaGen's VQ as a diffusers ``VQModel``, codebook export, conversion
of original checkpoints.

The namespace is lazy: ``import masc_hf.tokenizers`` imports neither torch nor diffusers. The
codebook loaders need numpy and safetensors only; conversion and the image helpers import
torch and diffusers on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# public name -> module that defines it
_LAZY = {
    "CODEBOOK_KEY": "masc_hf.tokenizers.codebook",
    "codebook_source_name": "masc_hf.tokenizers.codebook",
    "export_codebook": "masc_hf.tokenizers.codebook",
    "l2_normalize_rows": "masc_hf.tokenizers.codebook",
    "load_codebook_from_llamagen_checkpoint": "masc_hf.tokenizers.codebook",
    "load_codebook_from_vqmodel": "masc_hf.tokenizers.codebook",
    "LLAMAGEN_VQ_PRESETS": "masc_hf.tokenizers.convert_vq",
    "LlamaGenVQConfig": "masc_hf.tokenizers.convert_vq",
    "convert_llamagen_vq": "masc_hf.tokenizers.convert_vq",
    "convert_llamagen_vq_state_dict": "masc_hf.tokenizers.convert_vq",
    "load_llamagen_state_dict": "masc_hf.tokenizers.convert_vq",
    "load_llamagen_vq": "masc_hf.tokenizers.convert_vq",
    "decode_ids": "masc_hf.tokenizers.vq",
    "downsample_factor": "masc_hf.tokenizers.vq",
    "encode_images": "masc_hf.tokenizers.vq",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)




if TYPE_CHECKING:  # pragma: no cover
    from .codebook import (
        CODEBOOK_KEY,
        codebook_source_name,
        export_codebook,
        l2_normalize_rows,
        load_codebook_from_llamagen_checkpoint,
        load_codebook_from_vqmodel,
    )
    from .convert_vq import (
        LLAMAGEN_VQ_PRESETS,
        LlamaGenVQConfig,
        convert_llamagen_vq,
        convert_llamagen_vq_state_dict,
        load_llamagen_state_dict,
        load_llamagen_vq,
    )
    from .vq import decode_ids, downsample_factor, encode_images
