"""Train IAR2's dual-codebook image tokenizer, one stage per call; rerun the same command to resume.

    python recipes/train_vq.py --stage semantic --out runs/iar2-vq-1
    python recipes/train_vq.py --stage detail --init runs/iar2-vq-1 --out runs/iar2-vq-2
    python recipes/train_vq.py --stage semantic --out runs/big --perceptual-weights vgg16-397923af.pth --steps 3000

``--stage semantic`` trains the semantic codebook alone from scratch (perceptual + codebook losses, no
pixel loss); ``--stage detail`` continues its output (``--init``) with a new detail codebook. Each
stage's defaults are the preset of ``masc_hf.training.dual_vq_trainer`` (16 semantic x 64 detail
codes, 32 px, an 8x8 grid); the flags change them. ``--data fashion-mnist`` (default) trains on the
train split and reports reconstruction PSNR on ``--eval-images`` of the test split; ``--data
FILE.npy`` takes uint8 images ``[n, H, W]`` or ``[n, H, W, C]``. The trained tokenizer is
``OUT/model`` (``DualCodebookVQModel.from_pretrained``). Without ``--perceptual-weights`` (a local
torchvision VGG16 state dict) the perceptual loss is the random-weight substitute: see
docs/iar2-vq-trainer.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from masc_hf.cli import OneLineParser, check_output_directory, run_reporting_user_errors

# flag -> DualVQTrainingConfig field; unset flags keep the stage's preset
SETTINGS = {
    "steps": int, "batch_size": int, "lr": float, "warmup_steps": int, "seed": int, "checkpoint_every": int,
    "semantic_codes": int, "detail_codes": int, "embed_dim": int, "image_size": int,
    "perceptual_weight": float, "pixel_weight": float, "semantic_pixel_weight": float, "gan_weight": float, "gan_start": int,
}
FIELD_NAMES = {"semantic_codes": "num_semantic_embeddings", "detail_codes": "num_detail_embeddings"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=["semantic", "detail"], help="semantic (stage 1) or detail (stage 2)")
    parser.add_argument("--out", required=True, help="run directory: checkpoint/, model/, training_stats.json (rerun to resume)")
    parser.add_argument("--init", help="the semantic stage's --out (required by --stage detail)")
    parser.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' (default) or a .npy file of uint8 images")
    parser.add_argument("--fashion-mnist-root", help="directory of the Fashion-MNIST IDX files (default: the Debian package's)")
    parser.add_argument("--eval-images", type=int, default=1000, help="test images to evaluate on at the end (fashion-mnist; 0: none)")
    parser.add_argument("--perceptual-weights", help="torchvision VGG16 state dict (.pth or .safetensors) for the perceptual loss")
    for name, kind in SETTINGS.items():
        field = FIELD_NAMES.get(name, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{field} (default: the stage's preset)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def load_images(args: argparse.Namespace):
    """(training images, evaluation images or None) as uint8 arrays."""
    import numpy as np

    from masc_hf.errors import DataError

    if args.data == "fashion-mnist":
        from masc_hf.data.fashion_mnist import load_fashion_mnist

        train = load_fashion_mnist("train", args.fashion_mnist_root).images
        test = load_fashion_mnist("test", args.fashion_mnist_root).images[: args.eval_images] if args.eval_images > 0 else None
        return train, test
    if not args.data.endswith(".npy"):
        raise DataError(f"--data {args.data!r}: pass 'fashion-mnist' or a .npy file of uint8 images [n, H, W] or [n, H, W, C]")
    try:
        images = np.load(args.data, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"--data {args.data!r} cannot be read as a .npy array ({err}); save the images with numpy.save") from None
    return images, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from masc_hf.errors import MASCError

    if args.stage == "semantic" and args.init:
        raise MASCError("--init is for --stage detail; the semantic stage trains from scratch (drop --init)")
    if args.stage == "detail" and not args.init:
        raise MASCError("--stage detail continues a semantic-stage run: pass --init DIR (the --out of train_vq.py --stage semantic)")
    if args.eval_images < 0:
        raise MASCError(f"--eval-images must be >= 0, got {args.eval_images}")
    check_output_directory(args.out)

    from masc_hf.training.dual_vq_trainer import evaluate_dual_vq_tokenizer, train_dual_vq_tokenizer
    from masc_hf.training.vq_losses import build_perceptual_loss

    overrides = {FIELD_NAMES.get(name, name): getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    perceptual = build_perceptual_loss(args.perceptual_weights)
    train_images, test_images = load_images(args)
    model, stats = train_dual_vq_tokenizer(
        train_images, args.stage, output_dir=args.out, init=args.init, perceptual_loss=perceptual, progress=not args.no_progress, **overrides
    )
    print(f"{args.stage} stage: {stats['steps']} steps, {stats['seconds'] / 60:.1f} min; tokenizer in {stats['model_dir']}")
    print(f"perceptual loss: {stats['perceptual']}")
    if test_images is not None:
        scores = evaluate_dual_vq_tokenizer(model, test_images)
        print(f"test PSNR ({len(test_images)} images): semantic only {scores['semantic_psnr']:.2f} dB", end="")
        if args.stage == "detail":
            print(f", semantic + detail {scores['psnr']:.2f} dB; codes used: {scores['semantic_used_codes']}/{model.codebook_sizes[0]} "
                  f"semantic, {scores['detail_used_codes']}/{model.codebook_sizes[1]} detail")
        else:
            print(f"; codes used: {scores['semantic_used_codes']}/{model.codebook_sizes[0]} semantic")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("train_vq.py", main))
