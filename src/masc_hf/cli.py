"""The ``masc-hf`` command. It parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

# Each entry adds one subcommand to the parser: register(subparsers) -> None.
# The function it sets with ``set_defaults(func=...)`` receives the parsed namespace.
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]):
    _COMMANDS.append(register)
    return register


# ---------------------------------------------------------------------------- a user's mistakes
class OneLineParser(argparse.ArgumentParser):
    """argparse reporting a bad argument in one line (exit code 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _memory(text: str) -> int:
    """``--max-memory``: bytes, or a number with a unit (16GB, 1.5GiB, 512M)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:] in units else ""
    try:
        value = float(cleaned[: len(cleaned) - len(unit)]) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of memory; write e.g. 16GB, 1.5GiB or 512M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--max-memory must be positive, got {text!r}")
    return int(value)


def _seed(text: str) -> int:
    """argparse type: a seed in [0, 2**32) (what numpy, scikit-learn and torch all accept)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer seed") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2**32); pass a seed like 0 or 1234")
    return value


def check_output_file(path: str, *, image: bool = False) -> None:
    """A file the command will write: its directory writable, not an existing directory, and for
    ``image`` an extension PIL can save."""
    from ._io import check_writable
    from .errors import MASCError

    target = Path(path)
    if target.is_dir():
        raise MASCError(f"--out {path!r} is a directory; pass a file name such as {str(target / 'out.png')!r}")
    if image:
        import PIL.Image

        formats = PIL.Image.registered_extensions()
        if formats.get(target.suffix.lower()) not in PIL.Image.SAVE:
            raise MASCError(f"--out {path!r}: PIL cannot write {target.suffix or 'files without an extension'!r} images; use .png, .jpg or .webp")
    check_writable(target.parent, f"--out {path!r}", MASCError)


def check_output_directory(path: str) -> None:
    """A directory the command will write (replace): not an existing file, and its parent writable."""
    from ._io import check_writable
    from .errors import MASCError

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise MASCError(f"--out {path!r} is a file; pass a directory path")
    check_writable(target, f"--out {path!r}", MASCError)


def check_hub_repo_id(repo_id: str) -> None:
    """A Hub repo id to push to: well formed, and the Hub reachable in principle (not offline mode)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .errors import MASCError

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise MASCError(f"--push-to-hub {repo_id!r} is not a Hub repo id ({err}); use org/name") from None
    if constants.HF_HUB_OFFLINE:
        raise MASCError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or drop --push-to-hub")


def load_pipeline(source: str):
    """A ``MASCPipeline`` or ``IAR2Pipeline`` (as its ``model_index.json`` names it) from a directory or
    Hub id, with a one-line error for a path that holds none."""
    from .errors import MASCError
    from .pipelines import IAR2Pipeline, MASCPipeline

    path = Path(source)
    if not path.is_dir() and (path.exists() or path.is_absolute() or source.startswith(".") or len(path.parts) != 2):
        raise MASCError(f"--pipeline {source!r} is not a pipeline directory; pass a MASCPipeline folder (save_pretrained) or a Hub id org/name")
    try:
        kind = MASCPipeline.load_config(source).get("_class_name")
        return (IAR2Pipeline if kind == IAR2Pipeline.__name__ else MASCPipeline).from_pretrained(source)
    except (OSError, ValueError) as err:  # diffusers' and huggingface_hub's loading errors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MASCError(f"cannot load the pipeline {source!r}: {first}") from None


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for a user's mistake (bad input, a file or Hub problem), or ``None`` for
    anything else (a bug, which keeps its traceback)."""
    from .errors import MASCError

    if isinstance(err, MASCError):
        return str(err)
    try:
        from huggingface_hub import errors as hub
    except ImportError:  # pragma: no cover
        hub = None
    if hub is not None and isinstance(err, hub.HFValidationError):
        return f"{err}; pass a local directory or a Hub id like org/name"
    if hub is not None and isinstance(err, (hub.OfflineModeIsEnabled, hub.LocalEntryNotFoundError)):
        return f"{str(err).splitlines()[0]} (offline, or not in the Hub cache: check the path, or download it with network access)"
    if isinstance(err, OSError):  # a path, a permission, a disk, the network: the user's environment
        detail = f"{err.strerror}: {err.filename!r}" if err.strerror and err.filename else str(err).splitlines()[0] if str(err) else type(err).__name__
        return detail
    return None


def run_reporting_user_errors(prog: str, fn: Callable, *args) -> int:
    """Run ``fn(*args)``; a user's mistake becomes one line on stderr and exit code 2 (no traceback).
    The recipes use this too."""
    try:
        return int(fn(*args) or 0)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------- cluster maps
def _print_table(rows: list[dict], columns: list[str]) -> None:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))


def _add_codebook_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--codebook",
        required=True,
        help=".npy, .safetensors (see --tensor), an original LlamaGen VQ checkpoint .pt, a diffusers VQModel directory, "
        "or a DualCodebookVQModel directory (with --tensor semantic|detail)",
    )
    parser.add_argument(
        "--tensor",
        help="tensor name inside a .safetensors file (default: the LlamaGen codebook key, or its only 2-D tensor); "
        "for a DualCodebookVQModel directory: semantic or detail",
    )


@command
def _register_build_map(subparsers) -> None:
    from .clustering.linkage import LINKAGE_ENGINES
    from .clustering.methods import CLUSTER_METHODS

    p = subparsers.add_parser("build-map", help="cluster a VQ codebook into k clusters and save the map")
    _add_codebook_args(p)
    p.add_argument("--k", type=int, required=True, help="number of clusters (the AR model's vocabulary)")
    p.add_argument("--method", default="masc", choices=list(CLUSTER_METHODS), help="clustering method (default: masc)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the randomised methods")
    p.add_argument(
        "--engine", default="auto", choices=["auto", "dense", *LINKAGE_ENGINES],
        help="what builds the MASC tree (--method masc): numpy (= dense, CPU), torch (GPU) or sparse (the first N - k "
        "merges, certified, no dense matrix); auto = torch when --device names a GPU, else dense for N <= 8192 and "
        "sparse above or when the dense matrix would not fit in --max-memory",
    )
    p.add_argument(
        "--tree", default="auto", choices=["auto", "full", "partial"],
        help="store every merge (full: cut at any k later) or the first N - k (partial, the sparse engine); auto follows --engine",
    )
    p.add_argument(
        "--max-memory", type=_memory, default=None,
        help="memory the map may use, e.g. 16GB (default: 80%% of what is free now)",
    )
    p.add_argument("--device", help="device of the torch engine, e.g. cuda, cuda:1 (default: CUDA if available)")
    p.add_argument("--out", required=True, help="output directory (save_pretrained)")
    p.add_argument("--source-tokenizer", help="recorded in the map's config and card (e.g. a Hub id)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="also upload the map to this Hub repo")
    p.set_defaults(func=_run_build_map)


def _run_build_map(args) -> int:
    from .clustering import build_cluster_map
    from .vq.codebook import load_codebook

    from ._io import check_output_dir
    from .clustering import MASCClusterMap
    from .errors import ClusterMapError

    check_output_directory(args.out)  # before any long work: writable, and holding no one else's files
    check_output_dir(args.out, MASCClusterMap._OWN_FILES, overwrite=True, error=ClusterMapError)
    if args.push_to_hub:
        check_hub_repo_id(args.push_to_hub)
    codebook, description = load_codebook(args.codebook, tensor=args.tensor)
    print(f"codebook: {description}")  # its shape is checked (once) by build_cluster_map
    engine, tree = args.engine, args.tree
    if args.method == "masc":
        engine, tree = _pick_masc_engine(len(codebook), args.k, engine, args.device, tree, args.max_memory)
    cluster_map = build_cluster_map(
        codebook, args.k, method=args.method, seed=args.seed, source_tokenizer=args.source_tokenizer or description, progress=True,
        engine=engine, device=args.device, tree=tree, max_memory=args.max_memory,
    )
    out = cluster_map.save_pretrained(args.out)
    _print_summary(cluster_map)
    if cluster_map.smallest_margin is not None:
        print(f"{'tree':>30}: the first {cluster_map.tree.shape[0]} merges, smallest certified margin {cluster_map.smallest_margin:.3g}")
    print(f"saved to {out}")
    if args.push_to_hub:
        commit = cluster_map.push_to_hub(args.push_to_hub)
        print(f"pushed to {args.push_to_hub}: {getattr(commit, 'commit_url', commit)}")
    return 0


def _pick_masc_engine(num_tokens: int, k: int, engine: str, device, tree: str, max_memory) -> tuple[str, str]:
    """The library's choice, except that a dense matrix that would not fit turns auto into sparse; says which."""
    from .clustering.linkage import available_memory
    from .clustering.methods import choose_masc_engine

    chosen = choose_masc_engine(num_tokens, engine, device, tree, k)
    dense_bytes = 8 * num_tokens * num_tokens
    budget = max_memory if max_memory is not None else int(0.8 * available_memory())
    if chosen != "sparse" and engine == "auto" and tree == "auto" and device is None and dense_bytes > budget:
        print(
            f"engine: sparse (the dense engine needs {dense_bytes / 2**30:.1f} GiB for N={num_tokens}, more than the "
            f"{budget / 2**30:.1f} GiB allowed; the map stores the first N - k merges; --engine dense forces the dense one)"
        )
        return "sparse", "auto"
    reason = "forced by --engine" if engine != "auto" else ("N > 8192" if chosen == "sparse" else "N <= 8192, k < N / 4 or --device")
    print(f"engine: {chosen} ({reason}; {'the first N - k merges' if chosen == 'sparse' else 'the full tree'})")
    return chosen, tree


def _print_summary(cluster_map) -> None:
    summary = cluster_map.summary()
    for key, value in summary.items():
        print(f"{key:>30}: {value}")
    for key, value in (cluster_map.quality or {}).items():
        if key not in summary:
            print(f"{key:>30}: {value:.4g}" if isinstance(value, float) else f"{key:>30}: {value}")


@command
def _register_inspect(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="print a saved cluster map's summary and quality figures")
    p.add_argument("map", help="a cluster-map directory or Hub repo id")
    p.add_argument("--codebook", help="recompute the quality figures on this codebook (checks that it fits)")
    p.add_argument("--tensor", help="tensor name inside a .safetensors codebook file")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    from .clustering import MASCClusterMap, cluster_quality

    cluster_map = MASCClusterMap.from_pretrained(args.map)
    if args.codebook:
        from .vq.codebook import load_codebook

        codebook, _ = load_codebook(args.codebook, tensor=args.tensor)
        cluster_map.check_codebook(codebook, what=args.codebook)
        cluster_map.quality = cluster_quality(codebook, cluster_map)
    _print_summary(cluster_map)
    return 0


@command
def _register_compare(subparsers) -> None:
    p = subparsers.add_parser("compare", help="quality figures of several clustering methods on one codebook")
    _add_codebook_args(p)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--methods", default="masc,kmeans,kmeans++,centroid", help="comma-separated methods")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    from .clustering import compare_methods
    from .vq.codebook import load_codebook

    codebook, description = load_codebook(args.codebook, tensor=args.tensor)
    print(f"codebook: {description}, k={args.k}")
    rows = compare_methods(codebook, args.k, [m.strip() for m in args.methods.split(",") if m.strip()], seed=args.seed)
    columns = ["method", "size_min", "size_median", "size_max", "singletons", "mean_intra_cluster_distance",
               "expected_replacement_distance", "silhouette", "seconds"]
    _print_table(rows, columns)
    return 0


# ---------------------------------------------------------------------------- models
@command
def _register_convert_llamagen(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-llamagen", help="convert an original LlamaGen class-conditional checkpoint into an HF model directory"
    )
    p.add_argument("--checkpoint", required=True, help="original .pt (state dict under model/ema/module) or .safetensors")
    arch = p.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", help="GPT-B, GPT-L, GPT-XL, GPT-XXL or GPT-3B, with -256 (default) or -384")
    arch.add_argument("--config", help="JSON with LlamaGen ModelArgs fields (optionally under 'model_args')")
    p.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    p.add_argument("--cluster-map", help="cluster-map directory: write the starting point of a MASC model at its k")
    p.add_argument("--state-dict-key", help="entry of the .pt dict holding the weights (default: model, ema, module)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast the weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous conversion in --out (a directory with other files is refused)")
    p.set_defaults(func=_run_convert_llamagen)


def _run_convert_llamagen(args) -> int:
    import torch

    from .models.llamagen.configuration_llamagen import LlamaGenConfig
    from .models.llamagen.convert_llamagen import convert_llamagen_checkpoint, load_config_file

    check_output_directory(args.out)
    config = LlamaGenConfig.from_preset(args.preset) if args.preset else load_config_file(args.config)
    cluster_map = None
    if args.cluster_map:
        from .clustering import MASCClusterMap

        cluster_map = MASCClusterMap.from_pretrained(args.cluster_map)
    out = convert_llamagen_checkpoint(
        args.checkpoint,
        args.out,
        config,
        cluster_map=cluster_map,
        state_dict_key=args.state_dict_key,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        overwrite=args.overwrite,
    )
    kind = f"MASC start (k={cluster_map.num_clusters})" if cluster_map is not None else "flat"
    print(f"converted {args.checkpoint} -> {out} ({kind}); load with masc_hf + AutoModel.from_pretrained")
    return 0


@command
def _register_convert_iar2(subparsers) -> None:
    p = subparsers.add_parser("convert-iar2", help="convert a released IAR2 class-conditional checkpoint (IAR2-B/L/XL/XXL) into an HF model directory")
    p.add_argument("--checkpoint", required=True, help="original .pt (bare state dict or under model/ema/module) or .safetensors")
    arch = p.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", help="IAR2-B, IAR2-L, IAR2-XL or IAR2-XXL (384 px)")
    arch.add_argument("--config", help="JSON with IAR2 ModelArgs fields (optionally under 'model_args', like fixtures/iar2/gpt/config.json)")
    p.add_argument("--out", required=True, help="output directory (config.json + generation_config.json + model.safetensors)")
    p.add_argument("--state-dict-key", help="entry of the .pt dict holding the weights (default: the dict itself, or model, ema, module)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast the weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous conversion in --out (a directory with other files is refused)")

    def run(args) -> int:
        import torch

        from .models.iar2.configuration_iar2 import IAR2Config
        from .models.iar2.convert_iar2 import convert_iar2_checkpoint, load_config_file

        check_output_directory(args.out)
        config = IAR2Config.from_preset(args.preset, rope_cell_repeat=2) if args.preset else load_config_file(args.config)
        out = convert_iar2_checkpoint(
            args.checkpoint, args.out, config, state_dict_key=args.state_dict_key,
            dtype=getattr(torch, args.dtype) if args.dtype else None, overwrite=args.overwrite,
        )
        print(f"converted {args.checkpoint} -> {out}; load with masc_hf + AutoModel.from_pretrained")
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- tokenizers
@command
def _register_convert_vq(subparsers) -> None:
    p = subparsers.add_parser("convert-vq", help="convert an original LlamaGen VQ tokenizer checkpoint into a diffusers VQModel directory")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="original .pt (read with weights_only) or .safetensors state dict")
    p.add_argument("--config", metavar="FILE", help="architecture JSON (like fixtures/llamagen/vq/config.json) or a preset: VQ-16, VQ-8 (default: VQ-16)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory; loads with diffusers.VQModel.from_pretrained")
    p.add_argument("--overwrite", action="store_true", help="replace a previous conversion in DIR (a directory with other files is refused)")

    def run(args) -> int:
        from .vq.convert_llamagen import convert_llamagen_vq

        check_output_directory(args.out)
        out = convert_llamagen_vq(args.checkpoint, args.out, config=args.config, overwrite=args.overwrite)
        print(f"saved diffusers VQModel to {out}")
        return 0

    p.set_defaults(func=run)


@command
def _register_convert_iar2_vq(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-iar2-vq", help="convert IAR2's dual-codebook tokenizer checkpoint (e.g. 0485000.pt) into a DualCodebookVQModel directory"
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="original .pt (read with weights_only) or .safetensors state dict")
    p.add_argument(
        "--config", metavar="FILE", help="architecture JSON (like fixtures/iar2/vq/config.json) or the preset IAR2-VQ-16 (default: IAR2-VQ-16)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory; loads with masc_hf.DualCodebookVQModel.from_pretrained")
    p.add_argument("--overwrite", action="store_true", help="replace a previous conversion in DIR (a directory with other files is refused)")

    def run(args) -> int:
        from .vq.convert_iar2 import convert_iar2_vq

        check_output_directory(args.out)
        out = convert_iar2_vq(args.checkpoint, args.out, config=args.config, overwrite=args.overwrite)
        print(f"saved DualCodebookVQModel to {out}; load with masc_hf.DualCodebookVQModel.from_pretrained")
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- pipelines
@command
def _register_sample(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample an image grid from a MASCPipeline (one row per label)")
    p.add_argument("--pipeline", required=True, help="MASCPipeline directory or Hub repo id")
    p.add_argument("--labels", required=True, help='comma-separated class ids or names, e.g. "golden retriever,7"')
    p.add_argument("--n", type=_count, default=4, help="images per label (grid columns)")
    p.add_argument("--out", required=True, help="output image file (.png)")
    p.add_argument("--guidance-scale", type=float, help="default: the model's")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.set_defaults(func=_run_sample)


def _resolve_device(device: str | None) -> str:
    """``device``, or cuda when available else cpu; resolved (and checked) when a command runs, so
    that ``--help`` and the cluster-map commands import no torch."""
    import torch

    from .errors import MASCError

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise MASCError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise MASCError(f"--device {device}: torch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise MASCError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0..")
    elif parsed.type != "cpu":
        raise MASCError(f"--device {device!r}: masc-hf runs on cpu or cuda; use one of them")
    return device


def _run_sample(args) -> int:
    import torch

    from .pipelines.grid import save_image_grid

    check_output_file(args.out, image=True)
    device = _resolve_device(args.device)
    pipe = load_pipeline(args.pipeline).to(device)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    ids = pipe.get_label_ids(labels)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    images = pipe(
        ids,
        num_images_per_label=args.n,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    ).images
    names = [pipe.id2label[i].split(",")[0] for i in ids]
    out = save_image_grid(images, rows=len(ids), row_labels=names, path=args.out)
    print(f"wrote {out} ({len(ids)} labels x {args.n} images)")
    return 0


# ---------------------------------------------------------------------------- evaluation
@command
def _register_replacement_test(subparsers) -> None:
    p = subparsers.add_parser(
        "replacement-test",
        help="replace every token by a random member of its cluster; PSNR/SSIM against the plain reconstruction, per map",
    )
    p.add_argument("--vq", required=True, metavar="DIR", help="diffusers VQModel directory (or a pipeline directory with vqvae/)")
    p.add_argument("--maps", required=True, metavar="DIR1,DIR2", help="comma-separated cluster-map directories or Hub ids, built from --vq")
    p.add_argument(
        "--images", required=True, metavar="SOURCE",
        help="fashion-mnist (its test split), a .npy uint8 array [N,H,W(,C)], a parquet file/directory, an image folder or a Hub id",
    )
    p.add_argument("--split", default="test", help="split of a dataset source (default: test)")
    p.add_argument("--num-images", type=int, default=1000, help="the first N images (default: 1000)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the replacement draws")
    p.add_argument("--batch-size", type=_count, default=256)
    p.add_argument("--inception-weights", metavar="PATH", help="Inception weights: also report rFID")
    p.add_argument("--out", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.set_defaults(func=_run_replacement_test)


def _map_names(paths: list[str]) -> list[str]:
    """Directory names; where two collide, as many trailing path parts as tell them apart."""
    from pathlib import PurePath

    parts = [PurePath(p.rstrip("/")).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{name}#{i}" for i, name in enumerate(paths)]


def _run_replacement_test(args) -> int:
    import json
    import time

    from .clustering import MASCClusterMap
    from .data.extract import load_vqmodel
    from .errors import DataError
    from .evaluation.replacement import check_maps_against_tokenizer, format_replacement_table, replacement_test

    paths = [m.strip() for m in args.maps.split(",") if m.strip()]
    if not paths:
        raise DataError("--maps names no cluster map; pass comma-separated map directories")
    if args.num_images < 1:
        raise DataError(f"--num-images must be at least 1, got {args.num_images}")
    if args.out:
        check_output_file(args.out)
    vqvae = load_vqmodel(args.vq, device=_resolve_device(args.device))
    maps = {name: MASCClusterMap.from_pretrained(path) for name, path in zip(_map_names(paths), paths)}
    check_maps_against_tokenizer(vqvae, maps)  # before reading any image
    if args.images.lower() in ("fashion-mnist", "fashion_mnist"):
        from .data.fashion_mnist import load_fashion_mnist

        images = load_fashion_mnist(args.split).images[: args.num_images]
    else:
        from .evaluation.replacement import images_as_array

        images = images_as_array(
            args.images, image_size=vqvae.config.sample_size, channels=vqvae.config.in_channels, limit=args.num_images, split=args.split
        )
    started = time.perf_counter()
    results = replacement_test(
        vqvae, maps, images, seed=args.seed, batch_size=args.batch_size, inception_weights=args.inception_weights
    )
    seconds = time.perf_counter() - started
    print(format_replacement_table(results))
    print(f"\n{len(images)} images, seed {args.seed}, {seconds:.1f} s")
    if args.out:
        from pathlib import Path

        from ._io import write_text_atomic

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {"vq": args.vq, "maps": dict(zip(maps, paths)), "images": args.images, "num_images": len(images), "seed": args.seed}
        write_text_atomic(out, json.dumps({"settings": settings, "results": results, "seconds": seconds}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


@command
def _register_gallery(subparsers) -> None:
    p = subparsers.add_parser("gallery", help="a picture of the decoded members of a sample of clusters, one row per cluster")
    p.add_argument("--vq", required=True, metavar="DIR", help="diffusers VQModel directory (or a pipeline directory with vqvae/)")
    p.add_argument("--map", required=True, metavar="DIR", help="cluster-map directory or Hub id, built from --vq")
    p.add_argument("--out", required=True, metavar="FILE", help="output image (.png)")
    p.add_argument("--clusters", type=int, default=16, help="rows: clusters drawn at random (default: 16)")
    p.add_argument("--members", type=int, default=8, help="tiles per row (default: 8)")
    p.add_argument("--tile-size", type=int, default=64, help="tile side in pixels (default: 64)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")

    def run(args) -> int:
        from .clustering import MASCClusterMap
        from .data.extract import load_vqmodel
        from .evaluation.gallery import cluster_gallery
        from .evaluation.replacement import check_maps_against_tokenizer

        check_output_file(args.out, image=True)
        device = _resolve_device(args.device)
        cluster_map = MASCClusterMap.from_pretrained(args.map)
        vqvae = load_vqmodel(args.vq, device=device)
        check_maps_against_tokenizer(vqvae, {_map_names([args.map])[0]: cluster_map})  # the error names the directory
        image = cluster_gallery(
            vqvae, cluster_map, num_clusters=args.clusters, members_per_cluster=args.members, seed=args.seed,
            tile_size=args.tile_size, path=args.out,
        )
        print(f"wrote {args.out} ({image.width}x{image.height}: {min(args.clusters, cluster_map.num_clusters)} clusters of {cluster_map.method} map k={cluster_map.num_clusters})")
        return 0

    p.set_defaults(func=run)


_EVAL_METRICS = {"fid": "fid", "is": "isc", "prc": "prc", "kid": "kid"}  # --metrics name -> calculate_metrics flag


@command
def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="FID, Inception Score, precision/recall (torch-fidelity) of samples against a reference batch"
    )
    p.add_argument("--samples", required=True, metavar="DIR|NPZ", help="folder of PNG samples, or an ADM .npz (arr_0: uint8 [N,H,W,3])")
    p.add_argument(
        "--reference", metavar="NPZ|DIR",
        help="ADM reference batch .npz (arr_0 and/or mu, sigma: FID then uses mu, sigma), a statistics .npz "
        "(save_statistics) or a PNG folder; needed for fid, prc, kid",
    )
    p.add_argument(
        "--inception-weights", metavar="PATH",
        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: $MASC_INCEPTION_WEIGHTS, else torch hub's checkpoints dir)",
    )
    p.add_argument("--metrics", default="fid,is,prc", help="comma-separated: fid, is, prc, kid (default: fid,is,prc)")
    p.add_argument("--out", metavar="FILE", help="also write the metrics and settings as JSON")
    p.add_argument("--expected-count", type=int, metavar="N", help="refuse samples of another count (the paper: 50000)")
    p.add_argument("--expected-size", type=int, metavar="PX", help="the samples' side (default: that of the reference images)")
    p.add_argument("--batch-size", type=_count, default=64, help="images per Inception pass (default: 64)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--cache-dir", metavar="DIR", help="keep the Inception features of file inputs here, for the next run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    import json
    import time

    from .evaluation.fidelity import FidelityError, calculate_metrics, resolve_inception_weights

    names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(names) - set(_EVAL_METRICS))
    if unknown or not names:
        raise FidelityError(f"--metrics {args.metrics!r}: use a comma-separated subset of {', '.join(_EVAL_METRICS)}")
    flags = {flag: name in names for name, flag in _EVAL_METRICS.items()}
    if args.out:
        check_output_file(args.out)
    weights = resolve_inception_weights(args.inception_weights)
    started = time.perf_counter()
    metrics = calculate_metrics(
        args.samples, args.reference, inception_weights=weights, batch_size=args.batch_size, device=args.device,
        expected_count=args.expected_count, expected_size=args.expected_size, cache_dir=args.cache_dir,
        progress=not args.no_progress, **flags,
    )
    seconds = time.perf_counter() - started
    rows = [("FID", "fid", None), ("IS", "is_mean", "is_std"), ("precision", "precision", None),
            ("recall", "recall", None), ("KID", "kid_mean", "kid_std")]
    print(f"samples:   {args.samples}\nreference: {args.reference}")
    for label, key, spread in rows:
        if key in metrics:
            print(f"{label:<10} {metrics[key]:.4f}" + (f" ± {metrics[spread]:.4f}" if spread else ""))
    print(f"({seconds:.1f} s, torch-fidelity Inception: {weights})")
    if args.out:
        from pathlib import Path

        import torch_fidelity

        from ._version import __version__
        from ._io import write_text_atomic

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "metrics": metrics, "samples": args.samples, "reference": args.reference, "inception_weights": weights,
            "expected_count": args.expected_count, "seconds": seconds,
            "versions": {"masc_hf": __version__, "torch_fidelity": torch_fidelity.__version__},
        }
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------- quickstart
@command
def _register_quickstart(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="the whole loop on Fashion-MNIST on a CPU: VQ tokenizer, MASC map, LlamaGen, samples.png"
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--fast", action="store_true", help="a smaller, faster run")
    p.add_argument(
        "--system", choices=["masc", "iar2"], default="masc",
        help="masc (default): VQ -> MASC map -> LlamaGen on cluster ids; iar2: dual-codebook tokenizer -> IAR2 (default --out runs/quickstart-iar2)",
    )
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args) -> int:
    from .quickstart import run_quickstart

    if args.system == "iar2" and args.out == "runs/quickstart":
        args.out = "runs/quickstart-iar2"
    check_output_directory(args.out)
    report = run_quickstart(args.out, preset="fast" if args.fast else "default", system=args.system)
    seconds = sum(report["seconds"].values())
    print(f"samples:                  {report['samples']}")
    print(f"pipeline:                 {report['pipeline']}")
    print(f"class consistency:        {report['class_consistency']:.1%} of generated images classified as their class (chance 10%)")
    print(f"classifier test accuracy: {report['classifier_test_accuracy']:.1%} on the real Fashion-MNIST test set")
    print(f"total time:               {seconds / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in report['seconds'].items())})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = OneLineParser(prog="masc-hf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"masc-hf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # a user's mistake: one clear line and exit code 2, no traceback
    return run_reporting_user_errors(f"masc-hf {args.command}", args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
