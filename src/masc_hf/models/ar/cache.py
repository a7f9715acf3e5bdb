"""A key/value cache fixed in memory and in shape, written at tensor positions (gpt-fast's layout).

Hand-written rather than ``transformers.StaticCache``: every layer here shares one explicit position
tensor with the rotary table and the attention mask, while transformers' cache keeps a private
counter whose contract has changed between releases.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys and values of every layer in fixed buffers, one pair per layer ``[rows, kv_heads, max_len, head_dim]``.

    Positions are written in place with ``index_copy_``; attention reads the whole buffer under the
    mask :meth:`attention_mask`, so every decode step has the same shapes (compilable, and CUDA-graph
    friendly: the buffers are marked as static addresses). One tensor per layer, not views of one
    big tensor: a compiled step then writes the new position in place instead of copying the base.

    ``visible``: set by a decoding loop to the number of positions written so far, when the query is
    the last of them. Attention then reads only those positions, with no mask: the work of a step
    grows with the position instead of being ``max_len`` every time. It is kept as
    ``visible_positions``, the view ``positions[:visible]``, so that a compiled step can take the
    length as that view's dimension and mark it dynamic (``torch._dynamo.mark_dynamic``): one graph
    then serves every length (a compiled CPU step). Keep it below ``max_len`` there: at ``max_len``
    the slice is the whole buffer, and the graph would specialise on that length (``generate``
    allocates one spare position).

    ``window``: set by a compiled decoding loop to a static length covering the positions written so
    far. Attention then reads the first ``window`` positions under the mask instead of the whole
    buffer; each distinct window is one compiled graph (``generate(compile=True, cache_windows=n)``),
    the form CUDA graphs need.
    """

    def __init__(
        self,
        num_layers: int,
        rows: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (rows, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.positions = torch.arange(max_len, device=device)
        self.visible_positions: torch.Tensor | None = None
        self.window: int | None = None
        if not torch.compiler.is_compiling():
            for tensor in (*self.keys, *self.values):
                torch._dynamo.mark_static_address(tensor)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(layers, rows, kv_heads, max_len, head_dim)``."""
        return (len(self.keys), *self.keys[0].shape)

    def update(
        self, layer_idx: int, cache_position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``[rows, kv_heads, S, head_dim]`` at ``cache_position`` ``[S]``; return the layer's keys and
        values: the whole buffers, or their first ``visible`` or ``window`` positions."""
        layer_keys, layer_values = self.keys[layer_idx], self.values[layer_idx]
        layer_keys.index_copy_(2, cache_position, keys)
        layer_values.index_copy_(2, cache_position, values)
        if self.visible_positions is not None:
            visible = self.visible_positions.shape[0]
            return layer_keys[:, :, :visible], layer_values[:, :, :visible]
        if self.window is not None:
            return layer_keys[:, :, : self.window], layer_values[:, :, : self.window]
        return layer_keys, layer_values

    @property
    def visible(self) -> int | None:
        return None if self.visible_positions is None else self.visible_positions.shape[0]

    @visible.setter
    def visible(self, length: int | None) -> None:
        self.visible_positions = None if length is None else self.positions[:length]

    @property
    def masked(self) -> bool:
        """Whether attention needs :meth:`attention_mask`: not when it reads the written positions only."""
        return self.visible_positions is None

    def attention_mask(self, cache_position: torch.Tensor) -> torch.Tensor:
        """``[S, max_len]`` (``[S, window]``) bool: the query at ``cache_position[i]`` sees every position up to its own."""
        return self.positions[None, : self.window] <= cache_position[:, None]
