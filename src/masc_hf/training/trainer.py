"""The LlamaGen training loop (flat or on a cluster map), driven by ``recipes/train.py`` through accelerate.

One loop serves a 2-core CPU quickstart and a multi-node H100 run: accelerate handles devices,
DDP/FSDP, mixed precision and gradient accumulation; this module handles what LlamaGen and MASC
need on top: the paper's optimiser and schedule (Table 4), coarse targets from a cluster map,
prediction entropy (Eq. 6), atomic checkpoints with exact resume, an optional EMA copy, and the
final ``save_pretrained`` / ``MASCPipeline`` directories.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .._io import staged_dir, write_text_atomic
from ..errors import MASCError

logger = logging.getLogger(__name__)

__all__ = ["TrainingArguments", "TrainingError", "latest_checkpoint", "prediction_entropy", "train"]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"
EVAL_HISTORY_NAME = "eval_history.json"


class TrainingError(MASCError):
    """Training arguments that cannot work together, or a checkpoint that cannot be resumed."""


# Table 4 of the MASC paper (LlamaGen's own recipe): peak and final learning rate per model size.
PAPER_LR = {"GPT-B": (1e-4, 1e-5), "GPT-L": (1e-4, 1e-5), "GPT-XL": (2e-4, 2e-5)}


@dataclass
class TrainingArguments:
    """Everything a training run needs; defaults are the paper's (Table 4) where it has one.

    Model (one of): ``preset`` (e.g. ``"GPT-B-256"``; vocabulary, classes and block size follow the
    data and the cluster map), ``model_config`` (a dict or JSON path of ``LlamaGenConfig`` fields),
    ``init_from`` (a saved model directory, e.g. ``masc-hf convert-llamagen --cluster-map`` output).
    """

    codes_dir: str
    output_dir: str
    preset: str | None = "GPT-B-256"
    model_config: str | None = None  # JSON path of LlamaGenConfig fields (a dict also works from Python)
    init_from: str | None = None
    cluster_map: str | None = None
    vq: str | None = None  # VQModel directory: also write a MASCPipeline at the end
    epochs: int = 300
    max_steps: int | None = None
    global_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None  # None: the paper's for the preset (1e-4; XL 2e-4)
    min_learning_rate: float | None = None  # None: a tenth of the peak (the paper's 1e-5 / 2e-5)
    warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"  # "no" | "bf16" | "fp16"
    class_dropout_prob: float = 0.1
    ema_decay: float | None = None  # e.g. 0.9999; None: no EMA copy
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    resume: str | None = None  # None | "latest" | a checkpoint directory
    log_every: int = 50
    eval_every: int | None = None  # steps between calls of train(eval_fn=...); None: only at the end
    seed: int = 0
    num_workers: int = 0
    gradient_checkpointing: bool = False
    log_with: str | None = "auto"  # accelerate tracker; "auto": tensorboard when installed
    progress: bool = True


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of ``softmax(logits)`` at every position: ``[..., V]`` -> ``[...]``
    (the paper's Eq. 6 before averaging)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2)


def prediction_entropy(logits: torch.Tensor) -> tuple[float, float]:
    """Mean Shannon entropy in bits of ``softmax(logits)`` over all positions (the paper's Eq. 6),
    and the same divided by ``log2(V)`` (normalised entropy). ``logits``: ``[..., V]``."""
    value = float(entropy_bits(logits).mean())
    return value, value / math.log2(logits.shape[-1])


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir`` (``None`` if none)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / STATE_NAME).is_file()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


# ---------------------------------------------------------------------------------------- setup
def _build_model(args: TrainingArguments, manifest, cluster_map):
    from ..models import LlamaGenConfig, LlamaGenForImageGeneration

    num_tokens = manifest.num_tokens
    num_classes = len(manifest.class_names) if manifest.class_names else None
    if args.init_from:
        model = LlamaGenForImageGeneration.from_pretrained(args.init_from)
        config = model.config
    else:
        data_fields: dict[str, Any] = {"block_size": manifest.seq_len, "class_dropout_prob": args.class_dropout_prob}
        if num_classes:
            data_fields["num_classes"] = num_classes
        if cluster_map is not None:
            data_fields.update(vocab_size=cluster_map.num_clusters, fine_vocab_size=num_tokens, cluster_map_fingerprint=cluster_map.fingerprint)
        else:
            data_fields["vocab_size"] = num_tokens
        if args.model_config is not None:
            base = args.model_config
            if not isinstance(base, dict):
                base = json.loads(Path(base).read_text())
            config = LlamaGenConfig(**{**base, **data_fields})
        elif args.preset:
            config = LlamaGenConfig.from_preset(args.preset, **data_fields)
        else:
            raise TrainingError("no model given: pass a preset (e.g. GPT-B-256), a model config, or init_from")
        model = LlamaGenForImageGeneration(config)
    # The model must speak the data's language.
    expected_vocab = cluster_map.num_clusters if cluster_map is not None else num_tokens
    if config.vocab_size != expected_vocab:
        raise TrainingError(
            f"the model's vocab_size is {config.vocab_size} but the training ids span {expected_vocab} "
            f"({'clusters of the map' if cluster_map is not None else 'codebook tokens'}); "
            "pass the cluster map the model was built for, or a matching model"
        )
    if cluster_map is not None and config.cluster_map_fingerprint not in (None, cluster_map.fingerprint):
        raise TrainingError("init_from was built for another cluster map (fingerprints differ); pass that map")
    if config.block_size != manifest.seq_len:
        raise TrainingError(f"the model's block_size {config.block_size} differs from the codes' length {manifest.seq_len}")
    if num_classes and config.num_classes != num_classes:
        raise TrainingError(f"the model has {config.num_classes} classes but the data has {num_classes}")
    if manifest.class_names and len(manifest.class_names) == config.num_classes:
        config.id2label = dict(enumerate(manifest.class_names))
        config.label2id = {name: i for i, name in enumerate(manifest.class_names)}
    return model


def _param_groups(model, weight_decay: float):
    """LlamaGen's grouping: weight decay on matrices (dim >= 2), none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _learning_rates(args: TrainingArguments) -> tuple[float, float]:
    family = re.sub(r"-(256|384)$", "", args.preset or "")  # "GPT-XL-384" -> "GPT-XL"
    peak, final = PAPER_LR.get(family, (1e-4, 1e-5))
    peak = args.learning_rate if args.learning_rate is not None else peak
    final = args.min_learning_rate if args.min_learning_rate is not None else (final if args.learning_rate is None else peak / 10)
    return peak, final


class _EMA:
    """An exponential moving average of the trainable weights (float32, on the model's device)."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.shadow.items()}, str(path))

    def load(self, path: Path, device) -> None:
        from safetensors.torch import load_file

        loaded = load_file(str(path), device=str(device))
        if set(loaded) != set(self.shadow):
            raise TrainingError(f"{path} does not hold this model's EMA weights")
        self.shadow = loaded

    def copy_to(self, model) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.shadow:
                    p.copy_(self.shadow[name].to(p.dtype))


# ---------------------------------------------------------------------------------------- loop
def train(args: TrainingArguments, eval_fn: Callable[[int, Any], dict[str, float]] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (final step, loss, paths).

    ``eval_fn(step, model)``, when given, runs on the main process every ``args.eval_every`` steps
    and at the last step with the unwrapped model in eval mode (training mode is restored after);
    its metrics go to ``output_dir/eval_history.json`` (``[{"step": ..., **metrics}]``, rewritten
    atomically, kept across resumes) and to the trackers. The evaluation logs of two runs give the
    training acceleration (:func:`masc_hf.evaluation.training_acceleration`).

    Checkpoints ``output_dir/checkpoint-<step>`` hold accelerate's state (model, optimiser,
    scheduler, RNG states; all loaded without unpickling objects), ``ema.safetensors`` when EMA is
    on, and ``trainer_state.json`` (step, epoch, batches consumed, last loss). Each is written to a
    temporary directory and renamed when complete, so a run killed at any moment resumes from the
    last complete one, and ends at the same step with the same loss as an uninterrupted run.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from ..data.code_shards import CodeShardDataset, CodeShardManifest

    output_dir = Path(args.output_dir)
    for name in ("log_with", "preset", "resume", "cluster_map", "vq", "init_from", "model_config"):
        if getattr(args, name) in ("", "none", "None"):  # command-line spelling of "no value"
            setattr(args, name, None)
    log_with = args.log_with
    if log_with == "auto":
        import importlib.util

        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") else None
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision if torch.cuda.is_available() or args.mixed_precision != "fp16" else "no",
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)

    # ---- data and model
    cluster_map = None
    if args.cluster_map:
        from ..clustering import MASCClusterMap

        cluster_map = MASCClusterMap.from_pretrained(args.cluster_map)
    manifest = CodeShardManifest.load(args.codes_dir)
    dataset = CodeShardDataset(args.codes_dir, cluster_map=cluster_map, seed=args.seed)
    world = accelerator.num_processes
    per_device, rest = divmod(args.global_batch_size, world * args.gradient_accumulation_steps)
    if per_device < 1 or rest:
        raise TrainingError(
            f"global_batch_size={args.global_batch_size} is not divisible by processes ({world}) x gradient_accumulation_steps "
            f"({args.gradient_accumulation_steps}); choose a multiple of {world * args.gradient_accumulation_steps}"
        )
    if len(dataset) < args.global_batch_size:
        raise TrainingError(f"the codes hold {len(dataset)} examples, fewer than one global batch ({args.global_batch_size})")
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=per_device, shuffle=True, drop_last=True, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model = _build_model(args, manifest, cluster_map)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    peak_lr, final_lr = _learning_rates(args)
    optimizer = torch.optim.AdamW(
        _param_groups(model, args.weight_decay), lr=peak_lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps,
        fused=torch.cuda.is_available() or None,
    )
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    steps_per_epoch = len(dataloader) // args.gradient_accumulation_steps
    total_steps = args.max_steps if args.max_steps is not None else steps_per_epoch * args.epochs
    if total_steps < 1 or steps_per_epoch < 1:
        raise TrainingError(f"nothing to train: {steps_per_epoch} steps per epoch, {total_steps} steps in total")
    # accelerate steps a prepared scheduler once per process per optimiser step
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=args.warmup_steps * world, num_training_steps=total_steps * world, min_lr=final_lr
    )
    scheduler = accelerator.prepare(scheduler)
    ema = _EMA(accelerator.unwrap_model(model), args.ema_decay) if args.ema_decay else None

    # ---- resume
    global_step, epoch, consumed = 0, 0, 0
    resume_dir = latest_checkpoint(output_dir) if args.resume == "latest" else (Path(args.resume) if args.resume else None)
    if args.resume and args.resume != "latest" and not (resume_dir / STATE_NAME).is_file():
        raise TrainingError(f"{resume_dir} is not a complete checkpoint (no {STATE_NAME}); use --resume latest or another path")
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_NAME).read_text())
        accelerator.load_state(str(resume_dir))
        global_step, epoch, consumed = state["global_step"], state["epoch"], state["batches_consumed"]
        if ema is not None and (resume_dir / EMA_NAME).is_file():
            ema.load(resume_dir / EMA_NAME, accelerator.device)
        logger.info("resumed from %s at step %d (epoch %d, %d batches into it)", resume_dir, global_step, epoch, consumed)
    elif args.resume == "latest":
        logger.info("no checkpoint under %s: starting from scratch", output_dir)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_args.json").write_text(json.dumps(asdict(args), indent=2, default=str) + "\n")
    if log_with:
        accelerator.init_trackers("masc-hf", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})

    progress = tqdm(
        total=total_steps, initial=global_step, desc="train", unit="step", disable=not (args.progress and accelerator.is_local_main_process)
    )
    last_loss = float("nan")
    tokens_seen, window_start = 0, time.perf_counter()
    history: list[dict[str, float]] = []
    eval_path = output_dir / EVAL_HISTORY_NAME
    eval_history = [r for r in json.loads(eval_path.read_text()) if r["step"] <= global_step] if resume_dir and eval_path.is_file() else []
    model.train()
    while global_step < total_steps:
        dataset.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, consumed) if consumed else dataloader
        for codes, labels in batches:
            with accelerator.accumulate(model):
                out = model(input_ids=codes[:, :-1], class_labels=labels, labels=codes)
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients and args.max_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            consumed += 1
            tokens_seen += codes.numel() * world
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            last_loss = float(accelerator.reduce(out.loss.detach(), reduction="mean"))
            progress.update(1)
            if global_step % args.log_every == 0 or global_step == total_steps:
                entropy, entropy_norm = prediction_entropy(out.logits.detach())
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {
                    "step": global_step,
                    "epoch": epoch,
                    "loss": last_loss,
                    "entropy": entropy,
                    "entropy_normalized": entropy_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "tokens_per_s": tokens_seen / elapsed,
                }
                history.append(record)
                progress.set_postfix(loss=f"{last_loss:.4f}", H=f"{entropy_norm:.3f}", lr=f"{record['lr']:.2e}")
                if log_with:
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=global_step)
                tokens_seen, window_start = 0, time.perf_counter()
            if eval_fn is not None and (global_step == total_steps or (args.eval_every and global_step % args.eval_every == 0)):
                record = {"step": global_step, **_run_eval(eval_fn, global_step, accelerator, model)} if accelerator.is_main_process else {}
                if accelerator.is_main_process:
                    eval_history.append(record)
                    write_text_atomic(eval_path, json.dumps(eval_history, indent=1) + "\n")
                    if log_with:
                        accelerator.log({f"eval/{k}": v for k, v in record.items() if k != "step"}, step=global_step)
                accelerator.wait_for_everyone()
            if global_step % args.checkpoint_every == 0 or global_step == total_steps:
                _save_checkpoint(accelerator, output_dir, ema, global_step, epoch, consumed, last_loss, args.keep_checkpoints)
            if global_step >= total_steps:
                break
        else:
            epoch, consumed = epoch + 1, 0
            continue
        if consumed >= len(dataloader):
            epoch, consumed = epoch + 1, 0
    progress.close()

    # ---- final artifacts
    accelerator.wait_for_everyone()
    summary: dict[str, Any] = {"global_step": global_step, "epoch": epoch, "loss": last_loss, "history": history, "eval_history": eval_history}
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final)
        model_dir = output_dir / "model"
        with staged_dir(model_dir) as tmp:
            final.save_pretrained(tmp)
        summary["model_dir"] = str(model_dir)
        (output_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        if args.vq:
            summary["pipeline_dir"] = str(write_pipeline(final, args.vq, cluster_map, output_dir / "pipeline", manifest.class_names))
    accelerator.end_training()
    return summary


def _run_eval(eval_fn, step: int, accelerator, model) -> dict[str, float]:
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    try:
        with torch.no_grad():
            metrics = eval_fn(step, unwrapped)
    finally:
        unwrapped.train()
    logger.info("step %d eval: %s", step, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return dict(metrics)


def write_pipeline(model, vq_dir: str | os.PathLike, cluster_map, out_dir: Path, class_names: list[str] | None = None) -> Path:
    """A ``MASCPipeline`` directory of a trained model, its VQ tokenizer and its map."""
    from diffusers import VQModel

    from ..pipelines import MASCPipeline

    vqvae = VQModel.from_pretrained(vq_dir)
    id2label = dict(enumerate(class_names)) if class_names and len(class_names) == model.config.num_classes else None
    pipe = MASCPipeline(transformer=model.eval(), vqvae=vqvae, cluster_map=cluster_map, id2label=id2label)
    with staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return out_dir


def _save_checkpoint(accelerator, output_dir: Path, ema, step: int, epoch: int, consumed: int, loss: float, keep: int) -> None:
    target = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if ema is not None:
            ema.save(tmp / EMA_NAME)
        state = {"global_step": step, "epoch": epoch, "batches_consumed": consumed, "loss": loss, "time": time.time()}
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        done = sorted(
            (p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_NAME).is_file()),
            key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
        )
        for old in done[: max(len(done) - keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
