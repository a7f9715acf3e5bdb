"""A CPU decode step's linear layers on oneDNN's pre-packed weights.

At a decode step's few rows, oneDNN's matmul over a weight reordered once into its blocked layout is
1.5-2x faster than torch's default float32 GEMM on CPUs where that GEMM does not use the full vector
width (MKL on this project's AMD EPYC test machine; ``benchmarks/bench_generate.py --floor`` prints
both). Hand-written because torch exposes packed weights only inside inductor's freezing, which packs
for MKL at float32 and bakes the weights into the graph as constants (stale after a training step).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Collection

import torch
from torch import nn


# The op is defined with torch.library's low-level API rather than ``torch.library.custom_op``: a
# compiled graph then calls the kernel about 15 us sooner per call (61 calls per GPT-B decode step).
_LIBRARY = torch.library.Library("masc_hf", "FRAGMENT")
_LIBRARY.define("packed_linear(Tensor x, Tensor packed_weight, Tensor? bias, int out_features) -> Tensor")


def _packed_linear_kernel(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


_LIBRARY.impl("packed_linear", _packed_linear_kernel, "CompositeExplicitAutograd")


@torch.library.register_fake("masc_hf::packed_linear")
def _(x, packed_weight, bias, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


def packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with ``packed_weight = pack_weight(weight)``.

    A compiled step calls it as the op ``masc_hf::packed_linear``, as it is (inductor's own lowering of
    oneDNN's linear wants the weight as a graph constant); an eager call goes straight to oneDNN."""
    if torch.compiler.is_compiling():
        return torch.ops.masc_hf.packed_linear(x, packed_weight, bias, out_features)
    return _packed_linear_kernel(x, packed_weight, bias, out_features)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[out, in]`` reordered once into oneDNN's blocked layout, for :func:`packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def _forward(packed_weight: torch.Tensor, bias: torch.Tensor | None, out_features: int, x: torch.Tensor) -> torch.Tensor:
    return packed_linear(x, packed_weight, bias, out_features)


def can_pack(model: nn.Module) -> bool:
    """Whether :func:`packed_linears` applies: float32 weights on an x86 CPU, and torch built with
    oneDNN (the packed layout is measured there; other CPUs keep torch's GEMM)."""
    weight = next(model.parameters(), None)
    return (
        weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and platform.machine().lower() in ("x86_64", "amd64")
    )


@contextlib.contextmanager
def packed_linears(model: nn.Module, keep: bool = False, exclude: Collection[str] = ()):
    """Within the block, every ``nn.Linear`` of ``model`` runs on a packed copy of its weight, made
    from the current weights. Results equal ``F.linear``'s up to float rounding. Inference only: no
    gradient flows to the weights.

    ``exclude``: names (as in ``named_modules``) of linear layers left as they are, e.g. ones the
    caller will not run: packing a weight reads and writes all of it.

    ``keep``: hold the packed copies on ``model`` between blocks (one more copy of the weights in
    memory) and reuse them while the weights are unchanged (same storage, same version counter): a
    compiled step sees the same tensors and does not recompile. Otherwise they are dropped on exit,
    unless an earlier block kept some."""
    # a block without ``keep`` still uses (and refreshes) copies kept by an earlier block: dropping them would
    # make the next compiled step see new tensors and recompile
    kept = model.__dict__.setdefault("_packed_linear_weights", {}) if keep else model.__dict__.get("_packed_linear_weights", {})
    linears = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and "forward" not in m.__dict__ and name not in exclude
    ]
    try:
        for name, module in linears:
            weight = module.weight
            version = (weight.data_ptr(), weight._version, weight.shape, None if module.bias is None else module.bias._version)
            if name not in kept or kept[name][0] != version:
                bias = None if module.bias is None else module.bias.detach()
                kept[name] = (version, functools.partial(_forward, pack_weight(weight), bias, module.out_features))
            module.forward = kept[name][1]
        yield
    finally:
        for _, module in linears:
            module.__dict__.pop("forward", None)
