"""The MASC paper's Table 1 at a scale one CPU can run, on real data (Fashion-MNIST).

    python recipes/reproduce_table1.py --dataset fashion-mnist

The same small LlamaGen is trained with a flat vocabulary and on cluster maps from kmeans,
kmeans++, centroid linkage and MASC (all at the same k), for the same steps, with three seeds each.
Every run is evaluated during training (FID in the feature space of a Fashion-MNIST classifier,
class consistency) and at the end (normalised prediction entropy on the test-set codes, Eq. 6);
each map gets the semantic replacement test (PSNR). The table (mean and spread over seeds), the
training acceleration against the flat model of the same seed, a plot and the raw figures go to
``results/``.

Every stage is cached under ``--workdir``: a re-run skips finished runs and resumes killed ones.
The FID here is the Fréchet distance of a Fashion-MNIST classifier's penultimate features, not
the Inception FID (Inception features mean little for 28x28 gray clothes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from masc_hf.cli import OneLineParser, run_reporting_user_errors
from masc_hf.errors import MASCError

logger = logging.getLogger("reproduce_table1")

METHODS = ("flat", "kmeans", "kmeans++", "centroid", "masc")
DETERMINISTIC_METHODS = ("centroid", "masc")  # one map serves every seed


@dataclass
class Table1Settings:
    dataset: str = "fashion-mnist"
    workdir: str = "runs/table1"
    results_dir: str = "results"
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    num_clusters: int = 128  # k = N / 2 of the quickstart's 256-entry codebook
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    eval_every: int = 50
    eval_per_class: int = 50
    guidance_scale: float = 2.0
    eval_seed: int = 1234
    replacement_images: int = 1000
    workers: int = 2
    tag: str | None = None  # runs go to workdir/runs-<tag>: several studies share one tokenizer, codes and maps
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ shared artifacts
def prepare(settings: Table1Settings) -> dict:
    """Tokenizer, train and test codes, the classifier and its reference statistics, and the maps."""
    import numpy as np

    from masc_hf.clustering import build_cluster_map
    from masc_hf.data.extract import extract_codes
    from masc_hf.evaluation.classifier import ImageClassifier, train_classifier
    from masc_hf.evaluation.frechet import feature_statistics
    from masc_hf.quickstart import QuickstartSettings, prepare_tokenizer_and_codes, write_image_parquet
    from masc_hf.vq import export_codebook

    if settings.dataset != "fashion-mnist":
        raise MASCError(f"--dataset {settings.dataset!r} is not supported here; use fashion-mnist")
    work = Path(settings.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prepared = prepare_tokenizer_and_codes(work, QuickstartSettings(), progress=True, reuse=True)
    test_set, class_names = prepared["test_set"], prepared["class_names"]

    val_codes = work / "val_codes"
    parquet = write_image_parquet(test_set.images, test_set.labels, class_names, prepared["pad"], work / "data_test", "test")
    extract_codes(parquet, prepared["vqvae"], val_codes, split="test", image_size=prepared["image_size"], augment="none", batch_size=256, progress=True)

    classifier_dir = work / "classifier"
    if (classifier_dir / "config.json").is_file():
        classifier = ImageClassifier.from_pretrained(classifier_dir)
    else:
        train_set = prepared["train_set"]
        classifier, _ = train_classifier(
            train_set.images, train_set.labels, epochs=1.0, seed=0, eval_images=test_set.images, eval_labels=test_set.labels
        )
        classifier.save_pretrained(classifier_dir)
    reference = work / "reference_stats.npz"
    if not reference.is_file():
        mu, sigma = feature_statistics(classifier.features(test_set.images))
        np.savez(reference, mu=mu, sigma=sigma)

    codebook = export_codebook(prepared["vqvae"])
    maps: dict[tuple[str, int], str] = {}
    for method in settings.methods:
        if method == "flat":
            continue
        for seed in settings.seeds:
            name = method if method in DETERMINISTIC_METHODS else f"{method}-seed{seed}"
            path = work / "maps" / name
            if not (path / "cluster_map_config.json").is_file():
                build_cluster_map(codebook, settings.num_clusters, method=method, seed=seed, source_tokenizer="quickstart VQ").save_pretrained(path)
            maps[(method, seed)] = str(path)
    return {
        "vq_dir": str(prepared["vq_dir"]),
        "codes_dir": str(prepared["codes_dir"]),
        "val_codes": str(val_codes),
        "classifier_dir": str(classifier_dir),
        "classifier_accuracy": classifier.metrics.get("test_accuracy"),
        "reference": str(reference),
        "maps": maps,
        "pad": prepared["pad"],
        "class_names": class_names,
    }


# ------------------------------------------------------------------------------ one training run
class ClassifierEvaluator:
    """``eval_fn`` for ``train``: samples ``eval_per_class`` images per class with a fixed generator,
    decodes them, and scores FID (classifier features) and class consistency."""

    def __init__(self, settings: Table1Settings, shared: dict, cluster_map):
        import numpy as np
        from diffusers import VQModel

        from masc_hf.evaluation.classifier import ImageClassifier

        self.settings, self.cluster_map, self.pad = settings, cluster_map, shared["pad"]
        self.vqvae = VQModel.from_pretrained(shared["vq_dir"]).eval()
        self.classifier = ImageClassifier.from_pretrained(shared["classifier_dir"])
        stats = np.load(shared["reference"])
        self.mu, self.sigma = stats["mu"], stats["sigma"]

    def __call__(self, step: int, model) -> dict[str, float]:
        import numpy as np
        import torch

        from masc_hf.pipelines import MASCPipeline

        pipe = MASCPipeline(transformer=model, vqvae=self.vqvae, cluster_map=self.cluster_map)
        pipe.set_progress_bar_config(disable=True)
        labels = np.repeat(np.arange(model.config.num_classes), self.settings.eval_per_class)
        generator = torch.Generator().manual_seed(self.settings.eval_seed)
        images = pipe(labels.tolist(), generator=generator, guidance_scale=self.settings.guidance_scale, output_type="pt").images
        fid, predicted = self.score_images(images)
        return {"fid": fid, "class_consistency": float(np.mean(predicted == labels))}

    def score(self, fine_ids) -> tuple[float, object]:
        """FID and predicted classes of the images the tokenizer decodes from ``fine_ids`` ``[n, h*w]``."""
        import torch

        from masc_hf.vq.tokens import decode_ids

        with torch.no_grad():
            return self.score_images(((decode_ids(self.vqvae, fine_ids).clamp(-1, 1) + 1) / 2))

    def score_images(self, images) -> tuple[float, object]:
        """FID (classifier features, against the real test images) and predicted classes of ``[n, 3, H, W]``
        images in [0, 1] (the tokenizer's padded canvas)."""
        from masc_hf.evaluation.frechet import feature_statistics, frechet_distance

        gray = images.float().mean(dim=1, keepdim=True)
        side = gray.shape[-1] - 2 * self.pad
        mu, sigma = feature_statistics(self.classifier.features(gray, center_crop=side))
        return frechet_distance(mu, sigma, self.mu, self.sigma), self.classifier.predict(gray, center_crop=side)


def run_one(settings: Table1Settings, shared: dict, method: str, seed: int) -> dict:
    """Train (or resume, or skip when done) one method/seed; returns its eval log and final entropy."""
    import torch

    torch.set_num_threads(1)  # runs go side by side, one core each
    from masc_hf.clustering import MASCClusterMap
    from masc_hf.data import CodeShardDataset
    from masc_hf.training import ARTrainingArguments, model_for_codes, train

    run_dir = Path(settings.workdir) / (f"runs-{settings.tag}" if settings.tag else "runs") / f"{method}-seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        cached = result.get("run_settings", {"steps": result["steps"]})
        wanted = {k: v for k, v in _run_settings(settings).items() if k in cached}
        if cached != wanted:
            raise MASCError(f"{run_dir} holds a finished run with other settings ({cached} vs {wanted}); use another --workdir")
        return result
    map_dir = shared["maps"].get((method, seed)) if method != "flat" else None
    cluster_map = MASCClusterMap.from_pretrained(map_dir) if map_dir else None
    model_config = {
        "hidden_size": settings.hidden_size, "num_hidden_layers": settings.num_layers, "num_attention_heads": settings.num_heads,
        "multiple_of": 64, "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1,
    }
    start = time.perf_counter()
    dataset = CodeShardDataset(shared["codes_dir"], cluster_map=cluster_map, seed=seed)
    summary = train(
        model_for_codes(dataset, model_config=model_config, cluster_map=cluster_map, seed=seed),
        dataset,
        ARTrainingArguments(
            output_dir=str(run_dir), max_steps=settings.steps, global_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_steps, mixed_precision="no", checkpoint_every=100, keep_checkpoints=1,
            log_every=25, eval_every=settings.eval_every, seed=seed, log_with=None, progress=False, resume="latest",
        ),
        cluster_map=cluster_map,
        eval_fn=ClassifierEvaluator(settings, shared, cluster_map),
    )
    result = {
        "method": method, "seed": seed, "map": map_dir, "steps": summary["global_step"], "final_loss": summary["loss"],
        "model_dir": summary["model_dir"], "eval_history": json.loads((run_dir / "eval_history.json").read_text()),
        "train_history": summary["history"], "seconds": time.perf_counter() - start, "run_settings": _run_settings(settings),
    }
    _write_json(result_path, result)
    return result


def add_validation_entropy(result: dict, shared: dict) -> dict:
    """Normalised prediction entropy (Eq. 6) of the final model, teacher-forced on the test codes."""
    if "val_entropy" in result:
        return result
    from masc_hf.clustering import MASCClusterMap
    from masc_hf.evaluation.entropy import entropy_per_position
    from masc_hf.models import LlamaGenForImageGeneration

    model = LlamaGenForImageGeneration.from_pretrained(result["model_dir"]).eval()
    cluster_map = MASCClusterMap.from_pretrained(result["map"]) if result["map"] else None
    entropy = entropy_per_position(model, shared["val_codes"], cluster_map=cluster_map)
    result["val_entropy"] = {
        "entropy": entropy.mean, "entropy_normalized": entropy.normalized, "per_position": entropy.per_position.tolist(),
        "vocab_size": entropy.vocab_size, "num_examples": entropy.num_examples,
    }
    _write_json(Path(result["model_dir"]).parent / "result.json", result)
    return result


def _write_json(path: Path, payload) -> None:
    from masc_hf._io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=1, default=float) + "\n")


def _run_settings(settings: Table1Settings) -> dict:
    """What a cached run must share with this invocation to be reused."""
    keys = ("num_clusters", "hidden_size", "num_layers", "num_heads", "steps", "batch_size", "learning_rate", "warmup_steps",
            "eval_every", "eval_per_class", "guidance_scale", "eval_seed")
    return {k: getattr(settings, k) for k in keys}


def _run_one_star(job):
    logging.basicConfig(level=logging.WARNING)
    return run_one(*job)


def replacement_fid(settings: Table1Settings, shared: dict, map_dirs: list[str]) -> dict[str, float]:
    """The FID (classifier features) of real test images after the tokenizer alone ("plain") and
    after the replacement test of each map: the floor a perfect model of cluster ids would reach,
    since the random member drawn at decode time is all it loses. Same count as the model samples."""
    import torch

    from masc_hf.clustering import MASCClusterMap
    from masc_hf.data.fashion_mnist import load_fashion_mnist
    from masc_hf.vq.tokens import encode_images
    from masc_hf.training.vq_trainer import to_vq_input

    evaluator = ClassifierEvaluator(settings, shared, cluster_map=None)
    images = load_fashion_mnist("test").images[: settings.eval_per_class * 10]
    with torch.no_grad():
        fine_ids = encode_images(evaluator.vqvae, to_vq_input(images, image_size=evaluator.vqvae.config.sample_size))

    floors = {"plain": evaluator.score(fine_ids)[0]}
    for map_dir in map_dirs:
        cluster_map = MASCClusterMap.from_pretrained(map_dir)
        replaced = cluster_map.decode(cluster_map.encode(fine_ids), generator=torch.Generator().manual_seed(0))
        floors[map_dir] = evaluator.score(replaced)[0]
    return floors


# ------------------------------------------------------------------------------ report
def _mean_spread(values) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(pair, digits: int = 3, percent: bool = False) -> str:
    if pair is None:
        return "—"
    mean, spread = pair
    if percent:
        return f"{100 * mean:+.0f}% ± {100 * spread:.0f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def report(settings: Table1Settings, shared: dict, results: list[dict], replacement: dict, elapsed: float, command: str) -> Path:
    from masc_hf._io import write_text_atomic

    from masc_hf.evaluation import training_acceleration

    out = Path(settings.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_method: dict[str, list[dict]] = {m: [r for r in results if r["method"] == m] for m in settings.methods}
    flat_by_seed = {r["seed"]: r for r in by_method.get("flat", [])}
    rows, raw = [], {}
    for method, runs in by_method.items():
        accel = [training_acceleration(flat_by_seed[r["seed"]]["eval_history"], r["eval_history"]) for r in runs if r["seed"] in flat_by_seed]
        finals = [r["eval_history"][-1] for r in runs]
        psnr = [replacement.get(r["map"], {}).get("psnr") for r in runs] if method != "flat" else []
        floor = [replacement.get(r["map"] or "plain", {}).get("fid_floor") for r in runs]
        figures = {
            "entropy_normalized": _mean_spread(r["val_entropy"]["entropy_normalized"] for r in runs),
            "entropy_bits": _mean_spread(r["val_entropy"]["entropy"] for r in runs),
            "fid": _mean_spread(f["fid"] for f in finals),
            "class_consistency": _mean_spread(f["class_consistency"] for f in finals),
            "replacement_psnr": _mean_spread(psnr),
            "fid_floor": _mean_spread(floor),
            "steps_to_flat_fid": _mean_spread(a["steps"] for a in accel),
            "acceleration": _mean_spread(a["acceleration"] for a in accel),
            "reached": f"{sum(a['steps'] is not None for a in accel)}/{len(accel)}",
        }
        raw[method] = {"figures": figures, "acceleration": accel, "runs": [{k: v for k, v in r.items() if k != "train_history"} for r in runs]}
        vocab = settings.num_clusters if method != "flat" else "256 (flat)"
        rows.append(
            f"| {method} | {vocab} | {_fmt(figures['entropy_normalized'])} | {_fmt(figures['entropy_bits'], 2)} | {_fmt(figures['fid'], 2)} "
            f"| {_fmt(figures['class_consistency'])} | {_fmt(figures['replacement_psnr'], 2)} | {_fmt(figures['fid_floor'], 2)} | "
            + (f"{settings.steps} (baseline) | 0 (baseline) |" if method == "flat" else
               f"{_fmt(figures['steps_to_flat_fid'], 0)} ({figures['reached']}) | {_fmt(figures['acceleration'], percent=True)} |")
        )
    import torch

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}"
    table = "\n".join(
        [
            "| method | vocabulary | normalised entropy (test codes) | entropy (bits) | FID (classifier features) | class consistency "
            "| replacement PSNR (dB) | FID floor (real images through tokenizer + map) | steps to flat's final FID (runs that got there) "
            "| training acceleration |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = f"""# Table 1 on Fashion-MNIST (generated by `recipes/reproduce_table1.py`)

Command: `{command}`
Machine: {machine}. Training and in-training evaluation of the {len(results)} runs: {sum(r['seconds'] for r in results) / 60:.0f} min of run time in all ({settings.workers} runs side by side); this invocation (cached runs skipped): {elapsed / 60:.1f} min.

{table}

Mean ± standard deviation over seeds {list(settings.seeds)}. Each run: LlamaGen with hidden size
{settings.hidden_size}, {settings.num_layers} layers, {settings.num_heads} heads, {settings.steps} steps of batch
{settings.batch_size} (lr {settings.learning_rate}, cosine, warmup {settings.warmup_steps}) on the quickstart's
tokenizer (256 codes, 8x8 tokens) and its train codes (images and mirrors). Maps: k = {settings.num_clusters};
kmeans and kmeans++ maps change with the seed, centroid and masc maps are deterministic.

* FID: Fréchet distance between the penultimate features (128-d) of a Fashion-MNIST classifier
  (test accuracy {shared.get('classifier_accuracy') or float('nan'):.3f}) on {settings.eval_per_class} samples per
  class (classifier-free guidance {settings.guidance_scale}) and on the 10,000 real test images. It is **not**
  the Inception FID. Evaluated every {settings.eval_every} steps with the same sampling seed.
* Normalised entropy: Eq. 6 of the paper, teacher-forced on the codes of the 10,000 test images,
  divided by log2 of the model's vocabulary.
* Replacement PSNR: the semantic replacement test on {settings.replacement_images} test images (every
  token replaced by a random member of its cluster), against the plain reconstruction.
* FID floor: the same FID for {settings.eval_per_class * 10} real test images encoded, replaced as in the
  replacement test (flat: only encoded and decoded) and decoded; what a perfect model of the
  ids would score, since the member drawn at decode time is all a map loses.
* Steps to flat's final FID / acceleration: per seed against the flat run of the same seed, linearly
  interpolated between evaluations; a run that never gets there counts as not reached and is left
  out of the mean.

Raw figures: `table1_fashion_mnist.json`. Plots: `table1_fashion_mnist_fid.png` (FID during training), `table1_fashion_mnist_consistency.png`,
`table1_fashion_mnist_training.png` (loss and entropy, seed 0), `table1_fashion_mnist_entropy_per_position.png`.
"""
    write_text_atomic(out / "table1_fashion_mnist.md", text)
    write_text_atomic(out / "table1_fashion_mnist.json", 
        json.dumps({"settings": asdict(settings), "machine": machine, "command": command, "replacement": replacement, "methods": raw}, indent=1, default=str)
        + "\n"
    )
    _plot(settings, by_method, out)
    return out / "table1_fashion_mnist.md"


def _plot(settings: Table1Settings, by_method: dict[str, list[dict]], out: Path) -> list[Path]:
    import numpy as np

    from masc_hf.evaluation.plots import plot_entropy_per_position, plot_metric_vs_step, plot_training_curves

    logs = {m: [r["eval_history"] for r in runs] for m, runs in by_method.items() if runs}
    flat_final = statistics.fmean(r["eval_history"][-1]["fid"] for r in by_method["flat"])
    first_seed = {m: runs[0] for m, runs in by_method.items() if runs}
    # normalised entropy per position: bits / log2(V), so flat (V=256) and maps (V=k) compare
    per_position = {
        m: np.mean([np.asarray(r["val_entropy"]["per_position"]) / np.log2(r["val_entropy"]["vocab_size"]) for r in runs], axis=0)
        for m, runs in by_method.items() if runs
    }
    return [
        plot_training_curves({f"{m} (seed {r['seed']})": r["train_history"] for m, r in first_seed.items()}, out / "table1_fashion_mnist_training.png"),
        plot_entropy_per_position(per_position, out / "table1_fashion_mnist_entropy_per_position.png", title="normalised prediction entropy per position (test codes)", unit="entropy / log2(V)"),
        plot_metric_vs_step(logs, "fid", out / "table1_fashion_mnist_fid.png", reference={"flat, final": flat_final}, lower_is_better=True),
        plot_metric_vs_step(logs, "class_consistency", out / "table1_fashion_mnist_consistency.png", lower_is_better=False),
    ]


# ------------------------------------------------------------------------------ main
def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise MASCError(f"--seeds {text!r}: pass comma-separated non-negative integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise MASCError(f"--seeds {text!r}: pass comma-separated non-negative integers, e.g. 0,1,2")
    return seeds


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--workdir", default=Table1Settings.workdir)
    parser.add_argument("--results-dir", default=Table1Settings.results_dir)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=Table1Settings.steps)
    parser.add_argument("--eval-every", type=int, default=Table1Settings.eval_every)
    parser.add_argument("--eval-per-class", type=int, default=Table1Settings.eval_per_class)
    parser.add_argument("--tag", help="keep these runs apart (workdir/runs-TAG), e.g. for other steps or model sizes")
    parser.add_argument("--workers", type=int, default=Table1Settings.workers, help="runs trained side by side (one core each)")
    for name in ("num_clusters", "hidden_size", "num_layers", "num_heads", "batch_size"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(Table1Settings, name))
    for name in ("learning_rate", "guidance_scale"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(Table1Settings, name))
    args = parser.parse_args(argv)
    settings = Table1Settings(
        dataset=args.dataset, workdir=args.workdir, results_dir=args.results_dir, methods=tuple(args.methods.split(",")),
        seeds=_seeds(args.seeds), steps=args.steps, eval_every=args.eval_every,
        eval_per_class=args.eval_per_class, workers=args.workers, num_clusters=args.num_clusters, hidden_size=args.hidden_size,
        num_layers=args.num_layers, num_heads=args.num_heads, batch_size=args.batch_size, learning_rate=args.learning_rate,
        guidance_scale=args.guidance_scale, tag=args.tag,
    )
    unknown = set(settings.methods) - set(METHODS)
    if unknown or "flat" not in settings.methods:
        raise MASCError(f"--methods must include flat and come from {list(METHODS)}; got {sorted(settings.methods)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    shared = prepare(settings)
    jobs = [(settings, shared, method, seed) for seed in settings.seeds for method in settings.methods]
    if settings.workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(settings.workers) as pool:
            results = []
            for result in pool.imap_unordered(_run_one_star, jobs):
                logger.info("done: %s seed %d, final FID %.2f", result["method"], result["seed"], result["eval_history"][-1]["fid"])
                results.append(result)
    else:
        results = [run_one(*job) for job in jobs]
    results.sort(key=lambda r: (settings.methods.index(r["method"]), r["seed"]))
    results = [add_validation_entropy(r, shared) for r in results]

    from diffusers import VQModel

    from masc_hf.clustering import MASCClusterMap
    from masc_hf.data.fashion_mnist import load_fashion_mnist
    from masc_hf.evaluation.replacement import replacement_test

    map_dirs = sorted({r["map"] for r in results if r["map"]})
    replacement_path = Path(settings.workdir) / "replacement.json"
    replacement = json.loads(replacement_path.read_text()) if replacement_path.is_file() else {}
    if set(map_dirs) - set(replacement):
        vqvae = VQModel.from_pretrained(shared["vq_dir"]).eval()
        test_images = load_fashion_mnist("test").images[: settings.replacement_images]
        replacement = replacement_test(vqvae, {d: MASCClusterMap.from_pretrained(d) for d in map_dirs}, test_images, seed=0)
        _write_json(replacement_path, replacement)
    floors_path = Path(settings.workdir) / "replacement_fid.json"
    floors = json.loads(floors_path.read_text()) if floors_path.is_file() else {}
    if set(map_dirs) - set(floors):
        floors = replacement_fid(settings, shared, map_dirs)
        _write_json(floors_path, floors)
    replacement = {d: {**replacement.get(d, {}), "fid_floor": floors.get(d)} for d in set(replacement) | set(floors)}
    command = "python recipes/reproduce_table1.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = report(settings, shared, results, replacement, time.perf_counter() - start, command.strip())
    print(path.read_text())


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("reproduce_table1.py", main))
