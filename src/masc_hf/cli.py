"""The ``masc-hf`` command. It parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

# Each entry adds one subcommand to the parser: register(subparsers) -> None.
# The function it sets with ``set_defaults(func=...)`` receives the parsed namespace.
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]):
    _COMMANDS.append(register)
    return register


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
        help=".npy, .safetensors (see --tensor), an original LlamaGen VQ checkpoint .pt, or a diffusers VQModel directory",
    )
    parser.add_argument("--tensor", help="tensor name inside a .safetensors file (default: the LlamaGen codebook key, or its only 2-D tensor)")


@command
def _register_build_map(subparsers) -> None:
    from .clustering.methods import CLUSTER_METHODS

    p = subparsers.add_parser("build-map", help="cluster a VQ codebook into k clusters and save the map")
    _add_codebook_args(p)
    p.add_argument("--k", type=int, required=True, help="number of clusters (the AR model's vocabulary)")
    p.add_argument("--method", default="masc", choices=list(CLUSTER_METHODS), help="clustering method (default: masc)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomised methods")
    p.add_argument("--out", required=True, help="output directory (save_pretrained)")
    p.add_argument("--source-tokenizer", help="recorded in the map's config and card (e.g. a Hub id)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="also upload the map to this Hub repo")
    p.set_defaults(func=_run_build_map)


def _run_build_map(args) -> int:
    from .clustering import build_cluster_map
    from .tokenizers.load import load_codebook

    codebook, description = load_codebook(args.codebook, tensor=args.tensor)
    print(f"codebook: {description}: N={codebook.shape[0]}, d={codebook.shape[1]}")
    cluster_map = build_cluster_map(
        codebook, args.k, method=args.method, seed=args.seed, source_tokenizer=args.source_tokenizer or description, progress=True
    )
    out = cluster_map.save_pretrained(args.out)
    _print_summary(cluster_map)
    print(f"saved to {out}")
    if args.push_to_hub:
        commit = cluster_map.push_to_hub(args.push_to_hub)
        print(f"pushed to {args.push_to_hub}: {getattr(commit, 'commit_url', commit)}")
    return 0


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
        from .tokenizers.load import load_codebook

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
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    from .clustering import compare_methods
    from .tokenizers.load import load_codebook

    codebook, description = load_codebook(args.codebook, tensor=args.tensor)
    print(f"codebook: {description}: N={codebook.shape[0]}, d={codebook.shape[1]}, k={args.k}")
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.set_defaults(func=_run_convert_llamagen)


def _run_convert_llamagen(args) -> int:
    import torch

    from .models.configuration_llamagen import LlamaGenConfig
    from .models.convert_llamagen import convert_llamagen_checkpoint, load_config_file

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


# ---------------------------------------------------------------------------- tokenizers
@command
def _register_convert_vq(subparsers) -> None:
    p = subparsers.add_parser("convert-vq", help="convert an original LlamaGen VQ tokenizer checkpoint into a diffusers VQModel directory")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="original .pt (read with weights_only) or .safetensors state dict")
    p.add_argument("--config", metavar="FILE", help="architecture JSON (like fixtures/llamagen/vq/config.json) or a preset: VQ-16, VQ-8 (default: VQ-16)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory; loads with diffusers.VQModel.from_pretrained")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")

    def run(args) -> int:
        from .tokenizers.convert_vq import convert_llamagen_vq

        out = convert_llamagen_vq(args.checkpoint, args.out, config=args.config, overwrite=args.overwrite)
        print(f"saved diffusers VQModel to {out}")
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- pipelines
@command
def _register_sample(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample an image grid from a MASCPipeline (one row per label)")
    p.add_argument("--pipeline", required=True, help="MASCPipeline directory or Hub repo id")
    p.add_argument("--labels", required=True, help='comma-separated class ids or names, e.g. "golden retriever,7"')
    p.add_argument("--n", type=int, default=4, help="images per label (grid columns)")
    p.add_argument("--out", required=True, help="output image file (.png)")
    p.add_argument("--guidance-scale", type=float, help="default: the model's")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.set_defaults(func=_run_sample)


def _cuda_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _run_sample(args) -> int:
    import torch

    from .pipelines import MASCPipeline
    from .pipelines.grid import save_image_grid

    pipe = MASCPipeline.from_pretrained(args.pipeline).to(args.device)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    ids = pipe.get_label_ids(labels)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
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


# ---------------------------------------------------------------------------- quickstart
@command
def _register_quickstart(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="the whole loop on Fashion-MNIST on a CPU: VQ tokenizer, MASC map, LlamaGen, samples.png"
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--fast", action="store_true", help="a smaller, faster run")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args) -> int:
    from .quickstart import run_quickstart

    report = run_quickstart(args.out, preset="fast" if args.fast else "default")
    seconds = sum(report["seconds"].values())
    print(f"samples:                  {report['samples']}")
    print(f"pipeline:                 {report['pipeline']}")
    print(f"class consistency:        {report['class_consistency']:.1%} of generated images classified as their class (chance 10%)")
    print(f"classifier test accuracy: {report['classifier_test_accuracy']:.1%} on the real Fashion-MNIST test set")
    print(f"total time:               {seconds / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in report['seconds'].items())})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="masc-hf", description=__doc__)
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
    from .errors import MASCError

    try:
        return int(args.func(args) or 0)
    except MASCError as err:  # bad input: one clear line, no traceback
        print(f"masc-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
