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
import weakref
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn


# The op takes the dense weight, not its packed copy: an opaque oneDNN tensor among a compiled graph's
# inputs would make inductor skip its cache of compiled graphs ("mkldnn tensors unpickleable"), and
# every new process would compile the decode step afresh (GPT-B-256 here: 17 s instead of about 4 s).
# The packed copies are found by the weight's address in ``_PACKED``. Defined with torch.library's
# low-level API rather than ``torch.library.custom_op``: a compiled graph calls it about 15 us sooner.
_LIBRARY = torch.library.Library("masc_hf", "FRAGMENT")
_LIBRARY.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")


class _PackedWeight:
    """oneDNN's packed copy of one weight, with what identifies the weight it was made from. It holds
    that weight's storage, so no other tensor can take the address while the copy exists."""

    __slots__ = ("key", "version", "storage", "tensor", "__weakref__")

    def __init__(self, weight: torch.Tensor) -> None:
        self.key, self.version = _key(weight), weight._version
        self.storage = weight.untyped_storage()
        self.tensor = pack_weight(weight)

    def matches(self, weight: torch.Tensor) -> bool:
        return self.key == _key(weight) and self.version == weight._version


# the packed copies in use; a copy leaves when its owner (a model's kept copies, or a block) drops it
_PACKED: weakref.WeakValueDictionary[tuple, _PackedWeight] = weakref.WeakValueDictionary()


def _key(weight: torch.Tensor) -> tuple:
    return weight.data_ptr(), weight.shape, weight.stride(), weight.dtype


def linear_on_packed(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with ``packed_weight = pack_weight(weight)``: oneDNN's matmul."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def _packed_linear_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    packed = _PACKED.get(_key(weight))
    if packed is None or packed.version != weight._version:  # no current packed copy: torch's own GEMM
        return F.linear(x, weight, bias)
    return linear_on_packed(x, packed.tensor, bias)


_LIBRARY.impl("packed_linear", _packed_linear_kernel, "CompositeExplicitAutograd")


@torch.library.register_fake("masc_hf::packed_linear")
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on the packed copy of ``weight`` made by :func:`packed_linears`
    (without a current one, ``F.linear`` itself). A compiled step calls it as the op
    ``masc_hf::packed_linear``, as it is (inductor's own lowering of oneDNN's linear wants the packed
    weight as a graph constant); an eager call goes straight to the kernel."""
    if torch.compiler.is_compiling():
        return torch.ops.masc_hf.packed_linear(x, weight, bias)
    return _packed_linear_kernel(x, weight, bias)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[out, in]`` reordered once into oneDNN's blocked layout, for :func:`linear_on_packed`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def _forward(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return packed_linear(x, weight, bias)


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
    memory) and reuse them while the weights are unchanged (same storage, same version counter).
    Otherwise they are dropped on exit, unless an earlier block kept some. Either way each layer
    gets the same ``forward`` object every time, and a compiled step's graph sees only the dense
    weights: it neither recompiles after a weight update nor misses inductor's cache of compiled graphs."""
    # a block without ``keep`` still uses (and refreshes) copies kept by an earlier block; the forwards (cheap)
    # always stay on the model, so a compiled step sees the same objects after any block
    kept = model.__dict__.setdefault("_packed_linear_weights", {}) if keep else model.__dict__.get("_packed_linear_weights")
    owned = kept if kept is not None else {}
    forwards = model.__dict__.setdefault("_packed_linear_forwards", {})
    linears = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and "forward" not in m.__dict__ and name not in exclude
    ]
    try:
        for name, module in linears:
            weight, bias = module.weight, module.bias
            if name not in owned or not owned[name].matches(weight):
                owned[name] = _PackedWeight(weight)
            _PACKED[owned[name].key] = owned[name]
            forward = forwards.get(name)
            if forward is None or forward.args[0] is not weight or forward.args[1] is not bias:
                forward = forwards[name] = functools.partial(_forward, weight, bias)
            module.forward = forward
        yield
    finally:
        for _, module in linears:
            module.__dict__.pop("forward", None)
