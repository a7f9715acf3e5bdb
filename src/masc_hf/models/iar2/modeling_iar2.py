"""IAR2's class-conditional semantic-detail transformer as a transformers model, built from the shared
AR core.

Numerically faithful to the reference (sjtuplayer/IAR2, ``autoregressive/models/gpt_train.py``,
``gpt_inference.py`` and ``generate.py``), checked on ``../shared/fixtures/iar2/gpt``. Layout: position
0 holds the class embedding, position t >= 1 the fused (semantic, detail) embedding of token t - 1;
the head at position t predicts token t's semantic id, then its detail id. Design notes: docs/iar2.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ...errors import ModelInputError
from ..ar import (
    ClassConditioning,
    DecoderLayer,
    RMSNorm,
    RotaryEmbedding2D,
    StaticKVCache,
    check_sampling_options,
    per_image_uniforms,
    run_layers,
    sample_next_token,
)
from ..llamagen.modeling_llamagen import LlamaGenPreTrainedModel
from .configuration_iar2 import IAR2Config

try:  # transformers >= 5: init functions that leave already-loaded weights alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init

logger = logging.getLogger(__name__)

# generate()'s sampling options, all defaulting to the model's generation_config
SAMPLING_OPTIONS = ("semantic_guidance", "detail_guidance", "attention_guidance_weight", "temperature", "top_k", "top_p")
# The 12 earlier grid neighbours of a cell (row offset, column offset): two rows above, columns
# j-2..j+2, then two to the left; in the reference's slot order.
WINDOW_OFFSETS = tuple((-2, dj) for dj in range(-2, 3)) + tuple((-1, dj) for dj in range(-2, 3)) + ((0, -2), (0, -1))


@dataclass
class IAR2Output(ModelOutput):
    """Output of :meth:`IAR2ForImageGeneration.forward`.

    Args:
        loss: ``semantic_loss_weight * loss_semantic + loss_detail`` (with ``return_loss=True``).
        loss_semantic / loss_detail: mean cross-entropies over every position.
        logits_semantic: ``[B, L, semantic_vocab_size]`` float32; ``[:, t]`` predicts token t's semantic id.
        logits_detail: ``[B, L, detail_vocab_size]`` float32, teacher-forced on token t's semantic id.
    """

    loss: torch.FloatTensor | None = None
    loss_semantic: torch.FloatTensor | None = None
    loss_detail: torch.FloatTensor | None = None
    logits_semantic: torch.FloatTensor | None = None
    logits_detail: torch.FloatTensor | None = None


def default_generation_config() -> GenerationConfig:
    """Sampling defaults of a model without a ``generation_config.json``: no guidance, temperature 1,
    no top-k/top-p."""
    return GenerationConfig(
        do_sample=True, semantic_guidance=[1.0, 1.0], detail_guidance=[1.0, 1.0], attention_guidance_weight=0.0,
        temperature=1.0, top_k=0, top_p=1.0,
    )


class IAR2DecoderLayer(DecoderLayer):
    """The AR core's decoder layer sized from an :class:`IAR2Config` (backbone and head; the unit FSDP wraps)."""

    def __init__(self, config: IAR2Config, layer_idx: int, drop_path: float) -> None:
        super().__init__(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.intermediate_size,
            layer_idx,
            norm_eps=config.rms_norm_eps,
            attention_dropout=config.attention_dropout,
            resid_dropout=config.resid_dropout,
            ffn_dropout=config.ffn_dropout,
            drop_path=drop_path,
        )


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear (bias) -> GELU -> Linear (no bias): the head's MLP shape."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features, bias=False))


class LocalContext(nn.Module):
    """The compressed local window ``u_t``: backbone outputs at the 12 earlier grid neighbours of
    sequence position t (treated as cell ``(t // G, t % G)``, as the reference does), each compressed
    by ``neighbour_mlp`` (a neighbour outside the grid is a zero vector, which still passes through it),
    concatenated in slot order and mapped by ``context_mlp``.

    ``neighbour_mlp`` acts on each neighbour alone, so it runs once per position (:meth:`compress`) and
    the window gathers the compressed vectors: 12x less work than compressing every window.
    """

    def __init__(self, config: IAR2Config) -> None:
        super().__init__()
        dim, self.grid = config.hidden_size, config.grid_size
        self.neighbour_mlp = _mlp(dim, dim // 4, dim // 12)
        self.context_mlp = _mlp(len(WINDOW_OFFSETS) * (dim // 12), 2 * dim, dim)

    def compress(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` -> ``[..., D // 12]``."""
        return self.neighbour_mlp(hidden_states)

    def forward(self, compressed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``compressed`` ``[R, S, D // 12]`` (positions 0..S-1, at least every neighbour of ``positions``)
        -> ``u`` ``[R, P, D]`` at ``positions`` ``[P]``."""
        offsets = torch.tensor(WINDOW_OFFSETS, device=positions.device)  # [12, 2]
        rows = torch.div(positions, self.grid, rounding_mode="floor")[:, None] + offsets[:, 0]
        cols = (positions % self.grid)[:, None] + offsets[:, 1]
        valid = (rows >= 0) & (cols >= 0) & (cols < self.grid)  # [P, 12]
        index = torch.where(valid, rows * self.grid + cols, torch.zeros_like(rows))
        gathered = compressed[:, index]  # [R, P, 12, c]
        outside = self.neighbour_mlp(compressed.new_zeros(self.neighbour_mlp[0].in_features))  # mlp1(0)
        gathered = torch.where(valid[None, :, :, None], gathered, outside)
        return self.context_mlp(gathered.flatten(2))


class LocalContextHead(nn.Module):
    """Per position, a causal stack of ``head_layers`` blocks over the 3 slots ``[u_t, h_t, E_sem(s_t)]``;
    slot 1 (after ``norm``) gives the semantic logits, slot 2 the detail logits."""

    def __init__(self, config: IAR2Config) -> None:
        super().__init__()
        dim = config.hidden_size
        self.context = LocalContext(config)
        drop_paths = torch.linspace(0, config.drop_path_rate, config.head_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([IAR2DecoderLayer(config, i, drop_paths[i]) for i in range(config.head_layers)])
        self.norm = RMSNorm(dim, config.rms_norm_eps)
        self.semantic_out = _mlp(dim, 2 * dim, config.semantic_vocab_size)
        self.detail_out = _mlp(dim, 2 * dim, config.detail_vocab_size)


class IAR2PreTrainedModel(LlamaGenPreTrainedModel):
    config_class = IAR2Config
    base_model_prefix = "iar2"
    main_input_name = "semantic_ids"
    _no_split_modules = ["IAR2DecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference init: N(0, initializer_range) for linear and embedding weights, biases 0, the
        last linear of each output MLP 0 (uniform first predictions), RMSNorm gains 1."""
        std = self.config.initializer_range
        head = getattr(self, "head", None)
        if isinstance(module, nn.Linear):
            if head is not None and (module is head.semantic_out[-1] or module is head.detail_out[-1]):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, RotaryEmbedding2D):
            module.reset_table()


class IAR2ForImageGeneration(ClassConditioning, IAR2PreTrainedModel):
    r"""IAR2 class-conditional generator of (semantic id, detail id) token pairs.

    Example:
        >>> import masc_hf
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_pretrained("converted/iar2-b")  # doctest: +SKIP
        >>> semantic_ids, detail_ids = model.generate([207, 360], semantic_guidance=(1.0, 6.0),
        ...     detail_guidance=(1.0, 6.0), attention_guidance_weight=1.0)  # doctest: +SKIP
    """

    def __init__(self, config: IAR2Config) -> None:
        super().__init__(config)
        dim = config.hidden_size
        self.class_embedding = nn.Embedding(config.num_classes + int(config.has_null_class), dim)
        self.embed_semantic = nn.Embedding(config.semantic_vocab_size, dim)
        self.embed_detail = nn.Embedding(config.detail_vocab_size, dim)
        self.fusion = nn.Sequential(nn.Linear(2 * dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.token_dropout = nn.Dropout(config.token_dropout)
        drop_paths = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([IAR2DecoderLayer(config, i, drop_paths[i]) for i in range(config.num_hidden_layers)])
        self.head = LocalContextHead(config)
        self.rotary_emb = RotaryEmbedding2D(config.block_size, config.head_dim, config.rope_theta, config.cls_token_num, config.rope_cell_repeat)
        self.gradient_checkpointing = False
        self.generation_config = default_generation_config()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_semantic

    # ---- input checks ------------------------------------------------------------------------
    def _check_id_grids(self, semantic_ids: torch.Tensor, detail_ids: torch.Tensor, batch_size: int, check_values: bool) -> None:
        config, length = self.config, self.config.block_size
        for name, ids, size in (("semantic_ids", semantic_ids, config.semantic_vocab_size), ("detail_ids", detail_ids, config.detail_vocab_size)):
            if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] != length or ids.is_floating_point() or ids.dtype == torch.bool:
                got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
                raise ModelInputError(
                    f"{name} must be integer ids of shape [B, block_size] = [B, {length}] (the full token grid, row-major), got {got}"
                )
            if ids.shape[0] != batch_size:
                raise ModelInputError(f"{name} has {ids.shape[0]} rows but class_labels has {batch_size}; pass one label per row")
            if check_values:
                bad = (ids < 0) | (ids >= size)
                if bad.any():
                    raise ModelInputError(
                        f"{name} contain {int(bad.sum())} id(s) outside [0, {size}), e.g. {ids[bad][:5].tolist()}; "
                        f"this model's tokenizer has {config.semantic_vocab_size} semantic x {config.detail_vocab_size} detail codes"
                    )

    # ---- shared pieces -----------------------------------------------------------------------
    def embed_tokens(self, semantic_ids: torch.Tensor, detail_ids: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` fused embeddings of (semantic, detail) pairs: ``fusion([E_sem(s); E_det(d)])``."""
        return self.fusion(torch.cat([self.embed_semantic(semantic_ids), self.embed_detail(detail_ids)], dim=-1))

    def _head_logits(self, hidden: torch.Tensor, which: str) -> torch.Tensor:
        out = self.head.semantic_out if which == "semantic" else self.head.detail_out
        return out(self.head.norm(hidden)).float()

    # ---- training / scoring ------------------------------------------------------------------
    def forward(
        self,
        semantic_ids: torch.LongTensor,
        detail_ids: torch.LongTensor,
        class_labels: torch.LongTensor,
        force_drop_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        return_dict: bool | None = None,
        check_inputs: bool = True,
    ) -> IAR2Output | tuple:
        r"""Teacher-forced semantic and detail logits for every token of full grids.

        Args:
            semantic_ids / detail_ids: ``[B, L]`` the full token grids (L = ``block_size``, row-major). The
                backbone reads tokens 0..L-2; the detail prediction at t is conditioned on token t's
                semantic id.
            class_labels: ``[B]`` class ids in ``[0, num_classes)``.
            force_drop_ids: ``[B]`` bool, rows that use the null class (unconditional logits).
            return_loss: also return ``loss_semantic``, ``loss_detail`` and ``loss`` (weighted sum).
            check_inputs: check id ranges (a host sync); the trainer turns it off for checked data.

        Returns:
            :class:`IAR2Output` with ``logits_semantic`` ``[B, L, semantic_vocab_size]`` and
            ``logits_detail`` ``[B, L, detail_vocab_size]`` (float32).
        """
        if check_inputs:
            class_labels = self._check_class_labels(class_labels)
        self._check_id_grids(semantic_ids, detail_ids, class_labels.shape[0], check_inputs)
        batch, length = semantic_ids.shape
        tokens = self.embed_tokens(semantic_ids[:, :-1], detail_ids[:, :-1])
        hidden = self.token_dropout(torch.cat([self.embed_classes(class_labels, force_drop_ids), tokens], dim=1))
        positions = torch.arange(length, device=hidden.device)
        hidden = run_layers(self.layers, hidden, self.rotary_emb, positions)  # no final norm (the reference's layout)

        context = self.head.context(self.head.context.compress(hidden), positions)  # [B, L, D]
        slots = torch.stack([context, hidden, self.embed_semantic(semantic_ids)], dim=2).reshape(batch * length, 3, -1)
        slots = run_layers(self.head.layers, slots, self.rotary_emb, torch.arange(3, device=hidden.device))
        slots = slots.reshape(batch, length, 3, -1)
        logits_semantic = self._head_logits(slots[:, :, 1], "semantic")
        logits_detail = self._head_logits(slots[:, :, 2], "detail")

        loss = loss_semantic = loss_detail = None
        if return_loss:
            loss_semantic = F.cross_entropy(logits_semantic.reshape(-1, logits_semantic.shape[-1]), semantic_ids.reshape(-1))
            loss_detail = F.cross_entropy(logits_detail.reshape(-1, logits_detail.shape[-1]), detail_ids.reshape(-1))
            loss = self.config.semantic_loss_weight * loss_semantic + loss_detail
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(x for x in (loss, loss_semantic, loss_detail, logits_semantic, logits_detail) if x is not None)
        return IAR2Output(loss=loss, loss_semantic=loss_semantic, loss_detail=loss_detail, logits_semantic=logits_semantic, logits_detail=logits_detail)

    # ---- generation ----------------------------------------------------------------------------
    def _sampling_settings(self, generation_config: GenerationConfig | None, **given) -> dict:
        defaults, fallback = generation_config or self.generation_config, default_generation_config()
        settings = {}
        for name in SAMPLING_OPTIONS:
            value = given[name]
            for source in (defaults, fallback):
                if value is None:
                    value = getattr(source, name, None)
            settings[name] = value
        for name in ("semantic_guidance", "detail_guidance"):
            settings[name] = _guidance_pair(name, settings[name])
        weight = settings["attention_guidance_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ModelInputError(f"attention_guidance_weight={weight!r} must be a finite number >= 0; use 0 for the plain progressive schedule")
        for name in ("temperature", "top_k", "top_p"):
            settings[name] = _per_subtoken(name, settings[name])
        for part in range(2):
            check_sampling_options(1.0, settings["temperature"][part], settings["top_k"][part], settings["top_p"][part], -1, True)
        guided = settings["semantic_guidance"] != (1.0, 1.0) or settings["detail_guidance"] != (1.0, 1.0)
        if guided and not self.config.has_null_class:
            raise ModelInputError(
                "guidance needs a null class, but this model has none (class_dropout_prob=0); "
                "use semantic_guidance=(1, 1) and detail_guidance=(1, 1)"
            )
        return settings

    @torch.no_grad()
    def generate(
        self,
        class_labels: torch.Tensor | list[int] | int,
        semantic_guidance: Sequence[float] | float | None = None,
        detail_guidance: Sequence[float] | float | None = None,
        attention_guidance_weight: float | None = None,
        temperature: float | Sequence[float] | None = None,
        top_k: int | Sequence[int] | None = None,
        top_p: float | Sequence[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        *,
        generation_config: GenerationConfig | None = None,
        progress_bar: bool = False,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        return_schedule: bool = False,
    ):
        r"""Sample ``block_size`` (semantic, detail) pairs per class label, with progressive
        attention-guided adaptive classifier-free guidance.

        At step n of T = ``block_size``: ``a_n`` is the last backbone layer's attention (mean over
        heads, conditional rows) from position n to the class position; ``w_n = n / (T - 1) + w * a_n``;
        each sub-token's scale is ``start * (1 - w_n) + end * w_n`` per image, and its guided logits
        ``uncond + scale * (cond - uncond)``. Options left ``None`` come from ``generation_config``
        (default ``self.generation_config``).

        Args:
            class_labels: ``[B]`` class ids.
            semantic_guidance / detail_guidance: ``(start, end)`` scales (a number means constant).
                ``(1, 1)`` for both turns guidance off (conditional rows only); constant guidance is
                ``start == end`` with ``attention_guidance_weight=0``.
            attention_guidance_weight: w, the weight of the class-attention term (>= 0).
            temperature / top_k / top_p: one value, or a ``(semantic, detail)`` pair. ``top_k=1`` is greedy.
            generator: a ``torch.Generator``, or one per image (image b then draws 2 uniforms per step
                from ``generator[b]`` only: reproducible whatever else is in the batch).
            progress_bar: a tqdm bar over the steps.
            callback: ``callback(step, semantic_ids, detail_ids)`` after each token pair.
            return_schedule: also return ``{"class_attention", "semantic_scale", "detail_scale"}``,
                each ``[B, T]`` (NaN for scales when guidance is off).

        Returns:
            ``(semantic_ids, detail_ids)``, each ``[B, block_size]`` int64 (and the schedule dict).
        """
        config = self.config
        settings = self._sampling_settings(
            generation_config, semantic_guidance=semantic_guidance, detail_guidance=detail_guidance,
            attention_guidance_weight=attention_guidance_weight, temperature=temperature, top_k=top_k, top_p=top_p,
        )
        labels = self._check_class_labels(class_labels)
        batch, length, device = labels.shape[0], config.block_size, labels.device
        uniforms = per_image_uniforms(generator, batch, 2 * length, device) if isinstance(generator, (list, tuple)) else None
        shared_generator = None if uniforms is not None else generator
        guidance = {"semantic": settings["semantic_guidance"], "detail": settings["detail_guidance"]}
        guided = guidance["semantic"] != (1.0, 1.0) or guidance["detail"] != (1.0, 1.0)
        rows = torch.cat([labels, labels]) if guided else labels
        drop = torch.arange(rows.shape[0], device=device) >= batch  # the null-class half (none unguided)
        weight = float(settings["attention_guidance_weight"])

        semantic_ids = torch.empty(batch, length, dtype=torch.long, device=device)
        detail_ids = torch.empty_like(semantic_ids)
        schedule = {name: torch.full((batch, length), float("nan"), device=device) for name in ("class_attention", "semantic_scale", "detail_scale")}
        was_training = self.training
        self.eval()
        try:
            dtype, dim = self.dtype, config.hidden_size
            cache = StaticKVCache(config.num_hidden_layers, rows.shape[0], config.num_key_value_heads, length, config.head_dim, dtype, device)
            head_cache = StaticKVCache(config.head_layers, rows.shape[0], config.num_key_value_heads, 3, config.head_dim, dtype, device)
            compressed = torch.zeros(rows.shape[0], length, dim // 12, dtype=dtype, device=device)  # neighbour_mlp(h_t) per position
            head_positions = torch.arange(3, device=device)
            for step in tqdm(range(length), desc="generate", disable=not progress_bar, leave=False):
                if step == 0:
                    feed = self.embed_classes(rows, drop)
                else:
                    pair = (semantic_ids[:, step - 1], detail_ids[:, step - 1])
                    feed = self.embed_tokens(*(torch.cat([ids, ids]) if guided else ids for ids in pair))[:, None]
                position = torch.tensor([step], device=device)
                cache.visible = step + 1  # attend to the written positions only
                # a_n is read only to guide: unguided steps keep SDPA in the last layer too
                hidden = run_layers(self.layers, feed, self.rotary_emb, position, cache, last_layer_first_key_attention=guided)
                if guided:
                    hidden, first_key = hidden
                compressed[:, step] = self.head.context.compress(hidden[:, 0])
                context = self.head.context(compressed[:, : step + 1], position)  # [R, 1, D]

                scales = {}
                if guided:
                    class_attention = first_key[:batch, :, 0].mean(dim=1)  # a_n, conditional rows
                    progress = step / (length - 1) if length > 1 else 0.5
                    w_n = progress + weight * class_attention
                    for part, (start, end) in guidance.items():
                        scales[part] = start * (1 - w_n) + end * w_n
                        schedule[f"{part}_scale"][:, step] = scales[part]
                    schedule["class_attention"][:, step] = class_attention

                head_cache.visible = 2
                slots = run_layers(self.head.layers, torch.cat([context, hidden], dim=1), self.rotary_emb, head_positions[:2], head_cache)
                logits = self._guide(self._head_logits(slots[:, 1], "semantic"), scales.get("semantic"), guidance["semantic"], batch)
                semantic_ids[:, step] = self._sample(logits, settings, 0, shared_generator, uniforms, 2 * step)

                semantic = semantic_ids[:, step]
                feed = self.embed_semantic(torch.cat([semantic, semantic]) if guided else semantic)[:, None]
                head_cache.visible = 3
                slot = run_layers(self.head.layers, feed, self.rotary_emb, head_positions[2:], head_cache)
                logits = self._guide(self._head_logits(slot[:, 0], "detail"), scales.get("detail"), guidance["detail"], batch)
                detail_ids[:, step] = self._sample(logits, settings, 1, shared_generator, uniforms, 2 * step + 1)
                if callback is not None:
                    callback(step, semantic_ids, detail_ids)
        finally:
            self.train(was_training)
        return (semantic_ids, detail_ids, schedule) if return_schedule else (semantic_ids, detail_ids)

    @staticmethod
    def _guide(logits: torch.Tensor, scale: torch.Tensor | None, pair: tuple[float, float], batch: int) -> torch.Tensor:
        """``[R, V]`` -> ``[B, V]``: the guided combination, or the conditional rows exactly for a
        sub-token whose guidance is (1, 1) (or when the batch has no null rows)."""
        if scale is None or logits.shape[0] == batch:
            return logits[:batch]
        cond, uncond = logits[:batch], logits[batch:]
        if pair == (1.0, 1.0):
            return cond
        return uncond + (cond - uncond) * scale[:, None]

    @staticmethod
    def _sample(logits, settings, part: int, generator, uniforms, column: int) -> torch.Tensor:
        return sample_next_token(
            logits, settings["temperature"][part], int(settings["top_k"][part]), settings["top_p"][part], generator,
            None if uniforms is None else uniforms[:, column],
        )


def _guidance_pair(name: str, value) -> tuple[float, float]:
    """``(start, end)`` floats >= 0 from a pair or one number; a clear error otherwise."""
    pair = (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        start, end = (float(v) for v in pair)
        if any(isinstance(v, bool) for v in pair):
            raise TypeError
    except (TypeError, ValueError):
        raise ModelInputError(f"{name}={value!r} must be a (start, end) pair of numbers, e.g. (1.0, 4.0), or one number for constant guidance") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < 0:
        raise ModelInputError(f"{name}={value!r}: scales must be finite and >= 0; use (1, 1) for no guidance")
    return start, end


def _per_subtoken(name: str, value) -> tuple:
    """One value for both sub-tokens, or a ``(semantic, detail)`` pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ModelInputError(f"{name}={value!r} must be one value or a (semantic, detail) pair")
        return tuple(value)
    return (value, value)
