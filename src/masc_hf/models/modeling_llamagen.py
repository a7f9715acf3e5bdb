"""LlamaGen's class-conditional transformer as a transformers model, with a static-cache ``generate``.

Numerically faithful to the reference (github.com/FoundationVision/LlamaGen, ``autoregressive/models/gpt.py``
and ``generate.py``): the same sequence layout, 2D RoPE, RMSNorm, SwiGLU, causal SDPA and sampling
rules, so official checkpoints (converted by :mod:`masc_hf.models.convert_llamagen`) give the same
logits and the same greedy images. The layout follows transformers' Llama and gpt-fast instead.

Sequence layout: position 0 holds the class embedding, positions 1..L-1 the image tokens 0..L-2;
``logits[:, t]`` predicts image token t (t = 0..L-1), so ``logits[:, 0]`` comes from the class position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..errors import ModelInputError
from .configuration_llamagen import LlamaGenConfig

try:  # transformers >= 5: init functions that leave already-loaded weights alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers
    GradientCheckpointingLayer = nn.Module

logger = logging.getLogger(__name__)


@dataclass
class LlamaGenOutput(ModelOutput):
    """Output of :meth:`LlamaGenForImageGeneration.forward`.

    Args:
        loss: mean cross-entropy over the labelled positions (when ``labels`` is given).
        logits: ``[B, L, vocab_size]`` float32; ``logits[:, t]`` predicts image token t.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def rope_2d_table(block_size: int, head_dim: int, theta: float, cls_token_num: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of LlamaGen's 2D rotary embedding, each ``[cls_token_num + block_size, head_dim // 2]`` float32.

    Rotation pair j of a head is the adjacent elements (2j, 2j+1). With n = head_dim // 4, image token p
    on the G x G grid (row p // G, column p % G) rotates pairs 0..n-1 by row * inv_freq and pairs
    n..2n-1 by column * inv_freq. The class positions get cos = sin = 0 (their q and k become zero).
    """
    grid = int(round(block_size**0.5))
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # [n]
    steps = torch.arange(grid, dtype=torch.float32)
    angles_row = torch.outer(steps, inv_freq)  # [G, n]
    angles = torch.cat(
        [angles_row[:, None, :].expand(grid, grid, -1), angles_row[None, :, :].expand(grid, grid, -1)], dim=-1
    ).reshape(grid * grid, half)  # [L, D/2], row-major over the grid
    zeros = torch.zeros(cls_token_num, half)
    return torch.cat([zeros, torch.cos(angles)]), torch.cat([zeros, torch.sin(angles)])


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of ``x`` ``[B, S, H, D]`` by angles whose cos/sin are ``[S, D/2]``, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return rotated.flatten(3).type_as(x)


class LlamaGenRMSNorm(nn.Module):
    """RMSNorm normalising in float32, casting back, then scaling (the reference's order)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps)
        return x.type_as(hidden_states) * self.weight


class LlamaGenRotaryEmbedding(nn.Module):
    """Holds the 2D RoPE table as non-persistent buffers (rebuilt from the config, never saved)."""

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.config = config
        cos, sin = self.compute_table(config)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def compute_table(config: LlamaGenConfig) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_2d_table(config.block_size, config.head_dim, config.rope_theta, config.cls_token_num)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cos.dtype != torch.float32:  # a model-wide .to(bf16) cast the table; the reference keeps it float32
            cos, sin = self.compute_table(self.config)
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self.cos[start : start + length], self.sin[start : start + length]


class LlamaGenDropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p, scale survivors by 1/(1-p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LlamaGenStaticCache:
    """Preallocated keys and values ``[layers, B, kv_heads, max_len, head_dim]``, written in place."""

    def __init__(self, config: LlamaGenConfig, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, layer_idx: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``[B, kv_heads, S, head_dim]`` at positions start..start+S-1; return the cache up to there."""
        end = start + keys.shape[2]
        self.keys[layer_idx, :, :, start:end] = keys
        self.values[layer_idx, :, :, start:end] = values
        return self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]

    def keep_rows(self, batch_size: int) -> None:
        """Keep only the first ``batch_size`` rows (a view): the null half once guidance has stopped."""
        self.keys, self.values = self.keys[:, :batch_size], self.values[:, :batch_size]


class LlamaGenAttention(nn.Module):
    def __init__(self, config: LlamaGenConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        # one fused projection: q (H * D), k (KV * D), v (KV * D) along the output features
        self.qkv_proj = nn.Linear(config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.attention_dropout = config.attention_dropout
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LlamaGenStaticCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        query, key, value = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)
        query = apply_rope_2d(query.view(batch, length, self.num_heads, self.head_dim), cos, sin).transpose(1, 2)
        key = apply_rope_2d(key.view(batch, length, self.num_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        value = value.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(self.layer_idx, start, key, value)
        if self.num_kv_heads != self.num_heads:
            key = key.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            value = value.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        # A block starting at position 0 is causal over itself; a later one-token step sees the whole cache.
        if start != 0 and length != 1:
            raise NotImplementedError("a multi-token block must start at position 0")
        output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=length > 1,
        )
        output = output.transpose(1, 2).reshape(batch, length, q_size)
        return self.resid_dropout(self.o_proj(output))


class LlamaGenMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class LlamaGenDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h)), each branch under drop path."""

    def __init__(self, config: LlamaGenConfig, layer_idx: int, drop_path: float) -> None:
        super().__init__()
        self.input_layernorm = LlamaGenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaGenAttention(config, layer_idx)
        self.post_attention_layernorm = LlamaGenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaGenMLP(config)
        self.drop_path = LlamaGenDropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LlamaGenStaticCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(self.self_attn(self.input_layernorm(hidden_states), cos, sin, cache, start))
        return hidden_states + self.drop_path(self.mlp(self.post_attention_layernorm(hidden_states)))


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k (ties with the k-th survive) and outside the nucleus.

    The nucleus keeps the most probable ids up to and including the one at which the cumulative
    probability first exceeds ``top_p``; the best id always survives. ``logits`` is ``[R, V]``.
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p  # dropped once the ids before it already exceed p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """One id per row of ``logits`` ``[R, V]``: argmax when ``temperature == 0``, else a filtered draw.

    The draw is ``torch.multinomial`` with ``generator``; given ``uniforms`` ``[R]`` in [0, 1) it is
    instead the inverse CDF of row r at ``uniforms[r]``, so each row depends on its own number only.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / max(temperature, 1e-5), top_k, top_p)
    probs = logits.softmax(dim=-1)
    if uniforms is None:
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return inverse_cdf_sample(probs, uniforms)


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row r of ``probs`` ``[R, V]`` sampled at ``uniforms[r]`` in [0, 1): the first id whose cumulative
    probability (float64) exceeds ``uniforms[r]`` times the row total; never an id of probability 0."""
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    ids = torch.searchsorted(cdf, uniforms.to(cdf)[:, None] * total, right=True).squeeze(-1)
    last_positive = (cdf < total).sum(dim=-1)  # rounding can put u * total on the total itself
    return torch.minimum(ids, last_positive)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class LlamaGenPreTrainedModel(PreTrainedModel):
    config_class = LlamaGenConfig
    base_model_prefix = "llamagen"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaGenDecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference init: N(0, initializer_range) for linear and embedding weights, RMSNorm gains 1,
        and the output head zero (so a fresh model starts from uniform predictions)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if module is getattr(self, "lm_head", None):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LlamaGenRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, LlamaGenRotaryEmbedding):
            # non-persistent buffers are not in checkpoints: rebuild them (also after meta-device loading)
            cos, sin = module.compute_table(self.config)
            module.cos.copy_(cos)
            module.sin.copy_(sin)


class LlamaGenForImageGeneration(LlamaGenPreTrainedModel):
    r"""LlamaGen class-conditional image-token generator (flat codebook ids or MASC cluster ids).

    Example:
        >>> import torch, masc_hf
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_pretrained("converted/c2i_L_384")  # doctest: +SKIP
        >>> tokens = model.generate(torch.tensor([207, 360]), guidance_scale=4.0, top_k=0)  # doctest: +SKIP
        >>> tokens.shape  # doctest: +SKIP
        torch.Size([2, 576])
    """

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__(config)
        self.class_embedding = nn.Embedding(config.num_classes + int(config.has_null_class), config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_dropout = nn.Dropout(config.token_dropout)
        drop_paths = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            [LlamaGenDecoderLayer(config, i, drop_paths[i]) for i in range(config.num_hidden_layers)]
        )
        self.norm = LlamaGenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary_emb = LlamaGenRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ---- input checks --------------------------------------------------------------------------
    def _check_class_labels(self, class_labels: torch.Tensor | list[int] | int) -> torch.Tensor:
        labels = torch.as_tensor(class_labels, device=self.device)
        if labels.ndim == 0:
            labels = labels[None]
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ModelInputError(
                f"class_labels must be integer ids of shape [B], got dtype {labels.dtype} and shape {list(labels.shape)}"
            )
        if labels.numel() == 0:
            raise ModelInputError("class_labels is empty; pass at least one class id")
        bad = (labels < 0) | (labels >= self.config.num_classes)
        if bad.any():
            raise ModelInputError(
                f"class_labels {labels[bad].tolist()} are outside [0, {self.config.num_classes}); use ids 0.."
                f"{self.config.num_classes - 1} (for the null class use force_drop_ids, or guidance_scale=0 in generate)"
            )
        return labels.long()

    def _check_input_ids(self, input_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
        expected = self.config.block_size - 1
        if input_ids.ndim != 2 or input_ids.shape[1] != expected or input_ids.is_floating_point():
            raise ModelInputError(
                f"input_ids must be integer ids of shape [B, block_size - 1] = [B, {expected}], got "
                f"{input_ids.dtype} {list(input_ids.shape)}; pass every image token but the last (the model "
                "predicts all block_size tokens, the first from the class position)"
            )
        if input_ids.shape[0] != batch_size:
            raise ModelInputError(f"input_ids has {input_ids.shape[0]} rows but class_labels has {batch_size}; pass one label per row")
        bad = (input_ids < 0) | (input_ids >= self.config.vocab_size)
        if bad.any():
            raise ModelInputError(
                f"input_ids contain {bad.sum().item()} id(s) outside [0, {self.config.vocab_size}), e.g. "
                f"{input_ids[bad][:5].tolist()}; a {'MASC' if self.config.is_masc else 'flat'} model takes ids < vocab_size"
                + (" (encode fine ids with the cluster map first)" if self.config.is_masc else "")
            )
        return input_ids

    # ---- shared pieces -----------------------------------------------------------------------
    def embed_classes(self, class_labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1, hidden]`` class embeddings; rows in ``force_drop_ids`` (and, in training, a random
        ``class_dropout_prob`` share of rows) use the null class."""
        drop = None
        if force_drop_ids is not None:
            drop = torch.as_tensor(force_drop_ids, device=class_labels.device).bool()
            if drop.shape != class_labels.shape:
                raise ModelInputError(f"force_drop_ids must have shape {list(class_labels.shape)}, got {list(drop.shape)}")
        if self.training and self.config.class_dropout_prob > 0:
            random_drop = torch.rand(class_labels.shape[0], device=class_labels.device) < self.config.class_dropout_prob
            drop = random_drop if drop is None else drop | random_drop
        if drop is not None and drop.any():
            if not self.config.has_null_class:
                raise ModelInputError(
                    "this model has no null class (class_dropout_prob=0), so labels cannot be dropped; "
                    "pass force_drop_ids=None and use guidance_scale=1.0"
                )
            class_labels = torch.where(drop, torch.full_like(class_labels, self.config.num_classes), class_labels)
        return self.class_embedding(class_labels)[:, None, :]

    def _decoder(self, hidden_states: torch.Tensor, start: int = 0, cache: LlamaGenStaticCache | None = None) -> torch.Tensor:
        """Run the layers on positions start..start+S-1 of ``hidden_states`` ``[B, S, hidden]``; return logits (float32)."""
        cos, sin = self.rotary_emb(start, hidden_states.shape[1])
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos, sin, cache, start)
        return self.lm_head(self.norm(hidden_states)).float()

    # ---- training / scoring ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        class_labels: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> LlamaGenOutput | tuple:
        r"""Teacher-forced logits for every image token.

        Args:
            input_ids: ``[B, L-1]`` image token ids (L = ``block_size``), all but the last token.
            class_labels: ``[B]`` class ids in ``[0, num_classes)``.
            labels: ``[B, L]`` target ids (the full token sequence; -100 is ignored) for the loss.
            force_drop_ids: ``[B]`` bool, rows that use the null class (for unconditional logits).

        Returns:
            :class:`LlamaGenOutput` with ``logits`` ``[B, L, vocab_size]`` (float32) and ``loss``.
        """
        class_labels = self._check_class_labels(class_labels)
        input_ids = self._check_input_ids(input_ids, class_labels.shape[0])
        hidden_states = torch.cat([self.embed_classes(class_labels, force_drop_ids), self.embed_tokens(input_ids)], dim=1)
        logits = self._decoder(self.token_dropout(hidden_states))

        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ModelInputError(
                    f"labels must have shape [B, block_size] = {list(logits.shape[:2])}, got {list(labels.shape)}; "
                    "pass the full token sequence (input_ids is labels[:, :-1])"
                )
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), ignore_index=-100)

        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return LlamaGenOutput(loss=loss, logits=logits)

    # ---- generation (gpt-fast style) -------------------------------------------------------------
    def _prefill(self, class_embeds: torch.Tensor, cache: LlamaGenStaticCache) -> torch.Tensor:
        """Run the class position(s) ``[R, C, hidden]`` into an empty cache; return the last logits ``[R, V]``."""
        return self._decoder(class_embeds, 0, cache)[:, -1]

    def _decode_one_token(self, token_ids: torch.Tensor, position: int, cache: LlamaGenStaticCache) -> torch.Tensor:
        """Feed one token per row ``[R]`` at ``position``; return the next logits ``[R, V]``."""
        return self._decoder(self.embed_tokens(token_ids)[:, None, :], position, cache)[:, -1]

    @torch.no_grad()  # not inference_mode: the ids may feed a later autograd pass
    def generate(
        self,
        class_labels: torch.Tensor | list[int] | int,
        guidance_scale: float | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        cluster_map=None,
        *,
        cfg_interval: int = -1,
        return_coarse_ids: bool = False,
        progress_bar: bool = False,
    ) -> torch.LongTensor | tuple[torch.LongTensor, torch.LongTensor]:
        r"""Sample ``block_size`` image tokens per class label with a static KV cache.

        Args:
            class_labels: ``[B]`` class ids in ``[0, num_classes)``.
            guidance_scale: classifier-free guidance s; the sampled logits are
                ``uncond + s * (cond - uncond)`` with the conditional and null-class rows in one batch.
                1.0 runs the conditional rows only; 0 samples unconditionally (null class only).
                Default: ``config.default_guidance_scale``.
            temperature: logits are divided by it; 0 means greedy (argmax).
            top_k: keep the k most likely ids (0 = all). ``top_k=1`` is greedy.
            top_p: nucleus sampling threshold in (0, 1] (1 = off).
            generator: ``torch.Generator`` on the model's device for reproducible draws (also used to
                pick the fine id inside each cluster). Or a list of B generators (any device), one per
                image: image b then draws only from ``generator[b]`` (``block_size`` uniforms for its
                tokens, sampled by inverse CDF, then ``block_size`` for the cluster-map decode), so
                it depends on its seed, label and the settings, not on the rest of the batch.
            cluster_map: a ``MASCClusterMap`` that belongs to this MASC model: the output is decoded to
                fine codebook ids (a random member of each predicted cluster).
            cfg_interval: guide only decode steps 0..cfg_interval (prefill counted apart, as in the
                reference); -1 guides every step.
            return_coarse_ids: with ``cluster_map``, return ``(fine_ids, coarse_ids)``.
            progress_bar: show a tqdm bar over the decode steps.

        Returns:
            ``[B, block_size]`` LongTensor of the model's ids (fine ids with ``cluster_map``).

        Example:
            >>> tokens = model.generate([207, 360], guidance_scale=4.0, top_k=1)  # doctest: +SKIP
        """
        config = self.config
        guidance_scale = config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        self._check_sampling(guidance_scale, temperature, top_k, top_p, cfg_interval)
        if cluster_map is not None:
            self._check_cluster_map(cluster_map)
        labels = self._check_class_labels(class_labels)
        batch_size = labels.shape[0]
        # per-image generators: one uniform per image and step, drawn up front; else draws from `generator`
        uniforms = self._row_uniforms(generator, batch_size, labels.device)
        step_uniforms = list(uniforms.t()) if uniforms is not None else [None] * config.block_size
        shared_generator = None if uniforms is not None else generator

        # guidance_scale 1: conditional rows only; 0: null rows only; otherwise both halves in one batch
        guided = guidance_scale not in (0.0, 1.0)
        if guided:
            labels, drop = torch.cat([labels, labels]), torch.arange(2 * batch_size, device=labels.device) >= batch_size
        else:
            drop = torch.full_like(labels, guidance_scale == 0.0, dtype=torch.bool)

        was_training = self.training
        self.eval()
        try:
            class_embeds = self.embed_classes(labels, drop)
            cache = LlamaGenStaticCache(
                config, labels.shape[0], config.cls_token_num + config.block_size - 1, class_embeds.dtype, class_embeds.device
            )
            tokens = torch.empty(batch_size, config.block_size, dtype=torch.long, device=labels.device)
            logits = self._prefill(class_embeds, cache)
            sampling = (temperature, top_k, top_p, shared_generator)
            tokens[:, 0] = self._pick(logits, guided, batch_size, guidance_scale, *sampling, step_uniforms[0])
            steps = range(config.block_size - 1)
            for step in tqdm(steps, desc="generate", disable=not progress_bar, leave=False):
                if guided and 0 <= cfg_interval < step:
                    guided = False
                    cache.keep_rows(batch_size)  # the null half is never read again
                rows = 2 * batch_size if guided else batch_size
                feed = tokens[:, step].repeat(rows // batch_size)
                logits = self._decode_one_token(feed, config.cls_token_num + step, cache)
                tokens[:, step + 1] = self._pick(logits, guided, batch_size, guidance_scale, *sampling, step_uniforms[step + 1])
        finally:
            self.train(was_training)

        if cluster_map is None:
            return tokens
        fine_ids = torch.as_tensor(cluster_map.decode(tokens, generator=generator)).to(tokens.device).long()
        return (fine_ids, tokens) if return_coarse_ids else fine_ids

    @staticmethod
    def _pick(logits, guided, batch_size, guidance_scale, temperature, top_k, top_p, generator, uniforms) -> torch.Tensor:
        """Combine the guided halves (``uncond + s * (cond - uncond)``) and sample one id per image."""
        if guided:
            cond, uncond = logits[:batch_size], logits[batch_size:]
            logits = uncond + guidance_scale * (cond - uncond)
        return sample_next_token(logits, temperature, top_k, top_p, generator, uniforms)

    def _row_uniforms(self, generator, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """For a list of per-image generators: ``[B, block_size]`` float64 uniforms, row b from ``generator[b]``."""
        if not isinstance(generator, (list, tuple)):
            return None
        if len(generator) != batch_size:
            raise ModelInputError(
                f"generator is a list of {len(generator)} generators but there are {batch_size} class labels; "
                "pass one torch.Generator per image, or a single torch.Generator"
            )
        for g in generator:
            if not isinstance(g, torch.Generator):
                raise ModelInputError(f"a generator list must hold torch.Generator objects, got {type(g).__name__}")
        size = self.config.block_size
        return torch.stack([torch.rand(size, generator=g, device=g.device, dtype=torch.float64) for g in generator]).to(device)

    def _check_sampling(self, guidance_scale: float, temperature: float, top_k: int, top_p: float, cfg_interval: int) -> None:
        if not guidance_scale >= 0:  # also rejects NaN
            raise ModelInputError(
                f"guidance_scale={guidance_scale} must be >= 0; use 1.0 for no guidance or e.g. 4.0 for classifier-free guidance"
            )
        if guidance_scale != 1.0 and not self.config.has_null_class:
            raise ModelInputError(
                f"guidance_scale={guidance_scale} needs a null class, but this model has none (class_dropout_prob=0); "
                "use guidance_scale=1.0"
            )
        if not temperature >= 0:
            raise ModelInputError(f"temperature={temperature} must be >= 0; use 1.0 to sample, 0 for greedy")
        if int(top_k) != top_k or top_k < 0:
            raise ModelInputError(f"top_k={top_k} must be a non-negative integer; use 0 to keep every id")
        if not 0.0 < top_p <= 1.0:
            raise ModelInputError(f"top_p={top_p} must be in (0, 1]; use 1.0 to turn nucleus sampling off")
        if int(cfg_interval) != cfg_interval or cfg_interval < -1:
            raise ModelInputError(f"cfg_interval={cfg_interval} must be -1 (always guide) or a step index >= 0")

    def _check_cluster_map(self, cluster_map) -> None:
        from ..clustering import check_cluster_map
        from ..errors import ClusterMapMismatchError

        config = self.config
        if not config.is_masc:
            raise ClusterMapMismatchError(
                "this model is flat (config.fine_vocab_size is None): its ids already are codebook ids; "
                "call generate without cluster_map"
            )
        check_cluster_map(
            cluster_map,
            num_tokens=config.fine_vocab_size,
            num_clusters=config.vocab_size,
            fingerprint=config.cluster_map_fingerprint,
            what=f"the model {config.name_or_path or type(self).__name__}",
        )
