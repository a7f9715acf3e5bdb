"""The AR core shared by every class-conditional image transformer here (LlamaGen, IAR2, the MASC
refinement head): 2D RoPE, attention over a static KV cache, the decoder layer, sampling,
the guidance combination, and packed CPU weights for decoding."""

from .cache import StaticKVCache
from .conditioning import ClassConditioning
from .cpu_linear import can_pack, packed_linears
from .guidance import classifier_free_guidance, guidance_rows
from .layers import Attention, DecoderLayer, DropPath, RMSNorm, SwiGLU, run_layers
from .rope import RotaryEmbedding2D, apply_rope_2d, rope_2d_table
from .sampling import (
    check_sampling_options,
    entropy_bits,
    filter_logits,
    inverse_cdf_sample,
    per_image_uniforms,
    prediction_entropy,
    sample_next_token,
)

__all__ = [
    "Attention",
    "ClassConditioning",
    "DecoderLayer",
    "DropPath",
    "RMSNorm",
    "RotaryEmbedding2D",
    "StaticKVCache",
    "SwiGLU",
    "apply_rope_2d",
    "can_pack",
    "check_sampling_options",
    "classifier_free_guidance",
    "entropy_bits",
    "filter_logits",
    "guidance_rows",
    "inverse_cdf_sample",
    "packed_linears",
    "per_image_uniforms",
    "prediction_entropy",
    "rope_2d_table",
    "run_layers",
    "sample_next_token",
]
