"""2D rotary position embedding over a square token grid (LlamaGen's layout)."""

from __future__ import annotations

import torch
from torch import nn


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


class RotaryEmbedding2D(nn.Module):
    """The 2D RoPE table as non-persistent float32 buffers (rebuilt from the sizes, never saved).

    ``forward(positions)`` returns the ``[S, head_dim // 2]`` cos and sin of the positions ``[S]`` (a
    tensor, so a compiled decode step sees one shape at every position). Position ``t`` after the
    class positions uses grid cell ``(t - cls_token_num) // cell_repeat``: 1 is LlamaGen's layout;
    IAR2's released models use 2 (every cell's row appears twice in their table, a quirk their
    weights were trained with).
    """

    def __init__(self, block_size: int, head_dim: int, theta: float, cls_token_num: int = 1, cell_repeat: int = 1) -> None:
        super().__init__()
        self.sizes = (block_size, head_dim, theta, cls_token_num)
        self.cls_token_num, self.cell_repeat = cls_token_num, cell_repeat
        cos, sin = rope_2d_table(*self.sizes)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def reset_table(self) -> None:
        """Recompute the table in float32 on its device (after meta-device loading or a model-wide dtype cast)."""
        cos, sin = rope_2d_table(*self.sizes)
        self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cos.dtype != torch.float32:  # a model-wide .to(bf16) cast the table; the reference keeps it float32
            self.reset_table()
        if self.cell_repeat != 1:
            first = self.cls_token_num
            positions = torch.where(positions < first, positions, first + torch.div(positions - first, self.cell_repeat, rounding_mode="floor"))
        return self.cos[positions], self.sin[positions]
