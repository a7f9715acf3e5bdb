"""Compile ``generate``'s decode step for CUDA on a machine without a GPU, before spending GPU time on it.

``generate(compile=True)`` on CUDA is inductor code (Triton kernels, CUDA graphs) that the CPU test
suite never builds. This script builds it without a device: the weights, the KV cache and every
activation are fake CUDA tensors (``FakeTensorMode``), ``generate`` runs its whole loop on them, and
each decode-step graph goes through inductor's lowering, its Triton code generation and Triton's
compiler down to ``sm_90`` cubins, with the options of ``mode="reduce-overhead"``; a graph that CUDA
graphs would skip fails. Only loading and running the kernels need the GPU (and the choices inductor
makes by timing on it are off). SDPA's backend choice asks the device too, and without one falls
back to its math path (bmm and softmax in float32); the check gives a masked SDPA what a GPU picks for
it, efficient attention, so the decode step's attention is the extern kernel call a GPU makes. The
configurations are those ``gpu_check.sh`` and ``cuda_parity.py`` run: bf16, batch 64, guidance 4.

    python benchmarks/cuda_compile_check.py                            # GPT-B-256, every configuration
    python benchmarks/cuda_compile_check.py --preset GPT-XL-256 --only sampled,refiner

Both compile failures the first H200 run met (torch 2.11: a split scan of the sampling CDF, then
``searchsorted`` on a view) fail here too, on that torch, with the code of then. The device is faked
through private hooks of torch and Triton (``FakeCuda``) that a release may move: the script then
says it cannot check (exit 3) rather than fail. One line per configuration; exit 1 if any fails.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
import types
from pathlib import Path
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import REFINER_CLUSTERS, REFINER_WIDTH, build_model, build_refiner  # noqa: E402

from masc_hf.models import LLAMAGEN_PRESETS  # noqa: E402

# name: (MASC model with a refiner's map, generate() options); what gpu_check.sh / cuda_parity.py run
CONFIGURATIONS = {
    "sampled": (False, {}),  # the generation benchmark: top-k 0, temperature 1, one generator's uniforms
    "greedy": (False, {"top_k": 1}),  # cuda_parity's compiled == eager check
    "top-p": (False, {"top_p": 0.9}),  # a sort and a scan of the sorted probabilities in the step
    "windows": (False, {"cache_windows": 4}),  # four static attention lengths, four graphs
    "masc": (True, {}),  # cluster ids, the random-member run of --refiner
    "refiner": (True, {"refiner": True}),  # hierarchical decoding: the refiner's step inside the graph
}
CAPABILITY = (9, 0)  # H100 / H200
DEVICE_PROPERTIES = types.SimpleNamespace(  # an H200's, as torch.cuda.get_device_properties reports them
    name="NVIDIA H200 (faked for compilation)", major=CAPABILITY[0], minor=CAPABILITY[1], multi_processor_count=132,
    regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048, max_threads_per_block=1024, warp_size=32,
    total_memory=140 * 2**30, shared_memory_per_block=49152, shared_memory_per_block_optin=232448,
    shared_memory_per_multiprocessor=233472, L2_cache_size=60 * 2**20, gcnArchName="",
)


class CannotCheck(Exception):
    """This torch or Triton cannot compile for a faked CUDA device (not a failure of the model)."""


class FakeDeviceBackend:
    """The backend standing in for a device: counts the graphs it compiles."""

    def __init__(self) -> None:
        self.graphs = 0

    def backend(self, gm: torch.fx.GraphModule, example_inputs, mode: str | None):
        from torch._inductor import config, list_mode_options
        from torch._inductor.compile_fx import compile_fx

        options = {**(list_mode_options(mode) if mode else {}), "force_disable_caches": True, "compile_threads": 1}
        if options.get("triton.cudagraphs"):  # a step CUDA graphs would skip or split (a silent slowdown) fails the check
            options["triton.cudagraph_or_error"] = True
            host = [node.name for node in gm.graph.nodes if any(device.type != "cuda" for device in _devices(node))]
            if host:
                raise AssertionError(f"the step computes on the host ({', '.join(host[:3])}): CUDA graphs would be split around it")
        # choices inductor makes by running on the device: folding constants, timing padded matmuls
        options.update(joint_graph_constant_folding=False, shape_padding=False)
        with config.patch(options):
            compile_fx(gm, example_inputs)
        self.graphs += 1
        return _replay_shapes(gm)


def _devices(node: torch.fx.Node) -> set[torch.device]:
    """The devices of the tensors a graph node produces."""
    leaves = torch.utils._pytree.tree_leaves(node.meta.get("example_value"))
    return {leaf.device for leaf in leaves if isinstance(leaf, torch.Tensor)}


def _replay_shapes(gm: torch.fx.GraphModule):
    """The graph run once on the fake tensors (the outputs' shapes); later steps get empty outputs of
    those shapes, which is all ``generate``'s loop needs to reach the next graph."""
    outputs = []

    def run(*args):
        if not outputs:
            outputs.append(gm(*args))
        first = outputs[0]
        return type(first)(torch.empty_like(o) if isinstance(o, torch.Tensor) else o for o in first)

    return run


class _FakeTritonDriver:
    """What inductor and Triton's compiler ask of the active driver before a kernel is loaded."""

    def __init__(self) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", CAPABILITY[0] * 10 + CAPABILITY[1], 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cuda", 0)


def _sdpa_as_on_a_gpu(sdpa):
    """SDPA as a GPU runs a masked one: its backend choice asks the device, which a fake lacks (it then
    takes the math path); with a mask, a GPU takes efficient attention, given the mask as an additive bias."""

    def attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is None or query.device.type != "cuda" or enable_gqa:
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        bias = attn_mask
        if bias.dtype == torch.bool:  # as torch's convert_boolean_attn_mask: 0 where kept, -inf where masked
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(~bias, float("-inf"))
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, bias, False, dropout_p, is_causal, scale=scale)[0]

    return attend


class FakeCuda(contextlib.ExitStack):
    """torch and Triton answer as if one H200 were present; kernels compile to cubins but are never loaded."""

    def __enter__(self):
        super().__enter__()
        try:
            import torch._inductor.utils as inductor_utils
            import torch.utils._triton as torch_triton
            from torch._dynamo.device_interface import CudaInterface
            from torch._inductor.runtime import triton_helpers
            from torch._inductor.runtime.hints import DeviceProperties
            from torch._inductor.runtime.triton_heuristics import CachingAutotuner
            from triton.runtime.driver import driver as triton_driver
        except ImportError as error:
            raise CannotCheck(f"no Triton or inductor runtime here ({error})") from error
        if torch.version.cuda is None:
            raise CannotCheck(f"torch {torch.__version__} is a CPU build: inductor has no CUDA code generation in it")
        properties, capability = (lambda *a, **k: DEVICE_PROPERTIES), (lambda *a, **k: CAPABILITY)
        driver = _FakeTritonDriver()
        patches = [
            (torch.cuda, "get_device_properties", properties),
            (torch.cuda, "get_device_capability", capability),
            (torch.cuda, "current_device", lambda: 0),
            (torch.cuda, "device_count", lambda: 1),
            (CudaInterface, "get_device_properties", staticmethod(properties)),
            (CudaInterface.Worker, "get_device_properties", staticmethod(properties)),
            (CudaInterface, "current_device", staticmethod(lambda: 0)),
            (CudaInterface, "device_count", staticmethod(lambda: 1)),
            (CudaInterface, "is_available", staticmethod(lambda: True)),
            (CudaInterface, "get_compute_capability", staticmethod(lambda *a, **k: CAPABILITY[0] * 10 + CAPABILITY[1])),
            (CudaInterface, "is_bf16_supported", staticmethod(lambda *a, **k: True)),
            (type(triton_driver), "active", property(lambda self: driver)),
            (triton_helpers, "set_driver_to_gpu", lambda: None),  # generated modules call it on import
            (CachingAutotuner, "_make_launchers", lambda self: None),  # loading a cubin needs the device
            (torch.nn.functional, "scaled_dot_product_attention", _sdpa_as_on_a_gpu(torch.nn.functional.scaled_dot_product_attention)),
        ]
        try:
            for owner, name, value in patches:
                self.enter_context(mock.patch.object(owner, name, value))
        except AttributeError as error:
            raise CannotCheck(f"torch {torch.__version__} moved a hook this check fakes: {error}") from error
        # answers about the device that torch caches per process (has_triton, the target, the properties):
        # none from before the fake may serve it, none from the fake may outlive it
        caches = [value for module in (torch_triton, inductor_utils) for value in vars(module).values() if hasattr(value, "cache_clear")]
        caches.append(getattr(DeviceProperties.create, "__func__", None))
        clear = lambda: [getattr(cache, "cache_clear", lambda: None)() for cache in caches]  # noqa: E731
        clear()
        self.callback(clear)
        return self


def fake_cuda_copy(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every parameter and buffer of ``module`` becomes an empty fake CUDA tensor (floating ones in ``dtype``)."""
    for sub in module.modules():
        for name, tensor in list(sub._parameters.items()) + list(sub._buffers.items()):
            if tensor is None:
                continue
            fake = torch.empty(tensor.shape, dtype=dtype if tensor.is_floating_point() else tensor.dtype, device="cuda")
            if name in sub._parameters:
                sub._parameters[name] = torch.nn.Parameter(fake, requires_grad=False)
            else:
                sub._buffers[name] = fake


def check_configuration(name: str, preset: str, batch_size: int, dtype: torch.dtype) -> str:
    """Run ``generate(compile=True)`` of configuration ``name`` on fake CUDA tensors; a one-line result."""
    masc, options = CONFIGURATIONS[name]
    options = dict(options)
    with torch.device("meta"):  # sizes only: nothing is allocated for the backbone's weights
        model, cluster_map = build_model(preset, "meta", dtype, num_clusters=REFINER_CLUSTERS if masc else None)
    refiner = None
    if options.pop("refiner", False):
        refiner = build_refiner(model, cluster_map, REFINER_WIDTH, "cpu", torch.float32)  # small: its member table is built for real
        table = refiner.member_table()
    compiled = FakeDeviceBackend()
    real_compile = torch.compile

    def compile_for_check(fn, *, mode=None, **kwargs):  # generate's own torch.compile call, with its mode's options
        return real_compile(fn, backend=lambda gm, inputs: compiled.backend(gm, inputs, mode), **kwargs)

    start = time.perf_counter()
    with FakeTensorMode():
        fake_cuda_copy(model, dtype)
        if refiner is not None:
            fake_cuda_copy(refiner, dtype)
            members = torch.empty(table.shape, dtype=table.dtype, device="cuda")
            refiner.member_table = lambda: members  # built from the map's values, which a fake buffer lacks
        model._check_class_labels = lambda labels: labels  # its range check reads the values (a fake tensor has none)
        labels = torch.zeros(batch_size, dtype=torch.long, device="cuda")
        with mock.patch.object(torch, "compile", compile_for_check):
            tokens = model.generate(labels, guidance_scale=4.0, compile=True, refiner=refiner, **options)
    assert tokens.shape == (batch_size, model.config.block_size), tokens.shape
    graphs = compiled.graphs
    expected = options.get("cache_windows", 1)
    if graphs != expected:
        raise AssertionError(f"{graphs} graphs compiled, expected {expected}")
    return f"{graphs} graph{'s' * (graphs > 1)} with CUDA graphs, in {time.perf_counter() - start:.1f} s"


def check_the_fake() -> None:
    """A one-line function compiles for the faked device: otherwise this torch defeats the fake, not the model."""
    smoke = FakeDeviceBackend()
    torch._dynamo.reset()
    with FakeTensorMode():
        x = torch.empty(8, 1024, device="cuda")
        try:
            torch.compile(lambda t: t.softmax(-1).cumsum(-1), backend=lambda gm, inputs: smoke.backend(gm, inputs, "reduce-overhead"))(x)
        except Exception as error:
            raise CannotCheck(
                f"a one-line function does not compile for the faked device on torch {torch.__version__}: {innermost_error(error)}"
            ) from error


def innermost_error(error: BaseException) -> str:
    """The innermost error (dynamo wraps the backend's) in one line."""
    while getattr(error, "inner_exception", None) is not None or error.__cause__ is not None:
        error = getattr(error, "inner_exception", None) or error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="GPT-B-256", help="GPT-B-256, GPT-L-256, GPT-XL-256, ... or tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--only", default=",".join(CONFIGURATIONS), help=f"comma-separated, of: {', '.join(CONFIGURATIONS)}")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a failure")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = [name for name in names if name not in CONFIGURATIONS]
    if unknown or not names:
        parser.error(f"--only {args.only!r}: no such configuration; choose from {', '.join(CONFIGURATIONS)}")
    if args.preset != "tiny" and args.preset not in LLAMAGEN_PRESETS:
        parser.error(f"--preset {args.preset}: unknown; choose tiny or one of {', '.join(LLAMAGEN_PRESETS)}")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    dtype = getattr(torch, args.dtype)
    failed = []
    print(f"{args.preset}, batch {args.batch_size}, {args.dtype}, guidance 4: decode steps compiled for sm_{CAPABILITY[0]}{CAPABILITY[1]} "
          f"(torch {torch.__version__}, no GPU needed)")
    try:
        with FakeCuda():
            check_the_fake()
            for name in names:
                torch._dynamo.reset()
                try:
                    result = check_configuration(name, args.preset, args.batch_size, dtype)
                    print(f"ok    {name}: {result}", flush=True)
                except Exception as error:
                    print(f"FAIL  {name}: {innermost_error(error)}", flush=True)
                    failed.append(name)
                    if args.verbose:
                        traceback.print_exc()
    except CannotCheck as error:
        print(f"cannot check here: {error}")
        return 3
    print(f"{len(names) - len(failed)} of {len(names)} configurations compile for CUDA" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
