"""Encode a dataset's images into token-code shards with a VQ tokenizer (any number of processes).

    accelerate launch recipes/extract_codes.py --data ILSVRC/imagenet-1k --vq VQ_DIR --out codes/imagenet-256 --ten-crop
    python recipes/extract_codes.py --data ./my_images --vq VQ_DIR --out codes/mine      # one process
    accelerate launch --multi_gpu --num_processes 2 recipes/extract_codes.py --cpu ...  # 2 CPU processes

``--data``: a Hub id, a directory of parquet shards (or a glob), or an image folder. Rerun the
same command to resume: finished shards are skipped. ``--vq``: a ``VQModel`` directory (one id
per position) or IAR2's ``DualCodebookVQModel`` (a semantic and a detail id per position, both
written). Thin wrapper over ``masc_hf.data.extract_codes``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from masc_hf.cli import OneLineParser, check_output_directory, run_reporting_user_errors
from masc_hf.data import extract_codes, load_vqmodel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Hub dataset id, parquet directory/glob, or image folder")
    parser.add_argument(
        "--vq", required=True, help="VQModel or IAR2 DualCodebookVQModel directory (or a pipeline directory with vqvae/)"
    )
    parser.add_argument("--out", required=True, help="shard directory (rerun with the same arguments to resume)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=256)
    views = parser.add_mutually_exclusive_group()
    views.add_argument("--ten-crop", action="store_true", help="ten crops of a 1.1x centre crop and their mirrors (10 views)")
    views.add_argument("--no-flip", action="store_true", help="the centre crop only (default: it and its mirror, 2 views)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per tokenizer call, per process")
    parser.add_argument("--shard-size", type=int, default=10_000, help="stream examples per shard")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label", help="'none' for an unlabelled dataset (labels 0)")
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding threads per process")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="tokenizer weights dtype")
    parser.add_argument(
        "--cpu", action="store_true", help="run on CPU; with several processes launch with --multi_gpu (torch.distributed over gloo)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from accelerate import PartialState

    args = parse_args(argv)
    check_output_directory(args.out)  # before the tokenizer loads
    state = PartialState(cpu=args.cpu)  # initialises torch.distributed under accelerate launch
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    vqmodel = load_vqmodel(args.vq, torch_dtype=DTYPES[args.dtype], device=state.device)
    extract_codes(
        args.data,
        vqmodel,
        args.out,
        split=args.split,
        image_size=args.image_size,
        augment="ten-crop" if args.ten_crop else "none" if args.no_flip else "flip",
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        rank=state.process_index,
        world_size=state.num_processes,
        image_column=args.image_column,
        label_column=None if args.label_column.lower() == "none" else args.label_column,
        num_workers=args.num_workers,
    )


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("extract_codes.py", main))
