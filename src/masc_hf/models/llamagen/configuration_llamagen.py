"""Configuration of LlamaGen's class-conditional transformer, flat or with a MASC (coarse) vocabulary."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ...errors import ModelConfigError
from ..ar.config import BackboneConfigMixin, ffn_width  # noqa: F401  (ffn_width: re-exported, its old home)

# Architectures of LlamaGen's class-conditional models (the reference's GPT_B ... GPT_3B factories).
_ARCHITECTURES: dict[str, dict[str, int]] = {
    "GPT-B": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "GPT-L": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "GPT-XL": {"hidden_size": 1280, "num_hidden_layers": 36, "num_attention_heads": 20},
    "GPT-XXL": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24},
    "GPT-3B": {"hidden_size": 3200, "num_hidden_layers": 24, "num_attention_heads": 32},
}
# Image size in pixels -> tokens per image with the 16x-downsampling VQ tokenizer.
_BLOCK_SIZES = {256: 256, 384: 576}

# "GPT-XL-384" -> keyword arguments of LlamaGenConfig (the reference's c2i training defaults).
LLAMAGEN_PRESETS: dict[str, dict[str, Any]] = {
    f"{name}-{pixels}": {**arch, "block_size": block_size}
    for name, arch in _ARCHITECTURES.items()
    for pixels, block_size in _BLOCK_SIZES.items()
}

# LlamaGen ModelArgs field -> LlamaGenConfig field.
_MODEL_ARGS_NAMES = {
    "dim": "hidden_size",
    "n_layer": "num_hidden_layers",
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
    "vocab_size": "vocab_size",
    "cls_token_num": "cls_token_num",
    "block_size": "block_size",
}
# ModelArgs fields that only matter to the text-conditional model or to the reference's own cache setup.
_MODEL_ARGS_UNUSED = {"caption_dim", "model_type", "max_batch_size", "max_seq_len"}


class LlamaGenConfig(BackboneConfigMixin, PretrainedConfig):
    r"""Hyper-parameters of LlamaGen's class-conditional transformer (``autoregressive.models.gpt``).

    ``vocab_size`` is what the model embeds and predicts: N codebook ids for a flat model, k cluster
    ids for a MASC model. A MASC model also records ``fine_vocab_size`` (N) and the fingerprint of the
    cluster map it was trained with, so that :meth:`LlamaGenForImageGeneration.generate` refuses a map
    that does not belong to it. A flat model has both set to ``None``. Every model trained here also
    records ``tokenizer_fingerprint``, the codebook fingerprint of the VQ tokenizer whose ids it was
    trained on, so that a VQ decoder or code shards of another tokenizer are refused.

    Args:
        vocab_size: ids the model embeds and predicts (N flat, k MASC).
        hidden_size: model width (``dim`` in the reference).
        num_hidden_layers: decoder layers (``n_layer``).
        num_attention_heads: query heads (``n_head``).
        num_key_value_heads: key/value heads (``n_kv_head``); ``None`` = ``num_attention_heads``.
        multiple_of: the FFN width is rounded up to a multiple of this.
        ffn_dim_multiplier: optional factor on the FFN width ``int(8 * hidden_size / 3)``.
        rope_theta: rotary base (``rope_base``).
        rms_norm_eps: RMSNorm epsilon (``norm_eps``).
        initializer_range: std of the normal init of every linear and embedding weight.
        token_dropout / attention_dropout / resid_dropout / ffn_dropout: dropout rates
            (``token_dropout_p``, ``attn_dropout_p``, ``resid_dropout_p``, ``ffn_dropout_p``).
        drop_path_rate: stochastic depth, linearly increasing from 0 over the layers.
        num_classes: class labels; the embedding table has one more row (the null class) when
            ``class_dropout_prob > 0``, which classifier-free guidance needs.
        class_dropout_prob: probability of replacing a label by the null class in training.
        cls_token_num: condition positions before the image tokens (1 for class-conditional models).
        block_size: image tokens per image, a square number (256 for 256 px, 576 for 384 px).
        fine_vocab_size: N, the codebook size, for a MASC model; ``None`` for a flat model.
        cluster_map_fingerprint: fingerprint of the MASC cluster map; ``None`` for a flat model.
        default_guidance_scale: legacy. Sampling defaults live in the model's ``generation_config``
            (``generation_config.json``); this field is read only to build that for a directory saved
            before it existed. ``None``: 4.0 (the reference sampler's default) with a null class, else 1.0.
        tokenizer_fingerprint: codebook fingerprint of the VQ tokenizer the model's ids come from
            (``masc_hf.clustering.codebook_fingerprint``); ``None`` when unknown (configs saved before
            it existed, converted checkpoints).

    Example:
        >>> config = LlamaGenConfig.from_preset("GPT-B-256")
        >>> config.hidden_size, config.block_size
        (768, 256)
    """

    model_type = "masc_llamagen"
    # The reference's ModelArgs names, readable (and settable) as aliases.
    attribute_map = {
        "dim": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_kv_head": "num_key_value_heads",
        "rope_base": "rope_theta",
        "norm_eps": "rms_norm_eps",
    }

    def __init__(
        self,
        vocab_size: int = 16384,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
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
        block_size: int = 256,
        fine_vocab_size: int | None = None,
        cluster_map_fingerprint: str | None = None,
        default_guidance_scale: float | None = None,
        tokenizer_fingerprint: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.num_key_value_heads = int(num_key_value_heads) if num_key_value_heads is not None else self.num_attention_heads
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
        self.fine_vocab_size = int(fine_vocab_size) if fine_vocab_size is not None else None
        self.cluster_map_fingerprint = cluster_map_fingerprint
        self.default_guidance_scale = float(default_guidance_scale) if default_guidance_scale is not None else None
        self.tokenizer_fingerprint = tokenizer_fingerprint
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        def fail(what: str, fix: str) -> None:
            raise ModelConfigError(f"LlamaGenConfig: {what}; {fix}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_classes", "block_size"):
            if getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)} must be >= 1", f"pass a positive {name}")
        self._check_backbone(fail)
        if self.fine_vocab_size is None and self.cluster_map_fingerprint is not None:
            fail("cluster_map_fingerprint is set but fine_vocab_size is None", "a MASC model needs both (N and the map's fingerprint)")
        if self.fine_vocab_size is not None and self.fine_vocab_size < self.vocab_size:
            fail(
                f"fine_vocab_size={self.fine_vocab_size} is smaller than vocab_size={self.vocab_size}",
                "a MASC model predicts k <= N cluster ids: vocab_size=k, fine_vocab_size=N",
            )
        if self.default_guidance_scale is not None and self.default_guidance_scale < 0:
            fail(f"default_guidance_scale={self.default_guidance_scale} is negative", "use 1.0 (no guidance) or a value > 1")

    # ---- derived sizes (head_dim, intermediate_size, grid_size, has_null_class, null_class_id: BackboneConfigMixin)
    @property
    def is_masc(self) -> bool:
        return self.fine_vocab_size is not None

    @property
    def architecture_name(self) -> str | None:
        """``"GPT-B"`` ... ``"GPT-3B"`` when width and depth are one of LlamaGen's sizes, else ``None``."""
        for name, arch in _ARCHITECTURES.items():
            if (arch["hidden_size"], arch["num_hidden_layers"]) == (self.hidden_size, self.num_hidden_layers):
                return name
        return None

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LlamaGenConfig:
        """A config for one of LlamaGen's class-conditional models.

        ``name`` is ``GPT-B``, ``GPT-L``, ``GPT-XL``, ``GPT-XXL`` or ``GPT-3B``, optionally followed by
        ``-256`` (block_size 256, the default) or ``-384`` (block_size 576). ``overrides`` replace any
        field (e.g. ``vocab_size=k, fine_vocab_size=16384`` for a MASC model).
        """
        key = name.strip().upper().replace("_", "-")
        if key in _ARCHITECTURES:
            key += "-256"
        if key not in LLAMAGEN_PRESETS:
            raise ModelConfigError(f"unknown LlamaGen preset {name!r}; use one of {', '.join(LLAMAGEN_PRESETS)}")
        return cls(**{**LLAMAGEN_PRESETS[key], **overrides})

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], **overrides: Any) -> LlamaGenConfig:
        """A config from LlamaGen's ``ModelArgs`` fields (``dim``, ``n_layer``, ``rope_base``, ...).

        Accepts the dict itself or a dict holding it under ``"model_args"`` (the layout of the
        fixtures' ``gpt/config.json``). Only class-conditional models (``model_type "c2i"``) exist here.
        """
        args = model_args.get("model_args", model_args)
        if not isinstance(args, dict):
            raise ModelConfigError(f"model_args must be a dict of LlamaGen ModelArgs fields, got {type(args).__name__}")
        if args.get("model_type", "c2i") != "c2i":
            raise ModelConfigError(
                f"model_type={args['model_type']!r} is not supported; only class-conditional ('c2i') LlamaGen models are"
            )
        unknown = set(args) - set(_MODEL_ARGS_NAMES) - _MODEL_ARGS_UNUSED
        if unknown:
            raise ModelConfigError(
                f"unknown LlamaGen ModelArgs field(s) {sorted(unknown)}; expected names from {sorted(_MODEL_ARGS_NAMES)}"
            )
        kwargs = {_MODEL_ARGS_NAMES[key]: value for key, value in args.items() if key in _MODEL_ARGS_NAMES}
        return cls(**{**kwargs, **overrides})
