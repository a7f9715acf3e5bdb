"""Image tokenizers: LlamaGen's VQ as a diffusers ``VQModel`` and IAR2's dual-codebook tokenizer
(conversion of original checkpoints), images <-> token ids, and the codebook loaders.

The namespace is lazy: ``import masc_hf.vq`` imports neither torch nor diffusers. The codebook
loaders need numpy and safetensors only; conversion and the image helpers import torch and
diffusers on first use. (Named ``vq``, not ``tokenizers``, which reads as Hugging Face's text
tokenizers package; ``masc_hf.tokenizers`` still works for one release.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# public name -> module that defines it
_LAZY = {
    "CODEBOOK_KEY": "masc_hf.vq.codebook",
    "codebook_source_name": "masc_hf.vq.codebook",
    "export_codebook": "masc_hf.vq.codebook",
    "is_dual_codebook": "masc_hf.vq.codebook",
    "l2_normalize_rows": "masc_hf.vq.codebook",
    "load_codebook": "masc_hf.vq.codebook",
    "load_codebook_from_llamagen_checkpoint": "masc_hf.vq.codebook",
    "load_codebook_from_vqmodel": "masc_hf.vq.codebook",
    "read_codebook_file": "masc_hf.vq.codebook",
    "tokenizer_fingerprint": "masc_hf.vq.codebook",
    "LLAMAGEN_VQ_PRESETS": "masc_hf.vq.convert_llamagen",
    "LlamaGenVQConfig": "masc_hf.vq.convert_llamagen",
    "convert_llamagen_vq": "masc_hf.vq.convert_llamagen",
    "convert_llamagen_vq_state_dict": "masc_hf.vq.convert_llamagen",
    "load_llamagen_state_dict": "masc_hf.vq.convert_llamagen",
    "load_llamagen_vq": "masc_hf.vq.convert_llamagen",
    "DualCodebookVQModel": "masc_hf.vq.dual_codebook",
    "DualVQConfig": "masc_hf.vq.convert_iar2",
    "IAR2_VQ_PRESETS": "masc_hf.vq.convert_iar2",
    "convert_iar2_vq": "masc_hf.vq.convert_iar2",
    "convert_iar2_vq_state_dict": "masc_hf.vq.convert_iar2",
    "load_iar2_vq": "masc_hf.vq.convert_iar2",
    "decode_ids": "masc_hf.vq.tokens",
    "downsample_factor": "masc_hf.vq.tokens",
    "encode_images": "masc_hf.vq.tokens",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .codebook import (
        CODEBOOK_KEY,
        codebook_source_name,
        export_codebook,
        is_dual_codebook,
        l2_normalize_rows,
        load_codebook,
        load_codebook_from_llamagen_checkpoint,
        load_codebook_from_vqmodel,
        read_codebook_file,
        tokenizer_fingerprint,
    )
    from .convert_llamagen import (
        LLAMAGEN_VQ_PRESETS,
        LlamaGenVQConfig,
        convert_llamagen_vq,
        convert_llamagen_vq_state_dict,
        load_llamagen_state_dict,
        load_llamagen_vq,
    )
    from .convert_iar2 import IAR2_VQ_PRESETS, DualVQConfig, convert_iar2_vq, convert_iar2_vq_state_dict, load_iar2_vq
    from .dual_codebook import DualCodebookVQModel
    from .tokens import decode_ids, downsample_factor, encode_images
