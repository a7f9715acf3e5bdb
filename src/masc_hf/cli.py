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
