"""Correctness on a CUDA device, run by ``gpu_check.sh`` before its timings (the test suite runs on CPU):

- the torch map engine on the GPU gives the numpy engine's tree byte for byte (tie-free and tied codebooks);
- a random-member decode stays on the GPU and round-trips through ``encode``;
- generation at the real vocabulary size (16,384): the compiled decode step (CUDA graphs) gives the
  eager step's tokens, greedy and with per-image generators (float32), and compiles in bfloat16 with top-p;
- LlamaGen's reference ``generate`` on the same weights gives our greedy tokens (``--reference-src``).

    python benchmarks/cuda_parity.py [--reference-src DIR] [--device cuda]

Prints one line per check and ``all CUDA checks passed`` last; exits 1 on the first failure.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reference-src", help="a LlamaGen checkout (its generate on the same weights)")
    args = parser.parse_args()
    device = args.device

    from masc_hf import build_cluster_map
    from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration

    failures = []

    def check(name: str, ok: bool) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failures.append(name)

    rng = np.random.default_rng(0)
    tie_free = rng.standard_normal((3000, 8))
    tied = np.repeat(rng.integers(0, 4, size=(700, 4)).astype(np.float64), 3, axis=0)  # many equal distances
    for name, codebook in (("tie-free", tie_free), ("tied", tied)):
        k = codebook.shape[0] // 3
        gpu = build_cluster_map(codebook, k, engine="torch", device=device, compute_quality=False)
        cpu = build_cluster_map(codebook, k, engine="numpy", compute_quality=False)
        check(f"map engine torch on {device} == numpy, {name} N={codebook.shape[0]} k={k}",
              np.array_equal(gpu.mapping, cpu.mapping) and gpu.fingerprint == cpu.fingerprint)
    ids = torch.arange(gpu.num_clusters, device=device)
    fine = gpu.decode(ids, generator=torch.Generator(device=device).manual_seed(0))
    check(f"random-member decode stays on {device} and round-trips", fine.device.type == ids.device.type and torch.equal(gpu.encode(fine), ids))

    # the real vocabulary size: inductor lowers long scans over 16,384 logits differently from short ones
    config = LlamaGenConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, vocab_size=16384, block_size=256, num_classes=10)
    torch.manual_seed(0)
    model = LlamaGenForImageGeneration(config)
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)
    model = model.to(device).eval()
    labels = torch.arange(8, device=device) % 10
    eager = model.generate(labels, guidance_scale=4.0, top_k=1)
    compiled = model.generate(labels, guidance_scale=4.0, top_k=1, compile=True)
    again = model.generate(labels, guidance_scale=4.0, top_k=1, compile=True)  # CUDA graphs replayed
    check(f"greedy: compiled (CUDA graphs) == eager on {device}, float32", torch.equal(eager, compiled) and torch.equal(compiled, again))
    seeds = lambda: [torch.Generator(device=device).manual_seed(s) for s in range(8)]  # noqa: E731
    sampled = model.generate(labels, guidance_scale=4.0, generator=seeds())
    sampled_compiled = model.generate(labels, guidance_scale=4.0, generator=seeds(), compile=True)
    check(f"sampling with per-image generators: compiled == eager on {device}, float32", torch.equal(sampled, sampled_compiled))

    if args.reference_src:
        sys.path.insert(0, args.reference_src)
        from autoregressive.models.generate import generate
        from autoregressive.models.gpt import ModelArgs, Transformer

        from masc_hf.models.llamagen.convert_llamagen import hf_key

        ref_args = ModelArgs(dim=256, n_layer=4, n_head=4, vocab_size=16384, block_size=256, num_classes=10, cls_token_num=1, model_type="c2i")
        reference = Transformer(ref_args).to(device).eval()
        ours = model.state_dict()
        weights = {name: ours[hf_key(name)] for name in reference.state_dict() if hf_key(name) is not None}
        missing = set(reference.state_dict()) - set(weights)
        reference.load_state_dict(weights, strict=False)
        print(f"     reference keys left at their own values (buffers): {sorted(missing)[:4]}{'...' if len(missing) > 4 else ''}")
        tokens = generate(reference, labels, 256, cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_k=1, top_p=1.0, sample_logits=True)
        check(f"greedy: ours == the LlamaGen reference's generate on {device}", torch.equal(tokens, eager))

    model = model.to(torch.bfloat16)  # last: the weights are rounded
    drawn = model.generate(labels, guidance_scale=4.0, top_p=0.9, compile=True)
    check(f"bfloat16 compiled sampling with top-p runs on {device}", drawn.shape == (8, 256) and bool(((drawn >= 0) & (drawn < 16384)).all()))

    if failures:
        print(f"{len(failures)} CUDA check(s) failed: {', '.join(failures)}")
        return 1
    print("all CUDA checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
