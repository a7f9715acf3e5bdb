"""Train IAR2's dual-codebook tokenizer (:class:`~masc_hf.vq.dual_codebook.DualCodebookVQModel`) on
small images, in IAR2's two stages:

* ``"semantic"`` (stage 1): the semantic codebook alone (``use_detail=False``), from scratch, with a
  perceptual and the codebook/commitment losses and no pixel loss, which is what makes its codes
  semantic;
* ``"detail"`` (stage 2): from a stage-1 tokenizer, a new detail codebook; a fixed cycle of two
  full-reconstruction iterations (pixel + perceptual) and one that also updates the semantic
  codebook with the semantic-only loss, three optimisers (semantic codebook, detail codebook, rest).

A run writes ``output_dir/checkpoint`` every ``checkpoint_every`` steps (atomically) and the model to
``output_dir/model`` at the end; calling again with the same arguments resumes and gives the same
weights as an uninterrupted run. The choices and where they differ from IAR2's scripts:
docs/iar2-vq-trainer.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._io import check_writable, foreign_entries, staged_dir, write_text_atomic
from ..data.pixels import psnr
from .schedules import warmup_cosine_schedule
from .vq_losses import PatchDiscriminator, PerceptualLoss, build_perceptual_loss, hinge_discriminator_loss, hinge_generator_loss
from .vq_trainer import (
    VQTrainingError,
    _codebook_use,
    _DeadCodes,
    _EpochSampler,
    _flat,
    _ImageSource,
    _score_reconstructions,
    _seed_codes,
    _TokenizerSettings,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..vq.dual_codebook import DualCodebookVQModel

logger = logging.getLogger(__name__)

__all__ = [
    "DUAL_VQ_TRAINING_PRESETS",
    "DualVQTrainingConfig",
    "DualVQTrainingError",
    "STAGES",
    "build_dual_vqmodel",
    "evaluate_dual_vq_tokenizer",
    "load_stage1_tokenizer",
    "train_dual_vq_tokenizer",
]

STAGES = ("semantic", "detail")
CHECKPOINT_NAME = "checkpoint"  # the latest resumable state, replaced whole at each save
MODEL_NAME = "model"  # the trained tokenizer (save_pretrained), written at the end
DISCRIMINATOR_NAME = "discriminator.safetensors"  # with the GAN term: what the detail stage continues
STATS_NAME = "training_stats.json"
_OWN_NAMES = frozenset({CHECKPOINT_NAME, MODEL_NAME, DISCRIMINATOR_NAME, STATS_NAME})
# settings a resume may change: they alter what is written, not what is computed
_RESUME_FREE = ("checkpoint_every",)


class DualVQTrainingError(VQTrainingError):
    """Dual-codebook training settings or inputs that cannot work, or a run that cannot be resumed."""


@dataclass(frozen=True)
class DualVQTrainingConfig(_TokenizerSettings):
    """Every hyper-parameter of a small dual-codebook tokenizer and of one of its training stages.

    ``stage``: ``"semantic"`` or ``"detail"``.
    Architecture (the semantic stage builds it; the detail stage takes its init's, and these fields
    are set from it): ``image_size``, ``channels``, ``block_out_channels``, ``layers_per_block``,
    ``latent_channels``, ``norm_num_groups`` as in :class:`~masc_hf.training.vq_trainer.VQTrainingConfig`;
    ``num_semantic_embeddings`` and ``num_detail_embeddings`` rows of ``embed_dim``;
    ``commitment_beta`` (IAR2: 0.25).
    Losses: ``perceptual_weight`` (IAR2: 1); ``pixel_weight``: MSE weight of the full (semantic +
    detail) reconstruction in the detail stage (IAR2: 1); ``semantic_pixel_weight``: MSE weight of the
    semantic-only reconstruction in the semantic stage (IAR2: 0, no pixel loss); ``gan_weight``:
    hinge generator loss of a :class:`~masc_hf.training.vq_losses.PatchDiscriminator` of
    ``discriminator_channels`` from step ``gan_start`` (0 = no GAN, the default; IAR2: 0.5 from step
    20000); codebook and commitment terms weight 1 (the quantizer's ``beta`` inside).
    Detail stage: every ``semantic_every``-th iteration also updates the semantic codebook (IAR2: 3).
    Optimisation: ``steps`` of ``batch_size`` images; Adam(``beta1``, ``beta2``) per parameter group
    at peak ``lr``, linear warm-up over ``warmup_steps`` then cosine to ``lr * min_lr_ratio``;
    gradient norm clipped to ``max_grad_norm`` per optimiser (0 = off; IAR2: 1); dead codes of the
    codebook being learnt (semantic, then detail) re-seeded every ``reseed_every`` steps during the
    first ``reseed_until`` of the run; a checkpoint every ``checkpoint_every`` steps; ``seed``.
    """

    _error = DualVQTrainingError
    _what = "dual VQ training"

    stage: str = "semantic"
    image_size: int = 32
    channels: int = 3
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 32
    norm_num_groups: int = 8
    num_semantic_embeddings: int = 16
    num_detail_embeddings: int = 64
    embed_dim: int = 8
    commitment_beta: float = 0.25
    perceptual_weight: float = 1.0
    pixel_weight: float = 1.0
    semantic_pixel_weight: float = 0.0
    gan_weight: float = 0.0
    gan_start: int = 0
    discriminator_channels: int = 32
    semantic_every: int = 3
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    reseed_every: int = 20
    reseed_until: float = 0.8
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise DualVQTrainingError(f"dual VQ training: stage must be one of {list(STAGES)}, got {self.stage!r}")
        self._check_settings((
            "image_size", "channels", "layers_per_block", "latent_channels", "norm_num_groups", "num_semantic_embeddings",
            "num_detail_embeddings", "embed_dim", "steps", "batch_size", "reseed_every", "semantic_every",
            "discriminator_channels", "checkpoint_every",
        ))
        for name in ("commitment_beta", "perceptual_weight", "pixel_weight", "semantic_pixel_weight", "gan_weight", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise DualVQTrainingError(f"dual VQ training: {name} must be a number >= 0, got {value!r}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise DualVQTrainingError(f"dual VQ training: beta1 and beta2 must lie in [0, 1), got {self.beta1!r}, {self.beta2!r}")
        if isinstance(self.gan_start, bool) or not isinstance(self.gan_start, int) or self.gan_start < 0:
            raise DualVQTrainingError(f"dual VQ training: gan_start must be an integer >= 0, got {self.gan_start!r}")

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``DualCodebookVQModel`` this config describes."""
        return {
            **self._architecture_kwargs(),
            "num_semantic_embeddings": self.num_semantic_embeddings,
            "num_detail_embeddings": self.num_detail_embeddings,
            "vq_embed_dim": self.embed_dim,
            "codebook_l2_norm": True,
            "commitment_beta": self.commitment_beta,
        }


# Fashion-MNIST at 32 px (an 8x8 grid, 16 semantic x 64 detail codes) on 2 CPU cores: about 0.2 s per
# step of stage 1 and 0.27 s of stage 2 (a semantic pass every third step), so 2 + 2 minutes, or up
# to twice that on a shared machine.
DUAL_VQ_TRAINING_PRESETS: dict[str, DualVQTrainingConfig] = {
    "semantic": DualVQTrainingConfig(stage="semantic", steps=500, checkpoint_every=100),
    "detail": DualVQTrainingConfig(stage="detail", steps=500, checkpoint_every=100),
}


def build_dual_vqmodel(config: DualVQTrainingConfig, seed: int | None = None) -> DualCodebookVQModel:
    """A freshly initialised ``DualCodebookVQModel`` for ``config`` (weights from ``seed``, default
    ``config.seed``; the global RNG state is restored afterwards). Both codebooks start as IAR2's do:
    rows uniform in ``(-1/N, 1/N)``, l2-normalised (random directions)."""
    from ..vq.dual_codebook import DualCodebookVQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        model = DualCodebookVQModel(**config.model_kwargs())
        _init_codebook(model.quantize.semantic_embedding.weight)
        _init_codebook(model.quantize.detail_embedding.weight)
    return model


def load_stage1_tokenizer(source: str | os.PathLike) -> DualCodebookVQModel:
    """The dual-codebook tokenizer in ``source``: a semantic-stage ``output_dir`` (its ``model/``) or a
    ``save_pretrained`` directory. A plain ``VQModel`` or anything else is refused with the fix."""
    from ..vq.dual_codebook import DualCodebookVQModel

    path = Path(source)
    if (path / MODEL_NAME / "config.json").is_file():
        path = path / MODEL_NAME
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DualVQTrainingError(
            f"init {str(source)!r} holds no tokenizer (no config.json{' there or in its model/' if path == Path(source) else ''}); "
            "pass the output directory of the semantic stage (train_vq.py --stage semantic --out DIR)"
        )
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as err:
        raise DualVQTrainingError(f"init {str(config_file)!r} is not a readable config ({err}); pass a semantic-stage output directory") from None
    if class_name != "DualCodebookVQModel":
        kind = "a plain diffusers VQModel (one codebook)" if class_name == "VQModel" else f"a {class_name!r}"
        raise DualVQTrainingError(
            f"init {str(source)!r} is {kind}, not a dual-codebook tokenizer; the detail stage continues a "
            "DualCodebookVQModel: pass the output of the semantic stage (train_vq.py --stage semantic)"
        )
    return DualCodebookVQModel.from_pretrained(path)


@torch.no_grad()
def evaluate_dual_vq_tokenizer(model: DualCodebookVQModel, images: Any, *, batch_size: int = 500) -> dict[str, float]:
    """Reconstruction quality and codebook use of a dual-codebook tokenizer on ``images`` (read as
    :func:`~masc_hf.training.vq_trainer.evaluate_vq_tokenizer` reads them).

    Returns ``psnr``/``mse`` of semantic + detail decoding (``decode_ids(s, d)``), ``semantic_psnr``/
    ``semantic_mse`` of semantic-only decoding (``decode_ids(s, None)``), and for each codebook
    ``{semantic,detail}_codebook_usage``, ``_used_codes`` and ``_perplexity``.
    """

    def reconstruct(batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        semantic_ids, detail_ids = model.encode_ids(batch)
        both, semantic = model.decode_ids(semantic_ids, detail_ids), model.decode_ids(semantic_ids, None)
        return {"both": both, "semantic": semantic}, [semantic_ids, detail_ids]

    scores, (semantic_counts, detail_counts) = _score_reconstructions(
        model, images, reconstruct, model.codebook_sizes, image_size=model.config.sample_size, channels=model.config.in_channels,
        batch_size=batch_size,
    )
    return {
        "psnr": scores["both"]["psnr"], "mse": scores["both"]["mse"],
        "semantic_psnr": scores["semantic"]["psnr"], "semantic_mse": scores["semantic"]["mse"],
        **{f"semantic_{key}": value for key, value in _codebook_use(semantic_counts).items()},
        **{f"detail_{key}": value for key, value in _codebook_use(detail_counts).items()},
    }


def train_dual_vq_tokenizer(
    images: Any,
    config: DualVQTrainingConfig | str | None = None,
    *,
    output_dir: str | os.PathLike | None,
    init: DualCodebookVQModel | str | os.PathLike | None = None,
    perceptual_loss: PerceptualLoss | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[DualCodebookVQModel, dict[str, Any]]:
    """Train one stage of a dual-codebook tokenizer on ``images``; resume it if ``output_dir`` holds its checkpoint.

    Args:
        images: as :func:`~masc_hf.training.vq_trainer.train_vq_tokenizer` takes them (uint8
            ``[n, H, W]`` / ``[n, H, W, C]``, padded to ``image_size``; or a Dataset of ``[C, S, S]``
            floats in ``[-1, 1]``).
        config: a :class:`DualVQTrainingConfig` or a preset name of :data:`DUAL_VQ_TRAINING_PRESETS`
            (``"semantic"``, ``"detail"``); default: the preset of ``overrides["stage"]`` (else ``"semantic"``).
        output_dir: where the checkpoint, ``model/`` and ``training_stats.json`` go (``None``: nothing
            is written and nothing resumed). A rerun with the same arguments resumes from the
            checkpoint; other settings (except ``checkpoint_every``), data, init or perceptual loss
            are refused.
        init: the detail stage's start: a semantic-stage ``output_dir``, a model directory, or a
            ``DualCodebookVQModel``. Its weights are kept but for the detail codebook, which starts
            anew (``num_detail_embeddings`` rows); its discriminator is continued when both stages
            use the GAN term.
        perceptual_loss: a :class:`~masc_hf.training.vq_losses.PerceptualLoss`, e.g.
            ``vgg16_perceptual_loss("vgg16.pth")``; default: the random-weight substitute.
        progress: show a tqdm bar.
        **overrides: config fields to change, e.g. ``steps=100, stage="detail"``.

    Returns:
        ``(model, stats)``: the trained tokenizer in eval mode (float32, CPU) and a dict: ``stage``,
        ``steps``, ``seconds``, per-step lists ``loss``, ``pixel_loss`` (MSE of the reconstruction
        trained: semantic-only in stage 1, semantic + detail in stage 2, on ``[-1, 1]``),
        ``perceptual_loss``, ``quantizer_loss`` (codebook + commitment), with the GAN term
        ``generator_loss`` and ``discriminator_loss``; in the detail stage ``semantic_pixel_loss``
        (``[step, MSE of the semantic-only reconstruction]`` at each semantic-codebook update);
        ``reseeded_codes``; codebook use on up to 4096 training images (``semantic_*``, and
        ``detail_*`` in stage 2); ``perceptual`` (the loss's description) and ``config``.

    Example::

        from masc_hf.data.fashion_mnist import load_fashion_mnist
        from masc_hf.training.dual_vq_trainer import evaluate_dual_vq_tokenizer, train_dual_vq_tokenizer

        images = load_fashion_mnist("train").images
        train_dual_vq_tokenizer(images, "semantic", output_dir="runs/iar2-vq-1")
        model, stats = train_dual_vq_tokenizer(images, "detail", output_dir="runs/iar2-vq-2", init="runs/iar2-vq-1")
        print(evaluate_dual_vq_tokenizer(model, load_fashion_mnist("test").images[:1000]))
    """
    config = _resolve_config(config, overrides)
    output_dir = Path(output_dir) if output_dir is not None else None
    if output_dir is not None:
        _check_output_dir(output_dir)
    init_model, discriminator_state = _resolve_init(config, init)
    if init_model is not None:
        config = _config_from_init(config, init_model)
    source = _ImageSource(images, config.image_size, config.channels)
    perceptual = perceptual_loss if perceptual_loss is not None else build_perceptual_loss()
    if not isinstance(perceptual, PerceptualLoss):
        raise DualVQTrainingError(f"perceptual_loss must be a PerceptualLoss (see masc_hf.training.vq_losses), got {type(perceptual).__name__}")
    record = {
        "config": {k: v for k, v in _jsonable(dataclasses.asdict(config)).items() if k not in _RESUME_FREE},
        "data": source.fingerprint(),
        "init": _weights_fingerprint(init_model) if init_model is not None else None,
        "perceptual": perceptual.description,
    }
    run = _Run(config, source, perceptual, init_model, discriminator_state, output_dir)
    saved = run.load_checkpoint(record) if output_dir is not None else None
    if saved is None:
        logger.info("dual VQ tokenizer, %s stage: starting %d steps%s", config.stage, config.steps, f" in {output_dir}" if output_dir else "")
    run.train(record, progress=progress)
    return run.finish()


# --------------------------------------------------------------------------------------------
# The run


class _Run:
    """One stage's objects (model, optimisers, schedulers, data order, discriminator) and its loop."""

    def __init__(
        self, config: DualVQTrainingConfig, source: _ImageSource, perceptual: PerceptualLoss, init_model, discriminator_state, output_dir: Path | None
    ):
        self.config, self.source, self.perceptual, self.output_dir = config, source, perceptual, output_dir
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model = _stage_model(config, init_model)
        self.model.train()
        quantizer = self.model.quantize
        self.semantic_weight = quantizer.semantic_embedding.weight
        self.detail_weight = quantizer.detail_embedding.weight
        codebooks = {id(self.semantic_weight), id(self.detail_weight)}
        rest = [p for p in self.model.parameters() if id(p) not in codebooks]
        if config.stage == "semantic":  # one optimiser, as IAR2's stage 1 (the detail codebook is unused)
            groups = {"model": [self.semantic_weight, *rest]}
        else:  # IAR2's stage 2: semantic codebook, detail codebook, the rest
            groups = {"semantic": [self.semantic_weight], "detail": [self.detail_weight], "model": rest}
        self.discriminator = None
        if config.gan_weight > 0:
            self.discriminator = PatchDiscriminator(config.channels, config.discriminator_channels, seed=config.seed)
            if discriminator_state is not None:  # IAR2's stage 2 continues stage 1's discriminator
                self.discriminator.load_state_dict(discriminator_state)
            groups["discriminator"] = list(self.discriminator.parameters())
        self.groups = groups
        self.optimizers = {name: torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2)) for name, params in groups.items()}
        self.schedulers = {
            name: warmup_cosine_schedule(optimizer, warmup_steps=config.warmup_steps, total_steps=config.steps, min_lr_ratio=config.min_lr_ratio)
            for name, optimizer in self.optimizers.items()
        }
        self.sampler = _EpochSampler(len(source), config.batch_size, self.generator)
        learnt = config.num_semantic_embeddings if config.stage == "semantic" else config.num_detail_embeddings
        self.dead_codes = _DeadCodes(learnt, config.reseed_every, int(config.steps * config.reseed_until))
        self.step = 0
        self.seconds = 0.0
        self.history: dict[str, list] = {key: [] for key in ("loss", "pixel_loss", "perceptual_loss", "quantizer_loss")}
        if self.discriminator is not None:
            self.history.update(generator_loss=[], discriminator_loss=[])
        if config.stage == "detail":
            self.history["semantic_pixel_loss"] = []
        self.reseeded_codes = 0

    # ------------------------------------------------------------------ one iteration

    def _image_losses(self, images: torch.Tensor, recon: torch.Tensor, pixel_weight: float, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Pixel (weighted; always measured), perceptual and GAN generator terms of a reconstruction."""
        config = self.config
        pixel = F.mse_loss(recon, images)
        total = pixel_weight * pixel
        parts = {"pixel_loss": float(pixel.detach())}
        perceptual = self.perceptual(images, recon) if config.perceptual_weight > 0 else recon.new_zeros(())
        total = total + config.perceptual_weight * perceptual
        parts["perceptual_loss"] = float(perceptual.detach())
        if self.discriminator is not None:
            generator = hinge_generator_loss(self.discriminator(recon)) if step >= config.gan_start else recon.new_zeros(())
            total = total + config.gan_weight * generator
            parts["generator_loss"] = float(generator.detach())
        return total, parts

    def _discriminator_step(self, images: torch.Tensor, recon: torch.Tensor, step: int) -> float:
        """One hinge step of the discriminator on the iteration's reconstruction (none before ``gan_start``,
        where IAR2's weight is 0 and its update vanishes)."""
        if step < self.config.gan_start:
            return 0.0
        optimizer = self.optimizers["discriminator"]
        optimizer.zero_grad(set_to_none=True)
        loss = self.config.gan_weight * hinge_discriminator_loss(self.discriminator(images), self.discriminator(recon.detach()))
        loss.backward()
        self._clip(self.groups["discriminator"])
        optimizer.step()
        return float(loss.detach())

    def _clip(self, params: list[torch.nn.Parameter]) -> None:
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)

    def _semantic_iteration(self, images: torch.Tensor, step: int) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Stage 1: semantic-only reconstruction, every parameter with one optimiser."""
        out = self.model.quantize(self.model.encode(images).latents, use_detail=False)
        recon = self.model.decode(out.quant).sample
        image_loss, parts = self._image_losses(images, recon, self.config.semantic_pixel_weight, step)
        quantizer_loss = out.codebook_loss + out.commitment_loss
        loss = image_loss + quantizer_loss
        optimizer = self.optimizers["model"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.groups["model"])
        optimizer.step()
        self.dead_codes.observe(out.semantic_ids)
        parts.update(loss=float(loss.detach()), quantizer_loss=float(quantizer_loss.detach()))
        return parts, recon, out.latents.detach()

    def _detail_iteration(self, images: torch.Tensor, step: int) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Stage 2: IAR2's cycle. Every iteration trains the detail codebook and the rest on the full
        reconstruction; every ``semantic_every``-th also steps the semantic codebook, with the gradient
        of the semantic-only loss (clipped) plus the full loss's. Of the semantic-only loss only its
        codebook term reaches the semantic codebook (the straight-through estimator stops the image
        terms; IAR2 discards that loss's gradients on everything else), so only that term is
        differentiated here; the semantic-only reconstruction is decoded without gradients, to be logged."""
        config = self.config
        semantic_turn = step % config.semantic_every == config.semantic_every - 1
        for optimizer in (self.optimizers["semantic"], self.optimizers["detail"], self.optimizers["model"]):
            optimizer.zero_grad(set_to_none=True)
        latents = self.model.encode(images).latents
        extra: dict[str, float] = {}
        if semantic_turn:
            semantic_out = self.model.quantize(latents, use_detail=False)
            (semantic_grad,) = torch.autograd.grad(semantic_out.codebook_loss, self.semantic_weight)
            self.semantic_weight.grad = semantic_grad
            self._clip([self.semantic_weight])
            semantic_grad = self.semantic_weight.grad
            self.semantic_weight.grad = None
            with torch.no_grad():
                extra["semantic_pixel_loss"] = float(F.mse_loss(self.model.decode(semantic_out.quant).sample, images))
        out = self.model.quantize(latents)
        recon = self.model.decode(out.quant).sample
        image_loss, parts = self._image_losses(images, recon, config.pixel_weight, step)
        quantizer_loss = out.codebook_loss + out.commitment_loss
        loss = image_loss + quantizer_loss
        loss.backward()
        self._clip(self.groups["detail"])
        self._clip(self.groups["model"])
        self.optimizers["detail"].step()
        self.optimizers["model"].step()
        if semantic_turn:
            self.semantic_weight.grad = self.semantic_weight.grad + semantic_grad
            self.optimizers["semantic"].step()
        self.semantic_weight.grad = None
        self.dead_codes.observe(out.detail_ids)
        with torch.no_grad():  # the detail codebook's targets: residuals to the chosen semantic rows
            residuals = out.latents - self.model.quantize.semantic_rows()[out.semantic_ids].permute(0, 3, 1, 2)
        parts.update(loss=float(loss.detach()), quantizer_loss=float(quantizer_loss.detach()), **extra)
        return parts, recon, residuals

    # ------------------------------------------------------------------ the loop

    def train(self, record: dict[str, Any], *, progress: bool) -> None:
        config = self.config
        started = time.perf_counter()
        learnt_weight = self.semantic_weight if config.stage == "semantic" else self.detail_weight
        bar = tqdm(
            range(self.step, config.steps), initial=self.step, total=config.steps, desc=f"dual VQ, {config.stage} stage",
            disable=not progress, dynamic_ncols=True,
        )
        try:
            for step in bar:
                images = self.source.batch(self.sampler.next())
                iteration = self._semantic_iteration if config.stage == "semantic" else self._detail_iteration
                parts, recon, seed_vectors = iteration(images, step)
                if self.discriminator is not None:
                    parts["discriminator_loss"] = self._discriminator_step(images, recon, step)
                for scheduler in self.schedulers.values():
                    _step_scheduler(scheduler)
                dead, in_use = self.dead_codes.check(step)
                if dead is not None and dead.numel():  # semantic rows are unit directions, detail rows raw residuals
                    _seed_codes(learnt_weight, _flat(seed_vectors), dead, self.generator, normalize=config.stage == "semantic")
                    self.reseeded_codes += int(dead.numel())
                self._record(step, parts)
                self.step = step + 1
                if self.output_dir is not None and (self.step % config.checkpoint_every == 0 or self.step == config.steps):
                    self.save_checkpoint(record, self.seconds + time.perf_counter() - started)
                if progress and (step % 10 == 0 or in_use is not None):
                    postfix = {"loss": f"{parts['loss']:.4f}", "psnr": f"{psnr(max(parts['pixel_loss'], 1e-10), data_range=2.0):.1f}"}
                    if in_use is not None:
                        postfix["codes"] = f"{in_use}/{self.dead_codes.counts.numel()}"
                    bar.set_postfix(postfix, refresh=False)
        finally:
            bar.close()
        self.seconds += time.perf_counter() - started

    def _record(self, step: int, parts: dict[str, float]) -> None:
        for key, values in self.history.items():
            if key == "semantic_pixel_loss":
                if key in parts:
                    values.append([step, parts[key]])
            else:
                values.append(parts[key])

    def finish(self) -> tuple[DualCodebookVQModel, dict[str, Any]]:
        """The model in eval mode and the stats; with an output directory, ``model/`` (and the
        discriminator, and the stats) written there."""
        config, model = self.config, self.model
        model.eval()
        stats: dict[str, Any] = {"stage": config.stage, "steps": config.steps, "seconds": self.seconds, **self.history}
        stats["reseeded_codes"] = self.reseeded_codes
        stats.update(self._training_usage())
        stats["perceptual"] = self.perceptual.description
        stats["config"] = _jsonable(dataclasses.asdict(config))
        if self.output_dir is not None:
            with staged_dir(self.output_dir / MODEL_NAME) as staging:
                model.save_pretrained(staging)
            if self.discriminator is not None:
                from safetensors.torch import save_file

                from .._io import atomic_path

                with atomic_path(self.output_dir / DISCRIMINATOR_NAME) as tmp:
                    save_file(self.discriminator.state_dict(), str(tmp))
            write_text_atomic(self.output_dir / STATS_NAME, json.dumps(stats, indent=1))
            stats["model_dir"] = str(self.output_dir / MODEL_NAME)
        logger.info(
            "dual VQ tokenizer, %s stage: %d steps (%.0f s), final pixel loss %.4f, %d/%d semantic codes%s in use",
            config.stage, config.steps, self.seconds, stats["pixel_loss"][-1] if stats["pixel_loss"] else float("nan"),
            stats["semantic_used_codes"], config.num_semantic_embeddings,
            f", {stats['detail_used_codes']}/{config.num_detail_embeddings} detail codes" if config.stage == "detail" else "",
        )
        return model, stats

    @torch.no_grad()
    def _training_usage(self, limit: int = 4096) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.config.seed + 1)  # the same images however the run was split
        indices = torch.randperm(len(self.source), generator=generator)[:limit]
        semantic = torch.zeros(self.config.num_semantic_embeddings, dtype=torch.long)
        detail = torch.zeros(self.config.num_detail_embeddings, dtype=torch.long)
        for start in range(0, indices.numel(), 512):
            semantic_ids, detail_ids = self.model.encode_ids(self.source.batch(indices[start : start + 512]))
            semantic += torch.bincount(semantic_ids.reshape(-1), minlength=semantic.numel())
            detail += torch.bincount(detail_ids.reshape(-1), minlength=detail.numel())
        usage = {f"semantic_{key}": value for key, value in _codebook_use(semantic).items()}
        if self.config.stage == "detail":
            usage.update({f"detail_{key}": value for key, value in _codebook_use(detail).items()})
        return usage

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, record: dict[str, Any], seconds: float) -> None:
        """``output_dir/checkpoint``, replaced whole (staged beside it, then renamed)."""
        from safetensors.torch import save_file

        with staged_dir(self.output_dir / CHECKPOINT_NAME) as staging:
            save_file(self.model.state_dict(), str(staging / "model.safetensors"))
            if self.discriminator is not None:
                save_file(self.discriminator.state_dict(), str(staging / "discriminator.safetensors"))
            torch.save(
                {
                    "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
                    "schedulers": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
                    "generator": self.generator.get_state(),
                    "sampler": self.sampler.state_dict(),
                    "dead_code_counts": self.dead_codes.counts.clone(),
                },
                staging / "training_state.pt",
            )
            state = {"step": self.step, "run": record, "history": self.history, "reseeded_codes": self.reseeded_codes, "seconds": seconds}
            (staging / "trainer_state.json").write_text(json.dumps(state))
        logger.debug("checkpoint at step %d in %s", self.step, self.output_dir / CHECKPOINT_NAME)

    def load_checkpoint(self, record: dict[str, Any]) -> dict | None:
        """Restore ``output_dir/checkpoint`` (``None`` when there is none) after checking that it was
        written by a run with these settings, data, init and perceptual loss."""
        from safetensors.torch import load_file

        directory = self.output_dir / CHECKPOINT_NAME
        if not directory.is_dir():
            return None
        try:
            saved = json.loads((directory / "trainer_state.json").read_text())
            _check_resume(directory, saved["run"], record)
            model_state = load_file(str(directory / "model.safetensors"))
            training = torch.load(directory / "training_state.pt", map_location="cpu", weights_only=True)
            discriminator_state = load_file(str(directory / "discriminator.safetensors")) if self.discriminator is not None else None
        except DualVQTrainingError:
            raise
        except Exception as err:  # torch.load and safetensors raise UnpicklingError, RuntimeError, EOFError, ... for bad files
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DualVQTrainingError(
                f"cannot resume from {directory}: it is damaged or from another masc-hf version ({first}); "
                "delete that checkpoint directory to start the run again, or choose a new output directory"
            ) from None
        self.model.load_state_dict(model_state)
        if discriminator_state is not None:
            self.discriminator.load_state_dict(discriminator_state)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(training["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(training["schedulers"][name])
        self.generator.set_state(training["generator"])
        self.sampler.load_state_dict(training["sampler"])
        self.dead_codes.counts.copy_(training["dead_code_counts"])
        self.step, self.seconds = int(saved["step"]), float(saved["seconds"])
        self.history = {key: list(saved["history"][key]) for key in self.history}
        self.reseeded_codes = int(saved["reseeded_codes"])
        logger.info("resuming the %s stage from %s at step %d of %d", self.config.stage, directory, self.step, self.config.steps)
        return saved


# --------------------------------------------------------------------------------------------
# Helpers


def _resolve_config(config: DualVQTrainingConfig | str | None, overrides: dict[str, Any]) -> DualVQTrainingConfig:
    if config is None:
        stage = overrides.get("stage", "semantic")
        config = stage if stage in DUAL_VQ_TRAINING_PRESETS else "semantic"  # a bad stage fails in the config's check
    if isinstance(config, str):
        if config not in DUAL_VQ_TRAINING_PRESETS:
            raise DualVQTrainingError(f"unknown dual VQ training preset {config!r}; choose one of {sorted(DUAL_VQ_TRAINING_PRESETS)}")
        config = DUAL_VQ_TRAINING_PRESETS[config]
    if not isinstance(config, DualVQTrainingConfig):
        raise DualVQTrainingError(f"config must be a DualVQTrainingConfig or a preset name, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise DualVQTrainingError(f"output_dir {str(output_dir)!r} is a file; pass a directory path")
    check_writable(output_dir, f"output_dir {str(output_dir)!r}", DualVQTrainingError)
    if output_dir.is_dir():
        # the staging leftovers of a killed save (".checkpoint.<random>.tmp") are ours too
        foreign = [name for name in foreign_entries(output_dir, _OWN_NAMES) if not any(name.startswith(f".{own}.") for own in _OWN_NAMES)]
        if foreign:
            raise DualVQTrainingError(
                f"output_dir {output_dir} holds files that a tokenizer run does not write ({', '.join(foreign[:5])}); "
                "choose a new or empty directory (a rerun with the same directory resumes its run)"
            )


def _resolve_init(config: DualVQTrainingConfig, init) -> tuple[DualCodebookVQModel | None, dict | None]:
    """The detail stage's init model and, when both stages use the GAN term, the semantic stage's
    discriminator weights (from an output directory)."""
    from ..vq.dual_codebook import DualCodebookVQModel

    if config.stage == "semantic":
        if init is not None:
            raise DualVQTrainingError("init is for the detail stage; the semantic stage trains a tokenizer from scratch (drop init, or set stage='detail')")
        return None, None
    if init is None:
        raise DualVQTrainingError(
            "the detail stage continues a semantic-stage tokenizer: pass init= its output directory "
            "(train_vq.py --stage detail --init DIR)"
        )
    discriminator = None
    if isinstance(init, (str, os.PathLike)):
        candidate = Path(init) / DISCRIMINATOR_NAME
        model = load_stage1_tokenizer(init)
        if config.gan_weight > 0 and candidate.is_file():
            from safetensors.torch import load_file

            discriminator = load_file(str(candidate))
    elif isinstance(init, DualCodebookVQModel):
        model = init
    else:
        raise DualVQTrainingError(f"init must be a directory or a DualCodebookVQModel, got {type(init).__name__}")
    return model, discriminator


def _config_from_init(config: DualVQTrainingConfig, init: DualCodebookVQModel) -> DualVQTrainingConfig:
    """The detail stage's config with the architecture fields of its init."""
    source = init.config
    architecture = {
        "image_size": source.sample_size, "channels": source.in_channels, "block_out_channels": tuple(source.block_out_channels),
        "layers_per_block": source.layers_per_block, "latent_channels": source.latent_channels, "norm_num_groups": source.norm_num_groups,
        "num_semantic_embeddings": source.num_semantic_embeddings, "embed_dim": source.vq_embed_dim,
    }
    differ = {name: (getattr(config, name), value) for name, value in architecture.items() if getattr(config, name) != value}
    if differ:
        logger.info("detail stage: architecture from the init: %s", ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items()))
    return config.replace(**architecture)


def _stage_model(config: DualVQTrainingConfig, init: DualCodebookVQModel | None) -> DualCodebookVQModel:
    """Stage 1: a new model. Stage 2: the init's weights and a new detail codebook (IAR2 loads every
    stage-1 weight but the detail codebook's)."""
    if init is None:
        return build_dual_vqmodel(config)
    from ..vq.dual_codebook import DualCodebookVQModel

    settings = {key: value for key, value in init.config.items() if not key.startswith("_")}
    settings.update(num_detail_embeddings=config.num_detail_embeddings, commitment_beta=config.commitment_beta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DualCodebookVQModel(**settings)
        _init_codebook(model.quantize.detail_embedding.weight)
    state = {key: value for key, value in init.state_dict().items() if key != "quantize.detail_embedding.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing != ["quantize.detail_embedding.weight"] or unexpected:
        raise DualVQTrainingError(f"init does not fit its own architecture (missing {missing}, unexpected {unexpected}); re-save it with save_pretrained")
    return model.float()


@torch.no_grad()
def _init_codebook(weight: torch.Tensor) -> None:
    weight.uniform_(-1.0 / weight.shape[0], 1.0 / weight.shape[0])
    weight.copy_(F.normalize(weight, dim=1))


def _step_scheduler(scheduler) -> None:
    with warnings.catch_warnings():  # the semantic optimiser steps every third iteration; its schedule follows every one
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
        scheduler.step()


def _weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Tuples as lists (what a JSON round trip gives back), so that records compare equal after one."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _check_resume(directory: Path, saved: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse a checkpoint written with other settings, data, init or perceptual loss."""
    differences = []
    saved_config, config = saved.get("config", {}), record["config"]
    for name in sorted(set(saved_config) | set(config)):
        if saved_config.get(name) != config.get(name):
            differences.append(f"{name} {saved_config.get(name)!r} -> {config.get(name)!r}")
    for name, what in (("data", "the training images"), ("init", "the init tokenizer"), ("perceptual", "the perceptual loss")):
        if saved.get(name) != record[name]:
            differences.append(f"{what} ({saved.get(name)!s:.24} -> {record[name]!s:.24})")
    if differences:
        raise DualVQTrainingError(
            f"cannot resume {directory}: its run had other settings ({'; '.join(differences)}). Rerun with the "
            "checkpoint's settings to resume it, or choose a new output directory to start another run"
        )
