"""IAR2Pipeline: class-conditional image generation with IAR2 (semantic-detail token pairs) and its
dual-codebook tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor

from ..errors import MASCError
from ..models.iar2 import IAR2ForImageGeneration
from ..vq.dual_codebook import DualCodebookVQModel
from .base import ClassConditionalPipeline
from .labels import resolve_class_labels
from .pairing import check_iar2_pipeline_components
from .pipeline_masc import OUTPUT_TYPES

logger = logging.getLogger(__name__)


class IAR2Pipeline(ClassConditionalPipeline):
    r"""Class-conditional image generation with an IAR2 transformer and its dual-codebook tokenizer:
    labels -> (semantic ids, detail ids) -> pixels.

    Components:
        transformer ([`IAR2ForImageGeneration`]): the autoregressive model.
        vqvae ([`DualCodebookVQModel`]): the semantic-detail tokenizer (id pairs -> pixels).
        id2label (`dict[int, str]`, *optional*): class names (ImageNet-1k's for 1000 classes by default).
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["semantic_ids", "detail_ids"]

    def __init__(self, transformer: IAR2ForImageGeneration, vqvae: DualCodebookVQModel, id2label: dict | None = None):
        super().__init__()
        check_iar2_pipeline_components(transformer, vqvae)
        self.register_modules(transformer=transformer, vqvae=vqvae)
        if id2label is not None:
            self.register_to_config(id2label={int(k): str(v) for k, v in id2label.items()})
        self.image_processor = VaeImageProcessor(vae_scale_factor=vqvae.downsample_factor, do_normalize=True)

    @property
    def image_size(self) -> int:
        return self.transformer.config.grid_size * self.vqvae.downsample_factor

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_images_per_label: int = 1,
        semantic_guidance: Sequence[float] | float | None = None,
        detail_guidance: Sequence[float] | float | None = None,
        attention_guidance_weight: float | None = None,
        temperature: float | Sequence[float] | None = None,
        top_k: int | Sequence[int] | None = None,
        top_p: float | Sequence[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        output_size: int | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images of the given classes.

        Args:
            class_labels: class ids and/or names (as :class:`~masc_hf.MASCPipeline`).
            num_images_per_label: images per label, consecutive.
            semantic_guidance / detail_guidance / attention_guidance_weight: IAR2's progressive
                attention-guided CFG (see ``IAR2ForImageGeneration.generate``); ``(1, 1)`` for both is
                no guidance. ``None`` takes the transformer's ``generation_config``.
            temperature, top_k, top_p: one value or a ``(semantic, detail)`` pair.
            generator: a ``torch.Generator``, or one per image (each image then depends only on its seed).
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            output_size: resize the decoded images to this side (bicubic, as the IAR2/LlamaGen
                evaluation resizes 384 px samples to 256 px); ``None`` keeps the tokenizer's size.
            callback_on_step_end: ``callback_on_step_end(self, step, step, {"semantic_ids": ...,
                "detail_ids": ...})`` after each token pair.

        Example:
            ```py
            >>> pipe = IAR2Pipeline.from_pretrained("org/iar2-b")
            >>> images = pipe(["golden retriever"], semantic_guidance=(1.0, 6.0), detail_guidance=(1.0, 6.0),
            ...               output_size=256, generator=torch.Generator().manual_seed(0)).images
            ```
        """
        if output_type not in OUTPUT_TYPES:
            raise MASCError(f"output_type {output_type!r} does not exist; use one of {', '.join(OUTPUT_TYPES)}")
        if isinstance(num_images_per_label, bool) or not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise MASCError(f"num_images_per_label must be a positive int, got {num_images_per_label!r}")
        if output_size is not None and (isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1):
            raise MASCError(f"output_size must be a positive int (e.g. 256) or None, got {output_size!r}")
        tensor_inputs = callback_on_step_end_tensor_inputs or list(self._callback_tensor_inputs)
        unknown = sorted(set(tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise MASCError(f"callback_on_step_end_tensor_inputs {unknown} are not available; use {self._callback_tensor_inputs}")
        ids = resolve_class_labels(class_labels, self.id2label, self.transformer.config.num_classes)
        labels = torch.tensor(ids, device=self._execution_device).repeat_interleave(num_images_per_label)
        if isinstance(generator, (list, tuple)) and len(generator) != len(labels):
            raise MASCError(
                f"generator is a list of {len(generator)} generators but {len(ids)} label(s) x {num_images_per_label} "
                f"image(s) = {len(labels)} images are asked for; pass one generator per image, or a single generator"
            )

        # 1. labels -> (semantic ids, detail ids)
        with self.progress_bar(total=self.transformer.config.block_size) as progress_bar:

            def on_token(step: int, semantic_ids: torch.Tensor, detail_ids: torch.Tensor) -> None:
                progress_bar.update()
                if callback_on_step_end is not None:
                    tensors = {"semantic_ids": semantic_ids, "detail_ids": detail_ids}
                    callback_on_step_end(self, step, step, {name: tensors[name] for name in tensor_inputs})

            semantic_ids, detail_ids = self.transformer.generate(
                labels, semantic_guidance=semantic_guidance, detail_guidance=detail_guidance,
                attention_guidance_weight=attention_guidance_weight, temperature=temperature, top_k=top_k, top_p=top_p,
                generator=generator, callback=on_token,
            )

        # 2. id pairs -> pixels (optionally resized for evaluation)
        images = self.vqvae.decode_ids(semantic_ids, detail_ids, grid_size=self.transformer.config.grid_size).float()
        if output_size is not None and output_size != images.shape[-1]:
            images = F.interpolate(images, size=(output_size, output_size), mode="bicubic", align_corners=False)
        images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def model_card(self):
        """The README.md written beside the pipeline (template: ``masc_hf/model_cards/iar2_pipeline.md``)."""
        from .._version import __version__
        from ..model_cards import render_card

        config, generation = self.transformer.config, self.transformer.generation_config
        return render_card(
            "iar2_pipeline.md",
            num_classes=config.num_classes,
            image_size=self.image_size,
            block_size=config.block_size,
            semantic_vocab_size=config.semantic_vocab_size,
            detail_vocab_size=config.detail_vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            head_layers=config.head_layers,
            num_parameters=f"{sum(p.numel() for p in self.transformer.parameters()):,}",
            semantic_guidance=tuple(getattr(generation, "semantic_guidance", (1.0, 1.0))),
            detail_guidance=tuple(getattr(generation, "detail_guidance", (1.0, 1.0))),
            attention_guidance_weight=getattr(generation, "attention_guidance_weight", 0.0),
            version=__version__,
        )
