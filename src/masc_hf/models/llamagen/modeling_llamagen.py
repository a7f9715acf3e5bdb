"""LlamaGen's class-conditional transformer as a transformers model, built from the shared AR core.

Numerically faithful to the reference (github.com/FoundationVision/LlamaGen, ``autoregressive/models/gpt.py``
and ``generate.py``): the same sequence layout, 2D RoPE, RMSNorm, SwiGLU, causal SDPA and sampling
rules, so official checkpoints (converted by :mod:`masc_hf.models.llamagen.convert_llamagen`) give the
same logits and the same greedy images.

Sequence layout: position 0 holds the class embedding, positions 1..L-1 the image tokens 0..L-2;
``logits[:, t]`` predicts image token t (t = 0..L-1), so ``logits[:, 0]`` comes from the class position.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
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
    can_pack,
    check_sampling_options,
    classifier_free_guidance,
    guidance_rows,
    packed_linears,
    per_image_uniforms,
    run_layers,
    sample_next_token,
)
from .configuration_llamagen import LlamaGenConfig

try:  # transformers >= 5: init functions that leave already-loaded weights alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init

logger = logging.getLogger(__name__)

# generate()'s sampling options, all defaulting to the model's generation_config
SAMPLING_OPTIONS = ("guidance_scale", "temperature", "top_k", "top_p", "cfg_interval")


@dataclass
class LlamaGenOutput(ModelOutput):
    """Output of :meth:`LlamaGenForImageGeneration.forward`.

    Args:
        loss: mean cross-entropy over the labelled positions (when ``labels`` is given).
        logits: ``[B, S, vocab_size]`` float32; teacher-forced, ``logits[:, t]`` predicts image token t.
        hidden_states: ``[B, S, hidden]``, the final normalised states (the head's input; what a
            MASC refiner reads), with ``return_hidden_states=True``.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None


def default_generation_config(config: LlamaGenConfig) -> GenerationConfig:
    """The sampling defaults of a model without a ``generation_config.json``: the reference sampler's
    (guidance 4.0 with a null class, else 1.0; temperature 1, no top-k/top-p, guidance at every step),
    or the legacy ``config.default_guidance_scale`` of directories saved before generation configs."""
    scale = config.default_guidance_scale
    if scale is None:
        scale = 4.0 if config.has_null_class else 1.0
    return GenerationConfig(do_sample=True, guidance_scale=float(scale), temperature=1.0, top_k=0, top_p=1.0, cfg_interval=-1)


class LlamaGenDecoderLayer(DecoderLayer):
    """The AR core's decoder layer sized from a :class:`LlamaGenConfig` (the unit FSDP wraps)."""

    def __init__(self, config: LlamaGenConfig, layer_idx: int, drop_path: float) -> None:
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


class LlamaGenPreTrainedModel(PreTrainedModel):
    config_class = LlamaGenConfig
    base_model_prefix = "llamagen"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaGenDecoderLayer"]
    _supports_sdpa = True

    @classmethod
    def can_generate(cls) -> bool:
        """True: the model has its own ``generate`` and a ``generation_config`` saved beside it."""
        return True

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path, *args, **kwargs):
        """Called by ``from_pretrained``: load ``generation_config.json`` when the directory has one (older
        directories do not; their defaults come from the config, see :func:`default_generation_config`)."""
        if generation_config is not None:
            self.generation_config = generation_config
            return
        if pretrained_model_name_or_path is None:
            return
        names = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
        loading = {name: value for name, value in zip(names, args) if value is not None}
        loading.update({k: v for k, v in kwargs.items() if k in names and v is not None})
        try:
            self.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **loading)
        except OSError:
            logger.info("%s has no generation_config.json: sampling defaults come from its config", pretrained_model_name_or_path)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference init: N(0, initializer_range) for linear and embedding weights, RMSNorm gains 1,
        and the output head zero (so a fresh model starts from uniform predictions)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if module is getattr(self, "lm_head", None):
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
            # non-persistent buffers are not in checkpoints: rebuild them (also after meta-device loading)
            module.reset_table()


COMPILED_GRAPHS_LIMIT = 64  # graphs of the compiled decode step one process may hold (dynamo's default is 8)


class LlamaGenForImageGeneration(ClassConditioning, LlamaGenPreTrainedModel):
    r"""LlamaGen class-conditional image-token generator (flat codebook ids or MASC cluster ids).

    ``generate`` returns the ids the model predicts: codebook ids for a flat model, cluster ids for a
    MASC model (``MASCPipeline`` turns those into codebook ids with its cluster map).

    Example:
        >>> import torch, masc_hf
        >>> from transformers import AutoModel
        >>> model = AutoModel.from_pretrained("converted/c2i_L_384")  # doctest: +SKIP
        >>> tokens = model.generate(torch.tensor([207, 360]), guidance_scale=4.0, top_k=0)  # doctest: +SKIP
        >>> tokens.shape  # doctest: +SKIP
        torch.Size([2, 576])
    """

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__(config)
        self.class_embedding = nn.Embedding(config.num_classes + int(config.has_null_class), config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_dropout = nn.Dropout(config.token_dropout)
        drop_paths = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            [LlamaGenDecoderLayer(config, i, drop_paths[i]) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary_emb = RotaryEmbedding2D(config.block_size, config.head_dim, config.rope_theta, config.cls_token_num)
        self.gradient_checkpointing = False
        self.generation_config = default_generation_config(config)
        self._compiled_decode_step = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ---- input checks (where ids enter: forward by default, generate; the trainer's data is checked at load)
    def _check_input_ids(self, input_ids: torch.Tensor, batch_size: int, check_values: bool) -> torch.Tensor:
        expected = self.config.block_size - 1
        if input_ids.ndim != 2 or input_ids.shape[1] != expected or input_ids.is_floating_point():
            raise ModelInputError(
                f"input_ids must be integer ids of shape [B, block_size - 1] = [B, {expected}], got "
                f"{input_ids.dtype} {list(input_ids.shape)}; pass every image token but the last (the model "
                "predicts all block_size tokens, the first from the class position)"
            )
        if input_ids.shape[0] != batch_size:
            raise ModelInputError(f"input_ids has {input_ids.shape[0]} rows but class_labels has {batch_size}; pass one label per row")
        if check_values:
            bad = (input_ids < 0) | (input_ids >= self.config.vocab_size)
            if bad.any():
                raise ModelInputError(
                    f"input_ids contain {bad.sum().item()} id(s) outside [0, {self.config.vocab_size}), e.g. "
                    f"{input_ids[bad][:5].tolist()}; a {'MASC' if self.config.is_masc else 'flat'} model takes ids < vocab_size"
                    + (" (encode fine ids with the cluster map first)" if self.config.is_masc else "")
                )
        return input_ids

    # ---- shared pieces -----------------------------------------------------------------------
    def _decoder(self, hidden_states: torch.Tensor, cache_position: torch.Tensor, cache: StaticKVCache | None = None):
        """Run the layers on ``hidden_states`` ``[B, S, hidden]`` at ``cache_position`` ``[S]``; return the
        logits (float32) and the final normalised states (the head's input)."""
        hidden_states = self.norm(run_layers(self.layers, hidden_states, self.rotary_emb, cache_position, cache))
        return self.lm_head(hidden_states).float(), hidden_states

    # ---- training / scoring / one generation step ----------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        past_key_values: StaticKVCache | None = None,
        cache_position: torch.LongTensor | None = None,
        check_inputs: bool = True,
        return_hidden_states: bool = False,
    ) -> LlamaGenOutput | tuple:
        r"""Teacher-forced logits for every image token, or one step of generation over a cache.

        Args:
            input_ids: ``[B, L-1]`` image token ids (L = ``block_size``), all but the last token. With a
                cache: ``[R, S]`` ids at ``cache_position`` (``None`` for the class positions).
            class_labels: ``[B]`` class ids in ``[0, num_classes)``. With a cache: the labels whose
                class positions fill the cache (``input_ids`` then ``None``).
            labels: ``[B, L]`` target ids (the full token sequence; -100 is ignored) for the loss.
            force_drop_ids: ``[B]`` bool, rows that use the null class (for unconditional logits).
            past_key_values: a :class:`~masc_hf.models.ar.StaticKVCache` to write and attend to
                (``generate`` passes it; this is also the call accelerate's offload hooks see).
            cache_position: ``[S]`` positions written in the cache.
            check_inputs: check that ids lie in range (a host sync); the trainer turns it off for
                data checked when it was loaded. Shapes are always checked.
            return_hidden_states: also return the final normalised states (``hidden_states``).

        Returns:
            :class:`LlamaGenOutput` with ``logits`` ``[B, S, vocab_size]`` (float32) and ``loss``.
        """
        if past_key_values is not None:
            if input_ids is None:
                hidden_states = self.embed_classes(class_labels, force_drop_ids)
            else:
                hidden_states = self.embed_tokens(input_ids)
            logits, hidden_states = self._decoder(hidden_states, cache_position, past_key_values)
            hidden_states = hidden_states if return_hidden_states else None
            if return_dict or return_dict is None and self.config.return_dict:
                return LlamaGenOutput(logits=logits, hidden_states=hidden_states)
            return (logits, hidden_states) if return_hidden_states else (logits,)

        if check_inputs:
            class_labels = self._check_class_labels(class_labels)
        input_ids = self._check_input_ids(input_ids, class_labels.shape[0], check_inputs)
        hidden_states = torch.cat([self.embed_classes(class_labels, force_drop_ids), self.embed_tokens(input_ids)], dim=1)
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
        logits, hidden_states = self._decoder(self.token_dropout(hidden_states), positions)
        hidden_states = hidden_states if return_hidden_states else None

        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ModelInputError(
                    f"labels must have shape [B, block_size] = {list(logits.shape[:2])}, got {list(labels.shape)}; "
                    "pass the full token sequence (input_ids is labels[:, :-1])"
                )
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), ignore_index=-100)

        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return tuple(x for x in (loss, logits, hidden_states) if x is not None)
        return LlamaGenOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    # ---- generation (gpt-fast style) -------------------------------------------------------------
    def _decode_step(
        self,
        token_ids: torch.Tensor,
        cache_position: torch.Tensor,
        cache: StaticKVCache,
        guidance_scale: torch.Tensor,
        guide: torch.Tensor,
        uniforms: torch.Tensor | None,
        generator: torch.Generator | None,
        temperature: float,
        top_k: int,
        top_p: float,
        refiner=None,
        refiner_cache: StaticKVCache | None = None,
        previous_fine: torch.Tensor | None = None,
        fine_uniforms: torch.Tensor | None = None,
    ):
        """Feed one token per image ``[B]`` at ``cache_position`` ``[1]``; return the next ids ``[B]``
        (with a ``refiner``: the next cluster ids and the fine ids the refiner picks inside them).

        The same shapes at every step, no host sync: compiled with ``fullgraph=True`` by ``generate(compile=True)``.
        """
        batch_size = token_ids.shape[0]
        guided = cache.shape[1] != batch_size  # the null-class rows run in the same batch
        feed = torch.cat([token_ids, token_ids]) if guided else token_ids
        outputs = self(
            input_ids=feed[:, None], past_key_values=cache, cache_position=cache_position, return_dict=False,
            return_hidden_states=refiner is not None,
        )
        logits = outputs[0][:, -1]
        if guided:
            logits = classifier_free_guidance(logits, guidance_scale, guide)
        coarse = sample_next_token(logits, temperature, top_k, top_p, generator, uniforms)
        if refiner is None:
            return coarse
        position = cache_position + 1 - self.config.cls_token_num  # the image token this step predicts
        fine = self._refine(refiner, outputs[1][:batch_size, -1], coarse, previous_fine, refiner_cache, position, temperature, generator, fine_uniforms)
        return coarse, fine

    @staticmethod
    def _refine(refiner, hidden, coarse, previous_fine, cache, position, temperature, generator, uniforms) -> torch.Tensor:
        """Hierarchical decoding: the refiner's pick inside each predicted cluster ``[B]``, from the
        conditional rows' final states (the refiner is not guided). Without ``uniforms`` the draw is the
        inverse CDF at one uniform per image from ``generator``: ``torch.multinomial`` would draw an
        exponential for each of the N codebook ids, serially on CPU, for the few members that count."""
        logits = refiner.refine_step(hidden, coarse, previous_fine, cache, position)
        if uniforms is None and temperature != 0:  # eager steps with one generator (a compiled step gets its uniforms)
            source = generator.device if generator is not None else logits.device
            uniforms = torch.rand(coarse.shape[0], generator=generator, device=source, dtype=torch.float64).to(logits.device)
        return sample_next_token(logits, temperature, 0, 1.0, None, uniforms)

    def compiled_decode_step(self) -> Callable:
        """``_decode_step`` under ``torch.compile(fullgraph=True)`` (mode ``reduce-overhead`` on CUDA:
        CUDA graphs over the static cache), compiled once per model and reused."""
        if self._compiled_decode_step is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._compiled_decode_step = torch.compile(self._decode_step, fullgraph=True, dynamic=False, mode=mode)
        return self._compiled_decode_step

    def _generation_cache(self, rows: int, device: torch.device, keep: bool) -> StaticKVCache:
        """A cache for ``rows`` sequences. With ``keep`` (the compiled path) the same buffers serve every
        call of that shape, as gpt-fast's ``setup_caches``: a compiled step (and its CUDA graphs) sees the
        same static addresses each time; stale entries are never read (the mask stops at the position)."""
        config = self.config
        # a compiled CPU step attends to the written positions only, a length that grows with the step; one spare position
        # keeps it below the buffer's length, where the slice would be the whole buffer and the graph would specialise on it
        spare = 1 if keep and torch.device(device).type == "cpu" else 0
        length = config.cls_token_num + config.block_size - 1 + spare
        shape = (config.num_hidden_layers, rows, config.num_key_value_heads, length, config.head_dim)
        cached = self.__dict__.get("_kept_cache")
        if keep and cached is not None and cached.shape == shape and cached.keys[0].dtype == self.dtype and cached.keys[0].device == torch.device(device):
            return cached
        cache = StaticKVCache(*shape[:3], shape[3], shape[4], self.dtype, device)
        if keep:
            self.__dict__["_kept_cache"] = cache  # a plain attribute: not a buffer, never saved or moved with the model
        return cache

    def _sampling_settings(self, generation_config: GenerationConfig | None, **given) -> dict:
        defaults = generation_config or self.generation_config
        settings = {name: given[name] if given[name] is not None else getattr(defaults, name, None) for name in SAMPLING_OPTIONS}
        fallback = default_generation_config(self.config)
        settings = {name: value if value is not None else getattr(fallback, name) for name, value in settings.items()}
        settings["guidance_scale"] = float(settings["guidance_scale"])
        check_sampling_options(**settings, has_null_class=self.config.has_null_class)
        return settings

    @torch.no_grad()  # not inference_mode: the ids may feed a later autograd pass
    def generate(
        self,
        class_labels: torch.Tensor | list[int] | int,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        *,
        cfg_interval: int | None = None,
        generation_config: GenerationConfig | None = None,
        compile: bool = False,
        cache_windows: int = 1,
        progress_bar: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        refiner=None,
        **unsupported,
    ) -> torch.LongTensor:
        r"""Sample ``block_size`` image tokens per class label with a static KV cache.

        Every sampling option left ``None`` comes from ``generation_config`` (default: the model's
        ``self.generation_config``, saved as ``generation_config.json``).

        On CPU with float32 weights the linear layers run on oneDNN's packed copies of the weights
        (:func:`~masc_hf.models.ar.packed_linears`; the same products up to float rounding, 1.5-2x
        faster where torch's default GEMM is not vectorised for the CPU). That is one more copy of
        the weights in memory: during the call, or kept for the next call with ``compile`` (and made
        again when the weights change).

        Args:
            class_labels: ``[B]`` class ids in ``[0, num_classes)``. A tensor keeps its device (the
                cache and the ids are made there); a list goes to the model's device.
            guidance_scale: classifier-free guidance s; the sampled logits are
                ``uncond + s * (cond - uncond)`` with the conditional and null-class rows in one batch.
                1.0 runs the conditional rows only; 0 samples unconditionally (null class only).
            temperature: logits are divided by it; 0 means greedy (argmax).
            top_k: keep the k most likely ids (0 = all). ``top_k=1`` is greedy.
            top_p: nucleus sampling threshold in (0, 1] (1 = off).
            generator: ``torch.Generator`` on the ids' device for reproducible draws. Or a list of B
                generators (any device), one per image: image b then draws only from ``generator[b]``
                (``block_size`` uniforms for its tokens, sampled by inverse CDF), so it depends on its
                seed, label and the settings, not on the rest of the batch.
            cfg_interval: guide only decode steps 0..cfg_interval (prefill counted apart, as in the
                reference); -1 guides every step.
            generation_config: defaults to use instead of ``self.generation_config``.
            compile: run the decode step through :meth:`compiled_decode_step` (``torch.compile``,
                ``fullgraph=True``). Greedy and per-image-generator results equal the eager ones; with
                one generator the compiled step draws by inverse CDF at uniforms from that generator
                (reproducible, but not the eager multinomial draws).
            cache_windows: with ``compile``, the number of static attention lengths (1 to 8): each
                step attends over the shortest one that covers the positions written so far instead
                of the whole cache. Each length compiles its own graph (and CUDA graph), so n costs n
                compilations once, and saves reading up to about half the KV cache, the bulk of a
                decode step's memory traffic at large batches. The tokens are the same as with 1.
                Meant for CUDA, whose graphs need static shapes. On CPU a compiled step with 1
                already reads the written positions only (one graph, its attention length marked
                dynamic); n > 1 compiles the n static lengths there too, as on a GPU.
            progress_bar: show a tqdm bar over the decode steps.
            callback: ``callback(step, tokens)`` after each token (``tokens`` ``[B, block_size]``, filled
                up to column ``step``).
            refiner: a :class:`~masc_hf.models.refiner.MASCRefiner` of this MASC model: hierarchical
                decoding. After each cluster id the refiner picks the codebook token inside it (from
                the conditional rows' final states, at the same temperature, unguided), and
                ``generate`` returns those codebook ids. Per-image generators then give each image
                ``2 * block_size`` uniforms: the first ``block_size`` for the cluster ids (so the
                cluster ids are those of random-member decoding with the same seeds), the rest for
                the tokens. With one generator, eager steps draw the cluster id with
                ``torch.multinomial`` and the token by inverse CDF at one uniform per image from that
                generator (``torch.multinomial`` would draw an exponential per codebook id).

        Returns:
            ``[B, block_size]`` LongTensor of the model's own ids (cluster ids for a MASC model; the
            refiner's codebook ids with ``refiner``).

        Example:
            >>> tokens = model.generate([207, 360], guidance_scale=4.0, top_k=1)  # doctest: +SKIP
        """
        if unsupported:
            if {"cluster_map", "return_coarse_ids"} & set(unsupported):
                raise ModelInputError(
                    "generate returns the model's own ids and no longer takes cluster_map: decode cluster ids with "
                    "cluster_map.decode(ids, generator=generator), or sample images with MASCPipeline"
                )
            raise TypeError(f"generate() got unexpected keyword argument(s) {sorted(unsupported)}")
        config = self.config
        settings = self._sampling_settings(
            generation_config, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p, cfg_interval=cfg_interval
        )
        scale, sampling = settings["guidance_scale"], (settings["temperature"], int(settings["top_k"]), settings["top_p"])
        labels = self._check_class_labels(class_labels)
        if refiner is not None:
            self._check_refiner(refiner)
        if isinstance(cache_windows, bool) or not isinstance(cache_windows, int) or not 1 <= cache_windows <= 8:
            raise ModelInputError(f"cache_windows={cache_windows!r} must be an integer from 1 to 8 (1: attend over the whole cache)")
        if cache_windows != 1 and not compile:
            raise ModelInputError(
                f"cache_windows={cache_windows} applies to the compiled decode step; pass compile=True, or drop cache_windows "
                "(eager steps already read only the written positions)"
            )
        batch_size, length, device = labels.shape[0], config.block_size, labels.device
        draws = length * (2 if refiner is not None else 1)
        # per-image generators: one uniform per image and step, drawn up front; else draws from `generator`
        uniforms = per_image_uniforms(generator, batch_size, draws, device) if isinstance(generator, (list, tuple)) else None
        shared_generator = None if uniforms is not None else generator
        if compile and uniforms is None and sampling[0] != 0:  # a compiled step takes its randomness as a tensor
            source = generator.device if generator is not None else device
            uniforms = torch.rand(batch_size, draws, generator=generator, device=source, dtype=torch.float64).to(device)
            shared_generator = None
        fine_uniforms = uniforms[:, length:] if uniforms is not None and refiner is not None else None

        # guidance_scale 1: conditional rows only; 0: null rows only; otherwise both halves in one batch
        guided = scale not in (0.0, 1.0)
        if guided:
            rows, drop = guidance_rows(labels)
        else:
            rows, drop = labels, torch.full_like(labels, scale == 0.0, dtype=torch.bool)
        cfg = settings["cfg_interval"]
        guide = torch.tensor([cfg < 0 or step <= cfg for step in range(length)], device=device)  # per decode step
        scale_t = torch.tensor(scale, dtype=torch.float32, device=device)

        was_training = self.training
        self.eval()
        cache = None
        limits = contextlib.ExitStack()
        if compile:  # dynamo's recompile limit (8) counts every graph of _decode_step in the process: each model,
            # batch shape, sampling setting and cache window is one, so a session that samples a few ways would hit it
            name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
            limits.enter_context(torch._dynamo.config.patch(**{name: max(getattr(torch._dynamo.config, name), COMPILED_GRAPHS_LIMIT)}))
        for module in (self, refiner):  # oneDNN's packed weights: CPU decode matmuls 1.5-2x faster
            if module is not None and device.type == "cpu" and can_pack(module):
                unused = refiner.unused_decode_linears(batch_size) if module is refiner else ()  # packing reads every weight
                limits.enter_context(packed_linears(module, keep=compile, exclude=unused))  # kept for a compiled step: no recompiling
        try:
            cache = self._generation_cache(rows.shape[0], device, keep=compile)
            tokens = torch.empty(batch_size, length, dtype=torch.long, device=device)
            fine = torch.empty_like(tokens) if refiner is not None else None
            refiner_cache = refiner.new_cache(batch_size, device=device) if refiner is not None else None
            eager = not compile  # eager steps attend to the written positions only (StaticKVCache.visible)
            if eager:
                cache.visible = config.cls_token_num
                if refiner_cache is not None:
                    refiner_cache.visible = 1
            prefill_positions = torch.arange(config.cls_token_num, device=device)
            outputs = self(
                class_labels=rows, force_drop_ids=drop, past_key_values=cache, cache_position=prefill_positions, return_dict=False,
                return_hidden_states=refiner is not None,
            )
            logits = outputs[0][:, -1]
            if guided:
                logits = classifier_free_guidance(logits, scale_t)
            tokens[:, 0] = sample_next_token(logits, *sampling, shared_generator, None if uniforms is None else uniforms[:, 0])
            if refiner is not None:
                start = torch.full_like(tokens[:, 0], refiner.config.start_token_id)
                fine[:, 0] = self._refine(
                    refiner, outputs[1][:batch_size, -1], tokens[:, 0], start, refiner_cache, torch.zeros(1, dtype=torch.long, device=device),
                    sampling[0], shared_generator, None if fine_uniforms is None else fine_uniforms[:, 0],
                )
            returned = tokens if refiner is None else fine
            if callback is not None:
                callback(0, returned)
            step_fn = self.compiled_decode_step() if compile else self._decode_step
            positions = torch.arange(config.cls_token_num, config.cls_token_num + length - 1, device=device)
            max_len = cache.shape[3]
            windows = [-(-max_len * i // cache_windows) for i in range(1, cache_windows + 1)] if cache_windows > 1 else []
            dynamic_length = compile and device.type == "cpu" and not windows
            for step in tqdm(range(length - 1), desc="generate", disable=not progress_bar, leave=False):
                step_uniforms = None if uniforms is None else uniforms[:, step + 1]
                args = (tokens[:, step], positions[step : step + 1], cache, scale_t, guide[step], step_uniforms, shared_generator, *sampling)
                if eager or dynamic_length:  # the written positions only
                    cache.visible = config.cls_token_num + step + 1
                    if dynamic_length:  # a compiled CPU step: one graph for every length
                        torch._dynamo.mark_dynamic(cache.visible_positions, 0, min=2, max=max_len - 1)
                    elif refiner_cache is not None:
                        refiner_cache.visible = step + 2
                elif windows:  # the shortest static length covering the written positions and this one
                    cache.window = next(w for w in windows if w >= config.cls_token_num + step + 1)
                if refiner is None:
                    tokens[:, step + 1] = step_fn(*args)
                else:
                    tokens[:, step + 1], fine[:, step + 1] = step_fn(
                        *args, refiner, refiner_cache, fine[:, step], None if fine_uniforms is None else fine_uniforms[:, step + 1]
                    )
                if callback is not None:
                    callback(step + 1, returned)
        finally:
            self.train(was_training)
            limits.close()
            if cache is not None:
                cache.window = cache.visible = None  # the kept cache serves the next call, perhaps with other windows
        return returned

    def _check_refiner(self, refiner) -> None:
        from ..refiner import check_refiner_fits

        check_refiner_fits(refiner, self, what=f"the model {self.config.name_or_path or type(self).__name__}")
