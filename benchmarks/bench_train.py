"""Training-step throughput of our LlamaGen against the LlamaGen reference, in the same run.

One step is what a training loop does per batch: forward (teacher forcing on the whole sequence),
cross-entropy, backward, AdamW (our trainer's settings: betas 0.9/0.95, weight decay 0.05). Both
models have the same preset, batch, dtype and thread count, and random weights (speed does not
depend on them). The steps alternate between the two models, in an order that flips every round, so
a machine that gets busier or quieter during the run (or a step that pays for the one before it)
slows both alike; the median step time of each gives tokens/s and the ratio.

    python benchmarks/bench_train.py --reference-src /path/to/LlamaGen            # GPT-B-256, batch 8, fp32
    python benchmarks/bench_train.py --reference-src DIR --compile                 # ours under torch.compile too
    python benchmarks/bench_train.py --preset tiny                                 # ours only, a quick look

``--reference-src``: a checkout of github.com/FoundationVision/LlamaGen (its ``autoregressive/`` and
``utils/`` folders); it is imported from there, never copied into this project. The last line
states the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration

TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, vocab_size=16384, block_size=256)


def ours(preset: str, dtype: torch.dtype, compile_model: bool, device: str = "cpu"):
    config = LlamaGenConfig(**TINY) if preset == "tiny" else LlamaGenConfig.from_preset(preset)
    torch.manual_seed(0)
    model = LlamaGenForImageGeneration(config).to(device=device, dtype=dtype).train()

    def loss_fn(codes, labels):
        return model(input_ids=codes[:, :-1], class_labels=labels, labels=codes, check_inputs=False).loss

    return model, (torch.compile(loss_fn) if compile_model else loss_fn), config


def reference(src: Path, config: LlamaGenConfig, dtype: torch.dtype, device: str = "cpu"):
    """The reference's GPT with the same sizes (imported from a local LlamaGen checkout)."""
    if not (src / "autoregressive" / "models" / "gpt.py").is_file():
        raise SystemExit(f"--reference-src {src}: no autoregressive/models/gpt.py there; pass a LlamaGen checkout")
    sys.path.insert(0, str(src))
    from autoregressive.models.gpt import ModelArgs, Transformer

    args = ModelArgs(
        dim=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, vocab_size=config.vocab_size,
        block_size=config.block_size, num_classes=config.num_classes, class_dropout_prob=config.class_dropout_prob,
        token_dropout_p=config.token_dropout, resid_dropout_p=config.resid_dropout, ffn_dropout_p=config.ffn_dropout,
        drop_path_rate=config.drop_path_rate, cls_token_num=1, model_type="c2i",
    )
    torch.manual_seed(0)
    model = Transformer(args).to(device=device, dtype=dtype).train()

    def loss_fn(codes, labels):
        return model(idx=codes[:, :-1], cond_idx=labels, targets=codes)[1]

    return model, loss_fn


def optimizer_for(model) -> torch.optim.Optimizer:
    fused = next(model.parameters()).is_cuda or None  # our trainer's choice: fused AdamW on CUDA
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)


def step_seconds(loss_fn, optimizer, codes, labels, autocast: torch.dtype | None = None) -> float:
    cuda = codes.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(codes.device.type, dtype=autocast, enabled=autocast is not None):
        loss = loss_fn(codes, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="GPT-B-256", help="a LlamaGen preset, or 'tiny'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (compilation happens here)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the weights' dtype")
    parser.add_argument("--autocast", choices=["bfloat16"], help="float32 weights, forward under autocast to this dtype (a trainer's mixed_precision)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also run ours under torch.compile")
    parser.add_argument("--reference-src", type=Path, help="a LlamaGen checkout to import the reference model from")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    autocast = getattr(torch, args.autocast) if args.autocast else None
    runs = {}
    model, loss_fn, config = ours(args.preset, dtype, False, args.device)
    runs["ours"] = (loss_fn, optimizer_for(model))
    if args.compile:
        compiled_model, compiled_fn, _ = ours(args.preset, dtype, True, args.device)
        runs["ours (compiled)"] = (compiled_fn, optimizer_for(compiled_model))
    if args.reference_src:
        ref_model, ref_fn = reference(args.reference_src, config, dtype, args.device)
        runs["reference"] = (ref_fn, optimizer_for(ref_model))
        assert sum(p.numel() for p in ref_model.parameters()) == sum(p.numel() for p in model.parameters()), "different sizes"

    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size), generator=generator).to(args.device)
    labels = torch.randint(0, config.num_classes, (args.batch_size,), generator=generator).to(args.device)
    tokens = codes.numel()
    precision = f"{args.dtype} weights" + (f", {args.autocast} autocast" if autocast else "")
    print(f"{args.preset}, batch {args.batch_size} x {config.block_size} tokens, {precision}, {args.device}, {args.threads} threads")
    for name, (fn, opt) in runs.items():
        for _ in range(args.warmup):
            step_seconds(fn, opt, codes, labels, autocast)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(args.steps):  # interleaved: load changes hit every model alike; the order flips every round
        for name, (fn, opt) in (list(runs.items()) if step % 2 == 0 else list(runs.items())[::-1]):
            times[name].append(step_seconds(fn, opt, codes, labels, autocast))
    rates = {}
    for name, values in times.items():
        median = statistics.median(values)
        rates[name] = tokens / median
        print(f"  {name:<16} {median:7.3f} s/step (min {min(values):.3f}, max {max(values):.3f})  {rates[name]:9.1f} tokens/s")
    if "reference" in rates:
        best = max((n for n in rates if n != "reference"), key=rates.get)
        print(f"ours vs reference: {rates['ours'] / rates['reference']:.2f}x tokens/s ({best}: {rates[best] / rates['reference']:.2f}x)")


if __name__ == "__main__":
    main()
