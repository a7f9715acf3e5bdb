"""IAR2's dual-codebook tokenizer on Fashion-MNIST against the quickstart's 256-code VQ, in one run.

    python recipes/reproduce_dual_vq.py

Trains, on the train split at 32 px (an 8x8 grid): the quickstart's VQ (``train_vq_tokenizer(...,
"quickstart")``, 256 codes) and the dual tokenizer (16 semantic x 64 detail codes) in IAR2's two
stages (``train_dual_vq_tokenizer``, presets ``"semantic"`` then ``"detail"``, the random-weight
perceptual substitute). Reports reconstruction PSNR on ``--eval-images`` of the test split for
semantic-only decoding (``decode_ids(s, None)``, after each stage) and semantic + detail decoding,
against the VQ's, with codebook use; and the replacement-style picture: one test image per class,
rows semantic only / semantic + detail / original / 256-code VQ. Writes
``results/dual_vq_fashion_mnist.{json,md,png}``. Runs are kept under ``--workdir``: a rerun resumes
or skips them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

from masc_hf.cli import OneLineParser, run_reporting_user_errors

logger = logging.getLogger("reproduce_dual_vq")
COMMAND = "python recipes/reproduce_dual_vq.py"
ROWS = ("semantic only", "semantic + detail", "original", "VQ, 256 codes")


def parse_args(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/dual-vq-study", help="where the tokenizers are trained (rerun to resume)")
    parser.add_argument("--out", default="results/dual_vq_fashion_mnist", help="prefix of the .json, .md and .png written")
    parser.add_argument("--eval-images", type=int, default=2000, help="test images to evaluate on (default 2000)")
    # one thread: on a 2-core machine shared with other jobs two threads can run ten times slower (busy-waiting)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return parser.parse_args(argv)


def train_vq(train_images, workdir: Path):
    """The quickstart's 256-code VQ (cached in workdir/vq)."""
    from diffusers import VQModel

    from masc_hf._io import staged_dir, write_text_atomic
    from masc_hf.training.vq_trainer import train_vq_tokenizer

    directory = workdir / "vq"
    if (directory / "stats.json").is_file():
        return VQModel.from_pretrained(directory).eval(), json.loads((directory / "stats.json").read_text())
    model, stats = train_vq_tokenizer(train_images, "quickstart", progress=False)
    with staged_dir(directory) as staging:
        model.save_pretrained(staging)
        write_text_atomic(staging / "stats.json", json.dumps(stats))
    return model, stats


def picture(test, models: dict, path: Path) -> Path:
    """One test image per class (the first of each), rows as ROWS, 2x nearest-neighbour tiles of the 28x28 images."""
    import numpy as np
    import PIL.Image
    import torch

    from masc_hf.pipelines.grid import save_image_grid
    from masc_hf.training.vq_trainer import to_vq_input
    from masc_hf.vq.tokens import decode_ids, encode_images

    picks = [int(np.flatnonzero(test.labels == label)[0]) for label in range(len(test.class_names))]
    inputs = to_vq_input(test.images[picks])
    dual, vq = models["dual"], models["vq"]
    with torch.no_grad():
        semantic_ids, detail_ids = dual.encode_ids(inputs)
        rows = [dual.decode_ids(semantic_ids, None), dual.decode_ids(semantic_ids, detail_ids), inputs, decode_ids(vq, encode_images(vq, inputs))]
    tiles = []
    for row in rows:
        pixels = ((row.clamp(-1, 1)[:, 0, 2:30, 2:30] + 1) * 127.5).round().byte().numpy()  # the 28x28 image, gray
        tiles += [PIL.Image.fromarray(p).resize((56, 56), PIL.Image.NEAREST) for p in pixels]
    return save_image_grid(tiles, len(rows), path, row_labels=list(ROWS))


def markdown(report: dict) -> str:
    results = report["results"]
    lines = [
        "# IAR2's dual-codebook tokenizer on Fashion-MNIST",
        "",
        f"`{report['command']}` ({report['date']}, {report['machine']}, torch {report['torch']}, {report['threads']} threads): "
        f"{report['minutes']:.1f} min in all. Test split, first {report['eval_images']} images, 28x28 padded to 32x32 "
        "(an 8x8 token grid), PSNR on the 28x28 region, mean over images.",
        "",
        "| tokenizer, decoding | codes per token | bits per token | test PSNR (dB) | codes used | perplexity |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['name']} | {row['codes']} | {row['bits']:.0f} | {row['psnr']:.2f} | {row['used']} | {row['perplexity']} |"
        )
    lines += [
        "",
        "Training (train split, 60000 images):",
        "",
        "| run | steps x batch | minutes | final training loss terms |",
        "|---|---|---|---|",
    ]
    for run in report["training"]:
        lines.append(f"| {run['name']} | {run['steps']} x {run['batch_size']} | {run['seconds'] / 60:.1f} | {run['final']} |")
    lines += [
        "",
        f"Picture: `{Path(report['picture']).name}`, one test image per class; rows: {', '.join(ROWS)}.",
        "The choices behind these figures (losses, the perceptual substitute, the stage-2 cycle): docs/iar2-vq-trainer.md.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from masc_hf._io import write_text_atomic
    from masc_hf.data.fashion_mnist import load_fashion_mnist
    from masc_hf.errors import MASCError
    from masc_hf.training.dual_vq_trainer import DUAL_VQ_TRAINING_PRESETS, evaluate_dual_vq_tokenizer, train_dual_vq_tokenizer
    from masc_hf.training.vq_trainer import evaluate_vq_tokenizer

    if args.eval_images < 1 or args.threads < 1:
        raise MASCError(f"--eval-images and --threads must be >= 1, got {args.eval_images} and {args.threads}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workdir, out = Path(args.workdir), Path(args.out)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    test_images = test.images[: args.eval_images]

    vq, vq_stats = train_vq(train.images, workdir)
    stage1, stage1_stats = train_dual_vq_tokenizer(train.images, "semantic", output_dir=workdir / "semantic", progress=False)
    dual, dual_stats = train_dual_vq_tokenizer(train.images, "detail", output_dir=workdir / "detail", init=workdir / "semantic", progress=False)

    vq_scores = evaluate_vq_tokenizer(vq, test_images)
    stage1_scores = evaluate_dual_vq_tokenizer(stage1, test_images)
    dual_scores = evaluate_dual_vq_tokenizer(dual, test_images)
    n_semantic, n_detail = dual.codebook_sizes
    n_vq = vq.config.num_vq_embeddings

    def used(scores, prefix, size):
        return f"{scores[f'{prefix}used_codes']}/{size}"

    results = [
        {"name": "VQ (quickstart), 256 codes", "codes": str(n_vq), "bits": math.log2(n_vq), "psnr": vq_scores["psnr"],
         "used": used(vq_scores, "", n_vq), "perplexity": f"{vq_scores['perplexity']:.0f}"},
        {"name": "dual, after stage 1: semantic only", "codes": str(n_semantic), "bits": math.log2(n_semantic), "psnr": stage1_scores["semantic_psnr"],
         "used": used(stage1_scores, "semantic_", n_semantic), "perplexity": f"{stage1_scores['semantic_perplexity']:.1f}"},
        {"name": "dual, after stage 2: semantic only", "codes": str(n_semantic), "bits": math.log2(n_semantic), "psnr": dual_scores["semantic_psnr"],
         "used": used(dual_scores, "semantic_", n_semantic), "perplexity": f"{dual_scores['semantic_perplexity']:.1f}"},
        {"name": "dual, after stage 2: semantic + detail", "codes": f"{n_semantic} x {n_detail}", "bits": math.log2(n_semantic * n_detail), "psnr": dual_scores["psnr"],
         "used": f"{used(dual_scores, 'semantic_', n_semantic)} + {used(dual_scores, 'detail_', n_detail)}",
         "perplexity": f"{dual_scores['semantic_perplexity']:.1f} x {dual_scores['detail_perplexity']:.1f}"},
    ]

    def final(stats, keys):
        return ", ".join(f"{key} {sum(stats[key][-20:]) / len(stats[key][-20:]):.4f}" for key in keys if stats.get(key))

    training = [
        {"name": "VQ (quickstart)", "steps": vq_stats["steps"], "batch_size": vq_stats["config"]["batch_size"], "seconds": vq_stats["seconds"],
         "final": final(vq_stats, ("reconstruction_loss", "quantizer_loss"))},
        {"name": "dual, stage 1 (semantic)", "steps": stage1_stats["steps"], "batch_size": stage1_stats["config"]["batch_size"],
         "seconds": stage1_stats["seconds"], "final": final(stage1_stats, ("perceptual_loss", "pixel_loss", "quantizer_loss"))},
        {"name": "dual, stage 2 (detail)", "steps": dual_stats["steps"], "batch_size": dual_stats["config"]["batch_size"],
         "seconds": dual_stats["seconds"], "final": final(dual_stats, ("pixel_loss", "perceptual_loss", "quantizer_loss"))},
    ]
    png = picture(test, {"dual": dual, "vq": vq}, out.with_suffix(".png"))
    report = {
        "command": COMMAND, "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "threads": args.threads, "eval_images": len(test_images), "minutes": (time.perf_counter() - started) / 60,
        "results": results, "training": training, "picture": str(png),
        "scores": {"vq": vq_scores, "dual_stage1": stage1_scores, "dual": dual_scores},
        "settings": {"vq": vq_stats["config"], "semantic": stage1_stats["config"], "detail": dual_stats["config"],
                     "perceptual": dual_stats["perceptual"], "presets": {k: v.stage for k, v in DUAL_VQ_TRAINING_PRESETS.items()}},
        "curves": {"semantic": {k: stage1_stats[k] for k in ("perceptual_loss", "pixel_loss")},
                   "detail": {k: dual_stats[k] for k in ("pixel_loss", "perceptual_loss", "semantic_pixel_loss")}},
    }
    write_text_atomic(out.with_suffix(".json"), json.dumps(report, indent=1))
    write_text_atomic(out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("reproduce_dual_vq.py", main))
