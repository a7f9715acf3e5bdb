"""What every class-conditional AR config here shares: LlamaGen's backbone sizes (FFN width, head
size, token grid, the null class) and their checks. LlamaGen and IAR2 configs mix it in."""

from __future__ import annotations

import math
from collections.abc import Callable


def ffn_width(hidden_size: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
    """LlamaGen's SwiGLU width: int(8 * hidden_size / 3) (times ``multiplier``), rounded up to ``multiple_of``."""
    width = int(2 * (4 * hidden_size) / 3)
    if multiplier is not None:
        width = int(multiplier * width)
    return -(-width // multiple_of) * multiple_of


class BackboneConfigMixin:
    """Derived sizes and checks of a config with LlamaGen's backbone fields (``hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``, ``multiple_of``, ``ffn_dim_multiplier``,
    ``block_size``, ``cls_token_num``, ``num_classes``, ``class_dropout_prob``,
    ``tokenizer_fingerprint``). ``family`` names the model in messages."""

    family = "LlamaGen"

    def _check_backbone(self, fail: Callable[[str, str], None]) -> None:
        """The checks every such config makes; ``fail(what, fix)`` raises."""
        if self.hidden_size % self.num_attention_heads:
            fail(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
                "choose a head count that divides the width",
            )
        if self.num_key_value_heads < 1 or self.num_attention_heads % self.num_key_value_heads:
            fail(
                f"num_key_value_heads={self.num_key_value_heads} does not divide num_attention_heads={self.num_attention_heads}",
                "use a divisor of the head count (or None for plain multi-head attention)",
            )
        if self.head_dim % 4:
            fail(f"head_dim={self.head_dim} is not a multiple of 4", "2D RoPE splits each head into two axes of rotation pairs")
        if self.grid_size**2 != self.block_size:
            fail(f"block_size={self.block_size} is not a square number of tokens", "use grid_size**2 (256 for 256 px, 576 for 384 px)")
        if self.cls_token_num != 1:
            fail(f"cls_token_num={self.cls_token_num}", f"class-conditional {self.family} uses exactly one class position (cls_token_num=1)")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            fail(f"class_dropout_prob={self.class_dropout_prob} is outside [0, 1)", "use e.g. 0.1 (the reference default)")
        if self.tokenizer_fingerprint is not None and (not isinstance(self.tokenizer_fingerprint, str) or not self.tokenizer_fingerprint):
            fail(
                f"tokenizer_fingerprint={self.tokenizer_fingerprint!r} is not a fingerprint string",
                "use the tokenizer's codebook fingerprint (masc_hf.pipelines.pairing.tokenizer_fingerprint(vqvae)) or None",
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def intermediate_size(self) -> int:
        """FFN width: int(8 * hidden_size / 3) (times ffn_dim_multiplier), rounded up to multiple_of."""
        return ffn_width(self.hidden_size, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def has_null_class(self) -> bool:
        """Whether the class table has the null (unconditional) row that guidance needs."""
        return self.class_dropout_prob > 0

    @property
    def null_class_id(self) -> int | None:
        return self.num_classes if self.has_null_class else None
