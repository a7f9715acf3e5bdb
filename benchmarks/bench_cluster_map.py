"""Wall time and peak memory of building a MASC map (exact average linkage, cut at k) against scipy
and fastcluster (when installed), on the same random codebook, in the same run.

    python benchmarks/bench_cluster_map.py --n 16384 --d 8 --k 8192   # the paper's sizes (default)
    python benchmarks/bench_cluster_map.py --n 4096 --d 32
    python benchmarks/bench_cluster_map.py --scaling                  # N = 4096 ... 65536, k = N / 2
    python benchmarks/bench_cluster_map.py --scaling-sparse --engines masc   # N = 2^14 ... 2^18
    python benchmarks/bench_cluster_map.py --n 262144 --d 8 --k 131072
    python benchmarks/bench_cluster_map.py --engine torch --device cuda

Each engine runs in its own subprocess, so its peak RSS is its own. masc is
``build_cluster_map(codebook, k, compute_quality=False)`` with its defaults: the dense engine's full
tree for N <= 8192 or k < N / 4, the sparse engine's first N - k merges otherwise (``--engine``
forces one); scipy is
``linkage(pdist(codebook), "average")`` then ``fcluster(..., k, "maxclust")``; fastcluster is
``fastcluster.linkage(codebook, "average")`` then the same cut. An engine whose distance matrix
would not fit in the available memory is skipped, and the output says so. Before timing, one
throwaway process touches as much memory as the largest engine needs: on a virtual machine the
first process to touch fresh memory pays for it, and that should not be whichever engine runs first.
The last line is the masc/scipy ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ENGINES = ("masc", "scipy", "fastcluster")


def masc_engine_for(n: int, k: int, masc_engine: str, device: str | None) -> str:
    from masc_hf.clustering.methods import choose_masc_engine

    return choose_masc_engine(n, masc_engine, device, k=k)


def bytes_needed(engine: str, n: int, k: int, masc_engine: str = "auto", device: str | None = None) -> int:
    """Peak memory of ``engine`` at ``N = n``, roughly: its distance matrices."""
    if engine == "masc" and masc_engine_for(n, k, masc_engine, device) == "sparse":
        return 4096 * n  # known pairs near each point (measured: 1 GB at N = 262144, d = 8)
    if engine == "masc":
        return 8 * n * n  # one float64 [N, N] matrix
    if engine == "scipy":
        return 8 * n * n  # pdist's condensed matrix, and linkage's copy of it
    return 4 * n * n  # fastcluster: one condensed float64 matrix


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def codebook_for(n: int, d: int, seed: int) -> np.ndarray:
    # a float32 codebook, as tokenizers store them, clustered in float64
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32).astype(np.float64)


def run_engine(engine: str, n: int, d: int, k: int, seed: int, masc_engine: str, device: str | None) -> dict:
    from scipy.cluster.hierarchy import fcluster

    import masc_hf
    from masc_hf.clustering import canonical_labels

    codebook = codebook_for(n, d, seed)
    if engine == "masc":
        # imports (scipy.spatial, torch...) and a CUDA context before the clock starts, like scipy's below
        masc_hf.build_cluster_map(codebook_for(8, d, seed), 2, compute_quality=False, engine=masc_engine, device=device)
        if masc_engine_for(n, k, masc_engine, device) == "sparse":
            masc_hf.build_cluster_map(codebook_for(256, d, seed), 128, compute_quality=False, engine="sparse")
        build = lambda: masc_hf.build_cluster_map(  # noqa: E731
            codebook, k, compute_quality=False, engine=masc_engine, device=device
        ).mapping
    elif engine == "scipy":
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import pdist

        build = lambda: canonical_labels(fcluster(linkage(pdist(codebook), "average"), k, "maxclust"))  # noqa: E731
    elif engine == "fastcluster":
        import fastcluster

        build = lambda: canonical_labels(  # noqa: E731
            fcluster(fastcluster.linkage(codebook, "average", metric="euclidean"), k, "maxclust")
        )
    else:
        raise SystemExit(f"unknown engine {engine}")
    base = rss_mb()
    start = time.perf_counter()
    labels = build()
    seconds = time.perf_counter() - start
    name = f"masc ({masc_engine_for(n, k, masc_engine, device)})" if engine == "masc" else engine
    result = {"engine": name, "seconds": seconds, "peak_rss_mb": rss_mb(), "extra_rss_mb": rss_mb() - base, "labels": labels.tolist()}
    if engine == "masc" and masc_engine == "torch" and device and device.startswith("cuda"):
        import torch

        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def touch_memory(nbytes: int) -> None:
    """Allocate and write ``nbytes`` in a throwaway process (see the module docstring)."""
    code = f"import numpy as np; a = np.empty({nbytes // 8}); a[:] = 1.0"
    subprocess.run([sys.executable, "-c", code], check=True)


def compare(n: int, d: int, k: int, seed: int, engines: list[str], masc_engine: str, device: str | None, warmup: bool) -> dict:
    """Run every engine that fits on one codebook; print one line each; return the results by name."""
    from masc_hf.clustering.linkage import available_memory  # the sparse engine's own budget reads the same

    free = available_memory()
    runnable = []
    for engine in engines:
        if engine == "fastcluster":
            try:
                import fastcluster  # noqa: F401
            except ImportError:
                print(f"  fastcluster: not installed (pip install 'masc-hf[bench]'); skipped")
                continue
        needed = bytes_needed(engine, n, k, masc_engine, device)
        on_gpu = engine == "masc" and masc_engine == "torch" and device is not None and device.startswith("cuda")
        if not on_gpu and needed > 0.9 * free:
            print(f"  {engine}: skipped, it needs about {needed / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is available")
            continue
        runnable.append(engine)
    if warmup and runnable:
        touch_memory(max(bytes_needed(e, n, k, masc_engine, device) for e in runnable))
    results = {}
    for engine in runnable:
        cmd = [sys.executable, __file__, "--engine-run", engine, "--n", str(n), "--d", str(d), "--k", str(k), "--seed", str(seed),
               "--engine", masc_engine] + (["--device", device] if device else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[engine] = json.loads(out.strip().splitlines()[-1])
    reference = results.get("scipy")
    for engine, r in results.items():
        same = "-" if reference is None else ("yes" if r["labels"] == reference["labels"] else "NO")
        ratio = "-" if reference is None else f"{reference['seconds'] / r['seconds']:.2f}x"
        gpu = f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
        print(
            f"  {r['engine']:<15} {r['seconds']:>9.2f} s  {ratio:>8} scipy's speed  peak RSS {r['peak_rss_mb']:>7.0f} MB "
            f"(+{r['extra_rss_mb']:.0f}){gpu}  same partition as scipy: {same}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=None, help="clusters (default: N / 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default=",".join(ENGINES), help="which of masc, scipy, fastcluster to run")
    parser.add_argument("--engine", default="auto", help="the masc engine: auto, numpy (= dense), torch or sparse")
    parser.add_argument("--device", default=None, help="device of the torch engine, e.g. cuda")
    parser.add_argument("--scaling", action="store_true", help="N = 4096, 8192, ..., 65536 (k = N / 2) instead of one N")
    parser.add_argument("--scaling-sparse", action="store_true", help="N = 2^14, ..., 2^18 (k = N / 2), engines that fit")
    parser.add_argument("--no-warmup", action="store_true", help="do not pre-touch memory before timing")
    parser.add_argument("--engine-run", help=argparse.SUPPRESS)  # internal: run one engine, print JSON
    args = parser.parse_args()
    if args.engine_run:
        k = args.k if args.k is not None else args.n // 2
        print(json.dumps(run_engine(args.engine_run, args.n, args.d, k, args.seed, args.engine, args.device)))
        return

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    sizes = [4096, 8192, 16384, 32768, 65536] if args.scaling else [args.n]
    if args.scaling_sparse:
        sizes = [1 << p for p in range(14, 19)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"average linkage, d={args.d}, random float32 codebook (seed {args.seed}), masc engine {args.engine}"
          f"{' on ' + args.device if args.device else ''}; {os.cpu_count()} CPUs, load average {load:.2f} at start")
    last = None
    for n in sizes:
        k = args.k if (args.k is not None and not (args.scaling or args.scaling_sparse)) else n // 2
        print(f"N={n} k={k}:")
        results = compare(n, args.d, k, args.seed, engines, args.engine, args.device, warmup=not args.no_warmup)
        if "masc" in results and "scipy" in results:
            last = (results["masc"], results["scipy"])
    if last is None:
        print("masc vs scipy: not measured (one of them was skipped or not asked for)")
        return
    masc, scipy = last
    ratio = scipy["seconds"] / masc["seconds"]
    speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
    same = "yes" if masc["labels"] == scipy["labels"] else "NO"
    print(f"masc vs scipy: {speed} ({masc['seconds']:.2f} s vs {scipy['seconds']:.2f} s), same partition: {same}")


if __name__ == "__main__":
    main()
