"""Speed and memory of ``LlamaGenForImageGeneration.generate``: eager and compiled, against a no-cache baseline.

Prints images/s, tokens/s and peak memory for one preset and batch size, on CPU and (when one is
available) CUDA, for the static-cache decode step run eagerly and under ``torch.compile``
(``generate(compile=True)``: fullgraph, and CUDA graphs on CUDA), and for a baseline that recomputes
the whole prefix for every token (what the static KV cache saves). The compile time of the first
call is reported apart. Weights are random: speed does not depend on them.

    python benchmarks/bench_generate.py                       # tiny random model, batch 4 (about 1-2 min on 2 CPU cores)
    python benchmarks/bench_generate.py --preset GPT-B-256 --batch-size 8 --device cuda --dtype bfloat16
    python benchmarks/bench_generate.py --preset GPT-B-256 --batch-size 4 --threads 2 --reference-src DIR --floor --no-baseline

``--reference-src DIR``: a checkout of github.com/FoundationVision/LlamaGen, imported from there (never
copied into this project): its ``generate`` on a model of the same preset, batch, guidance and
threads, in the same run. ``--floor``: the time the decode steps' linear layers alone take as plain
``F.linear`` calls of the same shapes and dtype (every layer's projections and the head, at the
guided batch's rows, ``block_size`` times): the floor of a decode step on a CPU; the same on
oneDNN's packed weights, which ``generate`` uses on CPU (faster where torch's default GEMM is not); and
the time to read the KV cache's written positions at every step (what attention must read, which
the linear floor leaves out and which grows with the batch). The last line gives ours against the
reference and against the floors.
"""

from __future__ import annotations

import argparse
import resource
import signal
import statistics
import sys
import time

import torch

from masc_hf.models import LLAMAGEN_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration
from masc_hf.models.ar.cpu_linear import can_pack, linear_on_packed, pack_weight

# Small enough for a laptop CPU, shaped like a 256 px model (16 x 16 tokens, 1000 classes).
TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, vocab_size=16384, block_size=256)
REFINER_CLUSTERS, REFINER_WIDTH = 8192, 512  # --refiner's MASC model (k = N / 2) and refiner width (the paper's)


def build_model(preset: str, device: str, dtype: torch.dtype, num_clusters: int | None = None):
    """The model (MASC with a random map of ``num_clusters`` when given) and that map (or ``None``)."""
    config = LlamaGenConfig(**TINY) if preset == "tiny" else LlamaGenConfig.from_preset(preset)
    cluster_map = None
    if num_clusters:
        import numpy as np

        from masc_hf import build_cluster_map

        n = config.vocab_size
        cluster_map = build_cluster_map(np.random.default_rng(0).normal(size=(n, 8)), num_clusters, method="random", compute_quality=False)
        config = LlamaGenConfig(**{**config.to_dict(), "vocab_size": num_clusters, "fine_vocab_size": n, "cluster_map_fingerprint": cluster_map.fingerprint})
    torch.manual_seed(0)
    with torch.device(device):  # made and initialised where it runs: seconds saved for the big presets on a GPU
        model = LlamaGenForImageGeneration(config)
        torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # the reference zero-init would make sampling uniform
    return model.to(dtype=dtype).eval(), cluster_map


def build_refiner(model, cluster_map, width: int, device: str, dtype: torch.dtype):
    """A random refiner of the paper's shape (one layer, 4 heads) at ``width``, for ``model``."""
    from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

    torch.manual_seed(1)
    refiner = MASCRefiner(MASCRefinerConfig.for_backbone(model, hidden_size=width, num_attention_heads=4), cluster_map=cluster_map)
    torch.nn.init.normal_(refiner.lm_head.weight, std=0.02)
    return refiner.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def generate_without_cache(model: LlamaGenForImageGeneration, labels: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Baseline: the same sampling, but every step re-runs the full prefix (no KV cache)."""
    batch, guided = labels.shape[0], guidance_scale != 1.0
    rows = torch.cat([labels, labels]) if guided else labels
    drop = torch.arange(rows.shape[0], device=rows.device) >= batch
    class_embeds = model.embed_classes(rows, drop)
    tokens = torch.empty(batch, model.config.block_size, dtype=torch.long, device=labels.device)
    for step in range(model.config.block_size):
        prefix = tokens[:, :step].repeat(rows.shape[0] // batch, 1)
        hidden = torch.cat([class_embeds, model.embed_tokens(prefix)], dim=1)
        logits = model._decoder(hidden, torch.arange(hidden.shape[1], device=hidden.device))[0][:, -1]
        if guided:
            logits = logits[batch:] + guidance_scale * (logits[:batch] - logits[batch:])
        tokens[:, step] = torch.multinomial(logits.softmax(-1), 1)[:, 0]
    return tokens


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss: peak resident set of the whole process (KiB on Linux), a coarse upper bound
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_generate(src, model, labels: torch.Tensor, guidance_scale: float, top_k: int):
    """A callable running the LlamaGen reference's ``generate`` on a reference model of ``model``'s sizes."""
    from pathlib import Path

    src = Path(src)
    if not (src / "autoregressive" / "models" / "generate.py").is_file():
        raise SystemExit(f"--reference-src {src}: no autoregressive/models/generate.py there; pass a LlamaGen checkout")
    sys.path.insert(0, str(src))
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer

    config = model.config
    args = ModelArgs(dim=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads,
                     vocab_size=config.vocab_size, block_size=config.block_size, num_classes=config.num_classes,
                     class_dropout_prob=config.class_dropout_prob, cls_token_num=1, model_type="c2i")
    torch.manual_seed(0)
    with torch.device(model.device):
        reference = Transformer(args)
    reference = reference.to(dtype=model.dtype).eval()
    torch.nn.init.normal_(reference.output.weight, std=0.02)
    assert sum(p.numel() for p in reference.parameters()) == model.num_parameters(), "the reference model has another size"
    return lambda: generate(reference, labels, config.block_size, cfg_scale=guidance_scale, cfg_interval=-1, temperature=1.0, top_k=top_k, top_p=1.0, sample_logits=True)


def linear_floor(model, batch_size: int, guidance_scale: float, packed: bool = False):
    """A callable doing only the decode steps' matrix products: for each of ``block_size`` steps, every
    linear layer of the model (and the head) as a plain ``F.linear`` on ``[rows, 1, in]`` inputs
    (``packed``: on oneDNN's packed weights, as ``generate`` runs them on CPU)."""
    rows = batch_size * (2 if guidance_scale not in (0.0, 1.0) else 1)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(rows, 1, w.shape[1], device=w.device, dtype=w.dtype) for w in weights}
    steps = model.config.block_size
    packs = [(pack_weight(w), w.shape[1]) for w in weights] if packed else []

    @torch.no_grad()
    def run():
        for _ in range(steps):
            if packed:
                for w, size in packs:
                    linear_on_packed(inputs[size], w)
            else:
                for w in weights:
                    torch.nn.functional.linear(inputs[w.shape[1]], w)

    return run


def kv_read_floor(model, batch_size: int, guidance_scale: float):
    """A callable doing only what attention must read: at each of ``block_size`` steps, every layer's
    keys and values of the positions written so far (a sum over each, the same shapes and dtype as
    the static cache). Linear floor + this is the memory floor of an eager decode step."""
    config = model.config
    rows = batch_size * (2 if guidance_scale not in (0.0, 1.0) else 1)
    length = config.cls_token_num + config.block_size - 1
    shape = (rows, config.num_key_value_heads, length, config.head_dim)
    caches = [torch.randn(shape, device=model.device, dtype=model.dtype) for _ in range(2 * config.num_hidden_layers)]

    @torch.no_grad()
    def run():
        for step in range(config.block_size):
            visible = config.cls_token_num + step
            for cache in caches:
                cache[:, :, :visible].sum()

    return run


class _Stopped(BaseException):
    """SIGTERM arrived (``timeout`` in gpu_check.sh): stop timing, print the figures measured so far."""


def _stop(signum, frame):
    raise _Stopped


def measure(fn, device: str) -> float:
    """Wall time of one call of ``fn``, in seconds (on CUDA, up to the end of its kernels)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args: argparse.Namespace, device: str) -> None:
    dtype = getattr(torch, args.dtype)
    model, cluster_map = build_model(args.preset, device, dtype, num_clusters=args.refiner_clusters if args.refiner else None)
    config = model.config
    labels = torch.randint(0, config.num_classes, (args.batch_size,), generator=torch.Generator().manual_seed(0)).to(device)
    tokens_per_run = args.batch_size * config.block_size
    print(
        f"\n{args.preset} ({model.num_parameters() / 1e6:.1f}M params, block_size {config.block_size}) on {device}, "
        f"{args.dtype}, batch {args.batch_size}, guidance {args.guidance_scale}, threads {torch.get_num_threads()}"
    )
    eager = lambda: model.generate(labels, guidance_scale=args.guidance_scale, top_k=args.top_k)  # noqa: E731
    compiled = lambda: model.generate(labels, guidance_scale=args.guidance_scale, top_k=args.top_k, compile=True)  # noqa: E731
    candidates = {"static cache, eager": eager}
    if not args.no_compile:
        candidates["static cache, compiled"] = compiled
        if args.cache_windows > 1:
            candidates[f"compiled, {args.cache_windows} windows"] = lambda: model.generate(
                labels, guidance_scale=args.guidance_scale, top_k=args.top_k, compile=True, cache_windows=args.cache_windows
            )
    if args.refiner:  # MASC: a random member (the map's decode) against the refiner's pick (hierarchical decoding)
        refiner = build_refiner(model, cluster_map, args.refiner_width, device, dtype)
        print(f"refiner: {refiner.num_parameters() / 1e6:.1f}M params (width {args.refiner_width}), k={cluster_map.num_clusters}")
        cluster_ids = eager()
        decode = lambda ids: cluster_map.decode(ids, generator=torch.Generator(device=device).manual_seed(0))  # noqa: E731
        # each hierarchical run right after its cluster-ids run: the refiner's share is read from these pairs
        candidates = {
            "cluster ids, eager": eager,
            "hierarchical, eager": lambda: model.generate(labels, guidance_scale=args.guidance_scale, top_k=args.top_k, refiner=refiner),
            "member decode alone": lambda: decode(cluster_ids),
            "random member, eager": lambda: decode(eager()),
        }
        if not args.no_compile:
            candidates["cluster ids, compiled"] = compiled
            candidates["hierarchical, compiled"] = lambda: model.generate(
                labels, guidance_scale=args.guidance_scale, top_k=args.top_k, refiner=refiner, compile=True
            )
            candidates["random member, compiled"] = lambda: decode(compiled())
    if args.reference_src:
        candidates["LlamaGen reference"] = reference_generate(args.reference_src, model, labels, args.guidance_scale, args.top_k)
    if args.floor:
        candidates["linear layers (floor)"] = linear_floor(model, args.batch_size, args.guidance_scale)
        if device == "cpu" and can_pack(model):
            candidates["packed linear layers"] = linear_floor(model, args.batch_size, args.guidance_scale, packed=True)
        candidates["KV cache reads"] = kv_read_floor(model, args.batch_size, args.guidance_scale)
    if not args.no_baseline:
        candidates["no cache (baseline)"] = lambda: generate_without_cache(model, labels, args.guidance_scale)
    print(f"{'method':<26}{'images/s':>10}{'tokens/s':>12}{'s/batch':>10}{'peak MiB':>10}")
    rounds: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    previous_handler = signal.signal(signal.SIGTERM, _stop)  # a time-boxed run (gpu_check.sh) still prints what it measured
    try:
        for name, fn in list(candidates.items()):
            if name != "no cache (baseline)":
                start = time.perf_counter()
                try:
                    fn()  # warm-up (allocator, kernels; the compiled step compiles here); the baseline reuses the eager kernels
                except Exception as error:  # noqa: BLE001 - one method failing (say, a compiler error) must not hide the others' figures
                    print(f"{name}: FAILED, left out: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
                    del candidates[name]
                    continue
                if "compiled" in name:
                    print(f"{'(compiling the decode step':<26} {time.perf_counter() - start:.1f} s, once per model and batch shape)")
        # Round robin: every method once per round, best of the rounds, every other round in reverse order
        # (A B, B A: a drift in the machine's speed then slows every method alike, and the ratios stay meaningful).
        for round_index in range(args.repeats):
            order = list(candidates.items())
            for name, fn in order[::-1] if round_index % 2 else order:
                if name == "no cache (baseline)" and round_index:  # quadratic in block_size: one run shows the gap
                    continue
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                seconds = measure(fn, device)
                rounds.setdefault(name, []).append(seconds)
                peaks[name] = peak_memory_mib(device)
            print(f"round {round_index + 1} of {args.repeats} timed", file=sys.stderr, flush=True)
    except _Stopped:
        done = max((len(times) for times in rounds.values()), default=0)
        print(f"(stopped by SIGTERM: the figures below come from {done} round(s), the last one perhaps cut short)")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    results = {name: min(times) for name, times in rounds.items()}
    if not results:
        print("no method was timed")
        return
    for name, seconds in results.items():
        print(f"{name:<26}{args.batch_size / seconds:>10.2f}{tokens_per_run / seconds:>12.0f}{seconds:>10.3f}{peaks[name]:>10.0f}")
    reference = next(iter(results))
    for name, seconds in results.items():
        if name != reference:
            print(f"{name} / {reference} speed: {results[reference] / seconds:.2f}x")
    ours = min((name for name in results if name.startswith(("static cache", "compiled,"))), key=results.get, default=reference)
    summary = []
    if "LlamaGen reference" in results:
        summary.append(f"ours ({ours}) vs the LlamaGen reference: {results['LlamaGen reference'] / results[ours]:.2f}x images/s")
    if "linear layers (floor)" in results:
        summary.append(f"time / linear-layer floor: {results[ours] / results['linear layers (floor)']:.2f}x (goal <= 1.25x)")
    if {"linear layers (floor)", "KV cache reads"} <= set(results):
        memory_floor = results["linear layers (floor)"] + results["KV cache reads"]
        summary.append(f"time / (linear layers + KV cache reads): {results[ours] / memory_floor:.2f}x")
    if "packed linear layers" in results:  # what generate's CPU linear layers run on: the stricter floors
        summary.append(f"time / packed linear layers: {results[ours] / results['packed linear layers']:.2f}x")
        if "KV cache reads" in results:
            packed_floor = results["packed linear layers"] + results["KV cache reads"]
            summary.append(f"time / (packed linear layers + KV cache reads): {results[ours] / packed_floor:.2f}x")
    if args.refiner:  # the decode's shares of generation time (goals: < 1% and < 10%), for each decode step timed
        for mode in ("eager", "compiled"):
            if {f"hierarchical, {mode}", f"cluster ids, {mode}"} <= set(results):
                member = ""  # the member decode runs after the pair: a run stopped by SIGTERM may not have timed it
                if "member decode alone" in results:
                    share = results["member decode alone"] / (results[f"cluster ids, {mode}"] + results["member decode alone"])
                    member = f"random-member decode {100 * share:.2f}% of generation time (goal < 1%), "
                # the refiner's share is one minus a ratio of two close timings: read it from each round's
                # adjacent pair and take the median, not from two bests that may come from different rounds
                shares = [1 - plain / refined for plain, refined in zip(rounds[f"cluster ids, {mode}"], rounds[f"hierarchical, {mode}"])]
                spread = f" (median of {len(shares)} paired rounds, {min(shares):.1%} to {max(shares):.1%})" if len(shares) > 1 else ""
                summary.append(f"{mode}: {member}refiner {100 * statistics.median(shares):.1f}% (goal < 10%){spread}")
    if summary:
        print(f"batch {args.batch_size}: " + "; ".join(summary))
    if "LlamaGen reference" in results:  # one row of a table in the form of LlamaGen's serving README
        print(
            f"table row: | {args.preset} | {model.num_parameters() / 1e6:.0f}M | {args.batch_size} | {args.dtype} | "
            f"{results['LlamaGen reference']:.2f} s | {results[ours]:.2f} s ({ours}) | {results['LlamaGen reference'] / results[ours]:.2f}x |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", *LLAMAGEN_PRESETS], help="model size (default: tiny random model)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, then CUDA if available")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each times every method once (every other round in reverse order); the best round is reported, and --refiner's share is the median over rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-cache baseline (slow for big presets)")
    parser.add_argument("--reference-src", help="a LlamaGen checkout: time its generate on the same model sizes, in the same run")
    parser.add_argument("--floor", action="store_true", help="time the decode steps' linear layers alone (plain F.linear): the CPU floor; and the KV cache reads")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decode step")
    parser.add_argument("--cache-windows", type=int, default=1, help="also time generate(compile=True, cache_windows=N) (N > 1)")
    parser.add_argument("--refiner", action="store_true", help="MASC model: random-member against hierarchical decoding (the refiner's cost)")
    parser.add_argument("--refiner-clusters", type=int, default=REFINER_CLUSTERS, help="k of the MASC model with --refiner (default 8192 = N/2)")
    parser.add_argument("--refiner-width", type=int, default=REFINER_WIDTH, help="refiner width (the paper's 512)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    for device in devices:
        run(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
