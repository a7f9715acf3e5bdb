"""The paper's sampling protocol: ``num_per_class`` images of every class as a folder of PNGs (one
generator per image, resumable on any number of processes), and the ADM ``.npz`` the FID evaluator
reads. Design notes (seeds, batches, resuming, the ``.npz`` format): docs/sampling.md.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from .._version import __version__
from .._io import atomic_file, atomic_path, write_text_atomic
from ..errors import MASCError

logger = logging.getLogger(__name__)

__all__ = [
    "SampleError",
    "check_npz_images",
    "check_sample_folder",
    "image_seed",
    "load_npz_images",
    "pack_npz",
    "sample_images",
]

SETTINGS_NAME = "sampling.json"
FORMAT_NAME = "masc-hf-samples"
FORMAT_VERSION = 1
SEED_RULE = "numpy SeedSequence([seed, index]).generate_state(1, uint64) >> 1"
# Everything in sampling.json that an image depends on; a resume must match every one.
_RUN_SETTINGS = (
    "format_version",
    "seed_rule",
    "seed",
    "num_per_class",
    "class_labels",
    "guidance_scale",
    "temperature",
    "top_k",
    "top_p",
    "image_size",
    "pipeline",
    "cluster_map_fingerprint",
    "transformer_dtype",
    "semantic_guidance",
    "detail_guidance",
    "attention_guidance_weight",
)
# IAR2Pipeline's guidance options (None for a MASCPipeline run, so older sampling.json files still match)
IAR2_GUIDANCE = ("semantic_guidance", "detail_guidance", "attention_guidance_weight")


class SampleError(MASCError):
    """A sample folder or ``.npz`` that does not hold what it should (image count, size, dtype or
    shape), or a sampling run resumed with other settings."""


def image_seed(base_seed: int, index: int) -> int:
    """The seed of image ``index`` in a run seeded with ``base_seed``: the top 63 bits of the first
    64-bit word of numpy's ``SeedSequence([base_seed, index])``.

    A hash, so nearby seeds and indices give unrelated streams; fixed across machines and numpy
    versions; in ``[0, 2**63)``, a valid ``torch.Generator.manual_seed`` value.
    """
    for name, value in (("base_seed", base_seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SampleError(f"{name} must be a non-negative int, got {value!r}")
    word = np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(word) >> 1


def image_path(folder: str | os.PathLike, index: int) -> Path:
    """``folder/{index:06d}.png``."""
    return Path(folder) / f"{index:06d}.png"


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample_images(
    pipe,
    out_dir: str | os.PathLike,
    *,
    num_per_class: int = 50,
    class_labels: Sequence[int | str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    guidance_scale: float | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    process_index: int = 0,
    num_processes: int = 1,
    image_size_eval: int | None = None,
    progress: bool = True,
    semantic_guidance: Sequence[float] | float | None = None,
    detail_guidance: Sequence[float] | float | None = None,
    attention_guidance_weight: float | None = None,
    compile: bool = False,
) -> dict:
    """Draw this process's share of ``num_per_class`` images per class into ``out_dir`` (resumable).

    Args:
        pipe: a :class:`~masc_hf.MASCPipeline` or :class:`~masc_hf.IAR2Pipeline` (on the device to sample on).
        out_dir: the sample folder; created if needed. Rerun with the same settings to resume.
        num_per_class: images per class (the paper: 50).
        class_labels: class ids or names (default: every class of the model, in order).
        seed: base seed; image ``i`` uses ``image_seed(seed, i)``.
        batch_size: images per pipeline call (changes the images at most by float rounding; keep it
            when resuming for byte-identical results).
        guidance_scale, temperature, top_k, top_p: sampling settings, as in the pipeline
            (``guidance_scale=None``: the model's default, recorded as its value).
        process_index, num_processes: this process draws the images ``i % num_processes == process_index``
            (like ``batch_size``: keep them when resuming for byte-identical results).
        image_size_eval: resize the images (PIL bicubic) to this square side before saving, as
            LlamaGen does to evaluate its 384 px models against the 256 px reference batch; ``None``
            keeps the pipeline's size.
        progress: show a progress bar.
        semantic_guidance, detail_guidance, attention_guidance_weight: an IAR2Pipeline's guidance
            (``guidance_scale`` is then not used); ``None`` takes the model's defaults, recorded as values.
        compile: a MASCPipeline's compiled decode step (``pipe(..., compile=True)``): much
            faster on a GPU over a whole run, after one compilation per batch shape; the images are
            the eager ones up to float rounding (each image has its own generator). Recorded, like
            ``batch_size``, not required to match when resuming.

    Returns:
        ``{"out_dir", "num_images", "generated", "skipped", "settings"}``: the run's image count,
        the images this process drew and those it found already written, and ``sampling.json``.

    Example:
        >>> sample_images(pipe, "samples/gpt-b-masc", num_per_class=50, guidance_scale=2.0)  # doctest: +SKIP
        >>> pack_npz("samples/gpt-b-masc", "samples/gpt-b-masc.npz")  # doctest: +SKIP
    """
    import torch

    out_dir = Path(out_dir)
    for name, value in (("num_per_class", num_per_class), ("batch_size", batch_size), ("num_processes", num_processes)):
        _check_positive_int(name, value)
    if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < num_processes:
        raise SampleError(f"process_index {process_index!r} is outside [0, {num_processes}) processes")
    image_seed(seed, 0)  # checks the seed
    compile = bool(compile)
    if compile and _is_iar2(pipe):
        raise SampleError("compile=True (--compile) applies to a MASCPipeline; an IAR2Pipeline's model has no compiled decode step, so drop it")
    num_classes = pipe.transformer.config.num_classes
    labels = list(range(num_classes)) if class_labels is None else pipe.get_label_ids(list(class_labels))
    if not labels:
        raise SampleError("class_labels is empty; pass at least one class, or None for every class of the model")
    num_images = len(labels) * num_per_class
    iar2 = {"semantic_guidance": semantic_guidance, "detail_guidance": detail_guidance, "attention_guidance_weight": attention_guidance_weight}
    settings = _run_settings(pipe, seed, num_per_class, labels, guidance_scale, temperature, top_k, top_p, num_images, iar2)
    if image_size_eval is not None:
        _check_positive_int("image_size_eval", image_size_eval)
        settings.update(generated_size=settings["image_size"], image_size=image_size_eval, resize="bicubic")
    settings.update(batch_size=batch_size, num_processes=num_processes, compile=compile)  # recorded, not required to match

    out_dir.mkdir(parents=True, exist_ok=True)
    new_run = _check_resume(out_dir, settings)
    mine = range(process_index, num_images, num_processes)
    done = _written_images(out_dir, mine, settings["image_size"])
    # fixed batches, redrawn whole if any image is missing: a resume repeats the same computation
    batches = [list(mine[start : start + batch_size]) for start in range(0, len(mine), batch_size)]
    batches = [batch for batch in batches if not done.issuperset(batch)]
    logger.info(
        "process %d/%d: %d of its %d images to draw into %s (%d already written)",
        process_index, num_processes, len(mine) - len(done), len(mine), out_dir, len(done),
    )
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    if _is_iar2(pipe):
        sampling.update({name: settings[name] for name in IAR2_GUIDANCE})
    else:
        sampling.update(guidance_scale=settings["guidance_scale"], compile=compile)
    bar = tqdm(total=len(mine), initial=len(done), desc="sampling", unit="img", disable=not progress)
    for batch in batches:
        generators = [torch.Generator().manual_seed(image_seed(seed, i)) for i in batch]
        images = pipe([labels[i // num_per_class] for i in batch], generator=generators, output_type="pil", **sampling).images
        if new_run:  # written once the pipeline has accepted the settings; every process writes the same
            write_text_atomic(out_dir / SETTINGS_NAME, json.dumps(settings, indent=2) + "\n")
            new_run = False
        if image_size_eval is not None and image_size_eval != pipe.image_size:
            images = [image.resize((image_size_eval, image_size_eval), PIL.Image.BICUBIC) for image in images]
        missing = [(index, image) for index, image in zip(batch, images) if index not in done]
        for index, image in missing:
            _save_png_atomic(image, image_path(out_dir, index))
        bar.update(len(missing))
    bar.close()
    generated = len(mine) - len(done)
    return {"out_dir": str(out_dir), "num_images": num_images, "generated": generated, "skipped": len(done), "settings": settings}


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SampleError(f"{name} must be a positive int, got {value!r}")


def _is_iar2(pipe) -> bool:
    return hasattr(pipe.transformer.config, "detail_vocab_size")


def _run_settings(pipe, seed, num_per_class, labels, guidance_scale, temperature, top_k, top_p, num_images, iar2: dict) -> dict:
    transformer = pipe.transformer
    given = {name: value for name, value in iar2.items() if value is not None}
    if _is_iar2(pipe):
        if guidance_scale is not None:
            raise SampleError(
                "an IAR2Pipeline has no guidance_scale: pass semantic_guidance=(start, end), detail_guidance=(start, end) "
                "and attention_guidance_weight instead"
            )
        resolved = transformer._sampling_settings(None, **{name: iar2[name] for name in IAR2_GUIDANCE}, temperature=temperature, top_k=top_k, top_p=top_p)
        iar2 = {name: resolved[name] if name == "attention_guidance_weight" else list(resolved[name]) for name in IAR2_GUIDANCE}
        iar2["attention_guidance_weight"] = float(iar2["attention_guidance_weight"])
    elif given:
        raise SampleError(f"{sorted(given)} are IAR2Pipeline options; a MASCPipeline takes guidance_scale")
    else:
        if guidance_scale is None:
            guidance_scale = transformer.generation_config.guidance_scale
        iar2 = dict.fromkeys(IAR2_GUIDANCE)
    pipeline = pipe.name_or_path
    if pipeline is not None and os.path.isdir(pipeline):
        pipeline = str(Path(pipeline).resolve())
    cluster_map = getattr(pipe, "cluster_map", None)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "masc_hf_version": __version__,
        "num_images": num_images,
        "num_per_class": num_per_class,
        "class_labels": [int(label) for label in labels],
        "seed": int(seed),
        "seed_rule": SEED_RULE,
        "guidance_scale": None if guidance_scale is None else float(guidance_scale),
        "temperature": float(temperature),
        "top_k": int(top_k),
        "top_p": float(top_p),
        "image_size": int(pipe.image_size),
        "pipeline": None if pipeline is None else str(pipeline),
        "cluster_map_fingerprint": None if cluster_map is None else cluster_map.fingerprint,
        "transformer_dtype": str(transformer.dtype).removeprefix("torch."),
        **iar2,
    }


def _read_settings(folder: Path) -> dict | None:
    path = folder / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SampleError(f"{path} cannot be read ({err}); sample into a new folder") from err
    if not isinstance(settings, dict) or settings.get("format") != FORMAT_NAME:
        raise SampleError(f"{path} is not a masc-hf {SETTINGS_NAME}; sample into a new folder")
    return settings


def _check_resume(folder: Path, settings: dict) -> bool:
    """True for a new run (no ``sampling.json`` and no PNG yet); for a run being resumed, check that
    its ``sampling.json`` has the same settings."""
    pngs = _png_files(folder)  # listed first: a PNG is only written after its run's sampling.json
    existing = _read_settings(folder)
    if existing is None:
        if pngs:
            raise SampleError(
                f"{folder} already holds {len(pngs)} .png file(s) (e.g. {pngs[0].name}) but no {SETTINGS_NAME}, so they "
                "cannot be checked to belong to this run; sample into a new or empty folder"
            )
        return True
    differences = [
        f"{name}: {_short(existing.get(name))} there vs {_short(settings[name])} now"
        for name in _RUN_SETTINGS
        if existing.get(name) != settings[name]
    ]
    if differences:
        raise SampleError(
            f"{folder} holds samples drawn with other settings ({'; '.join(differences)}); resume with the same "
            "settings, or sample into a new folder"
        )
    before = {name: existing.get(name) for name in ("batch_size", "num_processes")}
    before["compile"] = existing.get("compile", False)  # a sampling.json older than the option: an eager run
    changed = [f"{name} {value} -> {settings[name]}" for name, value in before.items() if value != settings[name]]
    if changed:
        logger.warning(
            "resuming %s with %s: every image keeps its seed, but batches of another shape or a compiled step may round differently, "
            "so an image can differ slightly from what the first run would have drawn",
            folder, ", ".join(changed),
        )
    return False


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"[{', '.join(map(str, value[:3]))}, ..., {value[-1]}] ({len(value)} values)"
    return repr(value)


def _written_images(folder: Path, indices: range, image_size: int) -> set[int]:
    """The indices among ``indices`` whose PNG exists; each must be a readable ``image_size`` square."""
    present = {index for index in (_index_of(p) for p in _png_files(folder)) if index is not None}
    stray = sorted(i for i in present if i >= indices.stop)
    if stray:
        raise SampleError(
            f"{folder} holds images beyond this run's {indices.stop} (e.g. {image_path(folder, stray[0]).name}); "
            "it belongs to a larger run: sample into a new folder"
        )
    done = {i for i in indices if i in present}
    for index in sorted(done):
        _check_image_size(image_path(folder, index), (image_size, image_size), "this pipeline's size")
    return done


def _save_png_atomic(image: PIL.Image.Image, path: Path) -> None:
    with atomic_file(path) as handle:
        image.save(handle, format="PNG")


# ---------------------------------------------------------------------------------------------
# Sample folders and .npz files
# ---------------------------------------------------------------------------------------------


def _png_files(folder: Path) -> list[Path]:
    """The visible ``*.png`` files of ``folder`` in image-index order (by number for index names)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: (0, _index_of(p), "") if _index_of(p) is not None else (1, 0, p.name))


def _index_of(path: Path) -> int | None:
    return int(path.stem) if path.stem.isdigit() else None


def _height_width(expected_size) -> tuple[int, int] | None:
    if expected_size is None:
        return None
    if isinstance(expected_size, (int, np.integer)) and not isinstance(expected_size, bool) and expected_size > 0:
        return int(expected_size), int(expected_size)
    if (
        isinstance(expected_size, (tuple, list))
        and len(expected_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in expected_size)
    ):
        return int(expected_size[0]), int(expected_size[1])
    raise SampleError(f"expected_size must be a positive int or a (height, width) pair, got {expected_size!r}")


def _image_height_width(path: Path) -> tuple[int, int]:
    try:
        with PIL.Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (OSError, PIL.Image.DecompressionBombError) as err:
        raise SampleError(f"{path} cannot be read as an image ({err}); delete it (a rerun of the sampling redraws it)") from err
    return height, width


def _check_image_size(path: Path, height_width: tuple[int, int], what: str) -> None:
    height, width = _image_height_width(path)
    if (height, width) != height_width:
        raise SampleError(
            f"{path} is {width}x{height} pixels but {height_width[1]}x{height_width[0]} is expected ({what}); "
            "every image of a sample folder must have the same size: resample it, or delete the folder's odd images"
        )


def _count_error(where, found: int, expected: int, indices: list[int] | None, resumable: bool) -> SampleError:
    message = f"{where} holds {found} images but {expected} are expected"
    if indices is not None:
        missing = sorted(set(range(expected)) - set(indices))
        extra = sorted(i for i in indices if i >= expected)
        if missing:
            shown = ", ".join(str(i) for i in missing[:10])
            message += f"; missing indices: {shown}" + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        if extra:
            message += f"; indices beyond {expected - 1}: {', '.join(str(i) for i in extra[:10])}"
    if resumable:
        message += "; rerun the sampling with the same settings to draw the missing images"
    else:
        message += "; pass the folder or file that holds every image, or the expected count that matches it"
    return SampleError(message)


def check_sample_folder(folder: str | os.PathLike, *, expected_count: int | None = None, expected_size=None) -> list[Path]:
    """Check a folder of PNG samples from the file headers; return the PNG paths in index order.

    Args:
        folder: images ``*.png`` (names ``{i:06d}.png`` are sorted by index, other names after them
            by name; hidden files, e.g. unfinished writes, are ignored).
        expected_count: number of images; default: ``num_images`` of the folder's ``sampling.json``
            if it has one, else any number (at least one).
        expected_size: an int (square) or ``(height, width)``; default: ``image_size`` of
            ``sampling.json``, else the size of the first image (all must have one size).

    Raises:
        SampleError: no such folder or no PNG in it, a wrong count (naming the missing indices for
        index-named files), or an image of another size (naming the file and both sizes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SampleError(f"{folder} is not a folder; pass the folder of .png samples (see sample_images)")
    settings, what = _read_settings(folder), "expected_size"
    if settings is not None:
        expected_count = settings["num_images"] if expected_count is None else expected_count
        if expected_size is None:
            expected_size, what = settings["image_size"], f"image_size in {SETTINGS_NAME}"
    height_width = _height_width(expected_size)
    if expected_count is not None:
        _check_positive_int("expected_count", expected_count)
    files = _png_files(folder)
    if not files:
        raise SampleError(f"{folder} holds no .png images; sample into it first (sample_images / recipes/sample.py)")
    if expected_count is not None:
        indices = [_index_of(p) for p in files]
        if all(i is not None for i in indices):
            if len(files) != expected_count or set(indices) != set(range(expected_count)):
                raise _count_error(folder, len(files), expected_count, indices, settings is not None)
        elif len(files) != expected_count:
            raise _count_error(folder, len(files), expected_count, None, settings is not None)
    if height_width is None:
        height_width, what = _image_height_width(files[0]), f"the size of {files[0].name}"
    for path in files:
        _check_image_size(path, height_width, what)
    return files


def pack_npz(folder: str | os.PathLike, out_path: str | os.PathLike, *, expected_count: int | None = None, expected_size=None) -> Path:
    """Pack a sample folder into an ADM-format ``.npz``: ``arr_0``, uint8 ``[N, H, W, 3]`` in index order.

    The folder is checked first (:func:`check_sample_folder`, same arguments and defaults). Gray or
    RGBA images become RGB. The array is streamed into the archive one image at a time (50k images
    at 256 px are 9.8 GB) under a temporary name, then renamed onto ``out_path``; ``np.load(out_path)
    ["arr_0"]`` reads it back as ``np.savez(out_path, arr_0=images)`` would have written it.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise SampleError(f"{out_path} does not end in .npz; the ADM evaluator reads .npz files: name it e.g. {out_path.name}.npz")
    files = check_sample_folder(folder, expected_count=expected_count, expected_size=expected_size)
    height, width = _image_height_width(files[0])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (len(files), height, width, 3)}
    with atomic_path(out_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for path in tqdm(files, desc="packing", unit="img", disable=len(files) < 1000):
                    member.write(_read_rgb(path, (height, width)).tobytes())
    logger.info("packed %d images of %dx%d from %s into %s", len(files), width, height, folder, out_path)
    return out_path


def _read_rgb(path: Path, height_width: tuple[int, int]) -> np.ndarray:
    with PIL.Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.shape != (*height_width, 3):  # the file changed since the check
        raise SampleError(f"{path} is {array.shape[1]}x{array.shape[0]} pixels, not {height_width[1]}x{height_width[0]} like the others")
    return array


def check_npz_images(path: str | os.PathLike, *, expected_count: int | None = None, expected_size=None) -> tuple[int, int, int]:
    """Check an ADM-format ``.npz`` of images from its header (no pixel is read); return ``(N, H, W)``.

    Args:
        path: an ``.npz`` whose ``arr_0`` is uint8 ``[N, H, W, 3]``.
        expected_count: N, if it must be a given number.
        expected_size: an int (square) or ``(height, width)``, if the images must have that size.

    Raises:
        SampleError: not an ``.npz``, no ``arr_0``, another dtype than uint8, another shape than
        ``[N, H, W, 3]``, or a count or size other than the expected one.
    """
    path = Path(path)
    height_width = _height_width(expected_size)
    if expected_count is not None:
        _check_positive_int("expected_count", expected_count)
    if not path.is_file():
        raise SampleError(f"{path} does not exist; pack a sample folder with pack_npz (or recipes/sample.py --npz)")
    if not zipfile.is_zipfile(path):
        raise SampleError(f"{path} is not an .npz archive (np.savez output); save the images with np.savez(path, arr_0=images)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "arr_0.npy" not in names:
            found = ", ".join(n.removesuffix(".npy") for n in names) or "nothing"
            raise SampleError(
                f"{path} has no arr_0 (it holds {found}); the ADM evaluator reads the images from arr_0: "
                "save them with np.savez(path, arr_0=images) or masc_hf.evaluation.pack_npz"
            )
        with archive.open("arr_0.npy") as member:
            try:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
            except ValueError as err:
                raise SampleError(f"arr_0 in {path} is not a readable .npy array ({err}); rewrite it with np.savez") from err
    if dtype != np.uint8:
        raise SampleError(
            f"arr_0 in {path} has dtype {dtype}, but the ADM evaluator expects uint8 pixel values 0..255; convert "
            "[0, 1] floats with np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)"
        )
    if len(shape) != 4 or shape[-1] != 3:
        hint = ""
        if len(shape) == 4 and shape[1] == 3:
            hint = "; it looks channels-first: use images.transpose(0, 2, 3, 1)"
        elif len(shape) == 3:
            hint = "; for gray images use np.repeat(images[..., None], 3, axis=-1)"
        raise SampleError(f"arr_0 in {path} has shape {list(shape)}, but [N, H, W, 3] (RGB, channels last) is expected{hint}")
    count, height, width = shape[:3]
    if expected_count is not None and count != expected_count:
        raise _count_error(path, count, expected_count, None, False)
    if height_width is not None and (height, width) != height_width:
        raise SampleError(
            f"{path} holds {width}x{height} images but {height_width[1]}x{height_width[0]} is expected; "
            "pack samples of the right size, or pass the matching expected_size"
        )
    return int(count), int(height), int(width)


def load_npz_images(path: str | os.PathLike, *, expected_count: int | None = None, expected_size=None) -> np.ndarray:
    """The uint8 ``[N, H, W, 3]`` images of an ADM-format ``.npz`` (checked first, see :func:`check_npz_images`):
    memory-mapped when stored uncompressed (``np.savez``, :func:`pack_npz`), so that 50k images
    (9.8 GB at 256 px) are read batch by batch; else loaded."""
    check_npz_images(path, expected_count=expected_count, expected_size=expected_size)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("arr_0.npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)  # the member's local header: name and extra-field lengths at 26..30
            handle.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            offset = handle.tell()
        if not fortran_order:
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    with np.load(path) as data:
        return data["arr_0"]
