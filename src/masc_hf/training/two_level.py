"""A MASC model and its refinement network as one trainable module (hierarchical decoding's training).

``train(model, dataset, args, cluster_map=..., refiner=...)`` wraps the two in :class:`TwoLevelModel`
and trains that: accelerate prepares, checkpoints and resumes it like any model. Two modes
(``args.refiner_mode``):

* ``"frozen"`` (the default, as the MASC paper trains it after the main model): the MASC model is
  frozen and runs in eval mode without gradients; the refiner learns the codebook token inside
  each true cluster, teacher-forced on the model's final states.
* ``"joint"``: both learn; loss = the model's cluster CE + ``refiner_loss_weight`` x the refiner's
  token CE.
"""

from __future__ import annotations

import torch
from torch import nn

REFINER_MODES = ("frozen", "joint")


class TwoLevelModel(nn.Module):
    """``forward(input_ids, class_labels, labels, fine_ids)`` -> ``(loss, cluster logits, parts)`` with
    ``parts`` the ``coarse_loss`` and ``refiner_loss`` tensors (the history logs both)."""

    def __init__(self, model: nn.Module, refiner: nn.Module, mode: str = "frozen", refiner_loss_weight: float = 1.0) -> None:
        super().__init__()
        self.model, self.refiner = model, refiner
        self.mode, self.refiner_loss_weight = mode, float(refiner_loss_weight)
        if mode == "frozen":
            self.model.requires_grad_(False)

    @property
    def config(self):
        """The MASC model's config (what the learning rates, the resume record and the checks read)."""
        return self.model.config

    def train(self, mode: bool = True) -> TwoLevelModel:
        super().train(mode)
        if self.mode == "frozen":
            self.model.eval()  # no dropout in the frozen model: its states are the ones sampling sees
        return self

    def forward(self, input_ids, class_labels, labels, fine_ids):
        frozen = self.mode == "frozen"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            out = self.model(
                input_ids=input_ids, class_labels=class_labels, labels=None if frozen else labels, check_inputs=False,
                return_hidden_states=True,
            )
        # the true cluster ids (labels), the refiner's target the codebook ids: checked where they were read
        refined = self.refiner(out.hidden_states, labels, fine_ids, labels=fine_ids, check_inputs=False)
        coarse_loss = out.loss if out.loss is not None else refined.loss.new_zeros(())
        loss = refined.loss if frozen else coarse_loss + self.refiner_loss_weight * refined.loss
        return loss, out.logits, {"coarse_loss": coarse_loss.detach(), "refiner_loss": refined.loss.detach()}
