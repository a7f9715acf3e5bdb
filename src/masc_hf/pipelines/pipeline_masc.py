"""MASCPipeline: class-conditional image generation with LlamaGen, flat or with a MASC cluster map."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, VQModel
from diffusers.image_processor import VaeImageProcessor

from .._io import write_text_atomic
from ..clustering import MASCClusterMap, check_cluster_map, codebook_fingerprint
from ..errors import ClusterMapMismatchError, MASCError
from ..models import LlamaGenForImageGeneration
from ..tokenizers.codebook import load_codebook_from_vqmodel
from ..tokenizers.vq import decode_ids, downsample_factor
from .labels import imagenet_id2label, label_index, resolve_class_labels

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")


class MASCPipeline(DiffusionPipeline):
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
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _optional_components = ["cluster_map"]

    def __init__(
        self,
        transformer: LlamaGenForImageGeneration,
        vqvae: VQModel,
        cluster_map: MASCClusterMap | None = None,
        id2label: dict | None = None,  # int -> name (JSON round trips give str keys)
    ):
        super().__init__()
        self.register_modules(transformer=transformer, vqvae=vqvae, cluster_map=cluster_map)
        check_pipeline_components(transformer, vqvae, cluster_map)
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            self.register_to_config(id2label=id2label)
        self.image_processor = VaeImageProcessor(vae_scale_factor=downsample_factor(vqvae), do_normalize=True)

    # ------------------------------------------------------------------ class names
    @property
    def id2label(self) -> dict[int, str]:
        stored = getattr(self.config, "id2label", None)
        if stored:
            return {int(k): v for k, v in stored.items()}
        num_classes = self.transformer.config.num_classes
        if num_classes == 1000:
            return imagenet_id2label()
        config_labels = getattr(self.transformer.config, "id2label", None) or {}
        if len(config_labels) == num_classes and not all(str(v).startswith("LABEL_") for v in config_labels.values()):
            return {int(k): v for k, v in config_labels.items()}
        return {i: f"class {i}" for i in range(num_classes)}

    @property
    def labels(self) -> dict[str, int]:
        """name (and each synonym), lower-cased -> class id."""
        return label_index(self.id2label)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class ids of one name or a list of names, e.g. ``get_label_ids("golden retriever")``."""
        return resolve_class_labels(label, self.id2label, self.transformer.config.num_classes)

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
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cfg_interval: int = -1,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images of the given classes.

        Args:
            class_labels: a class id, a class name (``"golden retriever"``; synonyms such as
                ``"tabby cat"`` resolve), or a list mixing both.
            num_images_per_label: images per label; images of one label are consecutive.
            guidance_scale: classifier-free guidance; ``None`` uses the model's default
                (``transformer.config.default_guidance_scale``); 1.0 turns guidance off.
            temperature, top_k, top_p: sampling controls (temperature 0 = greedy, top_k 0 = all).
            generator: a ``torch.Generator`` on the transformer's device; the same seed gives the
                same images. Or a list with one generator per image (``len(class_labels) *
                num_images_per_label``, any device): each image then depends only on its own
                generator's seed, its label and the settings, not on the batch it is in (up to
                float rounding: kernels may round differently for batches of another shape).
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (``[B, H, W, 3]`` float in
                [0, 1]) or ``"pt"`` (``[B, 3, H, W]`` float in [0, 1]).
            return_dict: return an [`ImagePipelineOutput`] (else a one-element tuple).
            cfg_interval: guide only the first decode steps (LlamaGen's option; -1 = always).

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
        if output_type not in OUTPUT_TYPES:
            raise MASCError(f"output_type {output_type!r} does not exist; use one of {', '.join(OUTPUT_TYPES)}")
        if isinstance(num_images_per_label, bool) or not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise MASCError(f"num_images_per_label must be a positive int, got {num_images_per_label!r}")
        ids = resolve_class_labels(class_labels, self.id2label, self.transformer.config.num_classes)
        device = self.transformer.device
        labels = torch.tensor(ids, device=device).repeat_interleave(num_images_per_label)
        if isinstance(generator, (list, tuple)) and len(generator) != len(labels):
            raise MASCError(
                f"generator is a list of {len(generator)} generators but {len(ids)} label(s) x {num_images_per_label} "
                f"image(s) = {len(labels)} images are asked for; pass one generator per image, or a single generator"
            )

        tokens = self.transformer.generate(
            labels,
            guidance_scale=guidance_scale,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            cluster_map=self.cluster_map,
            cfg_interval=cfg_interval,
            progress_bar=not getattr(self, "_progress_bar_config", {}).get("disable", False),
        )
        grid = int(math.isqrt(self.transformer.config.block_size))
        images = decode_ids(self.vqvae, tokens.to(self.vqvae.device), grid_size=grid)
        images = self.image_processor.postprocess(images.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """diffusers' save (one folder per component + model_index.json) plus a model card."""
        super().save_pretrained(save_directory, **kwargs)
        write_text_atomic(Path(save_directory) / "README.md", self.model_card())

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None, token=None, create_pr: bool = False, **kwargs):
        """Save the pipeline (with its card) and upload it to the Hub repo ``repo_id``."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message or "Upload MASCPipeline", create_pr=create_pr
            )

    def model_card(self) -> str:
        from .. import __version__
        from ..model_cards import render_template

        config = self.transformer.config
        cmap = self.cluster_map
        return render_template(
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
            guidance_scale=config.default_guidance_scale,
            cluster_map=(
                f"`{cmap.method}` map, N={cmap.num_tokens} -> k={cmap.num_clusters}, fingerprint `{cmap.fingerprint[:16]}`"
                if cmap is not None
                else "none (flat vocabulary)"
            ),
            version=__version__,
        )


def check_pipeline_components(transformer, vqvae, cluster_map) -> None:
    """Raise a clear error naming the component that does not belong with the others."""
    if not isinstance(transformer, LlamaGenForImageGeneration):
        raise MASCError(f"transformer must be a LlamaGenForImageGeneration, got {type(transformer).__name__}")
    if not isinstance(vqvae, VQModel):
        raise MASCError(f"vqvae must be a diffusers VQModel, got {type(vqvae).__name__}")
    config = transformer.config
    codebook_size = vqvae.config.num_vq_embeddings
    if config.is_masc:
        if cluster_map is None:
            raise ClusterMapMismatchError(
                f"the transformer is a MASC model (k={config.vocab_size} clusters over N={config.fine_vocab_size} tokens) "
                "but no cluster_map was given; pass the MASCClusterMap it was trained with"
            )
        check_cluster_map(
            cluster_map,
            num_tokens=config.fine_vocab_size,
            num_clusters=config.vocab_size,
            fingerprint=config.cluster_map_fingerprint,
            what="the transformer",
        )
        fine = config.fine_vocab_size
    else:
        if cluster_map is not None:
            raise ClusterMapMismatchError(
                "the transformer is flat (it predicts codebook ids directly) but a cluster_map was given; drop cluster_map "
                "or use a transformer trained on the map"
            )
        fine = config.vocab_size
    if fine != codebook_size:
        raise MASCError(
            f"the vqvae's codebook has {codebook_size} entries but the transformer's fine vocabulary is {fine}; "
            "use the VQ tokenizer the transformer was trained with"
        )
    if cluster_map is not None and cluster_map.codebook_fingerprint is not None:
        check_cluster_map(
            cluster_map,
            num_tokens=codebook_size,
            codebook_fingerprint=codebook_fingerprint(load_codebook_from_vqmodel(vqvae)),
            what="the vqvae",
        )
    grid = math.isqrt(config.block_size)
    if grid * grid != config.block_size:
        raise MASCError(f"block_size={config.block_size} is not a square grid of tokens; LlamaGen images are h x h tokens")
