"""``MASCClusterMap``: the token -> cluster map, saved and loaded like a tokenizer (its state is numpy;
torch is imported only when torch tensors are passed in).
Design notes (the files of a saved map, why it subclasses ``FeatureExtractionMixin``): docs/cluster-maps.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from transformers.feature_extraction_utils import FeatureExtractionMixin

from .._version import __version__
from .._io import refuse_foreign_files, staged_dir
from ..errors import ClusterMapError, ClusterMapMismatchError, MASCError
from .codebook import as_codebook, codebook_fingerprint, fingerprint_of_valid
from .methods import CLUSTER_METHODS, HIERARCHICAL_METHODS, canonical_labels, cut_linkage, run_method

logger = logging.getLogger(__name__)

__all__ = ["MASCClusterMap", "build_cluster_map", "check_cluster_map"]

CONFIG_NAME = "cluster_map_config.json"
TENSORS_NAME = "cluster_map.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
CLUSTER_ID_RULE = "clusters are numbered in the order of their smallest token id"
TIE_RULE = (
    "among pairs at the minimum average distance (bitwise-equal float64), merge the pair of clusters "
    "whose names (smallest token ids, a < b) are lexicographically smallest"
)


def build_cluster_map(
    codebook: Any,
    k: int,
    method: str = "masc",
    seed: int = 0,
    *,
    source_tokenizer: str | None = None,
    compute_quality: bool = True,
    progress: bool = False,
    engine: str = "auto",
    device: str | None = None,
    tree: str = "auto",
    max_memory: int | None = None,
) -> MASCClusterMap:
    """Cluster a VQ codebook ``[N, d]`` (numpy array or torch tensor) into ``k`` clusters.

    Cluster the vectors the decoder receives: for LlamaGen (l2-normalised lookups) pass the
    normalised rows, as ``masc_hf.vq`` loaders and ``masc-hf build-map`` do.

    Args:
        codebook: float array ``[N, d]``, finite, ``N >= 2``.
        k: number of clusters, ``1 <= k <= N``.
        method: one of ``CLUSTER_METHODS`` (``"masc"``: exact average linkage, the default).
        seed: seed of the randomised methods (k-means variants, random); ignored by the others.
        source_tokenizer: free text recorded in the config and card (e.g. a Hub id).
        compute_quality: record :func:`cluster_quality` figures in the map (for the model card).
        progress: show a tqdm bar over the merges.
        engine: what builds the MASC tree (``method="masc"`` only): ``"auto"`` (torch when
            ``device`` names a GPU, else numpy), ``"numpy"`` or ``"torch"``; every engine gives the
            same partition on a tie-free codebook (docs/cluster-maps.md).
        device: for the torch engine: ``"cuda"``, ``"cuda:1"``, ``"cpu"``... (default: CUDA if available).
        tree: ``"full"`` (every merge: ``cut(k')`` for any k'), ``"partial"`` (the first N - k
            merges, the sparse engine: ``cut(k')`` for k' >= k, far faster at large N) or ``"auto"``:
            full for N <= 8192, partial above when k >= N / 4 or the dense matrix would not fit in
            memory (``method="masc"`` only; docs/cluster-maps.md).
            ``engine="sparse"`` means partial, ``"numpy"``/``"torch"`` full.
        max_memory: bytes the sparse engine may use for known pairs (default: 80% of what is free).

    Example:
        >>> import numpy as np, masc_hf
        >>> cmap = masc_hf.build_cluster_map(np.random.default_rng(0).normal(size=(64, 8)), k=16)
        >>> cmap.num_tokens, cmap.num_clusters
        (64, 16)
    """
    array = as_codebook(codebook)  # the one validation of this path
    partition = run_method(
        array, k, method, seed=seed, progress=progress, engine=engine, device=device, tree=tree, max_memory=max_memory
    )
    cluster_map = MASCClusterMap(
        partition.labels,
        tree=partition.tree,
        method=method,
        seed=seed if method not in HIERARCHICAL_METHODS else None,
        codebook_dim=array.shape[1],
        codebook_fingerprint=fingerprint_of_valid(array),
        source_tokenizer=source_tokenizer,
        smallest_margin=partition.smallest_margin,
        _verified=True,  # labels cut from this tree by run_method: no second cut
    )
    if compute_quality:
        from .quality import quality_of_valid

        cluster_map.quality = quality_of_valid(array, cluster_map)
    return cluster_map


def check_cluster_map(
    cluster_map: MASCClusterMap,
    *,
    num_tokens: int | None = None,
    num_clusters: int | None = None,
    fingerprint: str | None = None,
    codebook_fingerprint: str | None = None,
    what: str = "the codebook",
) -> None:
    """Raise :class:`ClusterMapMismatchError` unless ``cluster_map`` fits ``what``.

    Every place that pairs a map with a codebook, tokenizer or model calls this. ``fingerprint``
    is the map's own (:attr:`MASCClusterMap.fingerprint`, recorded by models trained on it);
    ``codebook_fingerprint`` is the codebook's (:func:`codebook_fingerprint`, from a tokenizer).
    A ``None`` expectation is not checked; a map built without a codebook fingerprint is only
    checked on sizes and its own fingerprint.
    """
    if not isinstance(cluster_map, MASCClusterMap):
        raise ClusterMapMismatchError(
            f"expected a MASCClusterMap, got {type(cluster_map).__name__}; load one with MASCClusterMap.from_pretrained"
        )
    if num_tokens is not None and cluster_map.num_tokens != num_tokens:
        raise ClusterMapMismatchError(
            f"the cluster map covers N={cluster_map.num_tokens} tokens but {what} has {num_tokens}; "
            "build the map from this codebook (masc-hf build-map)"
        )
    if num_clusters is not None and cluster_map.num_clusters != num_clusters:
        raise ClusterMapMismatchError(
            f"the cluster map has k={cluster_map.num_clusters} clusters but {what} expects {num_clusters}; "
            f"use a map cut at k={num_clusters} (cluster_map.cut({num_clusters}) if it has a tree)"
        )
    if (
        codebook_fingerprint is not None
        and cluster_map.codebook_fingerprint is not None
        and cluster_map.codebook_fingerprint != codebook_fingerprint
    ):
        raise ClusterMapMismatchError(
            f"the cluster map was built from codebook {cluster_map.codebook_fingerprint[:12]}... but {what} "
            f"uses codebook {codebook_fingerprint[:12]}...; build the map from this tokenizer's codebook"
        )
    if fingerprint is not None and cluster_map.fingerprint != fingerprint:
        raise ClusterMapMismatchError(
            f"{what} was trained on cluster map {fingerprint[:12]}... but this map is {cluster_map.fingerprint[:12]}... "
            f"({cluster_map.method}, k={cluster_map.num_clusters}); load the map the model was trained with"
        )


class MASCClusterMap(FeatureExtractionMixin):
    """A fine token -> coarse cluster map over a VQ codebook, with its merge tree.

    Attributes:
        mapping: int64 ``[N]``, cluster id of every token (``0..k-1``, numbered by smallest member).
        tree: float64 ``[N-1, 4]`` scipy linkage matrix, a partial tree ``[M, 4]`` (its first
            ``M >= N - k`` merges; ``tree_kind == "partial"``), or ``None`` for flat methods.
        smallest_margin: for a sparse-engine tree, the smallest margin by which a merge beat every
            other candidate's bound (its certificate, ``>= 0``); ``None`` otherwise.
        num_tokens, num_clusters, cluster_sizes, method, codebook_fingerprint, codebook_dim.
    """

    config_name = CONFIG_NAME

    def __init__(
        self,
        mapping: Any,
        tree: Any | None = None,
        *,
        method: str = "masc",
        seed: int | None = None,
        codebook_dim: int | None = None,
        codebook_fingerprint: str | None = None,
        source_tokenizer: str | None = None,
        quality: dict | None = None,
        smallest_margin: float | None = None,
        _verified: bool = False,
    ):
        super().__init__()
        mapping = np.asarray(mapping)
        if mapping.ndim != 1 or mapping.size < 1 or not np.issubdtype(mapping.dtype, np.integer):
            raise ClusterMapError(f"mapping must be a 1-D integer array [N], got dtype {mapping.dtype} shape {mapping.shape}")
        if mapping.min() < 0:
            raise ClusterMapError(f"mapping has negative cluster ids (min {mapping.min()}); cluster ids are 0..k-1")
        mapping = mapping.astype(np.int64)
        sizes = np.bincount(mapping)
        if (sizes == 0).any():
            empty = np.flatnonzero(sizes == 0)
            raise ClusterMapError(
                f"cluster ids must be 0..k-1 with no gaps; clusters {empty[:10].tolist()} are empty. "
                "Renumber with masc_hf.clustering.canonical_labels(mapping)"
            )
        if not _verified and not np.array_equal(mapping, canonical_labels(mapping)):
            raise ClusterMapError(
                f"cluster ids must follow the rule '{CLUSTER_ID_RULE}'; renumber with masc_hf.clustering.canonical_labels(mapping)"
            )
        if tree is not None:
            tree = np.asarray(tree, dtype=np.float64)
            lowest = mapping.size - sizes.size  # merges needed to reach this k
            if tree.ndim != 2 or tree.shape[1] != 4 or not lowest <= tree.shape[0] <= mapping.size - 1:
                raise ClusterMapError(
                    f"tree must be a linkage matrix [N-1, 4] = [{mapping.size - 1}, 4] or a partial tree [M, 4] with "
                    f"N - k = {lowest} <= M <= N - 1, got shape {tree.shape}"
                )
            if not _verified and not np.array_equal(cut_linkage(tree, sizes.size, mapping.size), mapping):
                raise ClusterMapError("tree and mapping disagree: cutting the tree at k does not give the mapping")
        if method not in CLUSTER_METHODS:
            logger.warning("cluster map method %r is not one of masc-hf's methods", method)
        self.mapping = mapping
        self.tree = tree
        self.method = method
        self.seed = seed
        self.codebook_dim = codebook_dim
        self.codebook_fingerprint = codebook_fingerprint
        self.source_tokenizer = source_tokenizer
        self.quality = quality
        self.smallest_margin = smallest_margin  # the sparse engine's certificate (docs/cluster-maps.md)
        self.cluster_sizes = sizes
        order = np.argsort(mapping, kind="stable")
        self._members_flat = order  # token ids grouped by cluster, ascending inside each cluster
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._device_cache: dict = {}

    # ------------------------------------------------------------------ inspection
    @property
    def tree_kind(self) -> str | None:
        """``"full"`` (N - 1 merges), ``"partial"`` (the first merges only) or ``None`` (no tree)."""
        if self.tree is None:
            return None
        return "full" if self.tree.shape[0] == self.num_tokens - 1 else "partial"

    @property
    def num_tokens(self) -> int:
        return int(self.mapping.size)

    @property
    def num_clusters(self) -> int:
        return int(self.cluster_sizes.size)

    @property
    def fingerprint(self) -> str:
        """sha256 identifying this map: over its codebook's fingerprint and the mapping (int64 LE).
        Models record it (``config.cluster_map_fingerprint``) to refuse any other map."""
        digest = hashlib.sha256(f"masc-map;{self.codebook_fingerprint or 'none'};".encode())
        digest.update(np.ascontiguousarray(self.mapping, dtype="<i8").tobytes())
        return digest.hexdigest()

    # transformers/diffusers components are often asked for their vocabulary size
    @property
    def vocab_size(self) -> int:
        return self.num_clusters

    def members(self, cluster_id: int) -> np.ndarray:
        """Token ids of cluster ``cluster_id``, ascending (int64)."""
        c = int(cluster_id)
        if not 0 <= c < self.num_clusters:
            raise MASCError(f"cluster id {cluster_id} is out of range [0, {self.num_clusters})")
        return self._members_flat[self._offsets[c] : self._offsets[c + 1]].copy()

    def summary(self) -> dict:
        """The config's identity fields plus the cluster-size distribution."""
        config = self.to_dict()
        keys = ("method", "num_tokens", "num_clusters", "codebook_dim", "codebook_fingerprint", "fingerprint", "source_tokenizer", "has_tree")
        sizes = self.cluster_sizes
        return {
            **{key: config[key] for key in keys},
            "size_min": int(sizes.min()),
            "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max()),
            "singletons": int((sizes == 1).sum()),
        }

    def __repr__(self) -> str:
        fp = (self.codebook_fingerprint or "none")[:12]
        return (
            f"MASCClusterMap(method={self.method!r}, num_tokens={self.num_tokens}, num_clusters={self.num_clusters}, "
            f"tree={'yes' if self.tree is not None else 'no'}, codebook={fp})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MASCClusterMap):
            return NotImplemented
        same_tree = (self.tree is None and other.tree is None) or (
            self.tree is not None and other.tree is not None and np.array_equal(self.tree, other.tree)
        )
        return (
            np.array_equal(self.mapping, other.mapping)
            and same_tree
            and self.method == other.method
            and self.codebook_fingerprint == other.codebook_fingerprint
        )

    __hash__ = None  # mutable container semantics, like numpy arrays

    # ------------------------------------------------------------------ fitting checks
    def check_codebook(self, codebook: Any, what: str = "the codebook") -> None:
        """Raise unless ``codebook [N, d]`` is the one this map was built from (N and fingerprint)."""
        array = as_codebook(codebook)
        check_cluster_map(self, num_tokens=array.shape[0], codebook_fingerprint=fingerprint_of_valid(array), what=what)

    # ------------------------------------------------------------------ encode / decode
    def _torch_tables(self, device):
        key = str(device)
        if key not in self._device_cache:
            import torch

            self._device_cache[key] = (
                torch.as_tensor(self.mapping, device=device),
                torch.as_tensor(self._members_flat, device=device),
                torch.as_tensor(self._offsets[:-1], device=device),
                torch.as_tensor(self.cluster_sizes, device=device),
            )
        return self._device_cache[key]

    @staticmethod
    def _check_ids(ids, upper: int, what: str) -> None:
        if ids.numel() if hasattr(ids, "numel") else ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= upper:
                bad = lo if lo < 0 else hi
                raise MASCError(f"{what} id {bad} is out of range [0, {upper}); check that the ids come from the right vocabulary")

    def encode(self, fine_ids):
        """Fine token ids -> cluster ids, same shape, type and device (numpy array or torch tensor)."""
        if _is_torch(fine_ids):
            import torch

            if fine_ids.dtype.is_floating_point or fine_ids.dtype == torch.bool:
                raise MASCError(f"fine ids must be an integer tensor, got {fine_ids.dtype}")
            self._check_ids(fine_ids, self.num_tokens, "fine token")
            mapping = self._torch_tables(fine_ids.device)[0]
            return mapping[fine_ids.long()]
        array = np.asarray(fine_ids)
        if not np.issubdtype(array.dtype, np.integer):
            raise MASCError(f"fine ids must be integers, got dtype {array.dtype}")
        self._check_ids(array, self.num_tokens, "fine token")
        return self.mapping[array]

    def decode(self, coarse_ids, generator=None):
        """Cluster ids -> a uniformly random member token of each cluster (the paper's default).

        Same shape, type and device as ``coarse_ids``. ``generator``: a ``torch.Generator`` (on
        the ids' device) for torch inputs, a ``numpy.random.Generator`` for numpy inputs, or an
        int seed for either. The same generator state gives the same tokens.

        ``generator`` may also be a list with one entry per row of ``coarse_ids`` ``[B, ...]``
        (the diffusers convention for per-image seeds): row b then draws only from entry b, so its
        tokens do not depend on the other rows. Torch generators in the list may live on any
        device (each row's numbers are drawn there and moved to the ids' device).
        """
        per_row = isinstance(generator, (list, tuple))
        if per_row:
            _check_row_generators(coarse_ids, generator)
        if _is_torch(coarse_ids):
            import torch

            if coarse_ids.dtype.is_floating_point or coarse_ids.dtype == torch.bool:
                raise MASCError(f"cluster ids must be an integer tensor, got {coarse_ids.dtype}")
            self._check_ids(coarse_ids, self.num_clusters, "cluster")
            _, members, starts, sizes = self._torch_tables(coarse_ids.device)
            ids = coarse_ids.long()
            if per_row:
                u = _torch_row_uniforms(ids.shape, generator, ids.device)
            else:
                if isinstance(generator, int):
                    generator = torch.Generator(device=coarse_ids.device).manual_seed(generator)
                u = torch.rand(ids.shape, generator=generator, device=ids.device, dtype=torch.float64)
            size = sizes[ids]
            offset = torch.minimum((u * size).long(), size - 1)
            return members[starts[ids] + offset]
        array = np.asarray(coarse_ids)
        if not np.issubdtype(array.dtype, np.integer):
            raise MASCError(f"cluster ids must be integers, got dtype {array.dtype}")
        self._check_ids(array, self.num_clusters, "cluster")
        if per_row:
            rngs = [g if isinstance(g, np.random.Generator) else np.random.default_rng(g) for g in generator]
            u = np.stack([rng.random(array.shape[1:]) for rng in rngs]) if rngs else np.zeros(array.shape)
        else:
            rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
            u = rng.random(array.shape)
        size = self.cluster_sizes[array]
        offset = np.minimum((u * size).astype(np.int64), size - 1)
        return self._members_flat[self._offsets[array] + offset]

    # ------------------------------------------------------------------ re-cutting
    def cut(self, k: int) -> MASCClusterMap:
        """The map at another ``k`` from the stored tree (no re-clustering)."""
        if self.tree is None:
            raise MASCError(
                f"a {self.method!r} map has no merge tree to cut; rebuild it with build_cluster_map(codebook, k={k}, method={self.method!r})"
            )
        return MASCClusterMap(
            cut_linkage(self.tree, k, self.num_tokens),  # canonical labels of this tree by construction
            tree=self.tree,
            method=self.method,
            seed=self.seed,
            codebook_dim=self.codebook_dim,
            codebook_fingerprint=self.codebook_fingerprint,
            source_tokenizer=self.source_tokenizer,
            quality=None,
            smallest_margin=self.smallest_margin,
            _verified=True,
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """The JSON config (without the tensors)."""
        return {
            "masc_hf_version": __version__,
            "format_version": FORMAT_VERSION,
            "cluster_map_class": type(self).__name__,
            "method": self.method,
            "num_tokens": self.num_tokens,
            "num_clusters": self.num_clusters,
            "codebook_dim": self.codebook_dim,
            "codebook_fingerprint": self.codebook_fingerprint,
            "fingerprint": self.fingerprint,
            "source_tokenizer": self.source_tokenizer,
            "seed": self.seed,
            "has_tree": self.tree is not None,
            "tree": self.tree_kind,
            "tree_merges": None if self.tree is None else int(self.tree.shape[0]),
            "cluster_id_rule": CLUSTER_ID_RULE,
            "tie_rule": TIE_RULE if self.method == "masc" else None,
            "quality": self.quality,
            "smallest_margin": self.smallest_margin,
        }

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    _OWN_FILES = {CONFIG_NAME, TENSORS_NAME, CARD_NAME, ".gitattributes"}

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> Path:
        """Write the map to ``save_directory`` atomically (a temporary directory renamed into place).

        An existing directory is replaced only if it holds nothing but a cluster map's files.
        Extra keyword arguments from diffusers/transformers callers (``safe_serialization``,
        ``variant``, ...) are accepted and ignored; ``push_to_hub=True`` also uploads
        (``repo_id`` keyword, default the directory name).
        """
        from safetensors.numpy import save_file

        target = Path(save_directory)
        refuse_foreign_files(target, self._OWN_FILES, "a cluster map", ClusterMapError)
        with staged_dir(target) as tmp:
            tensors = {"mapping": self.mapping}
            if self.tree is not None:
                tensors["tree"] = self.tree
            save_file(tensors, str(tmp / TENSORS_NAME))  # no metadata: its key order is not stable
            config = self.to_dict()
            config["tensors_sha256"] = _sha256_file(tmp / TENSORS_NAME)
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            self.model_card().save(tmp / CARD_NAME)
        logger.info("saved %r to %s", self, target)
        if push_to_hub:
            self.push_to_hub(kwargs.get("repo_id", target.name), token=kwargs.get("token"), private=kwargs.get("private"))
        return target

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        **kwargs,
    ) -> MASCClusterMap:
        """Load a map from a local directory or a Hub repo id (``huggingface_hub`` download;
        honours ``HF_HUB_OFFLINE``). Extra keyword arguments (as diffusers passes) are ignored."""
        if kwargs:
            logger.debug("MASCClusterMap.from_pretrained ignores %s", sorted(kwargs))
        folder = Path(pretrained_model_name_or_path)
        if subfolder:
            folder = folder / subfolder
        if folder.is_dir():
            config_path, tensors_path = folder / CONFIG_NAME, folder / TENSORS_NAME
            missing = [p.name for p in (config_path, tensors_path) if not p.is_file()]
            if missing:
                raise ClusterMapError(
                    f"{folder} is not a complete cluster map: missing {', '.join(missing)}; save one with save_pretrained"
                )
        else:
            config_path, tensors_path = _download(
                str(pretrained_model_name_or_path),
                subfolder=subfolder,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                force_download=force_download,
            )
        return cls._load_files(Path(config_path), Path(tensors_path))

    @classmethod
    def _load_files(cls, config_path: Path, tensors_path: Path) -> MASCClusterMap:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ClusterMapError(f"{config_path} is not valid JSON ({err}); re-save the map") from err
        if not isinstance(config, dict):
            raise ClusterMapError(f"{config_path} holds a JSON {type(config).__name__}, not a cluster map config object; re-save the map")
        expected_sha = config.get("tensors_sha256")
        if expected_sha is not None and _sha256_file(tensors_path) != expected_sha:
            raise ClusterMapError(
                f"{tensors_path.name} does not match {config_path.name} (sha256 differs): the files come from "
                "different saves or one is corrupt; re-save the map"
            )
        if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ClusterMapError(
                f"{config_path} has format_version {config['format_version']}, newer than this masc-hf ({__version__}) reads; upgrade masc-hf"
            )
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError) as err:
            raise ClusterMapError(f"{tensors_path} is not a readable safetensors file ({err}); re-save the map") from err
        if "mapping" not in tensors:
            raise ClusterMapError(f"{tensors_path} has no 'mapping' tensor; it is not a cluster map file")
        mapping = tensors["mapping"]
        for key in ("num_tokens", "num_clusters"):
            if key not in config:
                raise ClusterMapError(f"{config_path} lacks {key!r}; re-save the map")
        if mapping.shape != (config["num_tokens"],):
            raise ClusterMapError(
                f"{tensors_path.name} maps {mapping.shape[0] if mapping.ndim == 1 else mapping.shape} tokens but "
                f"{config_path.name} says num_tokens={config['num_tokens']}; the files do not belong together"
            )
        if mapping.size and int(mapping.max()) + 1 != config["num_clusters"]:
            raise ClusterMapError(
                f"{tensors_path.name} has {int(mapping.max()) + 1} clusters but {config_path.name} says "
                f"num_clusters={config['num_clusters']}; the files do not belong together"
            )
        for key, kind in (("method", str), ("source_tokenizer", str), ("codebook_fingerprint", str), ("quality", dict)):
            if config.get(key) is not None and not isinstance(config[key], kind):
                raise ClusterMapError(f"{config_path}: {key!r} must be a {kind.__name__} or null, got {config[key]!r:.80}; re-save the map")
        # every released save_pretrained records both: without them nothing shows the files belong together
        missing = [key for key in ("tensors_sha256", "fingerprint") if not isinstance(config.get(key), str)]
        if missing:
            raise ClusterMapError(
                f"{config_path} lacks {' and '.join(repr(key) for key in missing)}, which every save_pretrained "
                f"writes, so {tensors_path.name} cannot be checked against it: the config was edited or written by "
                "another tool. Rebuild the map (masc-hf build-map), or re-save one you trust with save_pretrained"
            )
        cluster_map = cls(
            mapping,
            tree=tensors.get("tree"),
            method=config.get("method", "unknown"),
            seed=config.get("seed"),
            codebook_dim=config.get("codebook_dim"),
            codebook_fingerprint=config.get("codebook_fingerprint"),
            source_tokenizer=config.get("source_tokenizer"),
            quality=config.get("quality"),
            smallest_margin=config.get("smallest_margin") if isinstance(config.get("smallest_margin"), (int, float)) else None,
        )
        if config["fingerprint"] != cluster_map.fingerprint:
            raise ClusterMapError(
                f"{config_path.name} records map fingerprint {config['fingerprint'][:12]}... but the files give "
                f"{cluster_map.fingerprint[:12]}...; the files do not belong together, re-save the map"
            )
        return cluster_map

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs,
    ):
        """Upload the saved map (config, tensors, card) to the Hub repo ``repo_id``."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "cluster_map"
            self.save_pretrained(folder)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=commit_message or f"Upload {self.method} cluster map (N={self.num_tokens}, k={self.num_clusters})",
                revision=revision,
                create_pr=create_pr,
            )

    def model_card(self):
        """The README.md written beside the map, a ``huggingface_hub.ModelCard`` (template: ``masc_hf/model_cards/cluster_map.md``)."""
        from ..model_cards import Markdown, escape_markdown, render_card

        summary = self.summary()
        quality = self.quality or {}
        rows = "\n".join(
            f"| {escape_markdown(key)} | {escape_markdown(_fmt(value))} |" for key, value in quality.items() if key not in summary
        )
        rows = Markdown(rows or "| (not computed) | |")
        return render_card(
            "cluster_map.md",
            method=self.method,
            method_description=CLUSTER_METHODS.get(self.method, self.method),
            num_tokens=summary["num_tokens"],
            num_clusters=summary["num_clusters"],
            codebook_dim=summary["codebook_dim"],
            codebook_fingerprint=summary["codebook_fingerprint"] or "unknown",
            fingerprint=self.fingerprint,
            source_tokenizer=summary["source_tokenizer"] or "unknown",
            size_min=summary["size_min"],
            size_median=_fmt(summary["size_median"]),
            size_max=summary["size_max"],
            singletons=summary["singletons"],
            has_tree="yes" if self.tree is not None else "no",
            quality_rows=rows,
            cluster_id_rule=CLUSTER_ID_RULE,
            version=__version__,
        )


# ---------------------------------------------------------------------- helpers
def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def _check_row_generators(ids, generators) -> None:
    """A per-row generator list needs ids ``[B, ...]`` and exactly B entries (generators or int seeds)."""
    shape = tuple(ids.shape) if hasattr(ids, "shape") else np.shape(ids)
    if len(shape) == 0 or shape[0] != len(generators):
        raise MASCError(
            f"a list of {len(generators)} generators needs ids of shape [{len(generators)}, ...] (one generator per row), "
            f"got shape {list(shape)}; pass one generator per row or a single generator"
        )
    if _is_torch(ids):
        import torch

        kind, generator_type = "torch.Generator", torch.Generator
    else:
        kind, generator_type = "numpy.random.Generator", np.random.Generator
    for g in generators:
        if not isinstance(g, generator_type) and (isinstance(g, bool) or not isinstance(g, (int, np.integer))):
            raise MASCError(f"per-row generators for these ids must be {kind}s or int seeds, got {type(g).__name__}")


def _torch_row_uniforms(shape, generators, device):
    """float64 uniforms of ``shape`` ``[B, ...]``; row b drawn from ``generators[b]`` (a generator or an int seed)."""
    import torch

    rows = []
    for g in generators:
        if not isinstance(g, torch.Generator):
            g = torch.Generator(device=device).manual_seed(int(g))
        rows.append(torch.rand(shape[1:], generator=g, device=g.device, dtype=torch.float64).to(device))
    return torch.stack(rows) if rows else torch.zeros(shape, dtype=torch.float64, device=device)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(repo_id: str, **kwargs) -> tuple[str, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        config_path = hf_hub_download(repo_id, CONFIG_NAME, **kwargs)
        tensors_path = hf_hub_download(repo_id, TENSORS_NAME, **kwargs)
    except HFValidationError as err:
        raise ClusterMapError(f"{repo_id!r} is neither a local directory nor a valid Hub repo id ({err})") from err
    except (EntryNotFoundError, RepositoryNotFoundError) as err:
        raise ClusterMapError(f"{repo_id!r} has no cluster map ({CONFIG_NAME} + {TENSORS_NAME}): {err}") from err
    except LocalEntryNotFoundError as err:
        raise ClusterMapError(
            f"{repo_id!r} is not a local directory and is not in the Hub cache (offline, or no network); "
            "check the path, or download it first with network access"
        ) from err
    return config_path, tensors_path
