"""The transformer pieces every AR image model here is built from: RMSNorm, SwiGLU, drop path,
attention with 2D RoPE (causal over a sequence, or over a :class:`StaticKVCache`) and the pre-norm
decoder layer. Sizes are explicit arguments, so each model builds them from its own config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import StaticKVCache
from .rope import apply_rope_2d

from transformers.modeling_layers import GradientCheckpointingLayer  # no fallback: a layer that silently cannot checkpoint is a bug


class RMSNorm(nn.Module):
    """RMSNorm normalising in float32, casting back, then scaling (LlamaGen's order)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps)
        return x.type_as(hidden_states) * self.weight


class DropPath(nn.Module):
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


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


def single_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of one query per row over a cache, written as reductions for ``torch.compile``'s CPU
    code: ``query`` ``[B, H, 1, D]``, ``key`` / ``value`` ``[B, H, L, D]``, ``mask`` ``[1, L]`` bool, or
    ``None`` when every position is visible (a compiled CPU step reads the written positions only,
    at a length that changes with the step: :attr:`StaticKVCache.visible`).

    Inductor turns this into one loop nest per (row, head) that reads each key and value once; the
    fused CPU SDPA kernel and two batched matmuls took 1.2-2x longer here on a decode step's cache, the
    bulk of its memory traffic at large batches (benchmarks/bench_generate.py --floor). The weights
    are normalised once, after the weighted sum, not once per value read. Float32 arithmetic, as
    SDPA's CPU kernel; the same result up to rounding."""
    scores = (query.float() * key.float()).sum(dim=-1) * query.shape[-1] ** -0.5  # [B, H, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = (scores - scores.amax(dim=-1, keepdim=True)).exp().unsqueeze(-1)  # [B, H, L, 1]
    # one sum per 16 features (a vector register): inductor then reads each value row once, front to back, into
    # D / 16 accumulators; one sum over all D features sweeps the cache once per 16 of them (1.4x the time here)
    values = value.float()
    output = torch.cat([(weights * values[..., i : i + 16]).sum(dim=-2) for i in range(0, value.shape[-1], 16)], dim=-1)
    return (output / weights.sum(dim=-2)).unsqueeze(2).to(value.dtype)  # [B, H, 1, D]


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with one fused q/k/v projection and 2D RoPE."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        layer_idx: int,
        attention_dropout: float = 0.0,
        resid_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = hidden_size // num_heads
        # q (H * D), k (KV * D), v (KV * D) along the output features
        self.qkv_proj = nn.Linear(hidden_size, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attention_dropout = attention_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: StaticKVCache | None = None,
        cache_position: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_first_key_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``hidden_states`` ``[B, S, hidden]``. Without a cache the S positions attend causally to each
        other; with one they are written at ``cache_position`` ``[S]`` and attend to the cache under
        ``attention_mask`` ``[S, max_len]`` (:meth:`StaticKVCache.attention_mask`).

        ``return_first_key_attention``: attend by an explicit softmax and also return each query's
        attention probability to key 0 (the class position), ``[B, heads, S]`` float32 (IAR2's
        attention-guided CFG reads it from the last layer)."""
        batch, length, _ = hidden_states.shape
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        query, key, value = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)
        query = apply_rope_2d(query.view(batch, length, self.num_heads, self.head_dim), cos, sin).transpose(1, 2)
        key = apply_rope_2d(key.view(batch, length, self.num_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        value = value.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(self.layer_idx, cache_position, key, value)
        if self.num_kv_heads != self.num_heads:
            key = key.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            value = value.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        first_key = None
        visible_only = cache is not None and attention_mask is None  # the cache's visible positions, the queries last
        if visible_only and length > 1 and key.shape[2] != length:  # SDPA's is_causal aligns top-left: spell the mask out
            keys = key.shape[2]
            attention_mask = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril(diagonal=keys - length)
            visible_only = False
        if return_first_key_attention:
            if attention_mask is None:  # causal: the queries are the last S of the keys
                keys = key.shape[2]
                attention_mask = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril(diagonal=keys - length)
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * self.head_dim**-0.5
            probs = scores.masked_fill(~attention_mask[None, None], float("-inf")).softmax(dim=-1)
            first_key = probs[..., 0]
            probs = F.dropout(probs, self.attention_dropout, self.training)
            output = torch.matmul(probs.to(value.dtype), value)
        elif length == 1 and cache is not None and query.device.type == "cpu" and torch.compiler.is_compiling():
            output = single_query_attention(query, key, value, attention_mask)  # a compiled CPU decode step
        else:
            output = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=None if cache is None or visible_only else attention_mask[None, None],
                dropout_p=self.attention_dropout if self.training else 0.0,
                is_causal=(cache is None or visible_only) and length > 1,
            )
        output = self.resid_dropout(self.o_proj(output.transpose(1, 2).reshape(batch, length, q_size)))
        return output if first_key is None else (output, first_key)


def run_layers(
    layers,
    hidden_states: torch.Tensor,
    rotary_emb,
    positions: torch.Tensor,
    cache: StaticKVCache | None = None,
    last_layer_first_key_attention: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``hidden_states`` ``[B, S, hidden]`` through ``layers`` at ``positions`` ``[S]``: causal over the
    sequence, or written to and attending over ``cache`` when one is given. With
    ``last_layer_first_key_attention`` also return the last layer's attention to key 0 ``[B, heads, S]``."""
    cos, sin = rotary_emb(positions)
    mask = cache.attention_mask(positions) if cache is not None and cache.masked else None
    for n, layer in enumerate(layers):
        if last_layer_first_key_attention and n == len(layers) - 1:
            return layer(hidden_states, cos, sin, cache, positions, mask, return_first_key_attention=True)
        hidden_states = layer(hidden_states, cos, sin, cache, positions, mask)
    return hidden_states


class DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h)), each branch under drop path."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        intermediate_size: int,
        layer_idx: int,
        *,
        norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden_size, norm_eps)
        self.self_attn = Attention(hidden_size, num_heads, num_kv_heads, layer_idx, attention_dropout, resid_dropout)
        self.post_attention_layernorm = RMSNorm(hidden_size, norm_eps)
        self.mlp = SwiGLU(hidden_size, intermediate_size, ffn_dropout)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: StaticKVCache | None = None,
        cache_position: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_first_key_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        attn = self.self_attn(
            self.input_layernorm(hidden_states), cos, sin, cache, cache_position, attention_mask, return_first_key_attention
        )
        first_key = None
        if return_first_key_attention:
            attn, first_key = attn
        hidden_states = hidden_states + self.drop_path(attn)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.post_attention_layernorm(hidden_states)))
        return hidden_states if first_key is None else (hidden_states, first_key)
