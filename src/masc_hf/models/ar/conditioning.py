"""Class conditioning shared by the class-conditional models: label checks, and the class embedding
with the null class (label dropout in training, forced drops for unconditional logits)."""

from __future__ import annotations

import torch

from ...errors import ModelInputError


class ClassConditioning:
    """Mixin for a model with ``self.class_embedding`` (``[num_classes (+1 null), hidden]``) and a
    config with ``num_classes``, ``class_dropout_prob`` and ``has_null_class``."""

    def _check_class_labels(self, class_labels: torch.Tensor | list[int] | int) -> torch.Tensor:
        device = class_labels.device if isinstance(class_labels, torch.Tensor) else self.device
        labels = torch.as_tensor(class_labels, device=device)
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
        if drop is not None:
            if not self.config.has_null_class:
                if drop.any():
                    raise ModelInputError(
                        "this model has no null class (class_dropout_prob=0), so labels cannot be dropped; "
                        "pass force_drop_ids=None and use guidance_scale=1.0"
                    )
            else:
                class_labels = torch.where(drop, torch.full_like(class_labels, self.config.num_classes), class_labels)
        return self.class_embedding(class_labels)[:, None, :]
