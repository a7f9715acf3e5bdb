"""Sample the paper's evaluation set: 50 images of each class, spread over processes, then the ADM ``.npz``.

    accelerate launch --config_file recipes/configs/8xh100_ddp.yaml recipes/sample.py \\
        --pipeline pipelines/llamagen-b-masc --out samples/llamagen-b-masc --cfg-scale 2.0
    python recipes/sample.py --pipeline DIR --out samples/x --num-per-class 5 --classes 0-9   # one process

Image i has label ``classes[i // num_per_class]``, file ``OUT/{i:06d}.png`` and seed
``image_seed(seed, i)``: rerun the same command after an interruption to draw only the missing
images, with any number of processes; a rerun reproduces the same images. When every process is
done, the main process checks the folder and writes ``--npz`` (default ``OUT.npz``): uint8
``[N, H, W, 3]`` under ``arr_0``, the format of the ADM evaluator that LlamaGen uses. Thin wrapper
over ``masc_hf.evaluation.sample_images`` and ``pack_npz``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys

import torch

from masc_hf.cli import OneLineParser, check_output_directory, load_pipeline, run_reporting_user_errors
from masc_hf.evaluation import pack_npz, sample_images

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_classes(text: str) -> list[int]:
    """``"0-9,17,100-102"`` -> class ids."""
    ids = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            ids.extend(range(int(first), int(last) + 1) if last else [int(first)])
        except ValueError:
            raise argparse.ArgumentTypeError(f"--classes takes ids and ranges like 0-9,17; got {part!r}") from None
    return ids


def parse_pair(text: str) -> tuple[float, float]:
    """``"1.0,4.0"`` -> (1.0, 4.0); one number means a constant schedule."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected START,END (e.g. 1.0,4.0) or one number, got {text!r}")
    return (values[0], values[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="MASCPipeline or IAR2Pipeline directory, or Hub repo id")
    parser.add_argument("--out", required=True, help="sample folder (rerun with the same arguments to resume)")
    parser.add_argument("--npz", help="ADM .npz to write when sampling is done (default: OUT.npz)")
    parser.add_argument("--no-npz", action="store_true", help="only write the PNG folder")
    parser.add_argument("--num-per-class", type=int, default=50, help="images per class (default: 50, the paper's)")
    parser.add_argument("--classes", type=parse_classes, help="class ids, e.g. 0-9,17 (default: every class of the model)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; image i uses image_seed(seed, i)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per pipeline call, per process (does not change the images)")
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the model's); MASCPipeline")
    parser.add_argument("--semantic-guidance", type=parse_pair, metavar="START,END", help="IAR2Pipeline: semantic guidance schedule (default: the model's)")
    parser.add_argument("--detail-guidance", type=parse_pair, metavar="START,END", help="IAR2Pipeline: detail guidance schedule (default: the model's)")
    parser.add_argument("--attention-guidance-weight", type=float, metavar="W", help="IAR2Pipeline: weight of the class-attention term")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 keeps every id (the paper's setting)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--image-size-eval", type=int, help="resize samples (bicubic) to this side, e.g. 256 for a 384 px model vs ADM's 256 px reference")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="transformer weights dtype (recorded; changes the images)")
    parser.add_argument("--compile", action="store_true", help="MASCPipeline: the compiled decode step (CUDA graphs on a GPU; the same images up to float rounding)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU; with several processes launch with --multi_gpu (gloo)")
    args = parser.parse_args(argv)
    if args.npz and not args.npz.endswith(".npz"):
        parser.error(f"--npz {args.npz} must end in .npz")
    return args


def main(argv: list[str] | None = None) -> None:
    from accelerate import PartialState

    args = parse_args(argv)
    check_output_directory(args.out)  # before the pipeline loads
    # a long barrier: a resumed run's processes may have unequal amounts left to draw
    state = PartialState(cpu=args.cpu, timeout=datetime.timedelta(hours=12))
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    pipe = load_pipeline(args.pipeline).to(state.device)
    pipe.transformer.to(DTYPES[args.dtype])
    pipe.set_progress_bar_config(disable=True)
    report = sample_images(
        pipe,
        args.out,
        num_per_class=args.num_per_class,
        class_labels=args.classes,
        seed=args.seed,
        batch_size=args.batch_size,
        guidance_scale=args.cfg_scale,
        semantic_guidance=args.semantic_guidance,
        detail_guidance=args.detail_guidance,
        attention_guidance_weight=args.attention_guidance_weight,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        process_index=state.process_index,
        num_processes=state.num_processes,
        image_size_eval=args.image_size_eval,
        progress=state.is_main_process,
        compile=args.compile,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"{args.out}: {report['num_images']} images ({report['settings']['image_size']} px)")
        if not args.no_npz:
            npz = pack_npz(args.out, args.npz or args.out.rstrip("/") + ".npz")
            print(f"wrote {npz}: uint8 [{report['num_images']}, H, W, 3] under arr_0")


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("sample.py", main))
