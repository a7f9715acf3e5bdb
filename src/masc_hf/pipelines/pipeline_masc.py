"""MASCPipeline: class-conditional image generation with LlamaGen, flat or with a MASC cluster map."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, VQModel
from diffusers.image_processor import VaeImageProcessor

from ..clustering import MASCClusterMap
from ..errors import MASCError
from ..models import LlamaGenForImageGeneration
from ..vq.tokens import decode_ids, downsample_factor
from .base import ClassConditionalPipeline
from .labels import resolve_class_labels
from .pairing import check_pipeline_components

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
DECODINGS = ("random", "hierarchical")


class MASCPipeline(ClassConditionalPipeline):
    r"""Class-conditional image generation with a LlamaGen transformer and a VQ tokenizer.

    A flat transformer predicts VQ codebook ids directly. A MASC transformer predicts cluster ids;
    ``cluster_map`` turns each into a fine codebook id (a uniform random member of the cluster,
    the MASC paper's default decoding) before the VQ decoder renders the image.

    Components:
        transformer ([`LlamaGenForImageGeneration`]): the autoregressive model.
        vqvae ([`diffusers.VQModel`]): LlamaGen's VQ tokenizer (ids -> pixels).
        cluster_map ([`MASCClusterMap`], *optional*): required for a MASC transformer, absent for a flat one.
        id2label (`dict[int, str]`, *optional*): class names; default ImageNet-1k's when the model
            has 1000 classes, else the transformer config's ``id2label``.
        refiner ([`MASCRefiner`], *optional*): the refinement network of a MASC transformer, for
            ``decoding="hierarchical"`` (the MASC paper's Appendix C.2). A pipeline component rather
            than part of the transformer: it is trained after the main model, as in the paper, and a
            MASC model directory stays what it was whether or not a refiner exists.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _optional_components = ["cluster_map", "refiner"]
    _exclude_from_cpu_offload = ["refiner"]  # called step by step inside generate, not through forward: kept on the device
    _callback_tensor_inputs = ["tokens"]

    def __init__(
        self,
        transformer: LlamaGenForImageGeneration,
        vqvae: VQModel,
        cluster_map: MASCClusterMap | None = None,
        id2label: dict | None = None,  # int -> name (JSON round trips give str keys)
        refiner=None,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, vqvae=vqvae, cluster_map=cluster_map, refiner=refiner)
        check_pipeline_components(transformer, vqvae, cluster_map, refiner)
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            self.register_to_config(id2label=id2label)
        self.image_processor = VaeImageProcessor(vae_scale_factor=downsample_factor(vqvae), do_normalize=True)

    # ------------------------------------------------------------------ generation
    @property
    def image_size(self) -> int:
        return int(math.isqrt(self.transformer.config.block_size)) * downsample_factor(self.vqvae)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_images_per_label: int = 1,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cfg_interval: int | None = None,
        decoding: str = "random",
        compile: bool = False,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images of the given classes.

        Args:
            class_labels: a class id, a class name (``"golden retriever"``; synonyms such as
                ``"tabby cat"`` resolve), or a list mixing both.
            num_images_per_label: images per label; images of one label are consecutive.
            guidance_scale: classifier-free guidance; 1.0 turns guidance off.
            temperature, top_k, top_p: sampling controls (temperature 0 = greedy, top_k 0 = all).
            cfg_interval: guide only the first decode steps (LlamaGen's option; -1 = always).
                Every sampling option left ``None`` is the transformer's ``generation_config``'s.
            generator: a ``torch.Generator`` on the execution device; the same seed gives the
                same images. Or a list with one generator per image (``len(class_labels) *
                num_images_per_label``, any device): each image then depends only on its own
                generator's seed, its label and the settings, not on the batch it is in (up to
                float rounding: kernels may round differently for batches of another shape).
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (``[B, H, W, 3]`` float in
                [0, 1]) or ``"pt"`` (``[B, 3, H, W]`` float in [0, 1]).
            return_dict: return an [`ImagePipelineOutput`] (else a one-element tuple).
            decoding: how a MASC transformer's cluster ids become codebook ids: ``"random"`` (a uniform
                random member, the paper's default) or ``"hierarchical"`` (the ``refiner`` picks the
                member from the transformer's state; see ``LlamaGenForImageGeneration.generate``).
            compile: run the transformer's decode step compiled (``generate(compile=True)``: one
                ``torch.compile``d step with CUDA graphs on CUDA, on packed weights on CPU). The first
                call for a batch shape compiles it (tens of seconds); later calls reuse it. With one
                generator per image the images are the eager ones (up to float rounding); with a single
                generator they are reproducible but not the eager draws.
            callback_on_step_end: called after each token as ``callback_on_step_end(self, step,
                step, callback_kwargs)`` with ``callback_kwargs["tokens"]`` the model ids so far
                ``[B, block_size]`` (filled up to column ``step``), as diffusers pipelines call it.
            callback_on_step_end_tensor_inputs: the tensors passed in ``callback_kwargs``
                (``["tokens"]``).

        Example:
            ```py
            >>> import torch
            >>> from masc_hf import MASCPipeline

            >>> pipe = MASCPipeline.from_pretrained("org/llamagen-xl-masc")
            >>> generator = torch.Generator().manual_seed(0)
            >>> images = pipe(["golden retriever", 207], generator=generator).images
            >>> images[0].save("golden_retriever.png")
            ```
        """
        # 0. inputs, checked before any work
        if output_type not in OUTPUT_TYPES:
            raise MASCError(f"output_type {output_type!r} does not exist; use one of {', '.join(OUTPUT_TYPES)}")
        if isinstance(num_images_per_label, bool) or not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise MASCError(f"num_images_per_label must be a positive int, got {num_images_per_label!r}")
        if decoding not in DECODINGS:
            raise MASCError(f"decoding {decoding!r} does not exist; use one of {', '.join(DECODINGS)}")
        if decoding == "hierarchical" and self.refiner is None:
            raise MASCError(
                "decoding='hierarchical' needs a refiner, and this pipeline has none; use decoding='random' (the default), "
                "or build the pipeline with refiner=MASCRefiner.from_pretrained(...) trained on this transformer"
            )
        tensor_inputs = callback_on_step_end_tensor_inputs or list(self._callback_tensor_inputs)
        unknown = sorted(set(tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise MASCError(f"callback_on_step_end_tensor_inputs {unknown} are not available; use {self._callback_tensor_inputs}")
        ids = resolve_class_labels(class_labels, self.id2label, self.transformer.config.num_classes)
        device = self._execution_device
        labels = torch.tensor(ids, device=device).repeat_interleave(num_images_per_label)
        if isinstance(generator, (list, tuple)) and len(generator) != len(labels):
            raise MASCError(
                f"generator is a list of {len(generator)} generators but {len(ids)} label(s) x {num_images_per_label} "
                f"image(s) = {len(labels)} images are asked for; pass one generator per image, or a single generator"
            )

        # 1. labels -> the transformer's ids (cluster ids for a MASC model)
        with self.progress_bar(total=self.transformer.config.block_size) as progress_bar:

            def on_token(step: int, tokens: torch.Tensor) -> None:
                progress_bar.update()
                if callback_on_step_end is not None:
                    callback_on_step_end(self, step, step, {"tokens": tokens})

            hierarchical = decoding == "hierarchical"
            model_ids = self.transformer.generate(
                labels, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                generator=generator, cfg_interval=cfg_interval, callback=on_token, refiner=self.refiner if hierarchical else None,
                compile=compile,
            )

        # 2. cluster ids -> codebook ids: a random member of each cluster (the MASC paper's default), or
        #    already the refiner's picks (hierarchical decoding)
        if self.cluster_map is None or hierarchical:
            codebook_ids = model_ids
        else:
            codebook_ids = self.cluster_map.decode(model_ids, generator=generator)

        # 3. codebook ids -> pixels
        grid = math.isqrt(self.transformer.config.block_size)
        images = decode_ids(self.vqvae, codebook_ids, grid_size=grid)
        images = self.image_processor.postprocess(images.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ------------------------------------------------------------------ saving
    _OWN_FILES = frozenset({"model_index.json", "README.md", ".gitattributes", "transformer", "vqvae", "cluster_map", "refiner"})

    def model_card(self):
        """The README.md written beside the pipeline, a ``huggingface_hub.ModelCard`` (template: ``masc_hf/model_cards/pipeline.md``)."""
        from .._version import __version__
        from ..model_cards import Markdown, escape_markdown, render_card

        config = self.transformer.config
        cmap = self.cluster_map
        return render_card(
            "pipeline.md",
            kind="MASC" if cmap is not None else "flat",
            num_classes=config.num_classes,
            image_size=self.image_size,
            block_size=config.block_size,
            vocab_size=config.vocab_size,
            fine_vocab_size=self.vqvae.config.num_vq_embeddings,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_parameters=f"{sum(p.numel() for p in self.transformer.parameters()):,}",
            guidance_scale=self.transformer.generation_config.guidance_scale,
            cluster_map=Markdown(  # the method is a map's free text: escaped; the fingerprint is our hex digest
                f"{escape_markdown(cmap.method)} map, N={cmap.num_tokens} -> k={cmap.num_clusters}, fingerprint `{cmap.fingerprint[:16]}`"
                if cmap is not None
                else "none (flat vocabulary)"
            ),
            version=__version__,
        )


