"""Token-code shards: the VQ token ids of a dataset's images, written once, read every epoch (writer,
manifest, training dataset). Design notes (the directory layout, atomic writes, resuming): docs/data.md.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._io import atomic_path
from ..errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from ..clustering import MASCClusterMap

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DETAIL_IDS = "detail_ids"  # the shard tensor of a dual-codebook set's detail ids, beside "codes"
PROGRESS_DIR = "progress"
FORMAT_NAME = "masc-hf-code-shards"
# The newest version read here. Version 2 added dual-codebook sets (a ``detail_ids`` tensor per shard),
# which version-1 readers would take for single-codebook ones; single-codebook sets are still written
# as version 1, the same files as before.
FORMAT_VERSION = 2
_SINGLE_CODEBOOK_VERSION = 1
# The settings a resumed extraction must share with the run it continues.
_RUN_SETTINGS = (
    "tokenizer_fingerprint",
    "num_tokens",
    "image_size",
    "grid_size",
    "augment",
    "num_augmentations",
    "codes_dtype",
    "num_detail_tokens",
    "detail_codes_dtype",
    "shard_size",
    "world_size",
    "source",
    "split",
)
_SAFETENSORS_DTYPES = {"I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def codes_dtype_for(num_tokens: int) -> str:
    """The narrowest signed integer dtype name that holds ids ``[0, num_tokens)``: int16 or int32."""
    return "int16" if num_tokens <= 2**15 else "int32"


@dataclass
class CodeShardManifest:
    """What a code-shard directory holds (``manifest.json``).

    ``grid_size`` is ``(h, w)`` tokens, ``seq_len = h * w``; ``num_augmentations`` views per
    image (``augment``: ``"none"``, ``"flip"`` or ``"ten-crop"``); ``shards`` lists, in reading
    order, ``{"file", "rank", "index", "num_examples", "num_skipped"}``; the totals are filled in
    once ``complete``.

    A dual-codebook set (IAR2's tokenizer: a semantic and a detail id per position) has
    ``num_tokens`` semantic codes and ``num_detail_tokens`` detail codes, stored as ``codes_dtype``
    and ``detail_codes_dtype``; both detail fields are ``None`` for a single-codebook set.
    """

    tokenizer_fingerprint: str
    num_tokens: int
    image_size: int
    grid_size: tuple[int, int]
    augment: str = "none"
    num_augmentations: int = 1
    codes_dtype: str = "int16"
    num_detail_tokens: int | None = None
    detail_codes_dtype: str | None = None
    shard_size: int = 10_000
    world_size: int = 1
    source: str | None = None
    split: str | None = None
    class_names: list[str] | None = None
    complete: bool = False
    num_shards: int = 0
    num_examples: int = 0
    num_skipped: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.grid_size = tuple(int(x) for x in self.grid_size)
        _check_codes_dtype("codes_dtype", self.codes_dtype, self.num_tokens, "codes_dtype_for(num_tokens)")
        if self.num_detail_tokens is None:
            if self.detail_codes_dtype is not None:
                raise DataError(
                    f"detail_codes_dtype={self.detail_codes_dtype!r} without num_detail_tokens; a single-codebook set has neither"
                )
        else:
            detail = self.num_detail_tokens
            if isinstance(detail, bool) or not isinstance(detail, int) or detail < 1:
                raise DataError(f"num_detail_tokens must be a positive integer (the detail codebook size) or None, got {detail!r}")
            if self.detail_codes_dtype is None:
                self.detail_codes_dtype = codes_dtype_for(detail)
            _check_codes_dtype("detail_codes_dtype", self.detail_codes_dtype, detail, "codes_dtype_for(num_detail_tokens)")
        self.format_version = FORMAT_VERSION if self.is_dual_codebook else _SINGLE_CODEBOOK_VERSION

    @property
    def seq_len(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def is_dual_codebook(self) -> bool:
        """Whether each position holds a (semantic, detail) id pair (IAR2's tokenizer)."""
        return self.num_detail_tokens is not None

    def describe_tokenizer(self) -> str:
        """The tokenizer in a few words, for messages: kind, fingerprint prefix, codebook size(s)."""
        if self.is_dual_codebook:
            sizes = f"{self.num_tokens} semantic + {self.num_detail_tokens} detail codes"
            return f"dual-codebook tokenizer {self.tokenizer_fingerprint[:12]}... ({sizes})"
        return f"single-codebook tokenizer {self.tokenizer_fingerprint[:12]}... ({self.num_tokens} codes)"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid_size"] = list(self.grid_size)
        data["seq_len"] = self.seq_len
        if not self.is_dual_codebook:  # a single-codebook manifest is written as before version 2
            del data["num_detail_tokens"], data["detail_codes_dtype"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeShardManifest:
        if data.get("format") != FORMAT_NAME:
            raise DataError(f"not a masc-hf code-shard manifest (format {data.get('format')!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(f"code shards of format version {data['format_version']}; upgrade masc-hf to read them")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})  # version 1 has no detail fields: single-codebook

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CodeShardManifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"no {MANIFEST_NAME} in {directory}; write code shards there first (recipes/extract_codes.py)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise DataError(f"{path} is not a valid code-shard manifest ({err}); rerun the extraction into a new directory") from err

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / MANIFEST_NAME
        with atomic_path(path, fsync=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def differences(self, other: CodeShardManifest) -> list[str]:
        """The run settings (fingerprint, sizes, augmentation, sharding, source) that differ."""
        return [
            f"{name}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in _RUN_SETTINGS
            if getattr(self, name) != getattr(other, name)
        ]

    def check_cluster_map(self, cluster_map: MASCClusterMap, what: str = "these code shards") -> None:
        """Raise ``ClusterMapMismatchError`` unless ``cluster_map`` was built from this tokenizer's codebook."""
        from ..clustering import check_cluster_map

        check_cluster_map(cluster_map, num_tokens=self.num_tokens, codebook_fingerprint=self.tokenizer_fingerprint, what=what)


def _check_codes_dtype(name: str, dtype: Any, num_tokens: int, fix: str) -> None:
    if dtype not in ("int16", "int32"):
        raise DataError(f"{name} must be 'int16' or 'int32', got {dtype!r}")
    if np.iinfo(dtype).max < num_tokens - 1:
        raise DataError(f"{dtype} cannot hold token ids up to {num_tokens - 1}; use {fix}")


class CodeShardWriter:
    """Writes one process's shards into ``directory``; resumable.

    ``manifest`` carries the run settings (its shard list and totals are ignored). If the
    directory already holds a manifest with other settings (another tokenizer, image size, number
    of processes, ...), :class:`DataError` names the differences: resuming would mix shards.
    The first process to start writes the (incomplete) manifest; :meth:`finish` marks this
    process done, and whichever process finds every process done writes the complete manifest.
    """

    def __init__(self, directory: str | os.PathLike, manifest: CodeShardManifest, *, rank: int = 0) -> None:
        if not 0 <= rank < manifest.world_size:
            raise DataError(f"rank {rank} is outside [0, {manifest.world_size}) processes")
        self.directory = Path(directory)
        self.manifest = manifest
        self.rank = rank
        (self.directory / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
        if (self.directory / MANIFEST_NAME).is_file():
            existing = CodeShardManifest.load(self.directory)
            if (existing.tokenizer_fingerprint, existing.is_dual_codebook) != (manifest.tokenizer_fingerprint, manifest.is_dual_codebook):
                raise DataError(
                    f"{self.directory} holds code shards of the {existing.describe_tokenizer()} (fingerprint "
                    f"{existing.tokenizer_fingerprint}) but this run's is the {manifest.describe_tokenizer()} (fingerprint "
                    f"{manifest.tokenizer_fingerprint}); resume with the tokenizer that wrote them, or write to a new directory"
                )
            differences = existing.differences(manifest)
            if differences:
                raise DataError(
                    f"{self.directory} holds code shards written with other settings ({'; '.join(differences)}); "
                    "resume with the same settings, or write to a new directory"
                )
        else:  # every process writes the same file, so none waits for another
            start = CodeShardManifest.from_dict({**manifest.to_dict(), "complete": False, "shards": []})
            start.num_shards = start.num_examples = start.num_skipped = 0
            start.save(self.directory)
        prefix = f".{self._stem()}-"
        for stale in self.directory.glob(f"{prefix}*.tmp"):  # our own leftovers from a killed run
            stale.unlink(missing_ok=True)

    def _stem(self) -> str:
        return f"codes-{self.rank:05d}-of-{self.manifest.world_size:05d}"

    def shard_path(self, index: int) -> Path:
        return self.directory / f"{self._stem()}-{index:06d}.safetensors"

    @property
    def progress_path(self) -> Path:
        return self.directory / PROGRESS_DIR / f"rank-{self.rank:05d}-of-{self.manifest.world_size:05d}.json"

    def has_shard(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def shard_metadata(self, index: int) -> dict[str, Any]:
        """The metadata written with shard ``index`` (ints and the decoded stream state)."""
        return _decode_metadata(read_safetensors_header(self.shard_path(index))[0].get("__metadata__", {}))

    @property
    def is_done(self) -> bool:
        """Whether this process finished all its shards in an earlier run."""
        return self.progress_path.is_file()

    def write_shard(
        self,
        index: int,
        codes: np.ndarray,
        labels: np.ndarray,
        *,
        num_raw: int,
        num_skipped: int = 0,
        stream_state: dict | None = None,
        detail_ids: np.ndarray | None = None,
    ) -> Path:
        """Write shard ``index``: ``codes [n, A, L]`` (ids in ``[0, num_tokens)``; the semantic ids of
        a dual-codebook set), ``labels [n]``; ``num_raw`` stream examples were read for it,
        ``num_skipped`` of them did not decode. A dual-codebook set also needs ``detail_ids [n, A, L]``
        (ids in ``[0, num_detail_tokens)``)."""
        from safetensors.numpy import save_file

        m = self.manifest
        codes = np.asarray(codes)
        labels = np.asarray(labels, dtype=np.int64)
        expected = (labels.shape[0], m.num_augmentations, m.seq_len)
        if codes.shape != expected:
            raise DataError(f"shard {index}: codes must be [n, A, L] = {list(expected)}, got {list(codes.shape)}")
        if codes.size and (codes.min() < 0 or codes.max() >= m.num_tokens):
            raise DataError(f"shard {index}: token ids must lie in [0, {m.num_tokens}), got [{codes.min()}, {codes.max()}]")
        tensors = {"codes": np.ascontiguousarray(codes, dtype=m.codes_dtype), "labels": np.ascontiguousarray(labels)}
        if (detail_ids is not None) != m.is_dual_codebook:
            raise DataError(
                f"shard {index}: the manifest is of a {m.describe_tokenizer()}, so detail_ids are "
                f"{'required' if m.is_dual_codebook else 'not allowed'}; pass {'both id arrays' if m.is_dual_codebook else 'codes only'}"
            )
        if detail_ids is not None:
            detail_ids = np.asarray(detail_ids)
            if detail_ids.shape != expected:
                raise DataError(f"shard {index}: detail_ids must be [n, A, L] = {list(expected)}, got {list(detail_ids.shape)}")
            if detail_ids.size and (detail_ids.min() < 0 or detail_ids.max() >= m.num_detail_tokens):
                raise DataError(
                    f"shard {index}: detail ids must lie in [0, {m.num_detail_tokens}), got [{detail_ids.min()}, {detail_ids.max()}]"
                )
            tensors[DETAIL_IDS] = np.ascontiguousarray(detail_ids, dtype=m.detail_codes_dtype)
        metadata = {
            "rank": self.rank,
            "index": index,
            "num_examples": int(labels.shape[0]),
            "num_raw": int(num_raw),
            "num_skipped": int(num_skipped),
            "stream_state": stream_state,
            "tokenizer_fingerprint": m.tokenizer_fingerprint,
        }
        path = self.shard_path(index)
        with atomic_path(path, fsync=True) as tmp:
            save_file(tensors, str(tmp), metadata={key: json.dumps(value) for key, value in metadata.items()})
        return path

    def finish(self, num_shards: int) -> CodeShardManifest | None:
        """Mark this process done after ``num_shards`` shards; return the complete manifest if every
        process is now done (and write it), else ``None``."""
        missing = [i for i in range(num_shards) if not self.has_shard(i)]
        if missing:
            raise DataError(f"rank {self.rank} cannot finish: shards {missing[:5]} are missing from {self.directory}; rerun to write them")
        with atomic_path(self.progress_path, fsync=True) as tmp:
            tmp.write_text(json.dumps({"rank": self.rank, "num_shards": num_shards}) + "\n")
        try:
            return finalize_code_shards(self.directory)
        except _NotAllDone:
            return None


class _NotAllDone(DataError):
    pass


def finalize_code_shards(directory: str | os.PathLike) -> CodeShardManifest:
    """Write the complete manifest of ``directory`` once every process has finished (safe to call
    from several processes at once: they write the same file). Raises :class:`DataError` if a
    process has not finished; rerun the extraction with the same settings to finish it."""
    directory = Path(directory)
    manifest = CodeShardManifest.load(directory)
    world = manifest.world_size
    shards = []
    for rank in range(world):
        progress = directory / PROGRESS_DIR / f"rank-{rank:05d}-of-{world:05d}.json"
        if not progress.is_file():
            raise _NotAllDone(f"process {rank} of {world} has not finished writing {directory}; rerun the extraction with the same settings")
        num_shards = json.loads(progress.read_text())["num_shards"]
        for index in range(num_shards):
            path = directory / f"codes-{rank:05d}-of-{world:05d}-{index:06d}.safetensors"
            meta = _decode_metadata(read_safetensors_header(path)[0].get("__metadata__", {}))
            shards.append(
                {"file": path.name, "rank": rank, "index": index, "num_examples": meta["num_examples"], "num_skipped": meta["num_skipped"]}
            )
    manifest.shards = shards
    manifest.num_shards = len(shards)
    manifest.num_examples = sum(s["num_examples"] for s in shards)
    manifest.num_skipped = sum(s["num_skipped"] for s in shards)
    manifest.complete = True
    manifest.save(directory)
    return manifest


def shard_file(directory: str | os.PathLike, shard: dict[str, Any]) -> Path:
    """The file of a manifest's ``shard`` entry, which must name a file inside ``directory`` (the
    extraction writes bare names there): a manifest naming ``../../etc/passwd``, an absolute path or
    a symlink out of the folder is refused with :class:`DataError`."""
    directory = Path(directory)
    name = shard.get("file") if isinstance(shard, dict) else None
    if not isinstance(name, str) or not name:
        raise DataError(f"{directory / MANIFEST_NAME} lists a shard without a file name ({shard!r:.100}); rerun the extraction")
    path, root = directory / name, directory.resolve()
    resolved = path.resolve()  # symlinks followed: a link out of the folder is refused too
    if resolved == root or not resolved.is_relative_to(root):
        raise DataError(
            f"{directory / MANIFEST_NAME} names the shard file {name!r}, which is not inside {directory}; shard files "
            "are read from the manifest's own folder only: fix the manifest or rerun the extraction"
        )
    return path


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """``(header, data_start)`` of a safetensors file: the JSON header (tensor name -> dtype,
    shape, data_offsets relative to ``data_start``; ``"__metadata__"``) and the byte offset where
    tensor data begins."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable safetensors file ({err}); delete it and rerun the extraction to rewrite it") from err
    return header, 8 + size


def _decode_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in metadata.items()}


def _memmap(path: Path, name: str) -> np.ndarray:
    header, start = read_safetensors_header(path)
    info = header.get(name)
    if info is None or info["dtype"] not in _SAFETENSORS_DTYPES:
        raise DataError(f"{path} has no integer tensor {name!r}; it is not a code shard")
    begin, end = info["data_offsets"]
    if end == begin:
        return np.zeros(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
    return np.memmap(path, dtype=_SAFETENSORS_DTYPES[info["dtype"]], mode="r", offset=start + begin, shape=tuple(info["shape"]))


class CodeShardDataset(torch.utils.data.Dataset):
    """``(codes [L] int64, label int64)`` pairs from a complete code-shard directory.

    A dual-codebook directory (IAR2's tokenizer) gives ``(semantic_ids [L], label, detail_ids [L])``,
    all int64: the ids a model reads first, then the label, as everywhere, and the second id of each
    position last (like ``with_fine_ids``), so a batch unpacks as ``semantic_ids, labels, detail_ids``.

    Args:
        directory: a directory written by :func:`masc_hf.data.extract_codes`.
        cluster_map: optional ``MASCClusterMap`` of the same tokenizer: codes are returned as
            coarse (cluster) ids. Its codebook fingerprint is checked against the manifest.
        augmentation: which view to return (``0 <= augmentation < A``); ``None`` picks one view
            per item at random (LlamaGen's training), reproducibly from ``seed`` and the epoch.
        seed: seed of the random views; ``None`` draws one from torch's global generator, so
            ``torch.manual_seed`` fixes it. The view of item ``i`` depends only on
            ``(seed, epoch, i)``, not on DataLoader workers or on how far a run got.
        mmap: memory-map the shards (default; pages are shared between DataLoader workers and
            processes) or load them into memory.
        with_fine_ids: with a ``cluster_map``, items are ``(cluster ids, label, codebook ids)``: what
            a MASC refiner trains on (the cluster ids are the map's encoding of the codebook ids).
        tokenizer_fingerprint: the fingerprint of the tokenizer the codes must come from
            (``masc_hf.vq.tokenizer_fingerprint(vq)``, or a model config's); another one is refused.

    Call :meth:`set_epoch` at the start of each epoch to draw new views.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        cluster_map: MASCClusterMap | None = None,
        *,
        augmentation: int | None = None,
        seed: int | None = None,
        mmap: bool = True,
        with_fine_ids: bool = False,
        tokenizer_fingerprint: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = CodeShardManifest.load(self.directory)
        if not self.manifest.complete:
            raise DataError(
                f"the code shards in {self.directory} are incomplete (an extraction is running or was interrupted); "
                "rerun the extraction with the same settings to finish them"
            )
        if tokenizer_fingerprint is not None and tokenizer_fingerprint != self.manifest.tokenizer_fingerprint:
            raise DataError(
                f"the code shards in {self.directory} come from the {self.manifest.describe_tokenizer()} (fingerprint "
                f"{self.manifest.tokenizer_fingerprint}) but tokenizer {tokenizer_fingerprint} was expected; extract the codes "
                "with the expected tokenizer (recipes/extract_codes.py), or use the tokenizer that wrote them"
            )
        if cluster_map is not None and self.manifest.is_dual_codebook:
            raise DataError(
                f"the code shards in {self.directory} hold dual-codebook codes ({self.manifest.describe_tokenizer()}); "
                "cluster maps over them are not supported yet: drop cluster_map"
            )
        if cluster_map is not None:
            self.manifest.check_cluster_map(cluster_map, what=f"the code shards in {self.directory}")
        num_augmentations = self.manifest.num_augmentations
        if augmentation is not None and not (isinstance(augmentation, int) and 0 <= augmentation < num_augmentations):
            raise DataError(f"augmentation must be None or an index in [0, {num_augmentations}), got {augmentation!r}")
        if with_fine_ids and cluster_map is None:
            raise DataError("with_fine_ids=True returns the codebook ids beside the cluster ids: it needs a cluster_map")
        self.cluster_map = cluster_map
        self.with_fine_ids = with_fine_ids
        self.augmentation = augmentation
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)
        self.mmap = mmap
        self.epoch = 0
        self._paths = [shard_file(self.directory, s) for s in self.manifest.shards]  # before any shard is read
        counts = [int(s["num_examples"]) for s in self.manifest.shards]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._shards: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = None
        self._views: np.ndarray | None = None

    @property
    def num_augmentations(self) -> int:
        return self.manifest.num_augmentations

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.class_names

    @property
    def vocab_size(self) -> int:
        """Size of the id space of returned codes: the number of clusters with a map, else of tokens
        (of semantic tokens for a dual-codebook set)."""
        return self.cluster_map.num_clusters if self.cluster_map is not None else self.manifest.num_tokens

    @property
    def is_dual_codebook(self) -> bool:
        """Whether items carry ``detail_ids`` (a dual-codebook set, IAR2's tokenizer)."""
        return self.manifest.is_dual_codebook

    @property
    def detail_vocab_size(self) -> int | None:
        """Size of the detail codebook of a dual-codebook set; ``None`` for a single-codebook set."""
        return self.manifest.num_detail_tokens

    def require_single_codebook(self, consumer: str) -> None:
        """Raise :class:`DataError` if these are dual-codebook codes, which ``consumer`` (e.g. "LlamaGen
        training") cannot read: it takes one id per position."""
        if self.is_dual_codebook:
            raise DataError(
                f"{consumer} reads one token id per position, but {self.directory} holds dual-codebook (semantic, detail) codes "
                f"of the {self.manifest.describe_tokenizer()}; extract codes with a single-codebook VQModel for it "
                "(dual-codebook codes are for IAR2's model)"
            )

    def set_epoch(self, epoch: int) -> None:
        """Draw the random views of ``epoch`` (before creating the epoch's DataLoader iterator)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._views = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        index %= len(self)
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        row = index - int(self._offsets[shard])
        codes, labels, details = self._load()[shard]
        view = self.augmentation if self.augmentation is not None else int(self._epoch_views()[index])
        fine_ids = torch.from_numpy(np.asarray(codes[row, view], dtype=np.int64))
        label = torch.tensor(int(labels[row]), dtype=torch.long)
        # ids are checked here, where they enter training
        if details is not None:
            detail_ids = torch.from_numpy(np.asarray(details[row, view], dtype=np.int64))
            self._check_ids(fine_ids, index, self.manifest.num_tokens, "semantic ids", "semantic codebook")
            self._check_ids(detail_ids, index, self.manifest.num_detail_tokens, "detail ids", "detail codebook")
            return fine_ids, label, detail_ids
        self._check_ids(fine_ids, index, self.manifest.num_tokens, "token ids", "tokenizer")
        if self.cluster_map is not None:
            coarse_ids = self.cluster_map.encode(fine_ids)
            return (coarse_ids, label, fine_ids) if self.with_fine_ids else (coarse_ids, label)
        return fine_ids, label

    def _check_ids(self, ids: torch.Tensor, index: int, num_tokens: int, what: str, codebook: str) -> None:
        if int(ids.min()) < 0 or int(ids.max()) >= num_tokens:
            raise DataError(
                f"example {index} of {self.directory} holds {what} in [{int(ids.min())}, {int(ids.max())}] "
                f"but the {codebook} has {num_tokens} codes; the shards are corrupt: rerun the extraction"
            )

    def _epoch_views(self) -> np.ndarray:
        if self._views is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._views = rng.integers(0, self.num_augmentations, size=len(self), dtype=np.int16)
        return self._views

    def _load(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        # opened lazily, so each DataLoader worker maps the files itself
        if self._shards is None:
            self._shards = [self._open(path, s) for path, s in zip(self._paths, self.manifest.shards)]
        return self._shards

    def _open(self, path: Path, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if not path.is_file():
            raise DataError(f"code shard {path} listed in the manifest is missing; restore it or rerun the extraction")
        m = self.manifest
        names = ("codes", "labels", DETAIL_IDS) if m.is_dual_codebook else ("codes", "labels")
        if self.mmap:
            arrays = [_memmap(path, name) for name in names]
        else:
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            missing = [name for name in names if name not in tensors]
            if missing:
                raise DataError(f"{path} has no tensor {missing[0]!r}; it is not a code shard of this manifest: rerun the extraction")
            arrays = [tensors[name] for name in names]
        codes, labels, details = arrays[0], arrays[1], (arrays[2] if m.is_dual_codebook else None)
        expected = (int(info["num_examples"]), m.num_augmentations, m.seq_len)
        if codes.shape != expected or labels.shape != expected[:1]:
            raise DataError(f"code shard {path} holds codes {list(codes.shape)}, expected {list(expected)}; rerun the extraction")
        if details is not None and details.shape != expected:
            raise DataError(f"code shard {path} holds detail_ids {list(details.shape)}, expected {list(expected)}; rerun the extraction")
        return codes, labels, details

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = None  # memory maps are reopened in the receiving process
        return state
