"""IAR's cluster-oriented loss for a flat model: token CE + weight x CE over the clusters of any
cluster map, a cluster's logit being the logsumexp of its members' logits (docs/training.md)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import MASCError

__all__ = ["IAR_CLUSTER_LOSS_WEIGHT", "ClusterLoss", "ClusterOrientedLoss"]

IAR_CLUSTER_LOSS_WEIGHT = 1.0  # IAR's weight (Hu et al. 2025), the default when a map is given


class ClusterLoss(NamedTuple):
    """What :class:`ClusterOrientedLoss` returns (0-dim tensors): ``loss = token_loss + weight * cluster_loss``."""

    loss: torch.Tensor
    token_loss: torch.Tensor
    cluster_loss: torch.Tensor


class ClusterOrientedLoss(torch.nn.Module):
    """CE over tokens + ``weight`` x CE over clusters for a flat model's logits ``[..., N]``.

    ``mapping``: ``[N]`` the cluster id of every token (a cluster map's ``mapping``; clusters of any
    sizes, ids ``0..k-1``). A cluster's logit is the logsumexp of its members' logits, so the cluster
    softmax is the marginal of the token softmax and the logsumexp over all clusters is the tokens'
    normaliser: the cluster CE of a target in cluster c is ``logsumexp(logits) -
    logsumexp(logits[members of c])``. Only the target cluster's members are gathered, through a
    ``[k, S]`` table of every cluster's token ids padded to the largest size S: per row S logits, no
    ``[R, N]`` temporary beyond the normaliser's, no scatter, no host sync, fixed shapes
    (compile-friendly). Both CEs are means over the positions whose label is not ``ignore_index``;
    ``weight=0`` gives exactly ``F.cross_entropy``.
    """

    def __init__(self, mapping: Any, weight: float = IAR_CLUSTER_LOSS_WEIGHT, ignore_index: int = -100):
        super().__init__()
        token_cluster = torch.as_tensor(mapping, dtype=torch.long)
        if token_cluster.ndim != 1 or token_cluster.numel() < 1 or int(token_cluster.min()) < 0:
            raise MASCError(f"mapping must be [N] cluster ids >= 0 (a cluster map's mapping), got shape {list(token_cluster.shape)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise MASCError(f"weight={weight!r} is not a loss weight; pass a finite number >= 0 (IAR's: 1.0)")
        sizes = torch.bincount(token_cluster)
        order = torch.argsort(token_cluster, stable=True)  # token ids grouped by cluster
        starts = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(token_cluster.numel()) - starts[token_cluster[order]]  # rank inside its cluster
        members = torch.zeros(sizes.numel(), int(sizes.max()), dtype=torch.long)  # padding: token 0, masked out
        members[token_cluster[order], slot] = order
        self.register_buffer("token_cluster", token_cluster, persistent=False)
        self.register_buffer("members", members, persistent=False)
        self.register_buffer("padding", torch.arange(members.shape[1]) >= sizes[:, None], persistent=False)  # [k, S]
        self.weight, self.ignore_index = float(weight), ignore_index

    @property
    def num_tokens(self) -> int:
        return self.token_cluster.numel()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> ClusterLoss:
        """``logits`` ``[..., N]``, ``labels`` ``[...]`` token ids (``ignore_index`` skipped) -> :class:`ClusterLoss`."""
        if logits.shape[-1] != self.num_tokens or logits.shape[:-1] != labels.shape:
            raise MASCError(
                f"logits {list(logits.shape)} and labels {list(labels.shape)} do not fit a map over N={self.num_tokens} tokens; "
                "pass [..., N] logits of a flat model over the map's codebook and [...] labels"
            )
        flat_logits, flat_labels = logits.reshape(-1, self.num_tokens), labels.reshape(-1)
        log_probs = F.log_softmax(flat_logits, dim=-1)  # what F.cross_entropy computes: one normaliser for both CEs
        token_loss = F.nll_loss(log_probs, flat_labels, ignore_index=self.ignore_index)
        valid = flat_labels != self.ignore_index
        target_cluster = self.token_cluster[flat_labels.clamp(min=0)]  # ignored rows: any cluster, dropped below
        member_log_probs = log_probs.gather(1, self.members[target_cluster])  # [R, S]
        member_log_probs = member_log_probs.masked_fill(self.padding[target_cluster], float("-inf"))
        per_row = -torch.logsumexp(member_log_probs, dim=-1)  # -log P(target cluster)
        cluster_loss = torch.where(valid, per_row, 0.0).sum() / valid.sum()  # a mean like F.cross_entropy's (nan if none)
        return ClusterLoss(token_loss + self.weight * cluster_loss, token_loss, cluster_loss)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, num_clusters={self.members.shape[0]}, weight={self.weight}"
