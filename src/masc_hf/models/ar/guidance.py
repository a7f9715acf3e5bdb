"""Classifier-free guidance: the conditional and null-class rows run as one batch ``[2B, ...]``
(conditional first); their logits combine as ``uncond + s * (cond - uncond)``."""

from __future__ import annotations

import torch


def guidance_rows(class_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels of a guided batch ``[2B]`` and its null-class mask (the second half)."""
    batch_size = class_labels.shape[0]
    labels = torch.cat([class_labels, class_labels])
    return labels, torch.arange(2 * batch_size, device=class_labels.device) >= batch_size


def classifier_free_guidance(logits: torch.Tensor, scale: torch.Tensor | float, active: torch.Tensor | bool = True) -> torch.Tensor:
    """``[2B, V]`` -> ``[B, V]``: ``uncond + scale * (cond - uncond)`` where ``active``, else the
    conditional logits exactly (guidance switched off for a step, without changing the batch's shape).
    ``scale`` may be a 0-d tensor or ``[B, 1]`` (one scale per image)."""
    cond, uncond = logits.chunk(2, dim=0)
    guided = uncond + scale * (cond - uncond)
    if isinstance(active, bool):
        return guided if active else cond
    return torch.where(active, guided, cond)
