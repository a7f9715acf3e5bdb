"""LlamaGen as a transformers model: reference parity, round trips, training features, generate, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import masc_hf
from masc_hf.errors import ClusterMapMismatchError, MASCError, ModelConfigError, ModelInputError
from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration
from masc_hf.models.ar import filter_logits, rope_2d_table, sample_next_token

# ---------------------------------------------------------------------------------------------- parity


def test_teacher_forced_logits_match_reference(tiny_model, gpt_forward):
    logits = tiny_model(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"]).logits
    assert logits.shape == (2, 64, 256) and logits.dtype == torch.float32
    assert (logits - gpt_forward["logits"]).abs().max().item() <= 1e-4


def test_null_class_logits_match_reference(tiny_model, gpt_forward):
    assert (gpt_forward["cond_idx_null"] == tiny_model.config.null_class_id).all()
    drop = torch.ones(2, dtype=torch.bool)
    logits = tiny_model(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"], force_drop_ids=drop).logits
    assert (logits - gpt_forward["logits_uncond"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("which, scale_index", [("tokens_cfg_off", 0), ("tokens_cfg_on", 1)])
def test_greedy_generate_matches_reference(tiny_model, gpt_generate, which, scale_index):
    scale = gpt_generate["cfg_scales"][scale_index].item()
    tokens = tiny_model.generate(class_labels=gpt_generate["class_labels"], guidance_scale=scale, top_k=1)
    assert tokens.dtype == torch.long and tokens.shape == (2, tiny_model.config.block_size)
    assert torch.equal(tokens, gpt_generate[which])


def test_temperature_zero_is_greedy(tiny_model, gpt_generate):
    tokens = tiny_model.generate(gpt_generate["class_labels"], guidance_scale=4.0, temperature=0)
    assert torch.equal(tokens, gpt_generate["tokens_cfg_on"])


def test_rope_table_follows_the_described_layout():
    cos, sin = rope_2d_table(block_size=16, head_dim=8, theta=100.0)  # grid 4, 2 pairs per axis
    assert cos.shape == sin.shape == (17, 4)
    assert (cos[0] == 0).all() and (sin[0] == 0).all()  # class position zeroes q and k
    inv_freq = [1.0, 100.0 ** (-2 / 4)]
    for p in range(16):
        row, col = divmod(p, 4)
        expected = [row * inv_freq[0], row * inv_freq[1], col * inv_freq[0], col * inv_freq[1]]
        torch.testing.assert_close(cos[p + 1], torch.cos(torch.tensor(expected)))
        torch.testing.assert_close(sin[p + 1], torch.sin(torch.tensor(expected)))


# ---------------------------------------------------------------------------------------------- HF plumbing


def test_auto_classes_and_round_trip_give_identical_logits(tiny_model, gpt_forward, tmp_path):
    from transformers import AutoConfig, AutoModel

    tiny_model.save_pretrained(tmp_path / "again")
    assert AutoConfig.from_pretrained(tmp_path / "again").model_type == "masc_llamagen"
    reloaded = AutoModel.from_pretrained(tmp_path / "again")
    assert type(reloaded) is LlamaGenForImageGeneration and not reloaded.training
    args = dict(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"])
    assert torch.equal(reloaded(**args).logits, tiny_model(**args).logits)
    same = lambda config: {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert same(reloaded.config) == same(tiny_model.config)
    in_bf16 = AutoModel.from_pretrained(tmp_path / "again", torch_dtype=torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16 and in_bf16(**args).logits.dtype == torch.float32


def test_config_accepts_model_args_names_and_validates():
    config = LlamaGenConfig.from_model_args({"dim": 64, "n_layer": 2, "n_head": 4, "vocab_size": 32, "block_size": 16, "rope_base": 500})
    assert (config.dim, config.hidden_size, config.n_layer, config.num_key_value_heads, config.rope_theta) == (64, 64, 2, 4, 500.0)
    assert config.intermediate_size == 256  # int(8 * 64 / 3) = 170 rounded up to 256
    with pytest.raises(ModelConfigError, match="block_size=15"):
        LlamaGenConfig(block_size=15)
    with pytest.raises(ModelConfigError, match="t2i"):
        LlamaGenConfig.from_model_args({"model_type": "t2i"})
    with pytest.raises(ModelConfigError, match="GPT-Q"):
        LlamaGenConfig.from_preset("GPT-Q")


def test_bf16_forward_and_generate(tiny_model, gpt_forward):
    model = LlamaGenForImageGeneration(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model = model.to(torch.bfloat16).eval()
    logits = model(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"]).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    reference = gpt_forward["logits"]
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8
    assert model.rotary_emb.cos.dtype == torch.float32  # the rotary table stays float32, as in the reference
    tokens = model.generate([3, 4], guidance_scale=2.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert tokens.dtype == torch.long and tokens.shape == (2, 64) and tokens.min() >= 0 and tokens.max() < 256


def _loss_and_grads(model, batch):
    torch.manual_seed(0)  # the same label dropout in both runs
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_gives_same_loss_and_grads(tiny_model, gpt_forward):
    model = LlamaGenForImageGeneration(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.train()
    tokens = torch.cat([gpt_forward["idx"], gpt_forward["idx"][:, :1]], dim=1)
    batch = dict(input_ids=tokens[:, :-1], class_labels=gpt_forward["cond_idx"], labels=tokens)
    loss, grads = _loss_and_grads(model, batch)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable  # v5 / v4 name
    enable()
    assert all(layer.gradient_checkpointing for layer in model.layers)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, batch)
    assert torch.equal(loss, loss_ckpt)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert "LlamaGenDecoderLayer" in model._no_split_modules


def test_loss_is_cross_entropy_over_all_positions(tiny_model, gpt_forward):
    labels = torch.cat([gpt_forward["idx"], gpt_forward["idx"][:, :1]], dim=1)
    labels[0, 5] = -100
    out = tiny_model(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"], labels=labels)
    logits = gpt_forward["logits"]
    log_probs = logits.log_softmax(-1)
    keep = labels != -100
    expected = -log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)


def test_training_regularisers_are_active_only_in_train_mode(tiny_config, gpt_forward):
    config = LlamaGenConfig.from_dict({**tiny_config.to_dict(), "token_dropout": 0.3, "resid_dropout": 0.3, "drop_path_rate": 0.5})
    model = LlamaGenForImageGeneration(config).eval()
    torch.nn.init.normal_(model.lm_head.weight)
    args = dict(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"])
    assert torch.equal(model(**args).logits, model(**args).logits)
    model.train()
    assert not torch.equal(model(**args).logits, model(**args).logits)
    assert [layer.drop_path.p for layer in model.layers] == [0.0, 0.5]  # linear schedule over the layers


def test_label_dropout_uses_the_null_class_at_the_configured_rate(tiny_model):
    model = LlamaGenForImageGeneration(LlamaGenConfig.from_dict({**tiny_model.config.to_dict(), "class_dropout_prob": 0.3}))
    labels = torch.full((4000,), 3)
    null_row = model.class_embedding.weight[model.config.num_classes]
    model.train()
    torch.manual_seed(0)
    dropped = (model.embed_classes(labels)[:, 0] == null_row).all(-1).float().mean().item()
    assert abs(dropped - 0.3) < 0.03
    model.eval()
    assert not (model.embed_classes(labels)[:, 0] == null_row).all(-1).any()


# ---------------------------------------------------------------------------------------------- generate semantics


def _teacher_forced(model, tokens, labels, drop=None):
    return model(input_ids=tokens[:, :-1], class_labels=labels, force_drop_ids=drop).logits


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_greedy_tokens_are_argmax_of_the_guided_teacher_forced_logits(tiny_model, scale):
    labels = torch.tensor([0, 7, 9])
    tokens = tiny_model.generate(labels, guidance_scale=scale, temperature=0)
    cond = _teacher_forced(tiny_model, tokens, labels)
    uncond = _teacher_forced(tiny_model, tokens, labels, torch.ones(3, dtype=torch.bool))
    guided = uncond + scale * (cond - uncond)
    assert torch.equal(guided.argmax(-1), tokens)


def test_cfg_interval_guides_only_the_first_steps(tiny_model):
    labels = torch.tensor([1, 2])
    interval = 10  # prefill + decode steps 0..10 guided: tokens 0..11; later tokens conditional only
    tokens = tiny_model.generate(labels, guidance_scale=4.0, temperature=0, cfg_interval=interval)
    cond = _teacher_forced(tiny_model, tokens, labels)
    uncond = _teacher_forced(tiny_model, tokens, labels, torch.ones(2, dtype=torch.bool))
    guided = uncond + 4.0 * (cond - uncond)
    assert torch.equal(guided[:, : interval + 2].argmax(-1), tokens[:, : interval + 2])
    assert torch.equal(cond[:, interval + 2 :].argmax(-1), tokens[:, interval + 2 :])
    full = tiny_model.generate(labels, guidance_scale=4.0, temperature=0)
    assert not torch.equal(full, tokens)


def test_sampling_is_reproducible_with_a_generator(tiny_model):
    def run(seed):
        return tiny_model.generate([1, 5], guidance_scale=2.0, top_p=0.9, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_generate_restores_training_mode(tiny_model):
    tiny_model.train()
    tiny_model.generate([1], guidance_scale=1.0, top_k=1)
    assert tiny_model.training


# ---------------------------------------------------------------------------------------------- sampling rules


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=12, unique=True),
    top_k=st.integers(0, 14),
    top_p=st.floats(0.01, 1.0),
)
def test_filter_logits_matches_a_plain_reading_of_the_rules(values, top_k, top_p):
    logits = torch.tensor([values])
    kept = torch.isfinite(filter_logits(logits, top_k, top_p))[0].tolist()

    order = sorted(range(len(values)), key=lambda i: -values[i])
    survivors = set(order if top_k == 0 else [i for i in order if values[i] >= values[order[min(top_k, len(values)) - 1]]])
    ranked = [i for i in order if i in survivors]
    if top_p < 1.0:
        weights = [math.exp(values[i]) for i in ranked]
        total, cumulative, nucleus = sum(weights), 0.0, []
        for i, w in zip(ranked, weights):
            nucleus.append(i)
            cumulative += w / total
            if cumulative > top_p:
                break
        survivors = set(nucleus)
    assert kept == [i in survivors for i in range(len(values))]


def test_top_k_keeps_ties_with_the_kth_value():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2))[0].tolist() == [False, True, True, True, False]


def test_temperature_reshapes_the_sampling_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 2.0):
        draws = sample_next_token(logits, temperature=temperature, generator=generator)
        frequencies = torch.bincount(draws, minlength=4).float() / draws.numel()
        torch.testing.assert_close(frequencies, (logits[0] / temperature).softmax(-1), atol=0.015, rtol=0)
    assert (sample_next_token(logits[:3], temperature=0) == 2).all()


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("labels", [[-1, 2], [1, 10], [1000]])
def test_class_labels_out_of_range_are_refused(tiny_model, gpt_forward, labels):
    with pytest.raises(ModelInputError, match=r"outside \[0, 10\)"):
        tiny_model.generate(labels, guidance_scale=1.0)
    with pytest.raises(ModelInputError, match=r"outside \[0, 10\)"):
        tiny_model(input_ids=gpt_forward["idx"][: len(labels)], class_labels=torch.tensor(labels))


@pytest.mark.parametrize("length", [62, 64, 0])
def test_wrong_input_length_is_refused(tiny_model, length):
    with pytest.raises(ModelInputError, match=r"\[B, 63\]") as err:
        tiny_model(input_ids=torch.zeros(2, length, dtype=torch.long), class_labels=torch.tensor([1, 2]))
    assert f", {length}]" in str(err.value)


def test_input_ids_out_of_vocabulary_are_refused(tiny_model):
    ids = torch.zeros(1, 63, dtype=torch.long)
    ids[0, 3] = 256
    with pytest.raises(ModelInputError, match=r"outside \[0, 256\)"):
        tiny_model(input_ids=ids, class_labels=torch.tensor([1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(guidance_scale=-0.5), "guidance_scale=-0.5"),
        (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(cfg_interval=-2), "cfg_interval=-2"),
    ],
)
def test_bad_sampling_options_are_refused(tiny_model, kwargs, match):
    with pytest.raises(ModelInputError, match=match):
        tiny_model.generate([1], **kwargs)


def test_errors_are_value_errors():
    assert issubclass(ModelInputError, MASCError) and issubclass(ModelInputError, ValueError)


# ---------------------------------------------------------------------------------------------- MASC


def test_masc_generate_returns_cluster_ids_the_map_decodes_inside_the_clusters(masc_model, tiny_cluster_map):
    generator = torch.Generator().manual_seed(0)
    coarse = masc_model.generate([1, 2, 3], guidance_scale=3.0, generator=generator)  # the model's own ids
    fine = tiny_cluster_map.decode(coarse, generator=generator)
    assert fine.shape == coarse.shape == (3, 64) and fine.dtype == coarse.dtype == torch.long
    assert coarse.max() < 16 and fine.max() < 256
    assert torch.equal(tiny_cluster_map.encode(fine), coarse)
    generator = torch.Generator().manual_seed(0)
    again = tiny_cluster_map.decode(masc_model.generate([1, 2, 3], guidance_scale=3.0, generator=generator), generator=generator)
    assert torch.equal(again, fine)  # the same generator reproduces the fine ids too
    assert len(torch.unique(coarse)) > 1


def test_generate_no_longer_takes_a_cluster_map(masc_model, tiny_cluster_map):
    with pytest.raises(ModelInputError, match="cluster_map.decode"):
        masc_model.generate([1], cluster_map=tiny_cluster_map)


def test_masc_forward_refuses_fine_ids(masc_model):
    with pytest.raises(ModelInputError, match="cluster map"):
        masc_model(input_ids=torch.full((1, 63), 100), class_labels=torch.tensor([0]))


def test_masc_config_round_trip_keeps_the_map_identity(masc_model, tiny_cluster_map, tmp_path):
    from transformers import AutoModel

    masc_model.save_pretrained(tmp_path / "masc")
    loaded = AutoModel.from_pretrained(tmp_path / "masc")
    assert loaded.config.is_masc and loaded.config.fine_vocab_size == 256 and loaded.config.vocab_size == 16
    assert loaded.config.cluster_map_fingerprint == tiny_cluster_map.fingerprint
    assert np.array_equal(loaded.lm_head.weight.detach().numpy(), masc_model.lm_head.weight.detach().numpy())


# ---------------------------------------------------------------------------------------------- the AR core's static decode


def test_compiled_and_eager_greedy_generations_are_token_identical(tiny_model, gpt_generate):
    """The decode step compiles with fullgraph=True (no graph break, no host sync) and changes nothing."""
    labels = gpt_generate["class_labels"]
    eager = tiny_model.generate(labels, guidance_scale=4.0, top_k=1)
    compiled = tiny_model.generate(labels, guidance_scale=4.0, top_k=1, compile=True)
    assert torch.equal(compiled, eager) and torch.equal(compiled, gpt_generate["tokens_cfg_on"])
    # per-image generators draw by inverse CDF in both modes: the same sampled tokens
    sampled = [tiny_model.generate(labels, guidance_scale=2.0, top_p=0.9, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], compile=c)
               for c in (False, True)]
    assert torch.equal(sampled[0], sampled[1])


def test_compiled_cache_windows_give_the_same_tokens(tiny_model, gpt_generate):
    """cache_windows: each compiled step reads a static prefix of the cache that covers the written
    positions (one graph per window); the reference's greedy tokens and the per-image draws stay."""
    labels = gpt_generate["class_labels"]
    windowed = tiny_model.generate(labels, guidance_scale=4.0, top_k=1, compile=True, cache_windows=3)
    assert torch.equal(windowed, gpt_generate["tokens_cfg_on"])
    seeds = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    eager = tiny_model.generate(labels, guidance_scale=2.0, generator=seeds())
    assert torch.equal(tiny_model.generate(labels, guidance_scale=2.0, generator=seeds(), compile=True, cache_windows=4), eager)
    assert tiny_model._kept_cache.window is None  # the kept cache is left whole for the next call
    with pytest.raises(ModelInputError, match="cache_windows=2 applies to the compiled decode step; pass compile=True"):
        tiny_model.generate(labels, cache_windows=2)
    with pytest.raises(ModelInputError, match="cache_windows=9 must be an integer from 1 to 8"):
        tiny_model.generate(labels, compile=True, cache_windows=9)


@pytest.mark.parametrize("head_dim", [16, 40])
@pytest.mark.parametrize("visible", [False, True])
def test_single_query_attention_equals_sdpa_over_a_cache(visible, head_dim):
    """The compiled CPU decode step's attention (reductions) against SDPA, over what a cache returns:
    the whole buffer under the mask, or (``visible_positions``) the written positions only; one
    16-feature chunk of the values, or three with a shorter last one (head_dim 40)."""
    from masc_hf.models.ar import StaticKVCache
    from masc_hf.models.ar.layers import single_query_attention

    generator = torch.Generator().manual_seed(0)
    cache = StaticKVCache(2, 3, 4, 12, head_dim, torch.float32, torch.device("cpu"))
    if visible:
        cache.visible_positions = cache.positions[:7]
    written = torch.arange(7)
    keys, values = (torch.randn(3, 4, 7, head_dim, generator=generator) for _ in range(2))
    cache.update(0, written, torch.zeros_like(keys), torch.zeros_like(values))  # layer 0 stays apart
    layer_keys, layer_values = cache.update(1, written, keys, values)
    assert layer_values.shape == (3, 4, 7 if visible else 12, head_dim) and cache.masked != visible
    assert torch.equal(layer_values[:, :, :7], values) and torch.equal(layer_keys[:, :, :7], keys) and not cache.values[0].any()
    query = torch.randn(3, 4, 1, head_dim, generator=generator)
    mask = None if visible else cache.attention_mask(torch.tensor([6]))  # [1, 12]: positions 0..6
    expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values)
    torch.testing.assert_close(single_query_attention(query, layer_keys, layer_values, mask), expected)
    compiled = torch.compile(single_query_attention, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(query, layer_keys, layer_values, mask), expected)


def test_a_compiled_cpu_decode_step_is_one_graph_over_every_attention_length(tiny_model, gpt_generate):
    """On CPU a compiled step attends to the written positions only, a length that grows with the step:
    one graph serves all of them (no recompiling per step, nor at the last step); cache_windows=n
    compiles its n static lengths instead. Both give the reference's greedy tokens."""
    from torch._dynamo.utils import counters

    model = LlamaGenForImageGeneration(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    labels = gpt_generate["class_labels"]
    for windows, graphs in ((1, 1), (3, 3)):
        before = counters["stats"]["unique_graphs"]
        tokens = model.generate(labels, guidance_scale=4.0, top_k=1, compile=True, cache_windows=windows)
        assert counters["stats"]["unique_graphs"] - before == graphs
        assert torch.equal(tokens, gpt_generate["tokens_cfg_on"])
    assert model._kept_cache.visible_positions is None and model._kept_cache.window is None  # whole again for the next call


def test_compiled_generation_is_not_stopped_by_dynamos_recompile_limit(tiny_model):
    """Every model, batch shape, sampling setting and cache window is one more graph of the same decode
    step; dynamo's default limit (8 per code object, here lowered to 1) must not end a session's sampling."""
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{name: 1}):  # (config.patch: monkeypatch's undo breaks dynamo's config module)
        first = tiny_model.generate([1, 2, 3], guidance_scale=4.0, top_k=1, compile=True)
        second = tiny_model.generate([1, 2, 3], guidance_scale=1.0, top_k=1, compile=True)  # another batch of rows: another graph
        assert getattr(torch._dynamo.config, name) == 1  # the limit is raised for generate's calls only
    assert torch.equal(first, tiny_model.generate([1, 2, 3], guidance_scale=4.0, top_k=1))
    assert torch.equal(second, tiny_model.generate([1, 2, 3], guidance_scale=1.0, top_k=1))


def test_guidance_stops_without_changing_the_batch(tiny_model):
    """After cfg_interval the null rows keep running (static shapes); the ids follow the conditional logits."""
    calls = []
    tiny_model.generate([1, 2], guidance_scale=4.0, temperature=0, cfg_interval=3, callback=lambda step, tokens: calls.append(step))
    assert calls == list(range(64))


def test_sampling_defaults_live_in_a_generation_config_saved_beside_the_model(tiny_model, tmp_path):
    from transformers import AutoModel, GenerationConfig

    model = LlamaGenForImageGeneration(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    assert model.generation_config.guidance_scale == 4.0 and model.generation_config.top_k == 0  # the reference sampler's
    model.generation_config.guidance_scale, model.generation_config.top_k = 2.5, 1
    model.save_pretrained(tmp_path / "m")
    assert GenerationConfig.from_pretrained(tmp_path / "m").guidance_scale == 2.5
    loaded = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert (loaded.generation_config.guidance_scale, loaded.generation_config.top_k) == (2.5, 1)
    assert torch.equal(loaded.generate([1, 2]), tiny_model.generate([1, 2], guidance_scale=2.5, top_k=1))


def test_directories_saved_before_generation_configs_still_load(tiny_model, tmp_path):
    import json

    from transformers import AutoModel

    tiny_model.save_pretrained(tmp_path / "old")
    (tmp_path / "old" / "generation_config.json").unlink()
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["default_guidance_scale"] = 3.0  # what earlier releases wrote
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path / "old").eval()
    assert loaded.generation_config.guidance_scale == 3.0
    assert torch.equal(loaded.generate([1, 2], top_k=1), tiny_model.generate([1, 2], guidance_scale=3.0, top_k=1))


def test_the_training_forward_has_no_host_sync(tiny_model, gpt_forward):
    """With check_inputs=False (the trainer's call: ids were checked when the data was read) forward
    traces as one graph: no .item(), no data-dependent branch, so nothing waits for the device."""
    model = LlamaGenForImageGeneration(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.train()
    tokens = torch.cat([gpt_forward["idx"], gpt_forward["idx"][:, :1]], dim=1)
    step = torch.compile(
        lambda: model(input_ids=tokens[:, :-1], class_labels=gpt_forward["cond_idx"], labels=tokens, check_inputs=False).loss,
        fullgraph=True, backend="eager",  # traced by dynamo: a graph break (a host sync) raises
    )
    assert torch.isfinite(step())
