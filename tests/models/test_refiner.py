"""The MASC refinement network: mass only on cluster members, the loss, causality, the cached and
compiled decode step, save/load, the paper's size and bad input."""

import numpy as np
import pytest
import torch

from masc_hf.clustering import MASCClusterMap, canonical_labels
from masc_hf.errors import ClusterMapMismatchError, MASCError, ModelConfigError, ModelInputError
from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

SIZES = [1, 2, 3, 5, 8, 13, 16]  # unequal clusters, a singleton among them: N = 48, k = 7
N, K, GRID = sum(SIZES), len(SIZES), 4


def random_map(seed: int) -> MASCClusterMap:
    rng = np.random.default_rng(seed)
    return MASCClusterMap(canonical_labels(rng.permutation(np.repeat(np.arange(K), SIZES))), method="kmeans")


@pytest.fixture(scope="module")
def cluster_map() -> MASCClusterMap:
    return random_map(0)


def tiny_config(**overrides) -> MASCRefinerConfig:
    sizes = dict(num_tokens=N, num_clusters=K, backbone_hidden_size=24, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=64, block_size=GRID * GRID)
    return MASCRefinerConfig(**{**sizes, **overrides})


@pytest.fixture(scope="module")
def refiner(cluster_map) -> MASCRefiner:
    """A random refiner with a non-zero head (a fresh one is uniform inside each cluster)."""
    torch.manual_seed(0)
    model = MASCRefiner(tiny_config(), cluster_map).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    return model


def batch(cluster_map, batch_size=3, length=GRID * GRID, seed=0):
    """Backbone hidden states [B, L, 24], true coarse ids [B, L], fine ids [B, L]."""
    g = torch.Generator().manual_seed(seed)
    fine = torch.randint(0, N, (batch_size, length), generator=g)
    return torch.randn(batch_size, length, 24, generator=g), cluster_map.encode(fine), fine


# ---------------------------------------------------------------------------------------------- the distribution


def test_probability_mass_lies_on_the_members_of_the_cluster(refiner, cluster_map):
    hidden, coarse, fine = batch(cluster_map)
    logits = refiner(hidden, coarse, fine).logits
    assert logits.shape == (3, GRID * GRID, N) and logits.dtype == torch.float32
    probs = logits.softmax(-1)
    members = torch.as_tensor(cluster_map.mapping)[None, None, :] == coarse[..., None]
    assert torch.isfinite(logits[members]).all() and (logits[~members] == float("-inf")).all()
    assert (probs[~members] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, GRID * GRID))
    singleton = coarse == int(np.flatnonzero(cluster_map.cluster_sizes == 1)[0])
    assert singleton.any() and (probs.max(-1).values[singleton] == 1).all()  # a singleton cluster leaves no choice


def test_a_fresh_refiner_is_uniform_inside_each_cluster(cluster_map):
    """The head starts at zero: before training the refiner is the paper's random-member decoding."""
    hidden, coarse, fine = batch(cluster_map, batch_size=1)
    probs = MASCRefiner(tiny_config(), cluster_map)(hidden, coarse, fine).logits.softmax(-1)
    sizes = torch.as_tensor(cluster_map.cluster_sizes)[coarse]
    torch.testing.assert_close(probs.max(-1).values, 1.0 / sizes.float())


def test_the_loss_is_the_cross_entropy_inside_the_cluster(refiner, cluster_map):
    hidden, coarse, fine = batch(cluster_map)
    labels = fine.clone()
    labels[0, :5] = -100  # ignored positions
    out = refiner(hidden, coarse, fine, labels=labels)
    terms = []
    for b, t in zip(*torch.nonzero(labels != -100, as_tuple=True)):
        members = torch.as_tensor(cluster_map.members(int(coarse[b, t])))
        row = out.logits[b, t]
        terms.append(torch.logsumexp(row[members], 0) - row[labels[b, t]])
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())
    out.loss.backward()  # -inf logits off the members give zero, not NaN, gradients
    assert all(torch.isfinite(p.grad).all() for p in refiner.parameters() if p.grad is not None)
    refiner.zero_grad(set_to_none=True)


def test_position_t_sees_only_positions_up_to_t_and_the_previous_fine_token(refiner, cluster_map):
    hidden, coarse, fine = batch(cluster_map)
    logits = refiner(hidden, coarse, fine).logits
    t = 6
    other_hidden, other_coarse, other_fine = batch(cluster_map, seed=1)
    later = torch.arange(GRID * GRID) > t
    changed = refiner(
        torch.where(later[None, :, None], other_hidden, hidden), torch.where(later, other_coarse, coarse), torch.where(later, other_fine, fine)
    ).logits
    torch.testing.assert_close(changed[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(changed[:, t + 1 :], logits[:, t + 1 :], equal_nan=True)
    # the fine token t-1 (swapped for another member of its cluster) is an input of position t: the
    # refiner knows the fine history the backbone does not see
    t = next(t for t in range(1, GRID * GRID) if cluster_map.cluster_sizes[coarse[0, t - 1]] > 1)
    swapped = fine.clone()
    swapped[0, t - 1] = int(next(m for m in cluster_map.members(int(coarse[0, t - 1])) if m != fine[0, t - 1]))
    assert not torch.allclose(refiner(hidden, coarse, swapped).logits[0, t], logits[0, t], equal_nan=True)


# ---------------------------------------------------------------------------------------------- generation


def decode(step, refiner, hidden, coarse, fine):
    """Logits [B, L, N] from one refine_step per position over a fresh cache, teacher-forced on ``fine``."""
    cache = refiner.new_cache(hidden.shape[0])
    previous = torch.cat([torch.full_like(fine[:, :1], refiner.config.start_token_id), fine[:, :-1]], dim=1)
    return torch.stack(
        [step(hidden[:, t], coarse[:, t], previous[:, t], cache, torch.tensor([t])) for t in range(fine.shape[1])], dim=1
    )


def test_one_step_decoding_over_the_cache_equals_the_teacher_forced_logits(refiner, cluster_map):
    hidden, coarse, fine = batch(cluster_map)
    with torch.no_grad():
        stepped = decode(refiner.refine_step, refiner, hidden, coarse, fine)
        forced = refiner(hidden, coarse, fine).logits
    torch.testing.assert_close(stepped, forced, rtol=1e-5, atol=1e-5)  # -inf in the same places
    unmasked = refiner.refine_step(hidden[:, 0], coarse[:, 0], torch.full_like(coarse[:, 0], N), refiner.new_cache(3), torch.tensor([0]), restrict=False)
    assert torch.isfinite(unmasked).all()
    torch.testing.assert_close(refiner.restrict_to_cluster(unmasked, coarse[:, 0]), forced[:, 0], rtol=1e-5, atol=1e-5)


def test_the_decode_step_scores_only_the_members_and_equals_the_full_head(cluster_map):
    torch.manual_seed(0)
    model = MASCRefiner(tiny_config(), cluster_map).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)

    def check_table(cmap):
        table = model.member_table()
        assert table.shape == (K, max(SIZES))
        for c in range(K):
            assert table[c][table[c] < N].tolist() == sorted(cmap.members(c).tolist())

    check_table(cluster_map)
    for rows in (2, 4):  # 2 x 16 members <= N: the member rows; 4 x 16 > N: the whole head (then masked)
        hidden, coarse, _ = batch(cluster_map, batch_size=rows)
        start = torch.full((rows,), N)
        with torch.no_grad():
            step = model.refine_step(hidden[:, 0], coarse[:, 0], start, model.new_cache(rows), torch.tensor([0]))
            full = model.refine_step(hidden[:, 0], coarse[:, 0], start, model.new_cache(rows), torch.tensor([0]), restrict=False)
        full = model.restrict_to_cluster(full, coarse[:, 0])
        assert torch.equal(torch.isinf(step), torch.isinf(full))
        torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    other = random_map(1)  # a map written into the buffer (as loading weights does): the table follows it
    with torch.no_grad():
        model.token_cluster.copy_(torch.as_tensor(other.mapping))
    check_table(other)


def test_the_compiled_step_equals_the_eager_one(refiner, cluster_map):
    """refine_step compiles with fullgraph=True (no graph break, no host sync); greedy decoding over
    random predicted clusters picks the same members."""
    g = torch.Generator().manual_seed(3)
    hidden, coarse = torch.randn(2, GRID * GRID, 24, generator=g), torch.randint(0, K, (2, GRID * GRID), generator=g)
    compiled = torch.compile(refiner.refine_step, fullgraph=True, dynamic=False)

    def greedy(step):
        cache, previous, tokens, all_logits = refiner.new_cache(2), torch.full((2,), N), [], []
        for t in range(GRID * GRID):
            logits = step(hidden[:, t], coarse[:, t], previous, cache, torch.tensor([t]))
            previous = logits.argmax(-1)
            tokens.append(previous)
            all_logits.append(logits)
        return torch.stack(tokens, 1), torch.stack(all_logits, 1)

    with torch.no_grad():
        eager_tokens, eager_logits = greedy(refiner.refine_step)
        compiled_tokens, compiled_logits = greedy(compiled)
    assert torch.equal(compiled_tokens, eager_tokens)
    assert torch.equal(cluster_map.encode(eager_tokens), coarse)  # every pick is a member of its cluster
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-4, atol=1e-4)


def test_the_training_forward_has_no_host_sync(refiner, cluster_map):
    """With check_inputs=False (the trainer's call) forward and the loss trace as one graph."""
    hidden, coarse, fine = batch(cluster_map)
    step = torch.compile(lambda: refiner(hidden, coarse, fine, labels=fine, check_inputs=False).loss, fullgraph=True, backend="eager")
    assert torch.isfinite(step())


# ---------------------------------------------------------------------------------------------- HF plumbing


def test_save_and_load_give_identical_logits(refiner, cluster_map, tmp_path):
    from transformers import AutoConfig, AutoModel

    refiner.save_pretrained(tmp_path / "refiner")
    assert (tmp_path / "refiner" / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path / "refiner").model_type == "masc_refiner"
    hidden, coarse, fine = batch(cluster_map)
    for loaded in (MASCRefiner.from_pretrained(tmp_path / "refiner"), AutoModel.from_pretrained(tmp_path / "refiner")):
        assert type(loaded) is MASCRefiner and not loaded.training
        assert torch.equal(loaded.token_cluster, refiner.token_cluster)  # the map travels with the weights
        assert loaded.config.cluster_map_fingerprint == cluster_map.fingerprint
        assert torch.equal(loaded(hidden, coarse, fine).logits, refiner(hidden, coarse, fine).logits)
        loaded.set_cluster_map(cluster_map)  # the same map is accepted again


def test_the_paper_preset_has_about_25m_parameters():
    """MASC, Appendix C.2: one layer, 4 heads, width 512, ~25M parameters beside LlamaGen-L (N = 16384, k = 8192)."""
    config = MASCRefinerConfig.from_preset("LlamaGen-L", num_clusters=8192)
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (1, 4, 512)
    assert (config.backbone_hidden_size, config.num_tokens, config.num_clusters) == (1024, 16384, 8192)
    with torch.device("meta"):
        model = MASCRefiner(config)
    count = sum(p.numel() for p in model.parameters())
    print(f"paper preset: {count:,} parameters")
    assert 20e6 <= count <= 30e6


def test_a_config_sized_for_a_masc_backbone_pairs_with_it_only():
    from masc_hf.models import LlamaGenConfig

    backbone = LlamaGenConfig.from_preset("GPT-B", vocab_size=K, fine_vocab_size=N, cluster_map_fingerprint=random_map(0).fingerprint)
    config = MASCRefinerConfig.for_backbone(backbone, hidden_size=64)
    assert (config.num_tokens, config.num_clusters, config.backbone_hidden_size, config.block_size) == (N, K, 768, 256)
    config.check_backbone(backbone)
    with pytest.raises(ClusterMapMismatchError, match="cluster map"):
        config.check_backbone(LlamaGenConfig.from_dict({**backbone.to_dict(), "cluster_map_fingerprint": random_map(1).fingerprint}))
    with pytest.raises(ClusterMapMismatchError, match="num_tokens=48"):
        config.check_backbone(LlamaGenConfig.from_dict({**backbone.to_dict(), "fine_vocab_size": 64}))
    with pytest.raises(ModelConfigError, match="flat model"):
        MASCRefinerConfig.for_backbone(LlamaGenConfig.from_preset("GPT-B"))


# ---------------------------------------------------------------------------------------------- bad input


def test_a_map_of_another_size_or_fingerprint_is_refused(refiner):
    with pytest.raises(ClusterMapMismatchError, match="N=64"):
        MASCRefiner(tiny_config(), MASCClusterMap(np.arange(64) % K))
    with pytest.raises(ClusterMapMismatchError, match="trained on cluster map"):
        refiner.set_cluster_map(random_map(1))  # same N and k, another map


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h, c, f: (h, c + K, f), r"coarse_ids contain .* outside \[0, 7\)"),
        (lambda h, c, f: (h, c, f + N), r"fine_ids contain .* outside \[0, 48\)"),
        (lambda h, c, f: (h, (c + 1) % K, f), "not members of their coarse cluster"),
        (lambda h, c, f: (h[..., :8], c, f), "backbone_hidden_size"),
        (lambda h, c, f: (h, c[:, :-1], f), r"coarse_ids must be integer ids of shape \[B, L\]"),
        (lambda h, c, f: (h, c, f.float()), "fine_ids must be integer ids"),
    ],
)
def test_bad_ids_are_refused_with_the_fix(refiner, cluster_map, change, message):
    with pytest.raises(ModelInputError, match=message):
        refiner(*change(*batch(cluster_map)))


def test_labels_outside_their_cluster_are_a_data_error(refiner, cluster_map):
    hidden, coarse, fine = batch(cluster_map)
    labels = torch.where(coarse == cluster_map.mapping[0], -100, torch.zeros_like(fine))  # token 0 is not in the other clusters
    with pytest.raises(ModelInputError, match="labels are not members"):
        refiner(hidden, coarse, fine, labels=labels)


def test_a_refiner_without_a_map_says_so(cluster_map):
    with pytest.raises(ModelInputError, match="no cluster map"):
        MASCRefiner(tiny_config())(*batch(cluster_map))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_clusters": N + 1}, "num_clusters=49 exceeds num_tokens=48"),
        ({"hidden_size": 24, "num_attention_heads": 4}, "divisible by 4"),
        ({"block_size": 15}, "block_size=15"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0"),
    ],
)
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ModelConfigError, match=message):
        tiny_config(**fields)
    assert issubclass(ModelConfigError, MASCError)


# ---------------------------------------------------------------------------------------------- hierarchical decoding in generate


@pytest.fixture
def trained_looking_refiner(masc_model, tiny_cluster_map):
    from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

    torch.manual_seed(1)
    refiner = MASCRefiner(MASCRefinerConfig.for_backbone(masc_model, hidden_size=32, num_attention_heads=2), cluster_map=tiny_cluster_map)
    torch.nn.init.normal_(refiner.lm_head.weight, std=0.5)  # a head that prefers some members
    return refiner.eval()


def test_hierarchical_generate_refines_the_random_paths_cluster_ids(masc_model, tiny_cluster_map, trained_looking_refiner):
    """With per-image generators the cluster ids are those of random-member decoding (the first
    block_size uniforms); the refiner then picks a member of each."""
    seeds = (3, 4, 5)
    coarse = masc_model.generate([1, 2, 3], guidance_scale=3.0, generator=[torch.Generator().manual_seed(s) for s in seeds])
    fine = masc_model.generate([1, 2, 3], guidance_scale=3.0, generator=[torch.Generator().manual_seed(s) for s in seeds], refiner=trained_looking_refiner)
    assert fine.shape == coarse.shape and int(fine.max()) < tiny_cluster_map.num_tokens
    assert torch.equal(tiny_cluster_map.encode(fine), coarse)
    compiled = masc_model.generate(
        [1, 2, 3], guidance_scale=3.0, generator=[torch.Generator().manual_seed(s) for s in seeds], refiner=trained_looking_refiner, compile=True
    )
    assert torch.equal(compiled, fine)
    greedy = masc_model.generate([1, 2], top_k=1, temperature=0, refiner=trained_looking_refiner)
    assert torch.equal(greedy, masc_model.generate([1, 2], top_k=1, temperature=0, refiner=trained_looking_refiner))


def test_with_one_generator_eager_steps_draw_the_refiners_token_from_one_uniform_per_image(masc_model, tiny_cluster_map, trained_looking_refiner):
    """torch.multinomial would draw an exponential for each of the N codebook ids (serially on CPU) to
    pick among a cluster's few members: the eager step draws one uniform per image instead. The picks
    follow the refiner's probabilities inside the cluster, and the generator moves on by one double
    per image; seeded generations repeat."""
    from masc_hf.models.llamagen import LlamaGenForImageGeneration

    refiner, rows = trained_looking_refiner, 4000
    cluster = int(np.argmax(np.bincount(tiny_cluster_map.mapping)))  # the largest cluster
    hidden = torch.randn(1, refiner.config.backbone_hidden_size, generator=torch.Generator().manual_seed(0)).expand(rows, -1)
    coarse, start = torch.full((rows,), cluster), torch.full((rows,), refiner.config.start_token_id)
    position = torch.zeros(1, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        probs = refiner.refine_step(hidden[:1], coarse[:1], start[:1], refiner.new_cache(1), position).softmax(-1)[0].double()
        picks = LlamaGenForImageGeneration._refine(refiner, hidden, coarse, start, refiner.new_cache(rows), position, 1.0, generator, None)
    members = torch.as_tensor(tiny_cluster_map.members(cluster))
    assert len(members) >= 3 and bool(torch.isin(picks, members).all())
    frequency = torch.bincount(picks, minlength=tiny_cluster_map.num_tokens)[members].double() / rows
    p = probs[members]
    assert bool(((frequency - p).abs() <= 4 * (p * (1 - p) / rows).sqrt() + 1e-3).all()), (frequency, p)
    expected = torch.Generator().manual_seed(0)
    torch.rand(rows, generator=expected, dtype=torch.float64)
    assert torch.equal(generator.get_state(), expected.get_state())

    seeded = lambda seed: masc_model.generate([1, 2, 3], guidance_scale=3.0, generator=torch.Generator().manual_seed(seed), refiner=refiner)  # noqa: E731
    first = seeded(7)
    assert torch.equal(first, seeded(7)) and not torch.equal(first, seeded(8))


def test_hierarchical_generate_packs_the_refiners_head_only_when_its_steps_run_it(masc_model, tiny_cluster_map, trained_looking_refiner, monkeypatch):
    """On CPU the refiner's steps score the members' rows of its head (no full head: not packed); with
    so many images that the members outnumber N they run the whole head (packed). The ids are those
    of unpacked weights either way."""
    from masc_hf.models.ar import can_pack, cpu_linear
    from masc_hf.models.llamagen import modeling_llamagen

    if not can_pack(trained_looking_refiner):
        pytest.skip("no oneDNN packed weights on this machine")
    packed = []
    pack = cpu_linear.pack_weight
    monkeypatch.setattr(cpu_linear, "pack_weight", lambda weight: packed.append(weight.data_ptr()) or pack(weight))
    head, layer = trained_looking_refiner.lm_head.weight.data_ptr(), trained_looking_refiner.layers[0].mlp.down_proj.weight.data_ptr()
    largest = int(torch.bincount(torch.as_tensor(tiny_cluster_map.mapping)).max())
    for labels in ([1], list(range(tiny_cluster_map.num_tokens // largest + 1))):
        packed.clear()
        fine = masc_model.generate(labels, top_k=1, temperature=0, refiner=trained_looking_refiner)
        assert layer in packed and (head in packed) == (largest * len(labels) > tiny_cluster_map.num_tokens)
        with monkeypatch.context() as unpacked:
            unpacked.setattr(modeling_llamagen, "can_pack", lambda module: False)
            assert torch.equal(fine, masc_model.generate(labels, top_k=1, temperature=0, refiner=trained_looking_refiner))


def test_hierarchical_generate_refuses_a_refiner_that_does_not_belong(masc_model, tiny_config, trained_looking_refiner):
    from masc_hf.errors import ClusterMapMismatchError, ModelInputError
    from masc_hf.models import LlamaGenForImageGeneration
    from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

    with pytest.raises(ModelInputError, match="flat"):
        LlamaGenForImageGeneration(tiny_config).generate([1], refiner=trained_looking_refiner)
    other = MASCRefiner(MASCRefinerConfig.for_backbone(masc_model, hidden_size=32, num_attention_heads=2, cluster_map_fingerprint="0" * 64))
    with pytest.raises(ClusterMapMismatchError, match="cluster map"):
        masc_model.generate([1], refiner=other)
    with pytest.raises(ModelInputError, match="MASCRefiner"):
        masc_model.generate([1], refiner=object())
