"""The MASC refinement network G_refine (hierarchical decoding): given a MASC backbone's hidden state
and a cluster id, a distribution over the codebook tokens of that cluster only. Built from the AR core;
the design and the interface the generator, pipeline and trainer use are in ``docs/refiner.md``.

Position t scores image token t: its input is ``W_h h_t + E_coarse[z_t] + E_fine[x_{t-1}]`` (h_t the
backbone's hidden state that predicted z_t; ``x_{-1}`` is a learned start row), then causal decoder
layers with 2D RoPE over the token grid, a final RMSNorm and a head over the N tokens whose
non-members of z_t are set to -inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ...clustering import check_cluster_map
from ...errors import ModelInputError
from ..ar import DecoderLayer, RMSNorm, RotaryEmbedding2D, StaticKVCache, run_layers
from .configuration_refiner import MASCRefinerConfig

try:  # transformers >= 5: init functions that leave already-loaded weights alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init

if TYPE_CHECKING:  # pragma: no cover
    from ...clustering import MASCClusterMap


@dataclass
class MASCRefinerOutput(ModelOutput):
    """Output of :meth:`MASCRefiner.forward`.

    Args:
        loss: mean cross-entropy over the labelled positions (when ``labels`` is given).
        logits: ``[B, L, N]`` float32; ``logits[:, t]`` scores image token t, -inf off the members of ``coarse_ids[:, t]``.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class MASCRefinerPreTrainedModel(PreTrainedModel):
    config_class = MASCRefinerConfig
    base_model_prefix = "refiner"
    main_input_name = "hidden_states"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for linear and embedding weights, RMSNorm gains 1, and the head zero:
        a fresh refiner is uniform over each cluster, the paper's random-member decoding."""
        if isinstance(module, nn.Linear):
            if module is getattr(self, "lm_head", None):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, RotaryEmbedding2D):
            module.reset_table()  # non-persistent: rebuilt, also after meta-device loading


class MASCRefiner(MASCRefinerPreTrainedModel):
    r"""G_refine: picks the codebook token inside the cluster a MASC model predicted.

    The cluster map's ``mapping`` ``[N]`` is a persistent buffer ``token_cluster`` (saved with the
    weights), so a loaded refiner masks on its own; :meth:`set_cluster_map` attaches it to a new one.

    Example:
        >>> config = MASCRefinerConfig.for_backbone(masc_model)  # doctest: +SKIP
        >>> refiner = MASCRefiner(config, cluster_map)  # doctest: +SKIP
        >>> out = refiner(hidden_states, coarse_ids, fine_ids, labels=fine_ids)  # doctest: +SKIP
    """

    def __init__(self, config: MASCRefinerConfig, cluster_map: MASCClusterMap | None = None) -> None:
        super().__init__(config)
        self.hidden_proj = nn.Linear(config.backbone_hidden_size, config.hidden_size, bias=False)
        self.coarse_embedding = nn.Embedding(config.num_clusters, config.hidden_size)
        self.fine_embedding = nn.Embedding(config.num_tokens + 1, config.hidden_size)  # last row: the start
        self.layers = nn.ModuleList(
            [
                DecoderLayer(
                    config.hidden_size, config.num_attention_heads, config.num_attention_heads, config.intermediate_size, i,
                    norm_eps=config.rms_norm_eps, attention_dropout=config.attention_dropout,
                    resid_dropout=config.resid_dropout, ffn_dropout=config.ffn_dropout,
                )
                for i in range(config.num_hidden_layers)
            ]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.num_tokens, bias=False)
        # position t is image token t's grid cell: no class position in front
        self.rotary_emb = RotaryEmbedding2D(config.block_size, config.head_dim, config.rope_theta, cls_token_num=0)
        # cluster of every token [N]; -1 until a map is attached (then every token is masked)
        self.register_buffer("token_cluster", torch.full((config.num_tokens,), -1, dtype=torch.long))
        self.post_init()
        if cluster_map is not None:
            self.set_cluster_map(cluster_map)

    def set_cluster_map(self, cluster_map: MASCClusterMap) -> None:
        """Mask with ``cluster_map`` from now on. Its N and k must be the config's, and its fingerprint the
        recorded one (if any); the config then records it."""
        config = self.config
        check_cluster_map(
            cluster_map, num_tokens=config.num_tokens, num_clusters=config.num_clusters,
            fingerprint=config.cluster_map_fingerprint, what="the refiner",
        )
        with torch.no_grad():
            self.token_cluster.copy_(torch.as_tensor(cluster_map.mapping))
        config.cluster_map_fingerprint = cluster_map.fingerprint

    # ---- shared pieces -------------------------------------------------------------------------
    def restrict_to_cluster(self, logits: torch.Tensor, coarse_ids: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[..., N]`` with -inf wherever the token is not in cluster ``coarse_ids`` ``[...]``.

        One comparison against the ``[N]`` table per row: static shapes and no host sync (a ``[k, N]``
        mask would be 128M entries at k = 8192, N = 16384; gathering members gives ragged shapes).
        """
        return logits.masked_fill(self.token_cluster != coarse_ids[..., None], float("-inf"))

    def _embed(self, hidden_states: torch.Tensor, coarse_ids: torch.Tensor, previous_fine_ids: torch.Tensor) -> torch.Tensor:
        """``[B, S, backbone_hidden]``, ``[B, S]``, ``[B, S]`` -> ``[B, S, hidden]``."""
        projected = self.hidden_proj(hidden_states.to(self.hidden_proj.weight.dtype))
        return projected + self.coarse_embedding(coarse_ids) + self.fine_embedding(previous_fine_ids)

    def _decoder(self, inputs: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache | None = None) -> torch.Tensor:
        """Run the layers on ``inputs`` ``[B, S, hidden]`` at ``positions`` ``[S]``; unmasked float32 logits ``[B, S, N]``."""
        return self.lm_head(self.norm(run_layers(self.layers, inputs, self.rotary_emb, positions, cache))).float()

    # ---- training / scoring ----------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        coarse_ids: torch.LongTensor,
        fine_ids: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        check_inputs: bool = True,
    ) -> MASCRefinerOutput | tuple:
        r"""Teacher-forced logits of every image token inside its cluster.

        Args:
            hidden_states: ``[B, L, backbone_hidden_size]``, the backbone's final hidden states (the
                input of its head): row t is the one that predicted image token t (1 <= L <= block_size).
            coarse_ids: ``[B, L]`` cluster ids in ``[0, k)``; in training the true ones,
                ``cluster_map.encode(fine_ids)``.
            fine_ids: ``[B, L]`` codebook ids of the image; shifted right (a start id in front) they are
                the previous-token inputs.
            labels: ``[B, L]`` fine targets for the loss (usually ``fine_ids``; -100 is ignored).
            check_inputs: check ids are in range and that every fine id and label is a member of its
                cluster (a host sync); the trainer turns it off for data checked when loaded. Shapes are
                always checked.

        Returns:
            :class:`MASCRefinerOutput` with ``logits`` ``[B, L, N]`` (float32, -inf off the members) and ``loss``.
        """
        self._check_inputs(hidden_states, coarse_ids, fine_ids, labels, check_inputs)
        start = torch.full_like(fine_ids[:, :1], self.config.start_token_id)
        previous = torch.cat([start, fine_ids[:, :-1]], dim=1)
        positions = torch.arange(fine_ids.shape[1], device=fine_ids.device)
        logits = self.restrict_to_cluster(self._decoder(self._embed(hidden_states, coarse_ids, previous), positions), coarse_ids)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten().to(logits.device), ignore_index=-100)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return MASCRefinerOutput(loss=loss, logits=logits)

    def _check_inputs(self, hidden_states, coarse_ids, fine_ids, labels, check_values: bool) -> None:
        config = self.config
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != config.backbone_hidden_size:
            raise ModelInputError(
                f"hidden_states must be [B, L, backbone_hidden_size] = [B, L, {config.backbone_hidden_size}], got "
                f"{list(hidden_states.shape)}; pass the MASC backbone's final hidden states"
            )
        batch, length = hidden_states.shape[:2]
        if not 1 <= length <= config.block_size:
            raise ModelInputError(f"hidden_states has L={length} positions; use 1 <= L <= block_size={config.block_size}")
        for name, ids in (("coarse_ids", coarse_ids), ("fine_ids", fine_ids), ("labels", labels)):
            if ids is not None and (tuple(ids.shape) != (batch, length) or ids.is_floating_point() or ids.dtype == torch.bool):
                raise ModelInputError(f"{name} must be integer ids of shape [B, L] = [{batch}, {length}], got {ids.dtype} {list(ids.shape)}")
        if not check_values:
            return
        if (self.token_cluster < 0).any():
            raise ModelInputError("this refiner has no cluster map; pass cluster_map= to MASCRefiner or call set_cluster_map(cluster_map)")
        bad = (coarse_ids < 0) | (coarse_ids >= config.num_clusters)
        if bad.any():
            raise ModelInputError(
                f"coarse_ids contain {int(bad.sum())} id(s) outside [0, {config.num_clusters}), e.g. {coarse_ids[bad][:5].tolist()}; "
                "pass cluster ids of the refiner's map (cluster_map.encode(fine_ids))"
            )
        self._check_members("fine_ids", fine_ids, coarse_ids)
        if labels is not None:
            keep = labels != -100
            self._check_members("labels", labels[keep], coarse_ids[keep])

    def _check_members(self, name: str, ids: torch.Tensor, coarse_ids: torch.Tensor) -> None:
        """Raise unless every id in ``ids`` is a token in ``[0, N)`` of the cluster ``coarse_ids`` at its place."""
        bad = (ids < 0) | (ids >= self.config.num_tokens)
        if bad.any():
            raise ModelInputError(
                f"{name} contain {int(bad.sum())} id(s) outside [0, {self.config.num_tokens}), e.g. {ids[bad][:5].tolist()}; "
                "pass codebook ids (fine ids), not cluster ids"
            )
        clusters = self.token_cluster[ids]
        bad = clusters != coarse_ids
        if bad.any():
            token, cluster, given = ids[bad][0].item(), clusters[bad][0].item(), coarse_ids[bad][0].item()
            raise ModelInputError(
                f"{int(bad.sum())} of the {name} are not members of their coarse cluster, e.g. token {token} is in cluster "
                f"{cluster} but coarse id {given} was given; teacher forcing needs coarse_ids = cluster_map.encode(fine_ids) "
                "with the refiner's map (check the shards and the map belong together)"
            )

    # ---- generation (one step over a static cache, gpt-fast style) -------------------------------
    def new_cache(self, rows: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> StaticKVCache:
        """An empty :class:`StaticKVCache` for ``rows`` images (``block_size`` positions)."""
        config = self.config
        return StaticKVCache(
            config.num_hidden_layers, rows, config.num_attention_heads, config.block_size, config.head_dim,
            dtype or self.dtype, device or self.device,
        )

    def refine_step(
        self,
        hidden_states: torch.Tensor,
        coarse_ids: torch.Tensor,
        previous_fine_ids: torch.Tensor,
        cache: StaticKVCache,
        cache_position: torch.Tensor,
        restrict: bool = True,
    ) -> torch.Tensor:
        """Logits ``[R, N]`` of image token t = ``cache_position`` ``[1]`` for ``R`` images.

        ``hidden_states`` ``[R, backbone_hidden]`` is the backbone row that predicted ``coarse_ids`` ``[R]``;
        ``previous_fine_ids`` ``[R]`` is token t-1 (``config.start_token_id`` at t = 0). Writes position
        t of ``cache`` (:meth:`new_cache`). ``restrict=False`` returns the unmasked logits (guidance must
        combine those: -inf minus -inf is NaN), to be masked with :meth:`restrict_to_cluster`. Same
        shapes at every step and no host sync or input check: compiles with ``fullgraph=True``.
        """
        inputs = self._embed(hidden_states[:, None], coarse_ids[:, None], previous_fine_ids[:, None])
        table = self.member_rows_table(coarse_ids.shape[0]) if restrict else None
        if table is None:
            logits = self._decoder(inputs, cache_position, cache)[:, -1]
            return self.restrict_to_cluster(logits, coarse_ids) if restrict else logits
        # the head's rows of the members only (a cluster of 2 reads 2 rows of the N): the same logits
        # where they count, -inf elsewhere; padding points at a spare column N, dropped at the end
        states = self.norm(run_layers(self.layers, inputs, self.rotary_emb, cache_position, cache))[:, -1]
        members = table[coarse_ids]  # [R, M]
        rows = self.lm_head.weight[members.clamp(max=self.config.num_tokens - 1)]  # [R, M, hidden]
        member_logits = torch.matmul(rows, states[:, :, None])[..., 0].float()
        member_logits = member_logits.masked_fill(members == self.config.num_tokens, float("-inf"))
        logits = member_logits.new_full((coarse_ids.shape[0], self.config.num_tokens + 1), float("-inf"))
        return logits.scatter(1, members, member_logits)[:, :-1]

    def member_rows_table(self, rows: int) -> torch.Tensor | None:
        """The :meth:`member_table` when :meth:`refine_step` over ``rows`` images scores the members' rows
        of the head only (fewer than the N rows of the full head), else ``None`` (it then runs ``lm_head``)."""
        table = self.member_table()
        return None if table is None or table.shape[1] * rows > self.config.num_tokens else table

    def unused_decode_linears(self, rows: int) -> tuple[str, ...]:
        """Names of the linear layers :meth:`refine_step` over ``rows`` images never runs: the head when
        the step scores the members' rows only (a caller preparing the layers can skip it)."""
        return ("lm_head",) if self.member_rows_table(rows) is not None else ()

    def member_table(self) -> torch.Tensor | None:
        """``[k, M]`` the members of every cluster in increasing id order, padded with N (M: the largest
        cluster), built from ``token_cluster`` when first needed (a host sync) and kept until the map
        changes; ``None`` without a map. :meth:`refine_step` scores only these rows of the head. A
        compiled step reads the kept table (``generate`` runs the first step eagerly, which builds it)."""
        kept = self.__dict__.get("_member_table")
        if torch.compiler.is_compiling():  # a compiled step uses the table its eager first step built
            return None if kept is None else kept[1]
        key = (self.token_cluster.device, self.token_cluster._version, self.token_cluster.data_ptr())
        if kept is not None and kept[0] == key:
            return kept[1]
        mapping = self.token_cluster
        if bool((mapping < 0).any()):
            return None
        order = torch.argsort(mapping, stable=True)
        counts = torch.bincount(mapping, minlength=self.config.num_clusters)
        starts = counts.cumsum(0) - counts
        slot = torch.arange(mapping.numel(), device=mapping.device) - starts[mapping[order]]
        table = torch.full((self.config.num_clusters, int(counts.max())), self.config.num_tokens, dtype=torch.long, device=mapping.device)
        table[mapping[order], slot] = order
        self.__dict__["_member_table"] = (key, table)  # a plain attribute: not saved, not moved with the model
        return table


def check_refiner_fits(refiner, model, cluster_map: MASCClusterMap | None = None, what: str = "the model", error: type[Exception] = ModelInputError) -> None:
    """A refiner belongs to one MASC model (N, k, width, block size) and its cluster map (fingerprint).
    ``error`` is raised for a refiner that is no :class:`MASCRefiner` or a flat ``model``; the size and
    map mismatches raise :class:`~masc_hf.errors.ClusterMapMismatchError`."""
    from ...errors import ClusterMapMismatchError

    if not isinstance(refiner, MASCRefiner):
        raise error(f"refiner must be a MASCRefiner, got {type(refiner).__name__}")
    if not getattr(model, "config", model).is_masc:
        raise error(f"a refiner picks tokens inside clusters, but {what} is flat; drop refiner")
    refiner.config.check_backbone(model, what=what)
    expected = refiner.config.cluster_map_fingerprint
    if cluster_map is not None and expected is not None and cluster_map.fingerprint != expected:
        raise ClusterMapMismatchError(
            f"the refiner was trained with cluster map {expected[:12]}... but the pipeline's map is {cluster_map.fingerprint[:12]}...; "
            "use the refiner trained on this map"
        )
