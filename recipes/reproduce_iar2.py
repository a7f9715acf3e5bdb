"""IAR2 against flat LlamaGen and MASC on real data (Fashion-MNIST), at the same training budget, with
IAR2's adaptive guidance against constant guidance.

    python recipes/reproduce_iar2.py --seeds 0,1,2

Rows, three seeds each, the backbone of the Table 1 setup (same width, depth, steps, batch):

* ``flat``: LlamaGen on the quickstart tokenizer's 256 codebook ids;
* ``masc + random``: LlamaGen on MASC cluster ids (k = 128), a uniform random member at decoding;
* ``iar2, constant guidance``: IAR2 on the (semantic, detail) pairs of a 16 x 64 dual-codebook
  tokenizer trained on the same images (two stages), semantic and detail guidance ``(g, g)``, w = 0;
* ``iar2, adaptive guidance``: the same model, progressive schedule ``(1, 2g - 1)`` (the same mean
  scale over the steps) with the class-attention term w = 1.

g is the study's guidance scale (the Table 1 setup's, 2.0). Each row reports FID in a Fashion-MNIST
classifier's features (not Inception), class consistency, images/s on this CPU and parameter
counts, as mean and spread over seeds: ``results/iar2_fashion_mnist.{md,json,png}``. Tokenizers,
codes, classifier, maps and the flat and MASC runs are shared with ``reproduce_table1.py`` and
``reproduce_decoding.py`` under ``--workdir`` (cached: a rerun skips finished stages).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the Table 1 and decoding recipes' shared pieces

import reproduce_decoding as decoding  # noqa: E402
import reproduce_table1 as table1  # noqa: E402

from masc_hf.cli import OneLineParser, run_reporting_user_errors  # noqa: E402
from masc_hf.errors import MASCError  # noqa: E402

logger = logging.getLogger("reproduce_iar2")

ROWS = ("flat", "masc + random", "iar2, constant guidance", "iar2, adaptive guidance")
DUAL_SIZES = {"num_semantic_embeddings": 16, "num_detail_embeddings": 64}
HEAD_LAYERS = 1  # IAR2's local-context head: 5 blocks at ImageNet scale, 1 for this 2-layer backbone


def prepare_dual(settings) -> dict:
    """The dual-codebook tokenizer (both stages) and its (semantic, detail) codes, cached in the workdir."""
    from masc_hf.data.extract import extract_codes
    from masc_hf.data.fashion_mnist import load_fashion_mnist
    from masc_hf.quickstart import QuickstartSettings
    from masc_hf.training.dual_vq_trainer import evaluate_dual_vq_tokenizer, train_dual_vq_tokenizer
    from masc_hf.vq import DualCodebookVQModel

    work = Path(settings.workdir)
    vq_dir = work / "dual-vq"
    if not (vq_dir / "model" / "config.json").is_file():
        import numpy as np

        quick = QuickstartSettings()
        train_set = load_fashion_mnist("train")
        keep = np.sort(np.random.default_rng(quick.seed).permutation(len(train_set.labels))[: quick.train_examples])
        images = train_set.images[keep]
        train_dual_vq_tokenizer(images, "semantic", output_dir=work / "dual-vq-semantic", seed=quick.seed, **DUAL_SIZES)
        train_dual_vq_tokenizer(images, "detail", output_dir=vq_dir, init=work / "dual-vq-semantic", seed=quick.seed, **DUAL_SIZES)
    vqvae = DualCodebookVQModel.from_pretrained(vq_dir / "model").eval()
    quality = evaluate_dual_vq_tokenizer(vqvae, load_fashion_mnist("test").images[:2000])
    codes_dir = work / "dual-codes"
    # the same training images as the single-codebook codes (the quickstart's parquet copy)
    parquet = work / "data"
    if not (parquet / "train.parquet").is_file():
        raise MASCError(f"{parquet}/train.parquet is missing; run the Table 1 preparation first (it writes it)")
    extract_codes(parquet, vqvae, codes_dir, image_size=vqvae.config.sample_size, augment="flip", batch_size=256, progress=True)
    return {"vq_dir": str(vq_dir / "model"), "codes_dir": str(codes_dir), "tokenizer": quality}


def _train_iar2(settings, dual, seed: int) -> dict:
    """One IAR2 run (cached) at the study's budget: its model directory and history."""
    import torch

    from masc_hf.data import CodeShardDataset
    from masc_hf.training import ARTrainingArguments, model_for_codes, train

    torch.set_num_threads(1)
    run_dir = Path(settings.workdir) / "runs-iar2" / f"iar2-seed{seed}-steps{settings.steps}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    dataset = CodeShardDataset(dual["codes_dir"], seed=seed)
    config = {"hidden_size": settings.hidden_size, "num_hidden_layers": settings.num_layers, "num_attention_heads": settings.num_heads,
              "head_layers": HEAD_LAYERS, "multiple_of": 64, "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1}
    model = model_for_codes(dataset, model_config=config, seed=seed, kind="iar2")
    args = ARTrainingArguments(
        output_dir=str(run_dir), max_steps=settings.steps, global_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, mixed_precision="no", checkpoint_every=settings.steps, keep_checkpoints=1,
        log_every=25, seed=seed, log_with=None, progress=False, resume="latest",
    )
    output = train(model, dataset, args)
    result = {"model_dir": output.model_dir, "loss": output.loss, "history": output.history}
    table1._write_json(done, result)
    return result


def _evaluate_iar2(settings, shared, dual, model_dir: str, guidance: dict) -> dict:
    import numpy as np
    import torch

    from masc_hf.models import IAR2ForImageGeneration
    from masc_hf.pipelines import IAR2Pipeline
    from masc_hf.vq import DualCodebookVQModel

    model = IAR2ForImageGeneration.from_pretrained(model_dir).eval()
    pipe = IAR2Pipeline(transformer=model, vqvae=DualCodebookVQModel.from_pretrained(dual["vq_dir"]).eval())
    pipe.set_progress_bar_config(disable=True)
    evaluator = table1.ClassifierEvaluator(settings, shared, None)
    labels = np.repeat(np.arange(model.config.num_classes), settings.eval_per_class)
    start = time.perf_counter()
    images = pipe(labels.tolist(), generator=torch.Generator().manual_seed(settings.eval_seed), output_type="pt", **guidance).images
    seconds = time.perf_counter() - start
    fid, predicted = evaluator.score_images(images)
    return {"fid": fid, "class_consistency": float(np.mean(predicted == labels)), "images_per_s": len(labels) / seconds,
            "parameters": model.num_parameters()}


def run_seed(settings, shared, dual, seed: int) -> list[dict]:
    from masc_hf.clustering import MASCClusterMap

    g = settings.guidance_scale
    masc_map = MASCClusterMap.from_pretrained(shared["maps"][("masc", seed)])
    rows = []
    flat = decoding._train(settings, shared, "flat", seed)
    rows.append({"row": "flat", **decoding._evaluate(settings, shared, flat["model_dir"], None, None)})
    masc = decoding._train(settings, shared, "masc", seed, cluster_map=masc_map)
    rows.append({"row": "masc + random", **decoding._evaluate(settings, shared, masc["model_dir"], masc_map, None)})
    iar2 = _train_iar2(settings, dual, seed)
    constant = {"semantic_guidance": (g, g), "detail_guidance": (g, g), "attention_guidance_weight": 0.0}
    adaptive = {"semantic_guidance": (1.0, 2 * g - 1), "detail_guidance": (1.0, 2 * g - 1), "attention_guidance_weight": 1.0}
    rows.append({"row": "iar2, constant guidance", **_evaluate_iar2(settings, shared, dual, iar2["model_dir"], constant)})
    rows.append({"row": "iar2, adaptive guidance", **_evaluate_iar2(settings, shared, dual, iar2["model_dir"], adaptive)})
    for row in rows:
        row["seed"] = seed
        row.pop("entropy_normalized", None)  # not comparable across one and two sub-token vocabularies
    return rows


def report(settings, dual, results: list[dict], elapsed: float, command: str) -> Path:
    from masc_hf._io import write_text_atomic
    from masc_hf.evaluation.plots import plot_rows

    out = Path(settings.results_dir)
    g = settings.guidance_scale
    tokenizer = dual["tokenizer"]
    keys = (("fid", 2), ("class_consistency", 3), ("images_per_s", 1))
    lines = [
        "# IAR2 against flat LlamaGen and MASC on Fashion-MNIST",
        "",
        f"Command: `{command}`. {len(settings.seeds)} seeds ({', '.join(map(str, settings.seeds))}), {settings.steps} steps of batch "
        f"{settings.batch_size} for every model; backbone {settings.hidden_size} hidden x {settings.num_layers} layers (IAR2 adds a "
        f"{HEAD_LAYERS}-block local-context head); flat and MASC (k={settings.num_clusters}) on the quickstart's 256-code VQ, IAR2 on a "
        f"16 semantic x 64 detail dual tokenizer (test PSNR {tokenizer['semantic_psnr']:.1f} dB semantic only, {tokenizer['psnr']:.1f} dB "
        f"with detail); {settings.eval_per_class} samples per class; guidance {g} (flat, MASC, IAR2 constant) and the progressive "
        f"schedule (1 -> {2 * g - 1:g}, w = 1) for IAR2 adaptive; {elapsed / 60:.0f} min on this 2-core CPU.",
        "",
        "| row | FID (classifier) | class consistency | images/s (CPU) | parameters |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        mine = [r for r in results if r["row"] == row]
        cells = [table1._fmt(table1._mean_spread([r[key] for r in mine]), digits) for key, digits in keys]
        lines.append(f"| {row} | {' | '.join(cells)} | {mine[0]['parameters']:,} |")
    lines += [
        "",
        "FID is the Fréchet distance of a Fashion-MNIST classifier's penultimate features (not Inception), against the 10,000 "
        "test images; mean ± standard deviation over seeds. Images/s includes the tokenizer's decoder. The tokenizers differ "
        "(one codebook of 256 against 16 x 64 pairs), so the rows compare systems, not only the AR models.",
    ]
    metrics = ("fid", "class_consistency", "images_per_s")
    plot_rows({row: {m: [r[m] for r in results if r["row"] == row] for m in metrics} for row in ROWS}, out / "iar2_fashion_mnist.png")
    lines.append("\nPlot: `iar2_fashion_mnist.png` (mean ± sd over seeds per row).")
    write_text_atomic(out / "iar2_fashion_mnist.md", "\n".join(lines) + "\n")
    table1._write_json(out / "iar2_fashion_mnist.json", {"settings": asdict(settings), "command": command, "tokenizer": tokenizer, "results": results})
    return out / "iar2_fashion_mnist.md"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=table1.Table1Settings.workdir)
    parser.add_argument("--results-dir", default=table1.Table1Settings.results_dir)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=table1.Table1Settings.steps)
    parser.add_argument("--eval-per-class", type=int, default=table1.Table1Settings.eval_per_class)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_per_class < 1:
        raise MASCError("--steps and --eval-per-class must be at least 1")
    settings = replace(
        table1.Table1Settings(), workdir=args.workdir, results_dir=args.results_dir, seeds=table1._seeds(args.seeds), steps=args.steps,
        eval_per_class=args.eval_per_class, eval_every=args.steps, methods=("flat", "masc"),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    shared = table1.prepare(settings)
    dual = prepare_dual(settings)
    results = [r for seed in settings.seeds for r in run_seed(settings, shared, dual, seed)]
    path = report(settings, dual, results, time.perf_counter() - start, "python recipes/reproduce_iar2.py " + " ".join(argv or sys.argv[1:]))
    print(path.read_text())


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("reproduce_iar2.py", main))
