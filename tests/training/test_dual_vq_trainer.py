"""IAR2's two-stage dual-codebook tokenizer training: what each stage trains (the stage-2 optimiser
cycle, the semantic codebook's gradient), exact resume, the resume guard, the perceptual and GAN
losses, evaluation, bad input. Tiny models on generated 8x8 images."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masc_hf.errors import CheckpointError
from masc_hf.training import dual_vq_trainer
from masc_hf.training.dual_vq_trainer import (
    DualVQTrainingConfig,
    DualVQTrainingError,
    build_dual_vqmodel,
    evaluate_dual_vq_tokenizer,
    load_stage1_tokenizer,
    train_dual_vq_tokenizer,
)
from masc_hf.training.vq_losses import (
    PatchDiscriminator,
    random_conv_perceptual_loss,
    vgg16_perceptual_loss,
)
from masc_hf.training.vq_trainer import to_vq_input
from masc_hf.vq.dual_codebook import DualCodebookVQModel

# 8x8 model input (a 2x2 grid of tokens), 4 semantic x 8 detail codes of dimension 4
TINY = DualVQTrainingConfig(
    image_size=8, block_out_channels=(8, 8, 8), latent_channels=8, norm_num_groups=4, num_semantic_embeddings=4,
    num_detail_embeddings=8, embed_dim=4, steps=6, batch_size=16, lr=3e-3, warmup_steps=1, reseed_every=3,
    checkpoint_every=2, seed=0,
)


def block_images(n, seed=0):
    """uint8 [n, 8, 8]: each 4x4 quadrant (one token) has one of four grey levels."""
    levels = np.array([0, 85, 170, 255], dtype=np.uint8)[np.random.default_rng(seed).integers(0, 4, size=(n, 2, 2))]
    return levels.repeat(4, axis=1).repeat(4, axis=2)


def weights(module):
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A semantic-stage run (60 steps) and its output directory."""
    out = tmp_path_factory.mktemp("dual") / "stage1"
    model, stats = train_dual_vq_tokenizer(block_images(128), TINY, output_dir=out, progress=False, steps=60)
    return out, model, stats


# ------------------------------------------------------------------------------------- stage 1


def test_semantic_stage_learns_and_writes_a_dual_tokenizer(stage1):
    out, model, stats = stage1
    perceptual = stats["perceptual_loss"]
    assert stats["stage"] == "semantic" and len(perceptual) == 60
    assert np.mean(perceptual[-5:]) < 0.7 * np.mean(perceptual[:5])
    assert "semantic_used_codes" in stats and "detail_used_codes" not in stats
    loaded = load_stage1_tokenizer(out)  # the run directory stands for its model/
    assert isinstance(loaded, DualCodebookVQModel) and loaded.codebook_sizes == (4, 8)
    images = to_vq_input(block_images(8, seed=1), image_size=8)
    for a, b in zip(loaded.encode_ids(images)[:1], model.encode_ids(images)[:1]):
        assert torch.equal(a, b)
    saved = json.loads((out / "training_stats.json").read_text())
    assert saved["perceptual_loss"] == perceptual and saved["config"]["stage"] == "semantic"


def test_semantic_stage_has_no_pixel_loss_and_leaves_the_detail_codebook_alone():
    """Without the perceptual term the decoder gets no gradient at all: nothing pixel-wise is trained."""
    config = TINY.replace(perceptual_weight=0.0, steps=4)
    initial = weights(build_dual_vqmodel(config))
    model, stats = train_dual_vq_tokenizer(block_images(64), config, output_dir=None, progress=False)
    trained = weights(model)
    decoder = [key for key in trained if key.startswith(("decoder.", "post_quant_conv."))]
    assert decoder and all(torch.equal(trained[key], initial[key]) for key in decoder)
    assert torch.equal(trained["quantize.detail_embedding.weight"], initial["quantize.detail_embedding.weight"])
    assert not torch.equal(trained["quantize.semantic_embedding.weight"], initial["quantize.semantic_embedding.weight"])
    assert not torch.equal(trained["encoder.conv_in.weight"], initial["encoder.conv_in.weight"])  # commitment
    # with the (documented, optional) semantic pixel term the decoder does learn
    model, _ = train_dual_vq_tokenizer(block_images(64), config.replace(semantic_pixel_weight=1.0), output_dir=None, progress=False)
    assert not torch.equal(weights(model)["decoder.conv_out.weight"], initial["decoder.conv_out.weight"])


# ------------------------------------------------------------------------------------- stage 2


def _record_iterations(monkeypatch):
    """Snapshots of the weights around each stage-2 iteration, and the semantic codebook's
    gradient at each semantic-optimiser step (with the batch it came from)."""
    changes, semantic_steps = [], []
    original = dual_vq_trainer._Run._detail_iteration

    def wrapped(self, images, step):
        before = weights(self.model)
        semantic_optimizer = self.optimizers["semantic"]
        original_step = semantic_optimizer.step

        def spy(*args, **kwargs):
            semantic_steps.append((step, self.semantic_weight.grad.clone(), images.clone(), before))
            return original_step(*args, **kwargs)

        semantic_optimizer.step = spy
        try:
            result = original(self, images, step)
        finally:
            semantic_optimizer.step = original_step
        after = weights(self.model)
        changes.append({key for key in after if not torch.equal(after[key], before[key])})
        return result

    monkeypatch.setattr(dual_vq_trainer._Run, "_detail_iteration", wrapped)
    return changes, semantic_steps


def test_detail_stage_cycle_two_full_iterations_then_one_that_also_steps_the_semantic_codebook(stage1, monkeypatch):
    out, stage1_model, _ = stage1
    changes, semantic_steps = _record_iterations(monkeypatch)
    # warm-up from 0 would freeze step 0; a clipping norm small enough to act
    config = TINY.replace(stage="detail", reseed_every=100, warmup_steps=0, max_grad_norm=1e-3)
    model, stats = train_dual_vq_tokenizer(block_images(128), config, output_dir=None, init=out, progress=False)
    semantic, detail = "quantize.semantic_embedding.weight", "quantize.detail_embedding.weight"
    assert len(changes) == 6
    for step, changed in enumerate(changes):
        assert detail in changed and "encoder.conv_in.weight" in changed and "decoder.conv_out.weight" in changed, step
        assert (semantic in changed) == (step % 3 == 2), step
    assert [step for step, *_ in semantic_steps] == [2, 5]
    assert [step for step, _ in stats["semantic_pixel_loss"]] == [2, 5]
    # the semantic codebook's gradient: the semantic-only codebook term's (clipped to max_grad_norm) plus
    # the full loss's, whose only path to the semantic rows is its codebook term (straight-through)
    for step, grad, images, before in semantic_steps:
        probe = DualCodebookVQModel.from_config(model.config)
        probe.load_state_dict(before)
        latents = probe.encode(images).latents
        weight = probe.quantize.semantic_embedding.weight
        (semantic_only,) = torch.autograd.grad(probe.quantize(latents, use_detail=False).codebook_loss, weight)
        (full,) = torch.autograd.grad(probe.quantize(latents).codebook_loss, weight)
        assert float(semantic_only.norm()) > 10 * config.max_grad_norm
        clipped = semantic_only * config.max_grad_norm / (float(semantic_only.norm()) + 1e-6)
        torch.testing.assert_close(grad, clipped + full, rtol=1e-5, atol=1e-7)


def test_detail_stage_starts_from_the_init_with_a_new_detail_codebook(stage1, monkeypatch):
    out, stage1_model, _ = stage1
    starts = []
    original = dual_vq_trainer._Run.train

    def spy(self, record, *, progress):
        starts.append(weights(self.model))
        return original(self, record, progress=progress)

    monkeypatch.setattr(dual_vq_trainer._Run, "train", spy)
    model, stats = train_dual_vq_tokenizer(block_images(64), "detail", output_dir=None, init=out, progress=False, num_detail_embeddings=16, steps=2)
    start, init = starts[0], weights(stage1_model)
    for key, value in init.items():
        if key != "quantize.detail_embedding.weight":
            assert torch.equal(start[key], value), key
    assert start["quantize.detail_embedding.weight"].shape == (16, 4)
    torch.testing.assert_close(start["quantize.detail_embedding.weight"].norm(dim=1), torch.ones(16))  # IAR2's init: unit rows
    # the architecture comes from the init, whatever the preset says
    assert stats["config"]["image_size"] == 8 and stats["config"]["num_semantic_embeddings"] == 4
    assert model.codebook_sizes == (4, 16) and stats["detail_used_codes"] >= 1


@pytest.mark.parametrize("stage", ["semantic", "detail"])
def test_unused_codes_are_reseeded_from_the_batch(stage, stage1, monkeypatch):
    """Stage 1 re-seeds unused semantic rows with unit latents; stage 2 unused detail rows with raw
    residuals ``z_hat - e_hat_s`` (unit latent minus its unit semantic row)."""
    out, _, _ = stage1
    calls = []
    original = dual_vq_trainer._seed_codes

    def spy(weight, vectors, codes, generator, *, normalize=True):
        calls.append((weight, vectors.clone(), codes.clone(), normalize))
        return original(weight, vectors, codes, generator, normalize=normalize)

    monkeypatch.setattr(dual_vq_trainer, "_seed_codes", spy)
    config = TINY.replace(stage=stage, num_semantic_embeddings=16, num_detail_embeddings=64, steps=3, reseed_until=1.0, warmup_steps=0)
    model, stats = train_dual_vq_tokenizer(block_images(64), config, output_dir=None, init=out if stage == "detail" else None, progress=False)
    assert len(calls) == 1 and stats["reseeded_codes"] == calls[0][2].numel() > 0
    weight, vectors, codes, normalize = calls[0]
    quantizer = model.quantize
    learnt = quantizer.semantic_embedding.weight if stage == "semantic" else quantizer.detail_embedding.weight
    assert weight is learnt and normalize == (stage == "semantic")
    if stage == "semantic":
        torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors)))
    else:  # |r + e_s| = 1 for the semantic row e_s the latent chose
        semantic_rows = quantizer.semantic_rows().detach()
        gaps = ((vectors[:, None, :] + semantic_rows[None]).norm(dim=2) - 1).abs().min(dim=1).values
        assert float(gaps.max()) < 1e-5 and float(vectors.norm(dim=1).max()) < 1.5
    # the re-seeding came last: each re-seeded row is one of the batch's vectors, jittered
    rows = learnt.detach()[codes]
    targets = F.normalize(vectors, dim=1) if normalize else vectors
    assert float(torch.cdist(rows, targets).min(dim=1).values.max()) < 1e-2


# ------------------------------------------------------------------------------------- resume


class Interrupted(Exception):
    pass


def _interrupt_after_checkpoint(monkeypatch, at_step):
    original = dual_vq_trainer._Run.save_checkpoint

    def save_then_stop(self, record, seconds):
        original(self, record, seconds)
        if self.step == at_step:
            raise Interrupted

    monkeypatch.setattr(dual_vq_trainer._Run, "save_checkpoint", save_then_stop)


@pytest.mark.parametrize("stage", ["semantic", "detail"])
def test_a_resumed_run_ends_with_the_same_weights(stage, stage1, tmp_path, monkeypatch):
    """Interrupted after the step-4 checkpoint (mid-cycle in stage 2, between dead-code checks),
    then rerun: the same weights, discriminator and history as an uninterrupted run."""
    out1, _, _ = stage1
    config = TINY.replace(  # enough codes that some go unused and are re-seeded, on both sides of the interruption
        stage=stage, steps=7, num_semantic_embeddings=16, num_detail_embeddings=64, reseed_until=1.0,
        gan_weight=0.5 if stage == "semantic" else 0.0, gan_start=1,
    )
    init = out1 if stage == "detail" else None
    images = block_images(40)  # 40 images, batches of 16: epochs end mid-run
    whole, whole_stats = train_dual_vq_tokenizer(images, config, output_dir=tmp_path / "whole", init=init, progress=False)
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, at_step=4)
        with pytest.raises(Interrupted):
            train_dual_vq_tokenizer(images, config, output_dir=tmp_path / "split", init=init, progress=False)
    assert json.loads((tmp_path / "split" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    assert not (tmp_path / "split" / "model").exists()
    resumed, resumed_stats = train_dual_vq_tokenizer(images, config, output_dir=tmp_path / "split", init=init, progress=False)
    for key, value in weights(whole).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    for key in ("loss", "pixel_loss", "perceptual_loss", "quantizer_loss"):
        assert resumed_stats[key] == whole_stats[key], key
    assert resumed_stats["reseeded_codes"] == whole_stats["reseeded_codes"] > 0
    if stage == "semantic":
        from safetensors.torch import load_file

        assert len(whole_stats["discriminator_loss"]) == 7 and whole_stats["discriminator_loss"][0] == 0.0
        a, b = load_file(str(tmp_path / "whole" / "discriminator.safetensors")), load_file(str(tmp_path / "split" / "discriminator.safetensors"))
        assert all(torch.equal(a[key], b[key]) for key in a)
    # a rerun of a finished run changes nothing
    again, _ = train_dual_vq_tokenizer(images, config, output_dir=tmp_path / "split", init=init, progress=False)
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in weights(whole).items())


def test_a_resume_with_other_settings_is_refused(tmp_path):
    images = block_images(32)
    config = TINY.replace(steps=2)
    train_dual_vq_tokenizer(images, config, output_dir=tmp_path, progress=False)
    with pytest.raises(DualVQTrainingError, match=r"steps 2 -> 3.*new output directory"):
        train_dual_vq_tokenizer(images, config, output_dir=tmp_path, progress=False, steps=3)
    with pytest.raises(DualVQTrainingError, match="the perceptual loss"):
        train_dual_vq_tokenizer(images, config, output_dir=tmp_path, progress=False, perceptual_loss=random_conv_perceptual_loss(seed=1))
    with pytest.raises(DualVQTrainingError, match="the training images"):
        train_dual_vq_tokenizer(block_images(32, seed=1), config, output_dir=tmp_path, progress=False)
    train_dual_vq_tokenizer(images, config, output_dir=tmp_path, progress=False, checkpoint_every=5)  # bookkeeping may change


# ------------------------------------------------------------------------------------- losses, evaluation


def test_random_perceptual_substitute_is_fixed_and_sees_contrast():
    x = to_vq_input(block_images(4), image_size=8)
    first, second = random_conv_perceptual_loss(seed=0), random_conv_perceptual_loss(seed=0)
    assert first.description == second.description
    assert float(first(x, x)) == 0.0
    assert float(first(x, 0.5 * x)) == float(second(x, 0.5 * x)) > 0.01  # biases: not blind to a contrast change
    recon = x.clone().requires_grad_(True)
    first(x, recon + 0.1).backward()
    assert recon.grad.abs().sum() > 0 and all(p.grad is None for p in first.parameters())


def test_vgg16_perceptual_loss_from_a_local_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])
    save_file({f"features.{key}": value for key, value in features.state_dict().items()}, str(tmp_path / "vgg16.safetensors"))
    loss = vgg16_perceptual_loss(tmp_path / "vgg16.safetensors")
    x = to_vq_input(block_images(2), image_size=32)
    assert loss.description.startswith("vgg16:") and float(loss(x, x)) == 0.0 and float(loss(x, x.flip(-1))) > 0
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="not a torchvision VGG16 state dict"):
        vgg16_perceptual_loss(tmp_path / "partial.safetensors")


def test_patch_discriminator_scores_patches():
    logits = PatchDiscriminator(3, 8, seed=0)(torch.zeros(2, 3, 8, 8))
    assert logits.shape == (2, 1, 2, 2)


def test_evaluation_matches_a_direct_computation(stage1):
    _, model, _ = stage1
    images = block_images(12, seed=5)
    result = evaluate_dual_vq_tokenizer(model, images, batch_size=5)
    inputs = to_vq_input(images, image_size=8)
    semantic_ids, detail_ids = model.encode_ids(inputs)
    for prefix, recon in (("", model.decode_ids(semantic_ids, detail_ids)), ("semantic_", model.decode_ids(semantic_ids, None))):
        mse = ((recon.clamp(-1, 1) - inputs) / 2).pow(2).mean(dim=(1, 2, 3)).double()
        assert result[f"{prefix}mse"] == pytest.approx(float(mse.mean()), rel=1e-5)
        assert result[f"{prefix}psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert result["semantic_used_codes"] == len(torch.unique(semantic_ids))
    assert result["detail_used_codes"] == len(torch.unique(detail_ids))


# ------------------------------------------------------------------------------------- bad input


def test_bad_stage_and_inits_are_refused(stage1, tmp_path, tiny_vqmodel):
    out, _, _ = stage1
    images = block_images(8)
    with pytest.raises(DualVQTrainingError, match=r"stage must be one of \['semantic', 'detail'\], got 'both'"):
        train_dual_vq_tokenizer(images, TINY, output_dir=None, stage="both")
    with pytest.raises(DualVQTrainingError, match="continues a semantic-stage tokenizer: pass init"):
        train_dual_vq_tokenizer(images, TINY.replace(stage="detail"), output_dir=None)
    with pytest.raises(DualVQTrainingError, match="init is for the detail stage"):
        train_dual_vq_tokenizer(images, TINY, output_dir=None, init=out)
    tiny_vqmodel().save_pretrained(tmp_path / "plain")
    with pytest.raises(DualVQTrainingError, match="plain diffusers VQModel"):
        train_dual_vq_tokenizer(images, TINY.replace(stage="detail"), output_dir=None, init=tmp_path / "plain")
    with pytest.raises(DualVQTrainingError, match="holds no tokenizer"):
        train_dual_vq_tokenizer(images, TINY.replace(stage="detail"), output_dir=None, init=tmp_path)


def test_bad_settings_and_output_dirs_are_refused(tmp_path):
    images = block_images(8)
    with pytest.raises(DualVQTrainingError, match="gan_weight must be a number >= 0"):
        train_dual_vq_tokenizer(images, TINY, output_dir=None, gan_weight=-1.0)
    with pytest.raises(DualVQTrainingError, match="no_such_setting"):
        train_dual_vq_tokenizer(images, TINY, output_dir=None, no_such_setting=1)
    with pytest.raises(DualVQTrainingError, match="unknown dual VQ training preset 'quickstart'"):
        train_dual_vq_tokenizer(images, "quickstart", output_dir=None)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DualVQTrainingError, match=r"holds files that a tokenizer run does not write \(notes.txt\)"):
        train_dual_vq_tokenizer(images, TINY, output_dir=tmp_path)
    with pytest.raises(DualVQTrainingError, match="is a file"):
        train_dual_vq_tokenizer(images, TINY, output_dir=tmp_path / "notes.txt")
    with pytest.raises(DualVQTrainingError, match="must be a PerceptualLoss"):
        train_dual_vq_tokenizer(images, TINY, output_dir=None, perceptual_loss=torch.nn.MSELoss())


def test_a_damaged_checkpoint_is_reported_with_the_way_out(tmp_path):
    images = block_images(16)
    train_dual_vq_tokenizer(images, TINY.replace(steps=2), output_dir=tmp_path, progress=False)
    (tmp_path / "checkpoint" / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DualVQTrainingError, match="damaged.*delete that checkpoint directory"):
        train_dual_vq_tokenizer(images, TINY.replace(steps=2), output_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------------- the recipe


@pytest.fixture
def train_vq(capsys):
    """``train_vq(argv)``: recipes/train_vq.py in this process -> (exit code, stdout, stderr)."""
    import importlib.util
    from pathlib import Path

    from masc_hf.cli import run_reporting_user_errors

    path = Path(__file__).resolve().parents[2] / "recipes" / "train_vq.py"
    spec = importlib.util.spec_from_file_location("train_vq_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    def run(argv):
        try:
            code = run_reporting_user_errors("train_vq.py", recipe.main, [str(a) for a in argv])
        except SystemExit as exit:  # argparse
            code = exit.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_recipe_trains_both_stages_and_refuses_a_changed_rerun(train_vq, tmp_path):
    np.save(tmp_path / "images.npy", block_images(24))
    common = ["--data", tmp_path / "images.npy", "--steps", 2, "--batch-size", 8, "--no-progress", "--checkpoint-every", 1]
    code, out, err = train_vq(["--stage", "semantic", "--out", tmp_path / "s1", "--semantic-codes", 4, *common])
    assert code == 0, err
    assert "tokenizer in" in out and "random-conv" in out
    code, out, err = train_vq(["--stage", "detail", "--init", tmp_path / "s1", "--out", tmp_path / "s2", "--detail-codes", 8, *common])
    assert code == 0, err
    model = DualCodebookVQModel.from_pretrained(tmp_path / "s2" / "model")
    assert model.codebook_sizes == (4, 8) and model.config.sample_size == 32
    code, _, err = train_vq(["--stage", "detail", "--init", tmp_path / "s1", "--out", tmp_path / "s2", "--detail-codes", 8, *common[:-2], "--steps", 3])
    assert code == 2 and err.count("\n") == 1 and "cannot resume" in err and "steps 2 -> 3" in err


def test_recipe_reports_bad_input_in_one_line(train_vq, tmp_path, tiny_vqmodel):
    np.save(tmp_path / "images.npy", block_images(8))
    data = ["--data", tmp_path / "images.npy", "--no-progress"]
    tiny_vqmodel().save_pretrained(tmp_path / "plain")
    cases = [
        (["--stage", "both", "--out", tmp_path / "x"], "invalid choice: 'both'"),
        (["--stage", "detail", "--out", tmp_path / "x", *data], "pass --init DIR"),
        (["--stage", "semantic", "--init", tmp_path / "plain", "--out", tmp_path / "x", *data], "--init is for --stage detail"),
        (["--stage", "detail", "--init", tmp_path / "plain", "--out", tmp_path / "x", *data], "plain diffusers VQModel"),
        (["--stage", "semantic", "--out", tmp_path / "x", "--data", tmp_path / "images.txt"], "pass 'fashion-mnist' or a .npy file"),
        (["--stage", "semantic", "--out", tmp_path / "x", *data, "--gan-weight", "-1"], "gan_weight must be a number >= 0"),
    ]
    for argv, message in cases:
        code, _, err = train_vq(argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
