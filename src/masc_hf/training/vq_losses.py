"""The image losses of tokenizer training besides pixel MSE: a perceptual distance and a patch
discriminator with hinge losses (what IAR2's tokenizer stages use: LPIPS and a PatchGAN).

The perceptual distance is LPIPS's recipe without its learned per-channel weights: unit-normalise
each position's feature vector at several depths of a frozen convolutional trunk, take the squared
difference, average over positions, sum over channels and depths. The trunk is torchvision's VGG16
with weights the user supplies (nothing is downloaded), or else a fixed random-weight convolutional
trunk. Why that substitute, and what it costs: docs/iar2-vq-trainer.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, MASCError

__all__ = [
    "PatchDiscriminator",
    "PerceptualLoss",
    "build_perceptual_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "random_conv_perceptual_loss",
    "vgg16_perceptual_loss",
]

# LPIPS's taps in torchvision's vgg16().features: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_TAPS = (3, 8, 15, 22, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance over a frozen trunk: for images ``[B, 3, H, W]`` in ``[-1, 1]``,
    ``mean_b sum_taps mean_positions |f(x)/|f(x)| - f(y)/|f(y)||^2`` (norms over channels).

    ``trunk``: a ``nn.Sequential`` whose outputs after the layers ``taps`` are compared;
    ``mean``/``std``: per-channel input normalisation applied to images mapped to ``[0, 1]`` (none
    when ``None``); ``description``: names the trunk and its weights (a training run records it, so
    that a resume with another perceptual loss is refused). The trunk is frozen (no gradients, eval
    mode); the gradient flows to the second image only.
    """

    def __init__(self, trunk: nn.Sequential, taps: tuple[int, ...], description: str, mean=None, std=None):
        super().__init__()
        if not taps or max(taps) >= len(trunk) or min(taps) < 0:
            raise MASCError(f"perceptual taps {list(taps)} must index layers of the {len(trunk)}-layer trunk")
        self.trunk = trunk[: max(taps) + 1].eval().requires_grad_(False)
        self.taps = tuple(sorted(taps))
        self.description = description
        shift = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0)).view(1, -1, 1, 1)
        scale = torch.tensor(std if std is not None else (1.0, 1.0, 1.0)).view(1, -1, 1, 1)
        self.normalise_input = mean is not None
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # the trunk is a fixed measuring instrument

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features ``[B, C_t, H_t, W_t]`` at each tap."""
        h = (images + 1) / 2 if self.normalise_input else images
        if self.normalise_input:
            h = (h - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.trunk):
            h = layer(h)
            if index in self.taps:
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """The mean distance over the batch (a scalar); ``images`` are the fixed targets."""
        with torch.no_grad():
            targets = self.features(images)
        distance = reconstructions.new_zeros(())
        for target, feature in zip(targets, self.features(reconstructions)):
            distance = distance + (feature - target).pow(2).sum(dim=1).mean()
        return distance


def vgg16_perceptual_loss(weights: str | os.PathLike) -> PerceptualLoss:
    """The VGG16 distance (LPIPS's taps and normalisation, uniform channel weights) with weights from
    a local file: a torchvision ``vgg16`` state dict (``features.N.*`` keys; the classifier's are
    ignored) or of its ``features`` alone (``N.*``), ``.pth``/``.pt`` (read with
    ``torch.load(weights_only=True)``) or ``.safetensors``. Needs torchvision (the architecture only)."""
    from .._checkpoints import read_state_dict

    try:
        from torchvision.models.vgg import cfgs, make_layers
    except ImportError:
        raise MASCError("a VGG16 perceptual loss needs torchvision (pip install torchvision); or drop the weights file to use the substitute") from None
    path = Path(weights)
    state = read_state_dict(path)
    if any(key.startswith("features.") for key in state):
        state = {key[len("features.") :]: value for key, value in state.items() if key.startswith("features.")}
    trunk = make_layers(cfgs["D"], batch_norm=False)  # torchvision's vgg16().features, same layer indices
    expected = set(trunk.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(
            f"{path} is not a torchvision VGG16 state dict: missing {missing[:4]}{' ...' if len(missing) > 4 else ''} "
            f"(expected keys like 'features.0.weight'); pass torchvision's vgg16 weights file"
        )
    for key in sorted(expected):
        if tuple(state[key].shape) != tuple(trunk.state_dict()[key].shape):
            raise CheckpointError(f"{path}: {key} has shape {list(state[key].shape)}, VGG16 expects {list(trunk.state_dict()[key].shape)}")
    trunk.load_state_dict({key: state[key].float() for key in expected})
    digest = hashlib.sha256()
    for key in sorted(expected):
        digest.update(trunk.state_dict()[key].numpy().tobytes())
    return PerceptualLoss(trunk, VGG16_TAPS, f"vgg16:{digest.hexdigest()[:16]}", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def random_conv_perceptual_loss(seed: int = 0, widths: tuple[int, ...] = (32, 64, 128), channels: int = 3) -> PerceptualLoss:
    """The substitute: a VGG-shaped trunk (per level two 3x3 conv + ReLU, then 2x2 average pooling;
    a tap after each level) with fixed random weights drawn from ``seed``: He-normal kernels and
    normal biases (std 0.5; without biases the normalised features of ``a * x`` and ``x`` would be
    equal for any ``a > 0``, blind to contrast). Cheap on a CPU (about a tenth of VGG16 at 32 px)."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    taps = []
    previous = channels
    for level, width in enumerate(widths):
        if level:
            layers.append(nn.AvgPool2d(2))
        for _ in range(2):
            conv = nn.Conv2d(previous, width, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / (previous * 9)) ** 0.5)
                conv.bias.copy_(0.5 * torch.randn(conv.bias.shape, generator=generator))
            layers += [conv, nn.ReLU()]
            previous = width
        taps.append(len(layers) - 1)
    return PerceptualLoss(nn.Sequential(*layers), tuple(taps), f"random-conv(seed={seed}, widths={list(widths)})")


def build_perceptual_loss(weights: str | os.PathLike | None = None, *, seed: int = 0) -> PerceptualLoss:
    """:func:`vgg16_perceptual_loss` of ``weights`` when given, else :func:`random_conv_perceptual_loss`."""
    return vgg16_perceptual_loss(weights) if weights is not None else random_conv_perceptual_loss(seed)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided 4x4 convolutions (LeakyReLU 0.2, GroupNorm after the first), then a
    3x3 convolution to one logit per patch: ``[B, C, H, W] -> [B, 1, H / 2**layers, W / 2**layers]``.
    Weights normal(0, 0.02) as in pix2pix, from ``seed``."""

    def __init__(self, channels: int = 3, width: int = 32, layers: int = 2, seed: int = 0):
        super().__init__()
        blocks: list[nn.Module] = []
        previous = channels
        for index in range(layers):
            out = width * 2**index
            blocks.append(nn.Conv2d(previous, out, 4, stride=2, padding=1, bias=index == 0))
            if index:
                blocks.append(nn.GroupNorm(min(8, out), out))
            blocks.append(nn.LeakyReLU(0.2))
            previous = out
        blocks.append(nn.Conv2d(previous, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.net:
                if isinstance(module, nn.Conv2d):
                    module.weight.copy_(0.02 * torch.randn(module.weight.shape, generator=generator))
                    if module.bias is not None:
                        module.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``(mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """``-mean D(x_hat)``."""
    return -logits_fake.mean()
