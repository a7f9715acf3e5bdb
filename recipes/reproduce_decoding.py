"""The MASC paper's Table 6 (random-member against hierarchical decoding) beside IAR's cluster loss,
on real data (Fashion-MNIST), with the quickstart's tokenizer and codes and the Table 1 setup.

    python recipes/reproduce_decoding.py --seeds 0,1,2

Five rows, the same small LlamaGen and budget for each, three seeds:

* ``masc + random``: trained on MASC cluster ids, a uniform random member at decoding (the paper's default);
* ``masc + hierarchical``: the same model, and a refiner trained on it (frozen model) picks the member;
* ``flat``: trained on the codebook ids;
* ``flat + cluster loss (balanced-kmeans)``: flat, trained with IAR's loss over IAR's map (equal clusters);
* ``flat + cluster loss (masc)``: flat, trained with IAR's loss over the MASC map.

Each row reports FID in a Fashion-MNIST classifier's features (not Inception), class consistency,
normalised prediction entropy (Eq. 6, teacher-forced on the test codes), images/s on this CPU and
parameter counts, as mean and spread over seeds; ``results/decoding_fashion_mnist.{md,json,png}``.
Every stage is cached under ``--workdir`` (shared with ``reproduce_table1.py``: tokenizer, codes,
classifier and maps); a rerun skips finished runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the Table 1 recipe's shared pieces

import reproduce_table1 as table1  # noqa: E402

from masc_hf.cli import OneLineParser, run_reporting_user_errors  # noqa: E402
from masc_hf.errors import MASCError  # noqa: E402

logger = logging.getLogger("reproduce_decoding")

ROWS = ("masc + random", "masc + hierarchical", "flat", "flat + cluster loss (balanced-kmeans)", "flat + cluster loss (masc)")
REFINER_WIDTH = 128  # a refiner of the paper's shape (one layer, 4 heads) scaled to this small model


def _train(settings, shared, name: str, seed: int, *, cluster_map=None, cluster_loss_map=None, refiner=None, init=None) -> dict:
    """One training run (cached): its model (and refiner) directories and final loss."""
    import torch

    from masc_hf.data import CodeShardDataset
    from masc_hf.models import LlamaGenForImageGeneration
    from masc_hf.training import ARTrainingArguments, model_for_codes, train

    torch.set_num_threads(1)
    run_dir = Path(settings.workdir) / "runs-decoding" / f"{name}-seed{seed}-steps{settings.steps}"  # cached per budget
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    dataset = CodeShardDataset(shared["codes_dir"], cluster_map=cluster_map, seed=seed, with_fine_ids=refiner is not None)
    if init is not None:
        model = LlamaGenForImageGeneration.from_pretrained(init)
    else:
        config = {"hidden_size": settings.hidden_size, "num_hidden_layers": settings.num_layers, "num_attention_heads": settings.num_heads,
                  "multiple_of": 64, "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1}
        model = model_for_codes(dataset, model_config=config, cluster_map=cluster_map, seed=seed)
    args = ARTrainingArguments(
        output_dir=str(run_dir), max_steps=settings.steps, global_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps, mixed_precision="no", checkpoint_every=settings.steps, keep_checkpoints=1,
        log_every=25, seed=seed, log_with=None, progress=False, resume="latest",
    )
    output = train(model, dataset, args, cluster_map=cluster_map, cluster_loss_map=cluster_loss_map, refiner=refiner)
    result = {"model_dir": output.model_dir, "refiner_dir": output.refiner_dir, "loss": output.loss, "history": output.history}
    table1._write_json(done, result)
    return result


def _evaluate(settings, shared, model_dir: str, cluster_map, refiner_dir: str | None) -> dict:
    """FID and class consistency of eval_per_class samples per class, images/s, parameters, entropy."""
    import numpy as np
    import torch

    from masc_hf.evaluation.entropy import entropy_per_position
    from masc_hf.models import LlamaGenForImageGeneration
    from masc_hf.pipelines import MASCPipeline

    model = LlamaGenForImageGeneration.from_pretrained(model_dir).eval()
    refiner = None
    if refiner_dir is not None:
        from masc_hf.models.refiner import MASCRefiner

        refiner = MASCRefiner.from_pretrained(refiner_dir).eval()
    evaluator = table1.ClassifierEvaluator(settings, shared, cluster_map)
    pipe = MASCPipeline(transformer=model, vqvae=evaluator.vqvae, cluster_map=cluster_map, refiner=refiner)
    pipe.set_progress_bar_config(disable=True)
    labels = np.repeat(np.arange(model.config.num_classes), settings.eval_per_class)
    start = time.perf_counter()
    images = pipe(
        labels.tolist(), generator=torch.Generator().manual_seed(settings.eval_seed), guidance_scale=settings.guidance_scale,
        output_type="pt", decoding="hierarchical" if refiner is not None else "random",
    ).images
    seconds = time.perf_counter() - start
    fid, predicted = evaluator.score_images(images)
    entropy = entropy_per_position(model, shared["val_codes"], cluster_map=cluster_map)
    return {
        "fid": fid, "class_consistency": float(np.mean(predicted == labels)), "entropy_normalized": entropy.normalized,
        "images_per_s": len(labels) / seconds, "parameters": model.num_parameters() + (refiner.num_parameters() if refiner else 0),
    }


def run_seed(settings, shared, seed: int) -> list[dict]:
    from masc_hf.clustering import MASCClusterMap

    masc_map = MASCClusterMap.from_pretrained(shared["maps"][("masc", seed)])
    bkm_map = MASCClusterMap.from_pretrained(shared["maps"][("balanced-kmeans", seed)])
    rows = []
    masc = _train(settings, shared, "masc", seed, cluster_map=masc_map)
    rows.append(("masc + random", masc["model_dir"], masc_map, None))
    from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig
    from masc_hf.models import LlamaGenForImageGeneration
    import torch

    backbone = LlamaGenForImageGeneration.from_pretrained(masc["model_dir"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        refiner = MASCRefiner(MASCRefinerConfig.for_backbone(backbone, hidden_size=REFINER_WIDTH, num_attention_heads=4), cluster_map=masc_map)
    refined = _train(settings, shared, "masc-refiner", seed, cluster_map=masc_map, refiner=refiner, init=masc["model_dir"])
    rows.append(("masc + hierarchical", masc["model_dir"], masc_map, refined["refiner_dir"]))
    flat = _train(settings, shared, "flat", seed)
    rows.append(("flat", flat["model_dir"], None, None))
    for label, name, loss_map in (("flat + cluster loss (balanced-kmeans)", "flat-cl-bkm", bkm_map), ("flat + cluster loss (masc)", "flat-cl-masc", masc_map)):
        run = _train(settings, shared, name, seed, cluster_loss_map=loss_map)
        rows.append((label, run["model_dir"], None, None))
    return [{"row": label, "seed": seed, **_evaluate(settings, shared, model_dir, cmap, refiner_dir)} for label, model_dir, cmap, refiner_dir in rows]


def report(settings, results: list[dict], elapsed: float, command: str) -> Path:
    from masc_hf._io import write_text_atomic

    out = Path(settings.results_dir)
    keys = (("fid", 2), ("class_consistency", 3), ("entropy_normalized", 3), ("images_per_s", 1))
    lines = [
        "# Decoding strategies and IAR's cluster loss on Fashion-MNIST (the MASC paper's Table 6, plus IAR rows)",
        "",
        f"Command: `{command}`. {len(settings.seeds)} seeds ({', '.join(map(str, settings.seeds))}), {settings.steps} steps of batch "
        f"{settings.batch_size}, LlamaGen {settings.hidden_size} hidden x {settings.num_layers} layers, k={settings.num_clusters} of N=256, "
        f"guidance {settings.guidance_scale}, {settings.eval_per_class} samples per class; {elapsed / 60:.0f} min on this 2-core CPU.",
        "",
        "| row | FID (classifier) | class consistency | norm. entropy | images/s (CPU) | parameters |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        mine = [r for r in results if r["row"] == row]
        cells = [table1._fmt(table1._mean_spread([r[key] for r in mine]), digits) for key, digits in keys]
        lines.append(f"| {row} | {' | '.join(cells)} | {mine[0]['parameters']:,} |")
    lines += [
        "",
        "FID is the Fréchet distance of a Fashion-MNIST classifier's penultimate features (not Inception), against the 10,000 "
        "test images; mean ± standard deviation over seeds. Images/s includes the VQ decoder.",
    ]
    from masc_hf.evaluation.plots import plot_rows

    metrics = ("fid", "class_consistency", "entropy_normalized", "images_per_s")
    plot_rows({row: {m: [r[m] for r in results if r["row"] == row] for m in metrics} for row in ROWS}, out / "decoding_fashion_mnist.png")
    lines.append("\nPlot: `decoding_fashion_mnist.png` (mean ± sd over seeds per row).")
    write_text_atomic(out / "decoding_fashion_mnist.md", "\n".join(lines) + "\n")
    table1._write_json(out / "decoding_fashion_mnist.json", {"settings": asdict(settings), "command": command, "results": results})
    return out / "decoding_fashion_mnist.md"


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
        eval_per_class=args.eval_per_class, eval_every=args.steps, methods=("flat", "masc", "balanced-kmeans"),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    shared = table1.prepare(settings)
    results = [r for seed in settings.seeds for r in run_seed(settings, shared, seed)]
    path = report(settings, results, time.perf_counter() - start, "python recipes/reproduce_decoding.py " + " ".join(argv or sys.argv[1:]))
    print(path.read_text())


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("reproduce_decoding.py", main))
