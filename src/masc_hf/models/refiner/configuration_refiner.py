"""Configuration of the MASC refinement network (the paper's G_refine, hierarchical decoding)."""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from ...errors import ClusterMapMismatchError, ModelConfigError
from ..ar.config import ffn_width  # the backbone's FFN rule, one home


class MASCRefinerConfig(PretrainedConfig):
    r"""Hyper-parameters of :class:`~masc_hf.models.refiner.MASCRefiner`.

    The refiner reads a MASC backbone's final hidden state (width ``backbone_hidden_size``) and the
    cluster id z_t (one of ``num_clusters`` = k) and predicts the codebook token x_t (one of
    ``num_tokens`` = N) inside cluster z_t. The defaults are the paper's (MASC, Appendix C.2): one
    decoder layer, 4 heads, width 512.

    Args:
        num_tokens: N, codebook tokens the head scores (the MASC model's ``fine_vocab_size``).
        num_clusters: k, cluster ids embedded (the MASC model's ``vocab_size``).
        backbone_hidden_size: width of the backbone's hidden states (the MASC model's ``hidden_size``).
        hidden_size: refiner width.
        num_hidden_layers: causal decoder layers.
        num_attention_heads: attention heads (``hidden_size / num_attention_heads`` must be a multiple of 4).
        intermediate_size: SwiGLU width; ``None`` = LlamaGen's rule, ``int(8 * hidden_size / 3)``
            rounded up to a multiple of 256.
        block_size: image tokens per image (a square number; the backbone's ``block_size``).
        rope_theta: 2D rotary base.
        rms_norm_eps: RMSNorm epsilon.
        initializer_range: std of the normal init of linear and embedding weights (the head starts at
            zero: a fresh refiner is uniform over the cluster, i.e. the paper's random-member decoding).
        attention_dropout / resid_dropout / ffn_dropout: dropout rates of the decoder layers.
        cluster_map_fingerprint: fingerprint of the cluster map (and so of the MASC model) it pairs
            with; ``None`` until a map is attached.

    Example:
        >>> config = MASCRefinerConfig.from_preset("LlamaGen-L", num_clusters=8192)
        >>> config.backbone_hidden_size, config.num_tokens, config.hidden_size
        (1024, 16384, 512)
    """

    model_type = "masc_refiner"

    def __init__(
        self,
        num_tokens: int = 16384,
        num_clusters: int = 8192,
        backbone_hidden_size: int = 1024,
        hidden_size: int = 512,
        num_hidden_layers: int = 1,
        num_attention_heads: int = 4,
        intermediate_size: int | None = None,
        block_size: int = 256,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        attention_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        cluster_map_fingerprint: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.num_tokens = int(num_tokens)
        self.num_clusters = int(num_clusters)
        self.backbone_hidden_size = int(backbone_hidden_size)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        if intermediate_size is None:
            intermediate_size = ffn_width(self.hidden_size)
        self.intermediate_size = int(intermediate_size)
        self.block_size = int(block_size)
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.initializer_range = float(initializer_range)
        self.attention_dropout = float(attention_dropout)
        self.resid_dropout = float(resid_dropout)
        self.ffn_dropout = float(ffn_dropout)
        self.cluster_map_fingerprint = cluster_map_fingerprint
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        def fail(what: str, fix: str) -> None:
            raise ModelConfigError(f"MASCRefinerConfig: {what}; {fix}")

        for name in (
            "num_tokens", "num_clusters", "backbone_hidden_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "intermediate_size", "block_size",
        ):
            if getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)} must be >= 1", f"pass a positive {name}")
        if self.num_clusters > self.num_tokens:
            fail(f"num_clusters={self.num_clusters} exceeds num_tokens={self.num_tokens}", "a cluster map has k <= N clusters")
        if self.hidden_size % self.num_attention_heads or self.head_dim % 4:
            fail(
                f"hidden_size={self.hidden_size} / num_attention_heads={self.num_attention_heads} is not a whole head "
                "width divisible by 4",
                "2D RoPE splits each head into two axes of rotation pairs; use e.g. 512 / 4",
            )
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            fail(f"block_size={self.block_size} is not a square number of tokens", "use the backbone's block_size (256, 576)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def start_token_id(self) -> int:
        """The previous-token id fed at position 0 (one extra row of the fine embedding)."""
        return self.num_tokens

    # ---- pairing with a MASC backbone -----------------------------------------------------------
    @classmethod
    def for_backbone(cls, backbone: Any, **overrides: Any) -> MASCRefinerConfig:
        """A refiner config sized for a MASC LlamaGen model or its config (k, N, widths, block size,
        map fingerprint); ``overrides`` replace refiner fields (``hidden_size``, ``num_hidden_layers``...)."""
        config = getattr(backbone, "config", backbone)
        if getattr(config, "fine_vocab_size", None) is None:
            raise ModelConfigError(
                "the backbone is a flat model (fine_vocab_size=None); a refiner picks tokens inside the clusters of a "
                "MASC model: pass a model trained with a cluster map"
            )
        paired = dict(
            num_tokens=config.fine_vocab_size,
            num_clusters=config.vocab_size,
            backbone_hidden_size=config.hidden_size,
            block_size=config.block_size,
            cluster_map_fingerprint=config.cluster_map_fingerprint,
        )
        return cls(**{**paired, **overrides})

    @classmethod
    def from_preset(cls, name: str, num_clusters: int, num_tokens: int = 16384, **overrides: Any) -> MASCRefinerConfig:
        """The paper's refiner beside LlamaGen preset ``name`` (``"LlamaGen-L"``, ``"GPT-L"``, ``"GPT-XL-384"``...)
        over a codebook of ``num_tokens`` cut into ``num_clusters`` clusters."""
        from ..llamagen import LlamaGenConfig

        key = name.strip().upper().replace("_", "-").replace("LLAMAGEN-", "GPT-")
        backbone = LlamaGenConfig.from_preset(key, vocab_size=num_clusters, fine_vocab_size=num_tokens)
        return cls.for_backbone(backbone, **overrides)

    def check_backbone(self, backbone: Any, what: str = "the MASC model") -> None:
        """Raise unless ``backbone`` (a MASC LlamaGen model or config) is the one this refiner was sized and
        trained for: same N, k, width, block size and cluster map fingerprint."""
        config = getattr(backbone, "config", backbone)
        expected = MASCRefinerConfig.for_backbone(config)
        for name in ("num_tokens", "num_clusters", "backbone_hidden_size", "block_size"):
            if getattr(expected, name) != getattr(self, name):
                raise ClusterMapMismatchError(
                    f"the refiner has {name}={getattr(self, name)} but {what} gives {getattr(expected, name)}; "
                    "use the refiner trained on this model (MASCRefinerConfig.for_backbone(model))"
                )
        theirs, ours = expected.cluster_map_fingerprint, self.cluster_map_fingerprint
        if theirs is not None and ours is not None and theirs != ours:
            raise ClusterMapMismatchError(
                f"the refiner was trained on cluster map {ours[:12]}... but {what} on {theirs[:12]}...; "
                "use the refiner trained beside this model"
            )
