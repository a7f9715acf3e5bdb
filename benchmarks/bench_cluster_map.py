"""Wall time and peak memory of building a MASC map (exact average linkage) against scipy and
fastcluster (when installed), on the same random codebook, in the same run.

    python benchmarks/bench_cluster_map.py                 # N=16384, d=8, k=8192 (the paper's sizes)
    python benchmarks/bench_cluster_map.py --n 4096 --d 32

Each engine runs in its own subprocess so its peak RSS is its own. Printed per engine: seconds,
peak RSS (MB) and the increase over the process after imports, the ratio to scipy, and whether its
partition at k equals scipy's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_engine(engine: str, n: int, d: int, k: int, seed: int) -> dict:
    from scipy.cluster.hierarchy import fcluster

    from masc_hf.clustering import canonical_labels, cut_linkage

    codebook = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32).astype(np.float64)
    if engine == "masc":
        from masc_hf.clustering import average_linkage

        build = lambda: average_linkage(codebook)  # noqa: E731
        cut = lambda tree: cut_linkage(tree, k)  # noqa: E731
    elif engine == "scipy":
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import pdist

        build = lambda: linkage(pdist(codebook), "average")  # noqa: E731
        cut = lambda tree: canonical_labels(fcluster(tree, k, "maxclust"))  # noqa: E731
    elif engine == "fastcluster":
        import fastcluster

        build = lambda: fastcluster.linkage(codebook, "average", metric="euclidean")  # noqa: E731
        cut = lambda tree: canonical_labels(fcluster(tree, k, "maxclust"))  # noqa: E731
    else:
        raise SystemExit(f"unknown engine {engine}")
    base = rss_mb()
    start = time.perf_counter()
    tree = build()
    seconds = time.perf_counter() - start
    labels = cut(tree)
    return {"engine": engine, "seconds": seconds, "peak_rss_mb": rss_mb(), "extra_rss_mb": rss_mb() - base, "labels": labels.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default="masc,scipy,fastcluster")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: run one engine, print JSON
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.n, args.d, args.k, args.seed)))
        return

    results = []
    for engine in args.engines.split(","):
        if engine == "fastcluster":
            try:
                import fastcluster  # noqa: F401
            except ImportError:
                print("fastcluster not installed (pip install 'masc-hf[bench]'); skipped")
                continue
        cmd = [sys.executable, __file__, "--engine", engine, "--n", str(args.n), "--d", str(args.d), "--k", str(args.k), "--seed", str(args.seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    ref = next((r for r in results if r["engine"] == "scipy"), results[0])
    print(f"average linkage, N={args.n} d={args.d} k={args.k} (random float32 codebook, seed {args.seed})")
    print(f"{'engine':<12} {'seconds':>9} {'x scipy':>8} {'peak MB':>9} {'+MB':>8} {'x scipy':>8}  same partition as scipy")
    for r in results:
        same = np.array_equal(np.asarray(r["labels"]), np.asarray(ref["labels"]))
        print(
            f"{r['engine']:<12} {r['seconds']:>9.2f} {r['seconds'] / ref['seconds']:>8.2f} {r['peak_rss_mb']:>9.0f} "
            f"{r['extra_rss_mb']:>8.0f} {r['extra_rss_mb'] / max(ref['extra_rss_mb'], 1e-9):>8.2f}  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
