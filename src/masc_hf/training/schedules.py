"""The learning-rate schedule of every training loop: linear warm-up, then a cosine to a floor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import MASCError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["warmup_cosine_schedule"]


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' ``get_cosine_with_min_lr_schedule_with_warmup``: the learning rate of every
    parameter group rises linearly from 0 at step 0 to its peak (the optimiser's ``lr``) at
    ``warmup_steps``, then follows a half cosine down to ``peak * min_lr_ratio`` at ``total_steps``.
    Call ``scheduler.step()`` once after each optimiser step."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MASCError(f"learning-rate schedule: {name} must be a non-negative integer, got {value!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise MASCError(f"learning-rate schedule: min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps, min_lr_rate=min_lr_ratio
    )
