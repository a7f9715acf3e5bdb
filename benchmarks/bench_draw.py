"""Time of one sampling draw per decode step: ``torch.multinomial`` against the inverse CDF at one
uniform per row, over ``[B, V]`` logits that are -inf except on M ids per row (a refiner's logits:
the members of the predicted cluster).

Hierarchical decoding draws the refiner's token this way at every step. ``torch.multinomial``
draws one exponential per id of the row (torch's CPU kernel draws them serially), so it costs the
same for 2 members as for V; the inverse CDF reads the row once (softmax, a float64 cumulative sum,
a binary search). Both use ``masc_hf.models.ar.sample_next_token``, as ``generate`` does.

    python benchmarks/bench_draw.py --threads 2                        # V = 16,384, batch 4 and 32
    python benchmarks/bench_draw.py --vocab 16384 --members 2 --batch-sizes 4 32 64
"""

import argparse
import time

import torch

from masc_hf.models.ar.sampling import sample_next_token


def per_step_ms(draw, steps: int) -> float:
    for _ in range(max(steps // 10, 2)):  # warm-up
        draw()
    start = time.perf_counter()
    for _ in range(steps):
        draw()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=16384, help="ids per row (N)")
    parser.add_argument("--members", type=int, default=3, help="ids with a finite logit per row")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--steps", type=int, default=255, help="draws timed (one image's decode steps)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, each timing both draws; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if not 1 <= args.members <= args.vocab:
        parser.exit(2, f"{parser.prog}: error: --members {args.members} must lie in 1..--vocab ({args.vocab})\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"V = {args.vocab}, {args.members} finite logits per row, {args.steps} draws, threads {torch.get_num_threads()}")
    print(f"{'batch':>6} {'multinomial ms':>15} {'inverse CDF ms':>15} {'speed-up':>9}")
    for batch in args.batch_sizes:
        logits = torch.full((batch, args.vocab), float("-inf"))
        ids = torch.rand(batch, args.vocab, generator=generator).argsort(dim=1)[:, : args.members]
        logits.scatter_(1, ids, torch.randn(batch, args.members, generator=generator))
        multinomial = lambda: sample_next_token(logits, 1.0, 0, 1.0, generator)  # noqa: E731
        inverse_cdf = lambda: sample_next_token(logits, 1.0, 0, 1.0, None, torch.rand(batch, generator=generator, dtype=torch.float64))  # noqa: E731
        best = [float("inf"), float("inf")]
        for _ in range(args.repeats):
            best = [min(best[0], per_step_ms(multinomial, args.steps)), min(best[1], per_step_ms(inverse_cdf, args.steps))]
        print(f"{batch:>6} {best[0]:>15.3f} {best[1]:>15.3f} {best[0] / best[1]:>8.1f}x")


if __name__ == "__main__":
    main()
