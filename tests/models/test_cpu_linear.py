"""The CPU decode step's linear layers on oneDNN's packed weights: the same products as F.linear, the
modules given back untouched, and never stale weights (a compiled step after a training step)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from masc_hf.models import LlamaGenForImageGeneration
from masc_hf.models.ar import can_pack, packed_linears
from masc_hf.models.ar import cpu_linear
from masc_hf.models.ar.cpu_linear import packed_linear

pytestmark = pytest.mark.skipif(not can_pack(nn.Linear(2, 2)), reason="no oneDNN packed weights on this machine (x86 CPU, torch built with oneDNN)")


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear_eager_and_compiled(bias, monkeypatch):
    calls = []
    on_packed = cpu_linear.linear_on_packed
    monkeypatch.setattr(cpu_linear, "linear_on_packed", lambda *args: calls.append(1) or on_packed(*args))
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(48, 80, bias=bias)
    x = torch.randn(6, 1, 48, generator=generator)
    expected = F.linear(x, layer.weight, layer.bias).detach()
    compiled = torch.compile(lambda x, w, b: packed_linear(x, w, b).relu(), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(packed_linear(x, layer.weight, layer.bias), expected)  # no packed copy: F.linear
        assert not calls
        with packed_linears(layer):
            torch.testing.assert_close(packed_linear(x, layer.weight, layer.bias), expected)
            torch.testing.assert_close(compiled(x, layer.weight, layer.bias), expected.relu())
            assert len(calls) == 2  # both on the packed copy
        assert cpu_linear._PACKED.get(cpu_linear._key(layer.weight)) is None  # dropped with the block


def test_packed_linears_follow_the_weights_and_give_the_modules_back():
    model = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8, bias=False))
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    assert can_pack(model) and not can_pack(model.to(torch.float64)) and can_pack(model.float())
    with torch.no_grad():
        with packed_linears(model, keep=True):
            first = model(x)
            assert isinstance(model[0].forward, type(model[2].forward)) and "forward" in model[0].__dict__
            forwards = (model[0].forward, model[2].forward)
        torch.testing.assert_close(first, model(x))
        assert all("forward" not in m.__dict__ for m in model)  # the class's forward again
        kept = dict(model._packed_linear_weights)
        with packed_linears(model, keep=True):
            assert model._packed_linear_weights["0"] is kept["0"]  # unchanged weights: the same packed tensors
            assert (model[0].forward, model[2].forward) == forwards  # and the same forwards (no recompiling)
        model[2].weight.mul_(-1)  # in place, as an optimiser step
        with packed_linears(model, keep=True):
            assert model._packed_linear_weights["2"] is not kept["2"] and model._packed_linear_weights["0"] is kept["0"]
            assert (model[0].forward, model[2].forward) == forwards
            torch.testing.assert_close(model(x), F.linear(model[1](model[0](x)), model[2].weight))
        with packed_linears(model):  # an eager call between compiled ones: the kept copies stay for the next
            assert model._packed_linear_weights["0"] is kept["0"]
        with packed_linears(model, exclude=("2",)):  # a layer the caller will not run stays as it is
            assert "forward" in model[0].__dict__ and "forward" not in model[2].__dict__
            torch.testing.assert_close(model(x), F.linear(model[1](model[0](x)), model[2].weight))
        fresh = nn.Sequential(nn.Linear(16, 4))
        with packed_linears(fresh):
            torch.testing.assert_close(fresh(x), F.linear(x, fresh[0].weight, fresh[0].bias))
        assert "_packed_linear_weights" not in fresh.__dict__  # not kept: nothing held after the block
        assert cpu_linear._PACKED.get(cpu_linear._key(fresh[0].weight)) is None


def test_compiled_generation_after_a_weight_update_uses_the_new_weights(tiny_model):
    from torch._dynamo.utils import counters

    model = LlamaGenForImageGeneration(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    bypassed = counters["inductor"]["fxgraph_cache_bypass"]
    before = model.generate([1, 2], guidance_scale=4.0, top_k=1, compile=True)
    assert counters["inductor"]["fxgraph_cache_bypass"] == bypassed  # no packed tensor in the graph: cacheable
    assert torch.equal(before, model.generate([1, 2], guidance_scale=4.0, top_k=1))
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(2)))
    after = model.generate([1, 2], guidance_scale=4.0, top_k=1, compile=True)
    assert torch.equal(after, model.generate([1, 2], guidance_scale=4.0, top_k=1))  # eager reads the weights afresh
    assert not torch.equal(after, before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_an_eager_call_between_compiled_ones_costs_no_recompile(tiny_model):
    from torch._dynamo.utils import counters

    tiny_model.generate([3, 4], guidance_scale=4.0, top_k=1, compile=True)
    tiny_model.generate([3, 4], guidance_scale=4.0, top_k=1)  # eager: uses the kept packed weights, keeps them
    before = counters["stats"]["unique_graphs"]
    tiny_model.generate([3, 4], guidance_scale=4.0, top_k=1, compile=True)
    assert counters["stats"]["unique_graphs"] == before
