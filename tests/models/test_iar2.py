"""IAR2's semantic-detail AR model: parity with the reference fixtures, presets, conversion, generation, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

import masc_hf  # noqa: F401  (registers the Auto classes)
from masc_hf.cli import main
from masc_hf.errors import CheckpointError, ModelConfigError, ModelInputError
from masc_hf.models.iar2 import IAR2Config, IAR2ForImageGeneration
from masc_hf.models.iar2.convert_iar2 import convert_iar2_checkpoint, convert_iar2_state_dict, iar2_key, load_config_file

GUIDANCE = {  # fixture name -> (semantic, detail, w); "off" is (1, 1) here (the reference needs start < 1)
    "off": ((1.0, 1.0), (1.0, 1.0), 0.0),
    "constant": ((2.0, 2.0), (1.75, 1.75), 0.0),
    "progressive": ((1.25, 2.5), (1.5, 3.0), 1.0),
}


@pytest.fixture(scope="module")
def iar2_gpt(iar2_fixtures):
    return iar2_fixtures / "gpt"


@pytest.fixture(scope="module")
def converted_iar2_dir(iar2_gpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("iar2") / "tiny-iar2"
    return convert_iar2_checkpoint(iar2_gpt / "model.safetensors", out, load_config_file(iar2_gpt / "config.json"))


@pytest.fixture(scope="module")
def iar2_model(converted_iar2_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(converted_iar2_dir).eval()


@pytest.fixture(scope="module")
def forward_io(iar2_gpt):
    return load_file(iar2_gpt / "forward.safetensors")


@pytest.fixture(scope="module")
def generate_io(iar2_gpt):
    return load_file(iar2_gpt / "generate.safetensors")


@pytest.fixture(scope="module")
def small_model():
    """A random 4x4-grid model for fast generation tests."""
    torch.manual_seed(0)
    config = IAR2Config(semantic_vocab_size=16, detail_vocab_size=32, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        head_layers=2, num_classes=4, block_size=16, initializer_range=0.2)
    model = IAR2ForImageGeneration(config).eval()
    with torch.no_grad():  # the reference zero-initialises the output layers: give them values
        model.head.semantic_out[-1].weight.normal_(0, 0.5)
        model.head.detail_out[-1].weight.normal_(0, 0.5)
    return model


# ------------------------------------------------------------------ parity with the reference


@pytest.mark.parametrize("null", [False, True])
def test_teacher_forced_logits_match_reference(iar2_model, forward_io, null):
    f, suffix = forward_io, "_null" if null else ""
    out = iar2_model(f["semantic_ids"], f["detail_ids"], f["class_ids"], force_drop_ids=torch.tensor([null, null]), return_loss=True)
    positions = f["positions"]
    assert out.logits_semantic.shape == (2, 576, 256) and out.logits_detail.shape == (2, 576, 4096)
    torch.testing.assert_close(out.logits_semantic[:, positions], f["semantic_logits" + suffix], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.logits_detail[:, positions], f["detail_logits" + suffix], atol=1e-4, rtol=0)
    for part in ("semantic", "detail"):
        logits = getattr(out, f"logits_{part}")
        ids = f[f"{part}_ids"]
        torch.testing.assert_close(logits.logsumexp(-1), f[f"{part}_logsumexp{suffix}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(logits.max(-1).values, f[f"{part}_max{suffix}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(logits.gather(-1, ids[..., None])[..., 0], f[f"{part}_target_logit{suffix}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(getattr(out, f"loss_{part}"), f[f"loss_{part}{suffix}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, out.loss_semantic + out.loss_detail)  # w = 1


def test_backbone_and_window_match_reference(iar2_model, forward_io):
    """The intermediate states the fixture records: the last backbone layer (no final norm) and u_t."""
    f, captured = forward_io, {}
    hooks = [
        iar2_model.layers[-1].register_forward_hook(lambda m, i, o: captured.setdefault("hidden", o)),
        iar2_model.head.context.register_forward_hook(lambda m, i, o: captured.setdefault("context", o)),
    ]
    try:
        iar2_model(f["semantic_ids"], f["detail_ids"], f["class_ids"])
    finally:
        for hook in hooks:
            hook.remove()
    positions = f["positions"]
    torch.testing.assert_close(captured["hidden"][:, positions], f["backbone_hidden"], atol=2e-5, rtol=0)
    torch.testing.assert_close(captured["context"][:, positions], f["window_context"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["off", "constant", "progressive"])
def test_greedy_generations_match_reference(iar2_model, generate_io, name):
    g = generate_io
    semantic, detail, weight = GUIDANCE[name]
    semantic_ids, detail_ids, schedule = iar2_model.generate(
        g["class_labels"], semantic_guidance=semantic, detail_guidance=detail, attention_guidance_weight=weight, top_k=1, return_schedule=True
    )
    assert torch.equal(semantic_ids, g[f"semantic_ids_{name}"])
    assert torch.equal(detail_ids, g[f"detail_ids_{name}"])
    if name != "off":
        torch.testing.assert_close(schedule["class_attention"], g[f"class_attention_{name}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(schedule["semantic_scale"], g[f"semantic_scale_{name}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(schedule["detail_scale"], g[f"detail_scale_{name}"], atol=1e-5, rtol=0)
        assert torch.all(schedule["class_attention"][:, 0] == 1.0)  # a_0: only the class key is visible


# ------------------------------------------------------------------ presets and conversion


@pytest.mark.parametrize("name", ["IAR2-B", "IAR2-L", "IAR2-XL", "IAR2-XXL"])
def test_presets_have_the_released_layouts(iar2_fixtures, name):
    layout = json.loads((iar2_fixtures / "shapes.json").read_text())["models"][name]
    config = IAR2Config.from_preset(name, rope_cell_repeat=2)
    state_dict = {e["key"]: torch.empty(e["shape"], device="meta") for e in layout["state_dict"]}
    converted = convert_iar2_state_dict(state_dict, config)  # strict: every key mapped, every shape checked
    assert len(converted) == len(state_dict) == layout["num_state_dict_keys"]
    assert sum(t.numel() for t in converted.values()) == layout["num_parameters"]
    with torch.device("meta"):
        assert IAR2ForImageGeneration(config).num_parameters() == layout["num_parameters"]


def test_key_mapping(forward_io, iar2_gpt):
    original = load_file(iar2_gpt / "model.safetensors")
    mapped = {iar2_key(k) for k in original}
    assert len(mapped) == len(original) == 48
    assert iar2_key("factorized_blocks.1.attention.wqkv.weight") == "head.layers.1.self_attn.qkv_proj.weight"
    assert iar2_key("norm.weight") == "head.norm.weight"
    assert iar2_key("mlp1.2.weight") == "head.context.neighbour_mlp.2.weight"
    assert iar2_key("layers.0.attention.kv_cache.k_cache") is None and iar2_key("freqs_cis") is None


def test_converted_directory_loads_with_auto_and_round_trips(iar2_model, converted_iar2_dir, forward_io, tmp_path):
    from transformers import AutoConfig, AutoModel

    assert type(iar2_model).__name__ == "IAR2ForImageGeneration"
    config = AutoConfig.from_pretrained(converted_iar2_dir)
    assert config.model_type == "masc_iar2" and config.rope_cell_repeat == 2
    iar2_model.save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(tmp_path / "saved").eval()
    f = forward_io
    a = iar2_model(f["semantic_ids"], f["detail_ids"], f["class_ids"]).logits_detail
    b = again(f["semantic_ids"], f["detail_ids"], f["class_ids"]).logits_detail
    assert torch.equal(a, b)


@pytest.mark.parametrize("wrapper", [None, "model"])
def test_torch_checkpoint_bare_or_wrapped(tmp_path, iar2_gpt, iar2_model, wrapper):
    from transformers import AutoModel

    original = load_file(iar2_gpt / "model.safetensors")
    ckpt = tmp_path / "IAR2-tiny.pt"
    torch.save({wrapper: original} if wrapper else original, ckpt)
    out = convert_iar2_checkpoint(ckpt, tmp_path / "out", load_config_file(iar2_gpt / "config.json"))
    model = AutoModel.from_pretrained(out)
    for key, value in iar2_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_rope_cell_repeat_is_the_quirk_the_weights_need(iar2_gpt, forward_io):
    """With the clean layout (every position its own cell) the converted weights give other logits; the
    converter refuses it."""
    config = load_config_file(iar2_gpt / "config.json")
    weights = convert_iar2_state_dict(load_file(iar2_gpt / "model.safetensors"), config)
    clean = IAR2ForImageGeneration(IAR2Config(**{**config.to_dict(), "rope_cell_repeat": 1})).eval()
    clean.load_state_dict(weights)
    f = forward_io
    logits = clean(f["semantic_ids"], f["detail_ids"], f["class_ids"]).logits_semantic[:, f["positions"]]
    assert (logits - f["semantic_logits"]).abs().max() > 1e-2
    with pytest.raises(CheckpointError, match="rope_cell_repeat=2"):
        convert_iar2_checkpoint(iar2_gpt / "model.safetensors", "unused", IAR2Config(**{**config.to_dict(), "rope_cell_repeat": 1}))


def test_checkpoint_of_another_size_is_refused(iar2_gpt, tmp_path):
    with pytest.raises(CheckpointError, match="shape mismatch.*pick the preset"):
        convert_iar2_checkpoint(iar2_gpt / "model.safetensors", tmp_path / "out", IAR2Config.from_preset("IAR2-B", rope_cell_repeat=2))
    assert not (tmp_path / "out").exists()


def test_llamagen_and_tokenizer_checkpoints_are_refused(llamagen_fixtures, iar2_fixtures, iar2_gpt, tmp_path):
    config = load_config_file(iar2_gpt / "config.json")
    with pytest.raises(CheckpointError, match="LlamaGen GPT checkpoint.*convert-llamagen"):
        convert_iar2_checkpoint(llamagen_fixtures / "gpt" / "model.safetensors", tmp_path / "a", config)
    with pytest.raises(CheckpointError, match="not a key of IAR2"):
        convert_iar2_checkpoint(iar2_fixtures / "vq" / "model.safetensors", tmp_path / "b", config)


def test_cli_convert_iar2(iar2_gpt, tmp_path, capsys):
    from transformers import AutoModel

    argv = ["convert-iar2", "--checkpoint", str(iar2_gpt / "model.safetensors"), "--config", str(iar2_gpt / "config.json"), "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    assert AutoModel.from_pretrained(tmp_path / "m").config.head_layers == 2
    capsys.readouterr()
    bad = ["convert-iar2", "--checkpoint", str(iar2_gpt / "model.safetensors"), "--preset", "IAR2-B", "--out", str(tmp_path / "n")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("masc-hf convert-iar2: error:") and "shape mismatch" in err and err.count("\n") == 1


# ------------------------------------------------------------------ model behaviour


def test_detail_logits_are_teacher_forced_on_the_same_tokens_semantic_id(small_model):
    """Changing token t's semantic id changes the detail logits at t (head slot 2) but not the semantic
    logits at t (slot 1 sees only earlier tokens)."""
    generator = torch.Generator().manual_seed(1)
    semantic = torch.randint(0, 16, (1, 16), generator=generator)
    detail = torch.randint(0, 32, (1, 16), generator=generator)
    labels = torch.tensor([2])
    base = small_model(semantic, detail, labels)
    changed = semantic.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 16
    out = small_model(changed, detail, labels)
    assert torch.equal(out.logits_semantic[:, :6], base.logits_semantic[:, :6])
    assert not torch.allclose(out.logits_detail[:, 5], base.logits_detail[:, 5])
    assert torch.equal(out.logits_detail[:, :5], base.logits_detail[:, :5])


def test_cached_generation_equals_teacher_forced_argmax(small_model):
    """Greedy ids are the argmax of the teacher-forced logits of the generated grid (unguided)."""
    semantic, detail = small_model.generate([1, 3], top_k=1)
    out = small_model(semantic, detail, torch.tensor([1, 3]))
    assert torch.equal(out.logits_semantic.argmax(-1), semantic)
    assert torch.equal(out.logits_detail.argmax(-1), detail)


def test_guided_greedy_ids_follow_the_schedule(small_model):
    """With guidance, each greedy id is the argmax of uncond + scale * (cond - uncond) of teacher-forced
    logits at the recorded per-step scales."""
    labels = torch.tensor([0, 2])
    semantic, detail, schedule = small_model.generate(labels, semantic_guidance=(1.5, 4.0), detail_guidance=(1.0, 3.0),
                                                      attention_guidance_weight=0.5, top_k=1, return_schedule=True)
    cond = small_model(semantic, detail, labels)
    uncond = small_model(semantic, detail, labels, force_drop_ids=torch.tensor([True, True]))
    for part, ids in (("semantic", semantic), ("detail", detail)):
        scale = schedule[f"{part}_scale"][..., None]
        c, u = getattr(cond, f"logits_{part}"), getattr(uncond, f"logits_{part}")
        assert torch.equal((u + scale * (c - u)).argmax(-1), ids)
    steps = torch.arange(16) / 15
    torch.testing.assert_close(schedule["semantic_scale"], 1.5 * (1 - (steps + 0.5 * schedule["class_attention"])) + 4.0 * (steps + 0.5 * schedule["class_attention"]))


def test_per_image_generators_make_each_image_independent_of_the_batch(small_model):
    alone = small_model.generate([3], generator=[torch.Generator().manual_seed(7)], semantic_guidance=2.0, detail_guidance=2.0)
    batch = small_model.generate([1, 3], generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(7)],
                                 semantic_guidance=2.0, detail_guidance=2.0)
    assert torch.equal(alone[0][0], batch[0][1]) and torch.equal(alone[1][0], batch[1][1])
    again = small_model.generate([3], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], small_model.generate([3], generator=torch.Generator().manual_seed(0))[0])


def test_generation_config_holds_the_sampling_defaults(small_model, tmp_path):
    from transformers import AutoModel, GenerationConfig

    small_model.generation_config = GenerationConfig(do_sample=True, semantic_guidance=[1.0, 3.0], detail_guidance=[1.0, 2.0], attention_guidance_weight=1.0, top_k=1)
    try:
        expected = small_model.generate([2], top_k=1, semantic_guidance=(1.0, 3.0), detail_guidance=(1.0, 2.0), attention_guidance_weight=1.0)
        assert torch.equal(small_model.generate([2])[0], expected[0])
        small_model.save_pretrained(tmp_path / "m")
        loaded = AutoModel.from_pretrained(tmp_path / "m")
        assert list(loaded.generation_config.semantic_guidance) == [1.0, 3.0]
    finally:
        small_model.generation_config = type(small_model.generation_config)(**masc_hf.models.iar2.default_generation_config().to_dict())


def test_bf16_and_gradient_checkpointing(small_model):
    import copy

    generator = torch.Generator().manual_seed(2)
    semantic, detail = torch.randint(0, 16, (2, 16), generator=generator), torch.randint(0, 32, (2, 16), generator=generator)
    labels = torch.tensor([0, 1])
    model = copy.deepcopy(small_model).train()
    model.config.class_dropout_prob = 0.0  # no random label drops: both passes must see the same labels
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    plain = model(semantic, detail, labels, force_drop_ids=torch.zeros(2, dtype=torch.bool), return_loss=True).loss
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()  # newer / older transformers name
    checkpointed = model(semantic, detail, labels, force_drop_ids=torch.zeros(2, dtype=torch.bool), return_loss=True)
    torch.testing.assert_close(checkpointed.loss, plain)
    checkpointed.loss.backward()
    assert model.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0
    half = copy.deepcopy(small_model).to(torch.bfloat16)
    out = half(semantic, detail, labels)
    assert out.logits_semantic.dtype == torch.float32
    reference = small_model(semantic, detail, labels).logits_semantic
    assert (out.logits_semantic - reference).norm() / reference.norm() < 0.05  # bf16 rounding, not another model
    ids = half.generate([1], top_k=1)
    assert ids[0].shape == (1, 16)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"semantic_guidance": (1.0,)}, r"semantic_guidance=\(1.0,\) must be a \(start, end\) pair"),
        ({"detail_guidance": "strong"}, "detail_guidance='strong' must be a"),
        ({"semantic_guidance": (-1.0, 2.0)}, "finite and >= 0"),
        ({"detail_guidance": (1.0, float("nan"))}, "finite and >= 0"),
        ({"attention_guidance_weight": float("nan")}, "attention_guidance_weight=nan must be a finite number"),
        ({"temperature": (1.0, -1.0)}, "temperature=-1.0 must be >= 0"),
        ({"top_k": (1, 2, 3)}, r"top_k=\(1, 2, 3\) must be one value or a \(semantic, detail\) pair"),
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_options(small_model, kwargs, match):
    with pytest.raises(ModelInputError, match=match):
        small_model.generate([0], **kwargs)


def test_bad_id_grids(small_model):
    labels = torch.tensor([0])
    good_s, good_d = torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long)
    with pytest.raises(ModelInputError, match=r"semantic_ids must be integer ids of shape \[B, block_size\] = \[B, 16\]"):
        small_model(torch.zeros(1, 15, dtype=torch.long), good_d, labels)
    with pytest.raises(ModelInputError, match=r"detail_ids contain 1 id\(s\) outside \[0, 32\)"):
        small_model(good_s, torch.full((1, 16), 0).index_fill(1, torch.tensor([3]), 32), labels)
    with pytest.raises(ModelInputError, match=r"semantic_ids contain 16 id\(s\) outside \[0, 16\)"):
        small_model(torch.full((1, 16), 16), good_d, labels)
    with pytest.raises(ModelInputError, match="has 2 rows but class_labels has 1"):
        small_model(good_s.repeat(2, 1), good_d.repeat(2, 1), labels)


def test_guidance_without_a_null_class_is_refused():
    model = IAR2ForImageGeneration(IAR2Config(semantic_vocab_size=8, detail_vocab_size=8, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                                              head_layers=1, num_classes=2, block_size=4, class_dropout_prob=0.0))
    with pytest.raises(ModelInputError, match="guidance needs a null class"):
        model.generate([0], semantic_guidance=(1.0, 2.0))
    assert model.generate([0])[0].shape == (1, 4)


def test_bad_configs():
    with pytest.raises(ModelConfigError, match="block_size=15 is not a square"):
        IAR2Config(block_size=15)
    with pytest.raises(ModelConfigError, match="unknown IAR2 preset"):
        IAR2Config.from_preset("IAR2-S")
    with pytest.raises(ModelConfigError, match=r"unknown IAR2 ModelArgs field\(s\) \['dimension'\]"):
        IAR2Config.from_model_args({"dimension": 4})
