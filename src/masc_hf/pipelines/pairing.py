"""Do these components belong together? The checks made once where components meet (pipeline
construction, training start, evaluation): a cluster map and the model trained on it, a cluster map
and the tokenizer whose codebook it groups, a model and the VQ decoder that renders its ids.

Each raises a :class:`~masc_hf.errors.MASCError` subclass that names the component that does not
fit, and how to get one that does. ``what`` names the other component in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..clustering import check_cluster_map
from ..errors import ClusterMapMismatchError, MASCError
from ..vq.codebook import tokenizer_fingerprint  # re-exported: one fingerprint for every tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import VQModel

    from ..clustering import MASCClusterMap

__all__ = [
    "check_iar2_fits_tokenizer",
    "check_iar2_pipeline_components",
    "check_map_fits_model",
    "check_map_fits_tokenizer",
    "check_maps_fit_tokenizer",
    "check_model_fits_vq",
    "check_pipeline_components",
    "check_refiner_fits",
    "tokenizer_fingerprint",
]


def _config(model_or_config: Any):
    return getattr(model_or_config, "config", model_or_config)


def check_map_fits_model(cluster_map: MASCClusterMap | None, model: Any, what: str = "the model") -> None:
    """A MASC model needs the very map it was trained with (N, k and the map's fingerprint); a flat
    model takes none. ``model``: a LlamaGen model or its config."""
    config = _config(model)
    if not config.is_masc:
        if cluster_map is not None:
            raise ClusterMapMismatchError(
                f"{what} is flat (it predicts codebook ids directly) but a cluster_map was given; drop cluster_map "
                "or use a model trained on the map"
            )
        return
    if cluster_map is None:
        raise ClusterMapMismatchError(
            f"{what} is a MASC model (k={config.vocab_size} clusters over N={config.fine_vocab_size} tokens) "
            "but no cluster_map was given; pass the MASCClusterMap it was trained with"
        )
    check_cluster_map(
        cluster_map,
        num_tokens=config.fine_vocab_size,
        num_clusters=config.vocab_size,
        fingerprint=config.cluster_map_fingerprint,
        what=what,
    )


def check_map_fits_tokenizer(cluster_map: MASCClusterMap, vqvae: VQModel, what: str = "the vqvae", fingerprint: str | None = None) -> None:
    """The map groups this tokenizer's codebook: the same N and codebook fingerprint
    (``fingerprint``: the tokenizer's, when already computed)."""
    check_cluster_map(
        cluster_map,
        num_tokens=vqvae.config.num_vq_embeddings,
        codebook_fingerprint=fingerprint or tokenizer_fingerprint(vqvae),
        what=what,
    )


def check_maps_fit_tokenizer(vqvae: VQModel, cluster_maps: Mapping[str, MASCClusterMap]) -> None:
    """:func:`check_map_fits_tokenizer` for several named maps; the error names the first that does not fit."""
    from ..clustering import MASCClusterMap

    if not isinstance(cluster_maps, Mapping) or not cluster_maps:
        raise MASCError("cluster_maps must be a non-empty mapping name -> MASCClusterMap, e.g. {'masc': cmap}")
    fingerprint = tokenizer_fingerprint(vqvae)
    for name, cluster_map in cluster_maps.items():
        if not isinstance(cluster_map, MASCClusterMap):
            raise ClusterMapMismatchError(
                f"cluster map {name!r} is a {type(cluster_map).__name__}, not a MASCClusterMap; load it with MASCClusterMap.from_pretrained"
            )
        try:
            check_map_fits_tokenizer(cluster_map, vqvae, what="this VQ tokenizer", fingerprint=fingerprint)
        except ClusterMapMismatchError as err:
            raise ClusterMapMismatchError(f"cluster map {name!r}: {err}") from None


def check_model_fits_vq(model: Any, vqvae: VQModel, fingerprint: str | None = None) -> None:
    """The model's codebook ids are the VQ's (its fine vocabulary is the codebook size, and the
    codebook fingerprint it records, if any, is the VQ's) and its tokens form the square grid the VQ
    decodes. ``fingerprint``: the VQ's codebook fingerprint, when already computed."""
    config = _config(model)
    codebook_size = vqvae.config.num_vq_embeddings
    fine = config.fine_vocab_size if config.is_masc else config.vocab_size
    if fine != codebook_size:
        raise MASCError(
            f"the vqvae's codebook has {codebook_size} entries but the transformer's fine vocabulary is {fine}; "
            "use the VQ tokenizer the transformer was trained with"
        )
    mismatch = _fingerprint_mismatch(config, vqvae, fingerprint)
    if mismatch:
        recorded, actual = mismatch
        raise MASCError(
            f"the transformer was trained on the ids of VQ tokenizer {recorded[:12]}... but this vqvae's codebook is "
            f"{actual[:12]}... (codebook fingerprints differ); use the VQ tokenizer the transformer was trained with"
        )
    grid = math.isqrt(config.block_size)
    if grid * grid != config.block_size:
        raise MASCError(f"block_size={config.block_size} is not a square grid of tokens; LlamaGen images are h x h tokens")


def check_refiner_fits(refiner, model: Any, cluster_map: MASCClusterMap | None, what: str = "the transformer") -> None:
    """A refiner belongs to one MASC model (N, k, width, block size) and its cluster map (fingerprint)."""
    from ..models.refiner import check_refiner_fits as check

    check(refiner, model, cluster_map, what=what, error=ClusterMapMismatchError)


def check_pipeline_components(transformer, vqvae, cluster_map, refiner=None) -> None:
    """Everything :class:`~masc_hf.MASCPipeline` needs: types, map and model, model and VQ, map and VQ,
    and the refiner with the model and the map."""
    from diffusers import VQModel

    from ..models import LlamaGenForImageGeneration

    if not isinstance(transformer, LlamaGenForImageGeneration):
        raise MASCError(f"transformer must be a LlamaGenForImageGeneration, got {type(transformer).__name__}")
    if not isinstance(vqvae, VQModel):
        raise MASCError(f"vqvae must be a diffusers VQModel, got {type(vqvae).__name__}")
    check_map_fits_model(cluster_map, transformer, what="the transformer")
    check_model_fits_vq(transformer, vqvae)
    if cluster_map is not None and cluster_map.codebook_fingerprint is not None:
        check_map_fits_tokenizer(cluster_map, vqvae)
    if refiner is not None:
        check_refiner_fits(refiner, transformer, cluster_map)


def check_iar2_fits_tokenizer(model: Any, vqvae, fingerprint: str | None = None) -> None:
    """An IAR2 model's (semantic, detail) ids are this dual tokenizer's: the same two codebook sizes,
    and the tokenizer fingerprint the model records (if any). ``model``: the model or its config."""
    config = _config(model)
    ours = (config.semantic_vocab_size, config.detail_vocab_size)
    theirs = (vqvae.config.num_semantic_embeddings, vqvae.config.num_detail_embeddings)
    if ours != theirs:
        raise MASCError(
            f"the tokenizer has {theirs[0]} semantic x {theirs[1]} detail codes but the IAR2 model predicts {ours[0]} x {ours[1]}; "
            "use the dual-codebook tokenizer the model was trained with"
        )
    mismatch = _fingerprint_mismatch(config, vqvae, fingerprint)
    if mismatch:
        recorded, actual = mismatch
        raise MASCError(
            f"the IAR2 model was trained on the ids of tokenizer {recorded[:12]}... but this vqvae is {actual[:12]}... "
            "(tokenizer fingerprints differ); use the dual-codebook tokenizer the model was trained with"
        )


def _fingerprint_mismatch(config, vqvae, fingerprint: str | None) -> tuple[str, str] | None:
    """``(recorded, actual)`` when the model records a tokenizer fingerprint that is not ``vqvae``'s
    (``fingerprint``: the vqvae's, when already computed), else ``None``."""
    recorded = getattr(config, "tokenizer_fingerprint", None)
    if recorded is None:
        return None
    actual = fingerprint or tokenizer_fingerprint(vqvae)
    return (recorded, actual) if actual != recorded else None


def check_iar2_pipeline_components(transformer, vqvae) -> None:
    """Everything :class:`~masc_hf.IAR2Pipeline` needs: an IAR2 model and the dual tokenizer of its ids."""
    from ..models.iar2 import IAR2ForImageGeneration
    from ..vq.dual_codebook import DualCodebookVQModel

    if not isinstance(transformer, IAR2ForImageGeneration):
        raise MASCError(f"transformer must be an IAR2ForImageGeneration, got {type(transformer).__name__}")
    if not isinstance(vqvae, DualCodebookVQModel):
        hint = " (a LlamaGen VQModel has one codebook; IAR2 needs masc_hf.DualCodebookVQModel)" if hasattr(vqvae, "config") else ""
        raise MASCError(f"vqvae must be a DualCodebookVQModel, got {type(vqvae).__name__}{hint}")
    check_iar2_fits_tokenizer(transformer, vqvae)
