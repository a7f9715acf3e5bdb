"""FID, Inception Score, Precision and Recall with torch-fidelity (the MASC paper's tool), against an
image folder, an ADM ``.npz`` or precomputed statistics. Design notes (where it departs from a bare
``torch_fidelity.calculate_metrics``, the inputs, when FID uses statistics): docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_file
from ..data.pixels import images_to_tensor
from ..errors import MASCError
from .sampling import SampleError, _height_width, check_npz_images, check_sample_folder, load_npz_images

logger = logging.getLogger(__name__)

__all__ = [
    "FidelityError",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "INCEPTION_WEIGHTS_SHA256_PREFIX",
    "InceptionWeightsError",
    "calculate_metrics",
    "default_inception_weights_path",
    "load_inception_weights",
    "resolve_inception_weights",
    "save_statistics",
]

# torch-fidelity's own file (torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3): the TF
# FID Inception converted to PyTorch, downloaded by torch-fidelity into torch hub's checkpoints dir.
INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ENV = "MASC_INCEPTION_WEIGHTS"
# torch-fidelity publishes no full hash of the file; torch hub's naming convention (which
# torch.hub.load_state_dict_from_url(check_hash=True) checks) makes the 8 hex digits of the name the
# start of its sha256. Tests with stand-in weights set this to their file's sha256 (no API turns it off).
INCEPTION_WEIGHTS_SHA256_PREFIX = "6726825d"
_GET_WEIGHTS = f"use {INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL}"
FEATURE_EXTRACTOR = "inception-v3-compat"
POOL = "2048"  # pool3 features: FID, KID, Precision/Recall
LOGITS = "logits_unbiased"  # IS
STATISTICS_DIM = 2048

# torch-fidelity's names, and the short names they are also returned under
ALIASES = {
    "frechet_inception_distance": "fid",
    "inception_score_mean": "is_mean",
    "inception_score_std": "is_std",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
}


class InceptionWeightsError(MASCError):
    """The Inception weights file is missing or cannot be loaded; the message says how to get it."""


class FidelityError(MASCError):
    """A metric request that cannot be computed: no metric, a reference without the images or
    statistics a metric needs, malformed statistics, or an option out of range."""


# ---------------------------------------------------------------------------------------- weights
def default_inception_weights_path() -> Path:
    """Where torch-fidelity caches the weights it downloads: ``<torch hub dir>/checkpoints/<file>``
    (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(path: str | os.PathLike | None = None) -> str:
    """The Inception weights file to use: ``path``, else ``$MASC_INCEPTION_WEIGHTS``, else
    torch-fidelity's own cache (:func:`default_inception_weights_path`).

    Raises:
        InceptionWeightsError: the chosen file does not exist; the message gives the download URL
        and the three ways to provide the file.
    """
    if path is not None:
        chosen, how = Path(path), "the path given"
    elif os.environ.get(INCEPTION_WEIGHTS_ENV):
        chosen, how = Path(os.environ[INCEPTION_WEIGHTS_ENV]), f"${INCEPTION_WEIGHTS_ENV}"
    else:
        chosen, how = default_inception_weights_path(), "torch-fidelity's cache"
    if chosen.is_file():
        return str(chosen)
    raise InceptionWeightsError(
        f"Inception weights not found at {chosen} ({how}). Download {INCEPTION_WEIGHTS_URL} "
        f"(torch-fidelity's FID Inception, {INCEPTION_WEIGHTS_FILE}, about 95 MB) and either pass its path "
        f"(inception_weights=... / --inception-weights), set {INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_WEIGHTS_FILE}, "
        f"or copy it to {default_inception_weights_path()}, where torch-fidelity would download it by itself on a "
        "machine with internet access."
    )


def load_inception_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in the Inception weights file ``path``, checked before anything unpickles it:
    its sha256 must start with :data:`INCEPTION_WEIGHTS_SHA256_PREFIX` (torch-fidelity's file), and
    it is read with ``torch.load(weights_only=True)`` (tensors only, never code). torch-fidelity
    loads its weights with ``weights_only=False``, so it is never given the file itself.

    Raises:
        InceptionWeightsError: another file, one that is not a plain state dict, or an unreadable one.
    """
    path = Path(path)
    try:
        data = path.read_bytes()  # read once: what is checked is what is loaded
    except OSError as err:
        raise InceptionWeightsError(f"cannot read the Inception weights {path} ({err}); {_GET_WEIGHTS}") from err
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(INCEPTION_WEIGHTS_SHA256_PREFIX):
        raise InceptionWeightsError(
            f"{path} is not torch-fidelity's Inception weights file {INCEPTION_WEIGHTS_FILE}: its sha256 is "
            f"{digest[:16]}..., but that file's starts with {INCEPTION_WEIGHTS_SHA256_PREFIX} (the digits in its name). "
            f"FID and IS are only comparable with that exact file: {_GET_WEIGHTS}"
        )
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for anything but tensors, or a broken archive
        raise InceptionWeightsError(
            f"{path} cannot be loaded as plain tensors with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err)[:200]}); it is refused unread. {_GET_WEIGHTS}"
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InceptionWeightsError(f"{path} does not hold a state dict (name -> tensor); {_GET_WEIGHTS}")
    return state_dict


def _feature_extractor(state_dict: dict[str, torch.Tensor], layers: list[str], cuda: bool, progress: bool):
    """torch-fidelity's InceptionV3 with the checked ``state_dict`` (:func:`load_inception_weights`),
    giving ``layers``; on the GPU if ``cuda``."""
    from torch_fidelity.utils import create_feature_extractor

    buffer = io.BytesIO()  # torch-fidelity unpickles only what we serialise here from plain tensors
    torch.save(state_dict, buffer)
    buffer.seek(0)
    try:  # on the CPU first, so that only the loading of the weights is caught here
        extractor = create_feature_extractor(
            FEATURE_EXTRACTOR, layers, cuda=False, feature_extractor_weights_path=buffer, verbose=progress
        )
    except Exception as err:  # load_state_dict (keys, shapes)
        raise InceptionWeightsError(
            f"the weights cannot be loaded into torch-fidelity's InceptionV3 ({type(err).__name__}: {str(err)[:300]}); "
            f"{_GET_WEIGHTS}"
        ) from err
    return extractor.cuda() if cuda else extractor


def _import_torch_fidelity():
    try:
        import torch_fidelity
    except ImportError as err:  # torchvision missing or not matching torch shows up here too
        raise FidelityError(
            f"torch-fidelity cannot be imported ({err}); install it with `pip install 'masc-hf[eval]'` and a "
            "torchvision built for your torch"
        ) from err
    return torch_fidelity


# ---------------------------------------------------------------------------------------- inputs
@dataclass
class _Source:
    """One checked input: where its images come from (if any) and its statistics (if any)."""

    name: str
    count: int | None = None
    size: tuple[int, int] | None = None  # (height, width)
    files: list[Path] | None = None  # a folder's PNGs
    npz: Path | None = None  # an .npz's arr_0
    array: np.ndarray | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def has_images(self) -> bool:
        return self.files is not None or self.npz is not None or self.array is not None

    def dataset(self):
        """A torch Dataset of uint8 ``[3, H, W]`` tensors (torch-fidelity's input form)."""
        from torch_fidelity.datasets import ImagesPathDataset

        if self.files is not None:
            return ImagesPathDataset([str(p) for p in self.files])  # torch-fidelity's own folder reader
        return _ArrayDataset(self.array if self.array is not None else load_npz_images(self.npz))


class _ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:  # uint8 [3, H, W], as torch-fidelity reads images
        return images_to_tensor(self.images[index : index + 1], value_range=None)[0]


def _describe(source, role: str, *, expected_count=None, expected_size=None) -> _Source:
    """Check ``source`` from headers only (no pixel is read) and say what it holds; a reference
    ``.npz`` may hold statistics (``mu``, ``sigma``), which are loaded and checked."""
    if isinstance(source, np.ndarray):
        return _describe_array(source, role, expected_count, expected_size)
    if hasattr(source, "detach"):
        raise SampleError(f"{role}: pass images as a uint8 numpy array [N, H, W, 3], not a torch tensor: tensor.cpu().numpy()")
    if not isinstance(source, (str, os.PathLike)):
        raise SampleError(f"{role} must be a folder of PNGs, an .npz or a uint8 array [N, H, W, 3], got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        files = check_sample_folder(path, expected_count=expected_count, expected_size=expected_size)
        from PIL import Image

        with Image.open(files[0]) as image:
            width, height = image.size
        return _Source(str(path), count=len(files), size=(height, width), files=files)
    if not path.exists():
        raise SampleError(f"{role} {path} does not exist; pass a folder of PNGs or an .npz (arr_0, or mu and sigma)")
    members = _npz_members(path, role)
    described = _Source(str(path))
    if role == "reference" and {"mu", "sigma"} <= members:
        described.mu, described.sigma = _load_statistics(path)
    if "arr_0" in members or described.mu is None:  # no statistics: arr_0 is needed (the check says so)
        count, height, width = check_npz_images(path, expected_count=expected_count, expected_size=expected_size)
        described.npz, described.count, described.size = path, count, (height, width)
    return described


def _describe_array(array: np.ndarray, role: str, expected_count, expected_size) -> _Source:
    if array.dtype != np.uint8:
        raise SampleError(
            f"{role} has dtype {array.dtype}, but uint8 pixel values 0..255 are expected; convert [0, 1] floats with "
            "np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)"
        )
    if array.ndim != 4 or array.shape[-1] != 3:
        hint = "; it looks channels-first: use images.transpose(0, 2, 3, 1)" if array.ndim == 4 and array.shape[1] == 3 else ""
        raise SampleError(f"{role} has shape {list(array.shape)}, but [N, H, W, 3] (RGB, channels last) is expected{hint}")
    count, height, width = array.shape[:3]
    if count < 1:
        raise SampleError(f"{role} holds no images")
    if expected_count is not None and count != expected_count:
        raise SampleError(f"{role} holds {count} images but {expected_count} are expected")
    size = _height_width(expected_size)
    if size is not None and (height, width) != size:
        raise SampleError(f"{role} holds {width}x{height} images but {size[1]}x{size[0]} is expected")
    return _Source(f"{role} array", count=count, size=(height, width), array=array)


def _npz_members(path: Path, role: str) -> set[str]:
    if not zipfile.is_zipfile(path):
        raise SampleError(f"{role} {path} is neither a folder nor an .npz archive (np.savez output)")
    with zipfile.ZipFile(path) as archive:
        return {name.removesuffix(".npy") for name in archive.namelist()}


def _load_statistics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        mu, sigma = data["mu"], data["sigma"]
    d = STATISTICS_DIM
    if mu.shape != (d,) or sigma.shape != (d, d):
        raise FidelityError(
            f"{path}: mu {list(mu.shape)} and sigma {list(sigma.shape)} are not Inception pool3 statistics "
            f"([{d}] and [{d}, {d}]); make them with masc_hf.evaluation.save_statistics, or use ADM's reference batch"
        )
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise FidelityError(f"{path}: mu and sigma must be float arrays, got {mu.dtype} and {sigma.dtype}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise FidelityError(f"{path}: mu or sigma contains NaN or inf; recompute the statistics")
    return mu.astype(np.float64), sigma.astype(np.float64)


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise FidelityError(f"device must be cpu or cuda[:N] (torch-fidelity runs on these only), got {device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FidelityError(f"device {device} was asked for, but torch.cuda.is_available() is False; use device='cpu'")
    return device


# ---------------------------------------------------------------------------------------- features
def _cache_file(cache_dir: Path, source: _Source, weights: str, layers: list[str]) -> Path | None:
    """The cache entry of a file or folder input, keyed by its files' names, sizes and times, the
    weights file and the layers; None for arrays (nothing cheap identifies them)."""
    from torch_fidelity import FeatureExtractorInceptionV3, __version__

    if source.files is not None:
        paths = source.files
    elif source.npz is not None:
        paths = [source.npz]
    else:
        return None

    def stat(p: Path) -> list:
        info = p.stat()
        return [str(p.resolve()), info.st_size, info.st_mtime_ns]

    key = json.dumps(
        [[stat(p) for p in paths], stat(Path(weights)), sorted(layers), __version__, FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir / f"{Path(source.name).name}-{FEATURE_EXTRACTOR}-{digest}.pt"


def _extract(source: _Source, extractor, weights: str, *, batch_size, cuda, progress, cache_dir) -> dict:
    """``{layer: float32 tensor [N, d]}`` for ``source``'s images and ``extractor``'s layers, from
    the cache when it has them."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    layers = list(extractor.get_requested_features_list())
    cached = None if cache_dir is None else _cache_file(Path(cache_dir), source, weights, layers)
    if cached is not None and cached.is_file():
        logger.info("%s: Inception features from the cache %s", source.name, cached)
        return torch.load(cached, map_location="cpu", weights_only=True)
    logger.info("%s: extracting Inception features (%s) of %s images", source.name, ", ".join(layers), source.count)
    dataset = source.dataset()
    # folders: torch-fidelity's DataLoader workers decode PNGs in parallel; arrays need no workers
    features = get_featuresdict_from_dataset(
        dataset, extractor, batch_size, cuda, save_cpu_ram=source.files is None, verbose=progress
    )
    if cached is not None:
        with atomic_file(cached) as handle:
            torch.save(features, handle)
    return features


# ---------------------------------------------------------------------------------------- metrics
def calculate_metrics(
    samples,
    reference=None,
    *,
    inception_weights: str | os.PathLike | None = None,
    fid: bool = True,
    isc: bool = True,
    prc: bool = True,
    kid: bool = False,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    expected_count: int | None = None,
    expected_size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    isc_splits: int = 10,
    prc_neighborhood: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, float]:
    """FID, Inception Score, Precision/Recall (and KID) of ``samples`` against ``reference``.

    Args:
        samples: the generated images: a folder of PNGs, an ``.npz`` (``arr_0`` uint8
            ``[N, H, W, 3]``) or a uint8 array ``[N, H, W, 3]``.
        reference: the real images or their statistics: as ``samples``, or an ``.npz`` with ``mu``
            and ``sigma`` (see docs/evaluation.md: FID then uses them). Needed for FID, PRC, KID.
        inception_weights: torch-fidelity's InceptionV3 weights file (see
            :func:`resolve_inception_weights` for the fallbacks). Nothing is downloaded.
        fid, isc, prc, kid: which metrics to compute.
        batch_size: images per Inception forward pass.
        device: ``"cuda"``, ``"cuda:N"`` or ``"cpu"``; default cuda when available.
        expected_count: the number of sample images (the paper: 50,000); default: any (a sample
            folder with a ``sampling.json``: its ``num_images``).
        expected_size: the sample images' size, an int or ``(height, width)``. Default: that of the
            reference images when the reference has images (LlamaGen evaluates 384 px models after
            resizing their samples to 256, the reference's size); pass it to allow another size.
        cache_dir: keep the Inception features of file and folder inputs here, keyed by their
            files' names, sizes and times and by the weights, so that a later call skips them.
        progress: show torch-fidelity's progress bars.
        isc_splits, prc_neighborhood, kid_subsets, kid_subset_size: torch-fidelity's options
            (its defaults; PRC's k = 3 is the ADM evaluator's).

    Returns:
        torch-fidelity's keys (``frechet_inception_distance``, ``inception_score_mean``,
        ``inception_score_std``, ``precision``, ``recall``, ``f_score``,
        ``kernel_inception_distance_mean``/``_std``) for the metrics asked for, plus the short
        names ``fid``, ``is_mean``, ``is_std``, ``kid_mean``, ``kid_std``; floats.

    Raises:
        InceptionWeightsError: no weights file, or one that does not load.
        SampleError: a folder or ``.npz`` or array with the wrong count, size, dtype or shape.
        FidelityError: no metric, no reference for FID/PRC/KID, a statistics-only reference for
            PRC/KID, malformed statistics.

    Example:
        >>> m = calculate_metrics("samples/gpt-b-masc.npz", "VIRTUAL_imagenet256_labeled.npz",
        ...                       inception_weights="weights-inception-2015-12-05-6726825d.pth", expected_count=50_000)  # doctest: +SKIP
        >>> m["fid"], m["is_mean"], m["precision"], m["recall"]  # doctest: +SKIP
    """
    # everything cheap first: options, weights file, inputs (headers only), then the heavy work
    if not (fid or isc or prc or kid):
        raise FidelityError("no metric asked for: set at least one of fid, isc, prc, kid")
    for name, value in (("batch_size", batch_size), ("isc_splits", isc_splits), ("prc_neighborhood", prc_neighborhood),
                        ("kid_subsets", kid_subsets), ("kid_subset_size", kid_subset_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FidelityError(f"{name} must be a positive int, got {value!r}")
    weights = resolve_inception_weights(inception_weights)
    state_dict = load_inception_weights(weights)
    device = _resolve_device(device)
    _import_torch_fidelity()

    needs_reference = fid or prc or kid
    if needs_reference and reference is None:
        raise FidelityError("FID, precision/recall and KID compare with a reference: pass reference=... (or only isc=True)")
    ref = _describe(reference, "reference") if needs_reference else None
    if ref is not None and not ref.has_images and (prc or kid):
        raise FidelityError(
            f"{ref.name} holds statistics only (mu, sigma): precision/recall and KID need reference images; pass an "
            ".npz with arr_0 (ADM's reference batches have both) or a folder, or ask for FID and IS only"
        )
    src = _describe(samples, "samples", expected_count=expected_count, expected_size=expected_size)
    if expected_size is None and ref is not None and ref.size is not None and src.size != ref.size:
        (h, w), (rh, rw) = src.size, ref.size
        raise SampleError(
            f"{src.name} holds {w}x{h} images but the reference {ref.name} holds {rw}x{rh} images; LlamaGen resizes "
            f"samples to the reference's size before evaluating. Resize them, or pass expected_size=({h}, {w}) to "
            "evaluate them at this size anyway"
        )
    if isc and src.count < isc_splits:  # torch-fidelity would average empty splits: IS NaN
        raise FidelityError(
            f"{src.name} holds {src.count} images, fewer than the Inception Score's isc_splits={isc_splits} splits; "
            f"evaluate at least {isc_splits} images, or pass isc_splits={src.count} or fewer"
        )
    if src.count is not None and src.count < 2 and (fid or prc):
        raise SampleError(f"{src.name} holds {src.count} image; FID and precision/recall need at least 2")
    if prc and prc_neighborhood >= min(src.count, ref.count):
        raise FidelityError(
            f"prc_neighborhood={prc_neighborhood} needs more than {prc_neighborhood} images on each side "
            f"(samples {src.count}, reference {ref.count})"
        )
    if kid and kid_subset_size > min(src.count, ref.count):
        raise FidelityError(
            f"kid_subset_size={kid_subset_size} is larger than the samples ({src.count}) or the reference ({ref.count}); "
            "pass a smaller kid_subset_size"
        )

    from torch_fidelity.defaults import DEFAULTS
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    layers = ([LOGITS] if isc else []) + ([POOL] if fid or prc or kid else [])
    ref_needs_images = prc or kid or (fid and ref.mu is None)
    cuda = device.type == "cuda"
    with torch.cuda.device(device) if cuda and device.index is not None else contextlib.nullcontext():
        extractor = _feature_extractor(state_dict, layers, cuda, progress)
        options = dict(batch_size=batch_size, cuda=cuda, progress=progress, cache_dir=cache_dir)
        sample_features = _extract(src, extractor, weights, **options)
        ref_features = _extract(ref, extractor, weights, **options) if ref_needs_images else None

    rng_seed, shuffle = DEFAULTS["rng_seed"], DEFAULTS["samples_shuffle"]
    metrics: dict[str, float] = {}
    if isc:
        metrics.update(isc_features_to_metric(sample_features[LOGITS], isc_splits, shuffle, rng_seed))
    if fid:
        sample_stats = fid_features_to_statistics(sample_features[POOL])
        if ref.mu is not None:  # the reference's statistics: both sides in float64
            sample_stats = {k: v.astype(np.float64) for k, v in sample_stats.items()}
            ref_stats = {"mu": ref.mu, "sigma": ref.sigma}
        else:
            ref_stats = fid_features_to_statistics(ref_features[POOL])
        metrics.update(fid_statistics_to_metric(sample_stats, ref_stats, progress))
    if prc:  # precision: samples inside the reference manifold; recall: the converse
        metrics.update(prc_features_to_metric(
            sample_features[POOL], ref_features[POOL], prc_neighborhood=prc_neighborhood,
            prc_batch_size=DEFAULTS["prc_batch_size"], save_cpu_ram=True, verbose=progress,
        ))
    if kid:
        metrics.update(kid_features_to_metric(
            sample_features[POOL], ref_features[POOL], kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
            rng_seed=rng_seed, verbose=progress,
        ))
    metrics = {key: float(value) for key, value in metrics.items()}
    metrics.update({ALIASES[key]: value for key, value in list(metrics.items()) if key in ALIASES})
    return metrics


def save_statistics(
    source,
    path: str | os.PathLike,
    *,
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    expected_count: int | None = None,
    expected_size: int | tuple[int, int] | None = None,
    progress: bool = True,
) -> Path:
    """Compute the Inception pool3 statistics of ``source``'s images once and save them for reuse as
    a FID reference: an ``.npz`` with ``mu`` (float64 ``[2048]``), ``sigma`` (float64
    ``[2048, 2048]``, unbiased) and ``num_images``; written atomically.

    ``source`` is a folder of PNGs, an ``.npz`` with ``arr_0`` or a uint8 array ``[N, H, W, 3]``;
    the other arguments are as in :func:`calculate_metrics`. Returns the path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise FidelityError(f"{path} does not end in .npz; name the statistics file e.g. {path.name}.npz")
    weights = resolve_inception_weights(inception_weights)
    state_dict = load_inception_weights(weights)
    device = _resolve_device(device)
    _import_torch_fidelity()
    src = _describe(source, "source", expected_count=expected_count, expected_size=expected_size)
    if src.count < 2:
        raise SampleError(f"{src.name} holds {src.count} image; statistics need at least 2")
    from torch_fidelity.metric_fid import fid_features_to_statistics

    cuda = device.type == "cuda"
    with torch.cuda.device(device) if cuda and device.index is not None else contextlib.nullcontext():
        extractor = _feature_extractor(state_dict, [POOL], cuda, progress)
        features = _extract(src, extractor, weights, batch_size=batch_size, cuda=cuda, progress=progress, cache_dir=None)
    stats = fid_features_to_statistics(features[POOL])
    with atomic_file(path) as handle:
        np.savez(handle, mu=stats["mu"].astype(np.float64), sigma=stats["sigma"].astype(np.float64), num_images=np.int64(src.count))
    logger.info("saved the Inception statistics of %d images of %s to %s", src.count, src.name, path)
    return path
