"""Train a small VQ image tokenizer (a diffusers ``VQModel``) on small images: the quickstart's tokenizer.

The result is the same class a converted LlamaGen tokenizer is, so ``masc_hf.vq.encode_images`` /
``decode_ids``, ``save_pretrained`` and ``MASCPipeline`` take it unchanged. Deterministic for a seed
on CPU (same torch build and thread count); the caller's global RNG state is left as it was. The
choices (padding, architecture, l2-normalised codes, loss, dead codes): docs/vq-trainer.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.pixels import images_to_tensor, psnr
from ..errors import DataError, MASCError
from .schedules import warmup_cosine_schedule

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import VQModel

logger = logging.getLogger(__name__)

__all__ = [
    "VQ_TRAINING_PRESETS",
    "VQTrainingConfig",
    "VQTrainingError",
    "build_vqmodel",
    "evaluate_vq_tokenizer",
    "to_vq_input",
    "train_vq_tokenizer",
]


class VQTrainingError(MASCError):
    """VQ training settings that cannot work (bad sizes, a preset that does not exist)."""


class _TokenizerSettings:
    """What the small tokenizer trainers' configs share (this one's and IAR2's dual-codebook one's):
    the architecture checks, the downsample factor and ``replace``. Subclasses are frozen dataclasses
    with ``image_size``, ``block_out_channels``, ``norm_num_groups``, ``lr``, ``warmup_steps``,
    ``min_lr_ratio`` and ``reseed_until`` fields."""

    _error: type[MASCError] = MASCError
    _what = "tokenizer training"

    def _check_settings(self, positive_integers: tuple[str, ...]) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        for name in positive_integers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self._error(f"{self._what}: {name} must be a positive integer, got {value!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 <= self.reseed_until <= 1.0:
            raise self._error(
                f"{self._what}: need warmup_steps >= 0, min_lr_ratio and reseed_until in [0, 1]; got "
                f"{self.warmup_steps}, {self.min_lr_ratio}, {self.reseed_until}"
            )
        if not self.lr > 0:
            raise self._error(f"{self._what}: lr must be positive, got {self.lr!r}")
        if not self.block_out_channels or any(c < 1 or c % self.norm_num_groups for c in self.block_out_channels):
            raise self._error(
                f"{self._what}: every block_out_channels entry must be a positive multiple of norm_num_groups="
                f"{self.norm_num_groups}, got {list(self.block_out_channels)}"
            )
        if self.image_size % self.downsample_factor:
            raise self._error(
                f"{self._what}: image_size {self.image_size} is not a multiple of the downsample factor "
                f"{self.downsample_factor}; pick e.g. {self.downsample_factor * math.ceil(self.image_size / self.downsample_factor)}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.downsample_factor) ** 2

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (unknown names raise this config's error)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise self._error(f"{self._what}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def _architecture_kwargs(self) -> dict[str, Any]:
        """The diffusers VQ backbone's keyword arguments (both tokenizers' encoder and decoder)."""
        levels = len(self.block_out_channels)
        return {
            "in_channels": self.channels,
            "out_channels": self.channels,
            "down_block_types": ("DownEncoderBlock2D",) * levels,
            "up_block_types": ("UpDecoderBlock2D",) * levels,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "sample_size": self.image_size,
            "norm_num_groups": self.norm_num_groups,
            "mid_block_add_attention": True,
        }


@dataclass(frozen=True)
class VQTrainingConfig(_TokenizerSettings):
    """Every hyper-parameter of a small VQ tokenizer and of its training run.

    Architecture: ``image_size`` (model input side; images are padded to it), ``channels`` (in and
    out), ``block_out_channels`` (one entry per level: downsample ``2 ** (levels - 1)``),
    ``layers_per_block``, ``latent_channels``, ``norm_num_groups`` (must divide every channel count),
    ``num_embeddings`` x ``embed_dim`` (the codebook).
    Optimisation: ``steps`` of ``batch_size`` images, AdamW at peak ``lr`` with betas ``(0.9, 0.95)``,
    linear warm-up from 0 over ``warmup_steps`` then cosine to ``lr * min_lr_ratio``
    (:func:`~masc_hf.training.schedules.warmup_cosine_schedule`); dead codes re-seeded
    every ``reseed_every`` steps during the first ``reseed_until`` fraction of the run; ``seed``.
    """

    _error = VQTrainingError
    _what = "VQ training"

    image_size: int = 32
    channels: int = 3
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 32
    norm_num_groups: int = 8
    num_embeddings: int = 256
    embed_dim: int = 8
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    reseed_every: int = 20
    reseed_until: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_settings(("image_size", "channels", "layers_per_block", "latent_channels", "norm_num_groups",
                              "num_embeddings", "embed_dim", "steps", "batch_size", "reseed_every"))

    def vqmodel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the diffusers ``VQModel`` this config describes."""
        return {**self._architecture_kwargs(), "num_vq_embeddings": self.num_embeddings, "vq_embed_dim": self.embed_dim}


# Sized for 2 CPU cores (about 0.45 s per step of 32 images): "quickstart" about 3 minutes, "fast"
# about 1 minute. At this budget more steps of smaller batches beat fewer larger ones (per image the
# cost barely changes: 64 images take about 0.65 s).
VQ_TRAINING_PRESETS: dict[str, VQTrainingConfig] = {
    "quickstart": VQTrainingConfig(),
    "fast": VQTrainingConfig(steps=130, warmup_steps=10, reseed_every=10),
}


def build_vqmodel(config: VQTrainingConfig, seed: int | None = None) -> VQModel:
    """A freshly initialised ``VQModel`` for ``config`` (weights from ``seed``, default ``config.seed``;
    the global RNG state is restored afterwards)."""
    from diffusers import VQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        return VQModel(**config.vqmodel_kwargs())


def to_vq_input(images: Any, image_size: int = 32, channels: int = 3) -> torch.Tensor:
    """Small uint8 images as a tokenizer batch: ``[n, channels, image_size, image_size]`` float32 in ``[-1, 1]``.

    ``images``: uint8 ``[n, H, W]`` (grayscale) or ``[n, H, W, C]`` (numpy or torch, channels last),
    or PIL images, ``H, W <= image_size``. Each image is centred on a black (``-1``) canvas of
    ``image_size``; grayscale is replicated to ``channels`` (RGB becomes luma for ``channels=1``).
    Fashion-MNIST 28x28 -> 32x32 gets 2 pixels of background per side. The tokenizer's use of
    :func:`~masc_hf.data.pixels.images_to_tensor`.
    """
    return images_to_tensor(images, value_range=(-1.0, 1.0), channels=channels, pad_to=image_size, torch_channels_last=True)


@torch.no_grad()
def evaluate_vq_tokenizer(vqmodel: VQModel, images: Any, *, batch_size: int = 500) -> dict[str, float]:
    """Reconstruction quality and codebook use of ``vqmodel`` on ``images`` (e.g. the test split).

    ``images``: uint8 ``[n, H, W]`` / ``[n, H, W, C]`` (padded as :func:`to_vq_input` does and compared
    on the original ``H x W`` region, all channels against the gray image), or a float tensor
    ``[n, C, S, S]`` in ``[-1, 1]`` (compared whole). Reconstructions are clamped to ``[-1, 1]``.

    Returns ``psnr`` (dB, mean over images of ``10 log10(1 / mse)`` on a ``[0, 1]`` scale), ``mse``
    (same scale), ``codebook_usage`` (share of the codes chosen at least once), ``used_codes`` and
    ``perplexity`` (``exp`` of the entropy of the code frequencies; ``num_embeddings`` at best).
    """
    from ..vq.tokens import decode_ids, encode_images

    def reconstruct(batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        ids = encode_images(vqmodel, batch)
        return {"": decode_ids(vqmodel, ids)}, [ids]

    config = vqmodel.config
    scores, (counts,) = _score_reconstructions(
        vqmodel, images, reconstruct, (config.num_vq_embeddings,), image_size=config.sample_size, channels=config.in_channels,
        batch_size=batch_size,
    )
    return {**scores[""], **_codebook_use(counts)}


@torch.no_grad()
def _score_reconstructions(
    model: torch.nn.Module,
    images: Any,
    reconstruct: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], list[torch.Tensor]]],
    num_codes: tuple[int, ...],
    *,
    image_size: int,
    channels: int,
    batch_size: int = 500,
) -> tuple[dict[str, dict[str, float]], list[torch.Tensor]]:
    """The evaluation loop every small tokenizer shares: ``reconstruct(batch [B, C, S, S]) ->
    ({name: reconstruction [B, C, S, S]}, [ids of each codebook])`` over ``images`` (as
    :func:`evaluate_vq_tokenizer` reads them), ``model`` in eval mode meanwhile.

    Returns ``({name: {"psnr", "mse"}}, [code counts [num_codes[i]] per codebook])``: PSNR and MSE on
    a ``[0, 1]`` scale, per image then averaged, reconstructions clamped to ``[-1, 1]`` and compared on
    the images' own ``H x W`` region (uint8 input) or whole (float input).
    """
    crop = None
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        inputs = images
    else:  # uint8 [n, C, H, W], converted batch by batch
        pixels = images_to_tensor(images, value_range=None, torch_channels_last=True)
        crop = pixels.shape[2:]
        inputs = None
    was_training = model.training
    model.eval()
    counts = [torch.zeros(n, dtype=torch.long) for n in num_codes]
    per_image_mse: dict[str, list[torch.Tensor]] = {}
    total = inputs.shape[0] if inputs is not None else pixels.shape[0]
    for start in range(0, total, batch_size):
        if inputs is not None:
            batch = inputs[start : start + batch_size]
        else:
            batch = images_to_tensor(pixels[start : start + batch_size], value_range=(-1.0, 1.0), channels=channels, pad_to=image_size)
        reconstructions, ids = reconstruct(batch)
        for count, codes in zip(counts, ids):
            count += torch.bincount(codes.reshape(-1).cpu(), minlength=count.numel())
        target = batch.float()
        if crop is not None:
            top, left = (image_size - crop[0]) // 2, (image_size - crop[1]) // 2
            target = target[:, :, top : top + crop[0], left : left + crop[1]]
        for name, recon in reconstructions.items():
            recon = recon.float().cpu().clamp(-1, 1)
            if crop is not None:
                recon = recon[:, :, top : top + crop[0], left : left + crop[1]]
            # [-1, 1] -> [0, 1]: the squared error scales by 1/4
            per_image_mse.setdefault(name, []).append(((recon - target) ** 2).mean(dim=(1, 2, 3)) / 4)
    model.train(was_training)
    scores = {}
    for name, parts in per_image_mse.items():
        mse = torch.cat(parts).double()
        per_image_psnr = psnr(mse.clamp_min(1e-10))  # a perfect image counts 100 dB, not inf
        scores[name] = {"psnr": float(per_image_psnr.mean()), "mse": float(mse.mean())}
    return scores, counts


def train_vq_tokenizer(
    images: Any,
    config: VQTrainingConfig | str | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> tuple[VQModel, dict[str, Any]]:
    """Train a small VQ tokenizer on ``images``.

    Args:
        images: uint8 ``[n, H, W]`` (grayscale, e.g. Fashion-MNIST ``[n, 28, 28]``) or ``[n, H, W, C]``,
            numpy or torch, padded to ``config.image_size`` by :func:`to_vq_input`; or a
            ``torch.utils.data.Dataset`` whose items are ``[C, S, S]`` float tensors in ``[-1, 1]``
            (or tuples starting with one), already of the model's size.
        config: a :class:`VQTrainingConfig`, or a preset name from :data:`VQ_TRAINING_PRESETS`
            (``"quickstart"``, the default, or ``"fast"``).
        progress: show a tqdm bar (loss, PSNR of the batch, codes in use).
        **overrides: fields of the config to change, e.g. ``steps=100, num_embeddings=512, seed=1``.

    Returns:
        ``(vqmodel, stats)``: the trained diffusers ``VQModel`` in eval mode (float32, CPU) and a dict
        with ``steps``, ``seconds``, ``loss`` / ``reconstruction_loss`` / ``quantizer_loss`` (per-step
        lists), ``reseeded_codes`` (total), ``codebook_usage``, ``used_codes``, ``perplexity`` (on up to
        4096 training images) and ``config`` (the settings as a dict).

    Example::

        from masc_hf.data.fashion_mnist import load_fashion_mnist
        from masc_hf.training.vq_trainer import evaluate_vq_tokenizer, train_vq_tokenizer

        vqmodel, stats = train_vq_tokenizer(load_fashion_mnist("train").images, "fast")
        print(evaluate_vq_tokenizer(vqmodel, load_fashion_mnist("test").images[:1000]))
        vqmodel.save_pretrained("out/vq")
    """
    config = _resolve_config(config, overrides)
    source = _ImageSource(images, config.image_size, config.channels)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_vqmodel(config)
    model.train()
    quantizer = model.quantize
    with torch.no_grad():  # LlamaGen's init: diffusers' uniform(-1/N, 1/N) rows, l2-normalised
        quantizer.embedding.weight.copy_(F.normalize(quantizer.embedding.weight, dim=1))
    legacy = quantizer.legacy
    quantizer.legacy = False  # LlamaGen's weights: codebook term 1, commitment term beta
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = warmup_cosine_schedule(
        optimizer, warmup_steps=config.warmup_steps, total_steps=config.steps, min_lr_ratio=config.min_lr_ratio
    )
    sampler = _EpochSampler(len(source), config.batch_size, generator)

    stats: dict[str, Any] = {"loss": [], "reconstruction_loss": [], "quantizer_loss": [], "reseeded_codes": 0}
    dead_codes = _DeadCodes(config.num_embeddings, config.reseed_every, int(config.steps * config.reseed_until))
    started = time.perf_counter()
    bar = tqdm(range(config.steps), desc="VQ tokenizer", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            batch = source.batch(sampler.next())
            latents = F.normalize(model.encode(batch).latents, dim=1)
            quant, quantizer_loss, (_, _, ids) = quantizer(latents)
            recon = model.decode(quant, force_not_quantize=True).sample
            reconstruction_loss = F.mse_loss(recon, batch)
            loss = reconstruction_loss + quantizer_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                quantizer.embedding.weight.copy_(F.normalize(quantizer.embedding.weight, dim=1))
            dead_codes.observe(ids)
            dead, in_use = dead_codes.check(step)
            if dead is not None and dead.numel():
                _seed_codes(quantizer.embedding.weight, _flat(latents.detach()), dead, generator)
                stats["reseeded_codes"] += int(dead.numel())
            stats["loss"].append(float(loss.detach()))
            stats["reconstruction_loss"].append(float(reconstruction_loss.detach()))
            stats["quantizer_loss"].append(float(quantizer_loss.detach()))
            if progress and (step % 10 == 0 or in_use is not None):
                postfix = {"loss": f"{stats['loss'][-1]:.4f}", "psnr": f"{psnr(max(stats['reconstruction_loss'][-1], 1e-10), data_range=2.0):.1f}"}
                if in_use is not None:
                    postfix["codes"] = f"{in_use}/{config.num_embeddings}"
                bar.set_postfix(postfix, refresh=False)
    finally:
        bar.close()
        quantizer.legacy = legacy
    model.eval()
    stats["steps"] = config.steps
    stats["seconds"] = time.perf_counter() - started
    stats.update(_training_usage(model, source, generator))
    stats["config"] = dataclasses.asdict(config)
    logger.info(
        "VQ tokenizer: %d steps in %.0f s, final reconstruction loss %.4f, %d/%d codes in use (perplexity %.0f)",
        config.steps, stats["seconds"], stats["reconstruction_loss"][-1], stats["used_codes"], config.num_embeddings,
        stats["perplexity"],
    )
    return model, stats


# --------------------------------------------------------------------------------------------
# Helpers


def _resolve_config(config: VQTrainingConfig | str | None, overrides: dict[str, Any]) -> VQTrainingConfig:
    if config is None:
        config = "quickstart"
    if isinstance(config, str):
        if config not in VQ_TRAINING_PRESETS:
            raise VQTrainingError(f"unknown VQ training preset {config!r}; choose one of {sorted(VQ_TRAINING_PRESETS)}")
        config = VQ_TRAINING_PRESETS[config]
    if not isinstance(config, VQTrainingConfig):
        raise VQTrainingError(f"config must be a VQTrainingConfig or a preset name, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def _flat(latents: torch.Tensor) -> torch.Tensor:
    """``[B, d, h, w]`` -> ``[B*h*w, d]``, row-major over positions (the quantizers' order)."""
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


@torch.no_grad()
def _seed_codes(weight: torch.Tensor, vectors: torch.Tensor, codes: torch.Tensor, generator: torch.Generator, *, normalize: bool = True) -> None:
    """Set rows ``codes`` of the codebook ``weight`` ``[N, d]`` to distinct random rows of ``vectors``
    ``[M, d]`` (the batch's latents), slightly jittered, unit length when ``normalize``."""
    picks = torch.randperm(vectors.shape[0], generator=generator)
    if codes.numel() > vectors.shape[0]:  # more codes than latents: reuse latents, jittered to stay distinct
        picks = picks.repeat(math.ceil(codes.numel() / vectors.shape[0]))
    rows = vectors[picks[: codes.numel()]]
    rows = rows + 1e-3 * torch.randn(rows.shape, generator=generator)
    weight[codes] = F.normalize(rows, dim=1) if normalize else rows


class _DeadCodes:
    """Which codes no latent chose: counted over ``every`` steps, reported (then reset) at the end of
    each such window up to step ``last`` (1-based), so that they can be re-seeded."""

    def __init__(self, num_codes: int, every: int, last: int):
        self.counts = torch.zeros(num_codes, dtype=torch.long)
        self.every, self.last = every, last

    def observe(self, ids: torch.Tensor) -> None:
        self.counts += torch.bincount(ids.reshape(-1), minlength=self.counts.numel())

    def check(self, step: int) -> tuple[torch.Tensor | None, int | None]:
        """After 0-based ``step``: ``(dead code ids, codes in use)`` at a window's end, else ``(None, None)``."""
        if (step + 1) % self.every or step + 1 > self.last:
            return None, None
        dead, in_use = torch.nonzero(self.counts == 0).flatten(), int((self.counts > 0).sum())
        self.counts.zero_()
        return dead, in_use


def _codebook_use(counts: torch.Tensor) -> dict[str, float]:
    """``codebook_usage`` (share of codes used), ``used_codes`` and ``perplexity`` (exp entropy) of code counts."""
    total = counts.sum().clamp_min(1)
    freq = counts.double() / total
    entropy = -(freq[freq > 0] * freq[freq > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"codebook_usage": used / counts.numel(), "used_codes": used, "perplexity": float(entropy.exp())}


@torch.no_grad()
def _training_usage(model: VQModel, source: _ImageSource, generator: torch.Generator, limit: int = 4096) -> dict[str, float]:
    from ..vq.tokens import encode_images

    indices = torch.randperm(len(source), generator=generator)[:limit]
    counts = torch.zeros(model.config.num_vq_embeddings, dtype=torch.long)
    for start in range(0, indices.numel(), 512):
        ids = encode_images(model, source.batch(indices[start : start + 512]))
        counts += torch.bincount(ids.reshape(-1), minlength=counts.numel())
    return _codebook_use(counts)


class _EpochSampler:
    """Batches of indices drawn without replacement, reshuffled each epoch (from ``generator``)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size, self.batch_size, self.generator = size, min(batch_size, size), generator
        self.order, self.position = torch.randperm(size, generator=generator), 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.size:
            self.order, self.position = torch.randperm(self.size, generator=self.generator), 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands (the generator's state is its owner's to save)."""
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.position = state["order"].clone(), int(state["position"])


class _ImageSource:
    """Training images as batches ``[B, C, S, S]`` in ``[-1, 1]``: padded uint8 ``[n, C, S, S]`` kept
    compact in memory (60000 Fashion-MNIST images are 61 MB as uint8, 737 MB as float RGB), converted
    per batch; or a torch Dataset."""

    def __init__(self, images: Any, image_size: int, channels: int):
        self.image_size, self.channels = image_size, channels
        self.dataset = None
        if isinstance(images, torch.utils.data.Dataset) and not isinstance(images, torch.Tensor):
            self.dataset = images
            self.size = len(images)
            first = self._item(0)
            expected = (channels, image_size, image_size)
            if tuple(first.shape) != expected or not first.is_floating_point():
                raise DataError(
                    f"dataset items must be float tensors {list(expected)} in [-1, 1], got {first.dtype} "
                    f"{list(first.shape)}; transform them (see to_vq_input) or change image_size/channels"
                )
        else:
            self.images = images_to_tensor(images, value_range=None, pad_to=image_size, torch_channels_last=True)
            self.size = self.images.shape[0]
        if self.size == 0:
            raise DataError("no training images given")
        if self.dataset is None:
            self.batch(torch.zeros(1, dtype=torch.long))  # channels that cannot become `channels` fail now

    def __len__(self) -> int:
        return self.size

    def fingerprint(self) -> str:
        """sha256 of the padded uint8 images (of a Dataset: its length and first item): the data a
        resumed run must find again."""
        digest = hashlib.sha256()
        if self.dataset is not None:
            digest.update(f"dataset:{self.size}".encode())
            digest.update(self._item(0).float().numpy().tobytes())
        else:
            digest.update(f"{list(self.images.shape)}:{self.images.dtype}".encode())
            digest.update(self.images.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _item(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return torch.as_tensor(item)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        if self.dataset is not None:
            return torch.stack([self._item(int(i)) for i in indices]).float()
        return images_to_tensor(self.images[indices], value_range=(-1.0, 1.0), channels=self.channels)

