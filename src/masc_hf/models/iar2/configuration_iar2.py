"""Configuration of IAR2's class-conditional semantic-detail transformer."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ...errors import ModelConfigError
from ..ar.config import BackboneConfigMixin
from ..llamagen.configuration_llamagen import _ARCHITECTURES

# IAR2's released sizes: LlamaGen's backbones at 384 px (576 tokens), a 5-block head.
IAR2_PRESETS: dict[str, dict[str, Any]] = {
    f"IAR2-{name[4:]}": {**arch, "block_size": 576, "head_layers": 5}
    for name, arch in _ARCHITECTURES.items()
    if name in ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL")
}

# IAR2 ModelArgs field -> IAR2Config field.
_MODEL_ARGS_NAMES = {
    "dim": "hidden_size",
    "n_layer": "num_hidden_layers",
    "factorized_n_layer": "head_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "multiple_of": "multiple_of",
    "ffn_dim_multiplier": "ffn_dim_multiplier",
    "rope_base": "rope_theta",
    "norm_eps": "rms_norm_eps",
    "initializer_range": "initializer_range",
    "token_dropout_p": "token_dropout",
    "attn_dropout_p": "attention_dropout",
    "resid_dropout_p": "resid_dropout",
    "ffn_dropout_p": "ffn_dropout",
    "drop_path_rate": "drop_path_rate",
    "num_classes": "num_classes",
    "class_dropout_prob": "class_dropout_prob",
    "cluster_num": "semantic_vocab_size",
    "sub_vocab_size": "detail_vocab_size",
    "cls_token_num": "cls_token_num",
    "block_size": "block_size",
}
_MODEL_ARGS_UNUSED = {"caption_dim", "model_type", "max_batch_size", "max_seq_len"}


class IAR2Config(BackboneConfigMixin, PretrainedConfig):
    r"""Hyper-parameters of IAR2's class-conditional transformer (sjtuplayer/IAR2, ``gpt_train.py``).

    Each image token is a pair (semantic id, detail id) of a dual-codebook tokenizer
    (:class:`masc_hf.DualCodebookVQModel`). The backbone is LlamaGen's; a local-context head of
    ``head_layers`` blocks predicts the semantic id, then the detail id. Architecture notes:
    docs/iar2.md.

    Args:
        semantic_vocab_size / detail_vocab_size: the tokenizer's two codebook sizes (256 / 4096 released).
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, multiple_of,
            ffn_dim_multiplier, rope_theta, rms_norm_eps, initializer_range, token_dropout,
            attention_dropout, resid_dropout, ffn_dropout, drop_path_rate, num_classes,
            class_dropout_prob, cls_token_num, block_size: as :class:`~masc_hf.models.LlamaGenConfig`.
        head_layers: blocks of the local-context head (``factorized_n_layer``; 5 in every released size).
        semantic_loss_weight: w in ``w * CE(semantic) + CE(detail)``.
        rope_cell_repeat: sequence positions per grid cell in the 2D RoPE table. 1 (default) gives
            position t its own cell; IAR2's released weights were trained with 2 (their table repeats
            every cell, so position t >= 1 uses cell ``(t - 1) // 2``): converted models set it.
        tokenizer_fingerprint: fingerprint of the dual tokenizer the ids come from (``None`` if unknown).
    """

    model_type = "masc_iar2"
    family = "IAR2"
    attribute_map = {"dim": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads"}

    def __init__(
        self,
        semantic_vocab_size: int = 256,
        detail_vocab_size: int = 4096,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
        head_layers: int = 5,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        token_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        resid_dropout: float = 0.1,
        ffn_dropout: float = 0.1,
        drop_path_rate: float = 0.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        cls_token_num: int = 1,
        block_size: int = 576,
        semantic_loss_weight: float = 1.0,
        rope_cell_repeat: int = 1,
        tokenizer_fingerprint: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.semantic_vocab_size = int(semantic_vocab_size)
        self.detail_vocab_size = int(detail_vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.num_key_value_heads = int(num_key_value_heads) if num_key_value_heads is not None else self.num_attention_heads
        self.head_layers = int(head_layers)
        self.multiple_of = int(multiple_of)
        self.ffn_dim_multiplier = ffn_dim_multiplier
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.initializer_range = float(initializer_range)
        self.token_dropout = float(token_dropout)
        self.attention_dropout = float(attention_dropout)
        self.resid_dropout = float(resid_dropout)
        self.ffn_dropout = float(ffn_dropout)
        self.drop_path_rate = float(drop_path_rate)
        self.num_classes = int(num_classes)
        self.class_dropout_prob = float(class_dropout_prob)
        self.cls_token_num = int(cls_token_num)
        self.block_size = int(block_size)
        self.semantic_loss_weight = float(semantic_loss_weight)
        self.rope_cell_repeat = int(rope_cell_repeat)
        self.tokenizer_fingerprint = tokenizer_fingerprint
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        def fail(what: str, fix: str) -> None:
            raise ModelConfigError(f"IAR2Config: {what}; {fix}")

        for name in ("semantic_vocab_size", "detail_vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "head_layers", "num_classes", "block_size", "rope_cell_repeat"):
            if getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)} must be >= 1", f"pass a positive {name}")
        self._check_backbone(fail)
        if self.hidden_size < 12:
            fail(f"hidden_size={self.hidden_size} is below 12", "the local window compresses each of 12 neighbours to hidden_size // 12 values")
        if not self.semantic_loss_weight >= 0:
            fail(f"semantic_loss_weight={self.semantic_loss_weight} must be >= 0", "use e.g. 1.0")

    # ---- derived sizes: head_dim, intermediate_size, grid_size, has_null_class, null_class_id (BackboneConfigMixin)

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> IAR2Config:
        """``IAR2-B``, ``IAR2-L``, ``IAR2-XL`` or ``IAR2-XXL`` (384 px, the released layouts; converted
        checkpoints also need ``rope_cell_repeat=2``, which :func:`convert_iar2_checkpoint` sets)."""
        key = name.strip().upper().replace("_", "-")
        if key not in IAR2_PRESETS:
            raise ModelConfigError(f"unknown IAR2 preset {name!r}; use one of {', '.join(IAR2_PRESETS)}")
        return cls(**{**IAR2_PRESETS[key], **overrides})

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], **overrides: Any) -> IAR2Config:
        """A config from IAR2's ``ModelArgs`` fields (the dict, or a dict holding it under ``"model_args"``,
        as the fixtures' ``gpt/config.json``)."""
        args = model_args.get("model_args", model_args)
        if not isinstance(args, dict):
            raise ModelConfigError(f"model_args must be a dict of IAR2 ModelArgs fields, got {type(args).__name__}")
        if args.get("model_type", "c2i") != "c2i":
            raise ModelConfigError(f"model_type={args['model_type']!r} is not supported; only class-conditional ('c2i') IAR2 models are")
        unknown = set(args) - set(_MODEL_ARGS_NAMES) - _MODEL_ARGS_UNUSED
        if unknown:
            raise ModelConfigError(f"unknown IAR2 ModelArgs field(s) {sorted(unknown)}; expected names from {sorted(_MODEL_ARGS_NAMES)}")
        kwargs = {_MODEL_ARGS_NAMES[key]: value for key, value in args.items() if key in _MODEL_ARGS_NAMES}
        return cls(**{**kwargs, **overrides})
