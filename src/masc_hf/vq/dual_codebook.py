"""IAR2's semantic-detail tokenizer as a diffusers model: LlamaGen's VQ encoder/decoder (the same
diffusers ``Encoder``/``Decoder`` blocks our ``VQModel`` conversion uses) around a dual quantizer.

Each latent vector becomes a pair: the semantic id ``s`` (nearest l2-normalised row of a small
codebook) and the detail id ``d`` (nearest raw row of a large codebook to the residual); the
decoder receives ``e_hat_s + c_d``. The quantizer's rule, its quirks and the key layout of the
released checkpoint: docs/iar2-vq.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, Encoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import MASCError
from .tokens import _grid  # one reading of [B, h, w] / [B, h*w] id grids for both tokenizers

__all__ = ["DualCodebookQuantizer", "DualCodebookVQModel", "DualQuantizerOutput", "DualVQEncoderOutput"]


@dataclass
class DualVQEncoderOutput(BaseOutput):
    """``latents``: ``[B, C, h, w]``, the encoder's output after ``quant_conv``, before quantisation."""

    latents: torch.Tensor


@dataclass
class DualQuantizerOutput(BaseOutput):
    """What the dual quantizer makes of latents ``[B, C, h, w]``.

    ``quant``: ``[B, C, h, w]`` the vector the decoder receives (``e_hat_s + c_d``, or ``e_hat_s``
    with ``use_detail=False``), with the straight-through gradient to the (normalised) latent;
    ``semantic_ids`` / ``detail_ids``: ``[B, h, w]`` int64 (``detail_ids`` is ``None`` without
    the detail codebook); ``latents``: the quantizer's input (l2-normalised when the model
    normalises); ``codebook_loss``: ``mean |q - sg(z)|^2`` (trains the codebooks);
    ``commitment_loss``: ``beta * mean |sg(q) - z|^2`` (trains the encoder).
    """

    quant: torch.Tensor
    semantic_ids: torch.LongTensor
    detail_ids: torch.LongTensor | None
    latents: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class DualCodebookQuantizer(nn.Module):
    """Semantic codebook ``[n_sem, C]`` (rows normalised at use time when ``l2_norm``) and detail
    codebook ``[n_det, C]`` (raw rows: never normalised at use time)."""

    def __init__(self, num_semantic: int, num_detail: int, dim: int, l2_norm: bool = True, beta: float = 0.25):
        super().__init__()
        self.l2_norm, self.beta = l2_norm, beta
        self.semantic_embedding = nn.Embedding(num_semantic, dim)
        self.detail_embedding = nn.Embedding(num_detail, dim)

    def semantic_rows(self) -> torch.Tensor:
        """``[n_sem, C]`` the semantic rows as the decoder receives them."""
        weight = self.semantic_embedding.weight
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def detail_rows(self) -> torch.Tensor:
        """``[n_det, C]`` the detail rows as the decoder receives them (raw)."""
        return self.detail_embedding.weight

    def forward(self, latents: torch.Tensor, use_detail: bool = True) -> DualQuantizerOutput:
        batch, channels, height, width = latents.shape
        z = latents.permute(0, 2, 3, 1).reshape(-1, channels)
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        semantic = self.semantic_rows()
        semantic_ids = _nearest(z, semantic)
        quant = semantic[semantic_ids]
        detail_ids = None
        if use_detail:
            detail = self.detail_rows()
            detail_ids = _nearest(z - quant, detail)
            quant = quant + detail[detail_ids]
        codebook_loss = torch.mean((quant - z.detach()) ** 2)
        commitment_loss = self.beta * torch.mean((quant.detach() - z) ** 2)
        quant = z + (quant - z).detach()  # straight-through estimator

        def grid(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, height, width, -1).permute(0, 3, 1, 2)

        return DualQuantizerOutput(
            quant=grid(quant),
            semantic_ids=semantic_ids.reshape(batch, height, width),
            detail_ids=None if detail_ids is None else detail_ids.reshape(batch, height, width),
            latents=grid(z),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
        )

    def lookup(self, semantic_ids: torch.Tensor, detail_ids: torch.Tensor | None) -> torch.Tensor:
        """``[B, C, h, w]`` decoder input of id grids ``[B, h, w]`` (``detail_ids=None``: semantic row only)."""
        quant = self.semantic_rows()[semantic_ids]
        if detail_ids is not None:
            quant = quant + self.detail_rows()[detail_ids]
        return quant.permute(0, 3, 1, 2).contiguous()


def _nearest(vectors: torch.Tensor, rows: torch.Tensor) -> torch.LongTensor:
    """First index of the nearest row, by ``|v|^2 + |e|^2 - 2 v.e`` (the reference's formula, so that
    near-ties fall the same way)."""
    distances = vectors.pow(2).sum(1, keepdim=True) + rows.pow(2).sum(1) - 2 * vectors @ rows.t()
    return distances.argmin(dim=1)


class DualCodebookVQModel(ModelMixin, ConfigMixin):
    """IAR2's semantic-detail VQ tokenizer.

    The architecture fields are diffusers ``VQModel``'s (a LlamaGen VQ-16 backbone is
    ``block_out_channels=(128, 128, 256, 256, 512)``, attention on the lowest level); the quantizer
    has ``num_semantic_embeddings`` x ``vq_embed_dim`` semantic rows and ``num_detail_embeddings``
    x ``vq_embed_dim`` detail rows. ``codebook_l2_norm`` normalises latents and semantic rows before
    the search (IAR2's released tokenizer does). ``commitment_beta`` weighs the commitment loss in
    training.

    Example::

        vq = DualCodebookVQModel.from_pretrained("iar2-vq")  # masc-hf convert-iar2-vq output
        semantic_ids, detail_ids = vq.encode_ids(images)     # [B, h, w] each
        images = vq.decode_ids(semantic_ids, detail_ids)     # [B, 3, H, W]
        coarse = vq.decode_ids(semantic_ids, None)            # semantic rows only
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["quantize"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 256,
        sample_size: int = 256,
        num_semantic_embeddings: int = 256,
        num_detail_embeddings: int = 4096,
        vq_embed_dim: int = 8,
        norm_num_groups: int = 32,
        codebook_l2_norm: bool = True,
        commitment_beta: float = 0.25,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise MASCError(
                f"DualCodebookVQModel: need one down and one up block type per entry of block_out_channels "
                f"({len(block_out_channels)}), got {len(down_block_types)} and {len(up_block_types)}"
            )
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            double_z=False,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = DualCodebookQuantizer(
            num_semantic_embeddings, num_detail_embeddings, vq_embed_dim, l2_norm=codebook_l2_norm, beta=commitment_beta
        )
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_type="group",
            mid_block_add_attention=mid_block_add_attention,
        )

    # ------------------------------------------------------------------ properties

    @property
    def downsample_factor(self) -> int:
        """Image pixels per token along each side (16 for VQ-16)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def codebook_sizes(self) -> tuple[int, int]:
        """``(num_semantic_embeddings, num_detail_embeddings)``."""
        return self.config.num_semantic_embeddings, self.config.num_detail_embeddings

    def semantic_codebook(self) -> torch.Tensor:
        """``[n_sem, C]`` float32 copy of the semantic rows as the decoder receives them (unit rows
        when ``codebook_l2_norm``): what a MASC map over the semantic ids clusters."""
        return self.quantize.semantic_rows().detach().float().cpu().clone()

    def detail_codebook(self) -> torch.Tensor:
        """``[n_det, C]`` float32 copy of the detail rows (raw, as the decoder adds them)."""
        return self.quantize.detail_rows().detach().float().cpu().clone()

    # ------------------------------------------------------------------ diffusers-style steps

    def encode(self, images: torch.Tensor, return_dict: bool = True) -> DualVQEncoderOutput | tuple[torch.Tensor]:
        """``images [B, C, H, W]`` in ``[-1, 1]`` -> latents ``[B, vq_embed_dim, h, w]`` (not quantised)."""
        latents = self.quant_conv(self.encoder(images))
        return DualVQEncoderOutput(latents=latents) if return_dict else (latents,)

    def decode(self, quant: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Quantised latents ``[B, vq_embed_dim, h, w]`` -> images ``[B, C, H, W]`` (not clamped)."""
        sample = self.decoder(self.post_quant_conv(quant))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, images: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruction through both codebooks (IAR2's ``model(images)``)."""
        quant = self.quantize(self.encode(images).latents).quant
        return self.decode(quant, return_dict=return_dict)

    # ------------------------------------------------------------------ ids

    @torch.no_grad()
    def encode_ids(self, images: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
        """``images [B, C, H, W]`` in ``[-1, 1]`` (H, W multiples of the downsample factor) ->
        ``(semantic_ids, detail_ids)``, ``[B, h, w]`` int64 each, on the model's device."""
        factor, channels = self.downsample_factor, self.config.in_channels
        if images.ndim != 4 or images.shape[1] != channels or images.shape[2] % factor or images.shape[3] % factor:
            raise MASCError(
                f"images must be [B, {channels}, H, W] with H and W multiples of {factor}, got {list(images.shape)}; "
                "resize or crop them first"
            )
        weight = self.quant_conv.weight
        out = self.quantize(self.encode(images.to(device=weight.device, dtype=weight.dtype)).latents)
        return out.semantic_ids, out.detail_ids

    @torch.no_grad()
    def decode_ids(
        self,
        semantic_ids: torch.Tensor,
        detail_ids: torch.Tensor | None,
        grid_size: tuple[int, int] | int | None = None,
    ) -> torch.Tensor:
        """Images of id grids (IAR2's ``decode_code``).

        Args:
            semantic_ids: ``[B, h, w]`` or ``[B, h*w]`` (row-major) ids in ``[0, num_semantic_embeddings)``.
            detail_ids: the same shape, ids in ``[0, num_detail_embeddings)``; ``None`` decodes the
                semantic rows alone (the "semantic only" picture).
            grid_size: ``(h, w)`` or ``h`` for flat ids (default: a square grid).

        Returns:
            ``[B, C, h*f, w*f]`` in the model's dtype, not clamped.
        """
        semantic = self._check_ids(semantic_ids, "semantic_ids", self.config.num_semantic_embeddings, grid_size)
        detail = None
        if detail_ids is not None:
            if tuple(detail_ids.shape) != tuple(semantic_ids.shape):
                raise MASCError(
                    f"semantic_ids {list(semantic_ids.shape)} and detail_ids {list(detail_ids.shape)} must have the same "
                    "shape: one (semantic, detail) pair per latent position"
                )
            detail = self._check_ids(detail_ids, "detail_ids", self.config.num_detail_embeddings, grid_size)
        quant = self.quantize.lookup(semantic, detail).to(self.post_quant_conv.weight.dtype)
        return self.decode(quant).sample

    def _check_ids(self, ids: torch.Tensor, name: str, size: int, grid_size) -> torch.LongTensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise MASCError(f"{name} must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
            raise MASCError(
                f"{name} must lie in [0, {size}) for this tokenizer's codebook, got values in "
                f"[{int(ids.min())}, {int(ids.max())}]; were they produced for another tokenizer?"
            )
        batch, height, width = _grid(ids, grid_size)
        return ids.reshape(batch, height, width).to(device=self.quant_conv.weight.device, dtype=torch.long)
