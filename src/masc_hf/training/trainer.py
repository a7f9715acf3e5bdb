"""The AR training loop (flat, or on a cluster map), driven by ``recipes/train.py`` through accelerate.

``train(model, train_dataset, args)`` takes objects and returns a :class:`TrainOutput`; the recipe
turns paths and flags into those objects. One loop serves a 2-core CPU quickstart and a multi-node
H100 run: accelerate handles devices, DDP/FSDP, mixed precision and gradient accumulation; this
module adds the paper's optimiser and schedule (Table 4), prediction entropy (Eq. 6) in the logs,
atomic checkpoints with exact resume, an optional EMA copy, and the final model and pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .._io import replace_dir, staged_dir, write_text_atomic
from ..errors import MASCError
from ..models.ar import prediction_entropy

logger = logging.getLogger(__name__)

__all__ = ["ARTrainingArguments", "TrainOutput", "TrainingError", "latest_checkpoint", "prediction_entropy", "train"]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"
EVAL_HISTORY_NAME = "eval_history.json"


class TrainingError(MASCError):
    """Training arguments that cannot work together, or a checkpoint that cannot be resumed."""


# Table 4 of the MASC paper (LlamaGen's own recipe): peak and final learning rate per model size.
PAPER_LR = {"GPT-B": (1e-4, 1e-5), "GPT-L": (1e-4, 1e-5), "GPT-XL": (2e-4, 2e-5)}


@dataclass
class ARTrainingArguments:
    """The hyper-parameters of a training run; defaults are the paper's (Table 4) where it has one.

    The model, the data, the cluster map and the VQ tokenizer are objects given to :func:`train`
    (``recipes/train.py`` builds them from paths). Named apart from ``transformers.TrainingArguments``,
    which this is not.
    """

    output_dir: str
    epochs: int = 300
    max_steps: int | None = None
    global_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None  # None: the paper's for the model's size (1e-4; GPT-XL 2e-4)
    min_learning_rate: float | None = None  # None: a tenth of the peak (the paper's 1e-5 / 2e-5)
    warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"  # "no" | "bf16" | "fp16"
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

    def __post_init__(self) -> None:
        for name in ("log_with", "resume"):
            if getattr(self, name) in ("", "none", "None"):  # command-line spelling of "no value"
                setattr(self, name, None)


@dataclass
class TrainOutput:
    """What :func:`train` returns (fields also readable as ``output["global_step"]``).

    ``model`` is the trained model (unwrapped, eval mode, with the EMA weights when EMA is on) on
    the main process, ``None`` on the others; ``model_dir`` its ``save_pretrained`` directory and
    ``pipeline_dir`` the ``MASCPipeline`` directory (when a ``vqvae`` was given).
    """

    global_step: int
    epoch: int
    loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    model_dir: str | None = None
    pipeline_dir: str | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir`` (``None`` if none)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / STATE_NAME).is_file()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


def paper_learning_rates(model_config, args: ARTrainingArguments) -> tuple[float, float]:
    """(peak, final) learning rate: the arguments' when given, else Table 4's for the model's size."""
    peak, final = PAPER_LR.get(getattr(model_config, "architecture_name", None), (1e-4, 1e-5))
    if args.learning_rate is not None:
        peak, final = args.learning_rate, args.learning_rate / 10
    return peak, args.min_learning_rate if args.min_learning_rate is not None else final


# ---------------------------------------------------------------------------------------- checks
def check_model_fits_data(model, train_dataset, cluster_map=None) -> None:
    """The model speaks the data's language: vocabulary, sequence length, classes and cluster map."""
    from ..pipelines.pairing import check_map_fits_model

    config = model.config
    expected_vocab = getattr(train_dataset, "vocab_size", None)
    if expected_vocab is not None and config.vocab_size != expected_vocab:
        raise TrainingError(
            f"the model's vocab_size is {config.vocab_size} but the training ids span {expected_vocab} "
            f"({'clusters of the map' if cluster_map is not None else 'codebook tokens'}); "
            "pass the cluster map the model was built for, or a matching model"
        )
    if cluster_map is not None and config.cluster_map_fingerprint not in (None, cluster_map.fingerprint):
        raise TrainingError("the model was built for another cluster map (fingerprints differ); pass that map")
    if cluster_map is not None and config.is_masc:
        check_map_fits_model(cluster_map, model)
    seq_len = getattr(train_dataset, "seq_len", None)
    if seq_len is not None and config.block_size != seq_len:
        raise TrainingError(f"the model's block_size {config.block_size} differs from the codes' length {seq_len}")
    class_names = getattr(train_dataset, "class_names", None)
    if class_names and config.num_classes != len(class_names):
        raise TrainingError(f"the model has {config.num_classes} classes but the data has {len(class_names)}")


# ---------------------------------------------------------------------------------------- state
@dataclass
class _Progress:
    """Where the loop is: restored from a checkpoint's ``trainer_state.json`` on resume."""

    global_step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches of the current epoch already used
    loss: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)


class _EMA:
    """An exponential moving average of the trainable weights: torch's ``AveragedModel`` with its EMA
    update (``ema = decay * ema + (1 - decay) * w``, starting from the initial weights), stored as
    ``ema.safetensors`` keyed by parameter name."""

    def __init__(self, model, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.averaged.update_parameters(model)  # the first update copies: the average starts at the initial weights

    def update(self, model) -> None:
        self.averaged.update_parameters(model)

    def state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().contiguous().cpu() for name, p in self.averaged.module.named_parameters()}

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state(), str(path))

    @torch.no_grad()
    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        loaded = load_file(str(path))
        params = dict(self.averaged.module.named_parameters())
        if set(loaded) != set(params):
            raise TrainingError(f"{path} does not hold this model's EMA weights")
        for name, p in params.items():
            p.copy_(loaded[name])

    @torch.no_grad()
    def copy_to(self, model) -> None:
        averaged = dict(self.averaged.module.named_parameters())
        for name, p in model.named_parameters():
            if name in averaged:
                p.copy_(averaged[name].to(p.dtype))


# ---------------------------------------------------------------------------------------- loop
def train(
    model,
    train_dataset,
    args: ARTrainingArguments,
    cluster_map=None,
    eval_fn: Callable[[int, Any], dict[str, float]] | None = None,
    vqvae=None,
) -> TrainOutput:
    """Train (or resume training) ``model`` on ``train_dataset``; returns a :class:`TrainOutput`.

    Args:
        model: a LlamaGen model whose vocabulary is the dataset's ids (cluster ids with a map);
            build one for a code-shard directory with :func:`masc_hf.training.model_for_codes`.
        train_dataset: ``(ids [L], label)`` items, e.g. a :class:`~masc_hf.data.CodeShardDataset`
            (its ``set_epoch`` is called each epoch when it has one).
        args: the run's :class:`ARTrainingArguments`.
        cluster_map: the map the dataset encodes with (checked against the model), saved in the pipeline.
        eval_fn: ``eval_fn(step, model)`` runs on the main process every ``args.eval_every`` steps and
            at the last step with the unwrapped model in eval mode (training mode is restored after);
            its metrics go to ``output_dir/eval_history.json`` (``[{"step": ..., **metrics}]``,
            rewritten atomically, kept across resumes) and to the trackers. The evaluation logs of
            two runs give the training acceleration (:func:`masc_hf.evaluation.training_acceleration`).
        vqvae: the VQ tokenizer (a diffusers ``VQModel``): also write a ``MASCPipeline`` at the end.

    Checkpoints ``output_dir/checkpoint-<step>`` hold accelerate's state (model, optimiser, scheduler,
    RNG states; all loaded without unpickling objects), ``ema.safetensors`` when EMA is on, and
    ``trainer_state.json``. Each is written under a temporary name and renamed when complete, so a run
    killed at any moment resumes from the last complete one and ends at the same step with the same
    loss as an uninterrupted run.
    """
    from accelerate.utils import set_seed

    check_model_fits_data(model, train_dataset, cluster_map)
    if vqvae is not None:
        from ..pipelines.pairing import check_model_fits_vq

        check_model_fits_vq(model, vqvae)
    accelerator, log_with = _accelerator(args)
    set_seed(args.seed)
    dataloader = _dataloader(train_dataset, args, accelerator.num_processes)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model, optimizer, scheduler, dataloader, ema, total_steps = _prepare(accelerator, model, dataloader, args)
    state = _resume(accelerator, args, ema)
    _write_run_files(accelerator, args, log_with, model)

    output_dir = Path(args.output_dir)
    progress = _progress_bar(args, accelerator, total_steps, state.global_step)
    tokens_seen, window_start = 0, time.perf_counter()
    model.train()
    while state.global_step < total_steps:
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(state.epoch)
        dataloader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(dataloader, state.consumed) if state.consumed else dataloader
        for codes, labels in batches:
            out, grad_norm = _train_step(accelerator, model, optimizer, scheduler, codes, labels, args.max_grad_norm)
            state.consumed += 1
            tokens_seen += codes.numel() * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            state.loss = float(accelerator.reduce(out.loss.detach(), reduction="mean"))
            progress.update(1)
            if state.global_step % args.log_every == 0 or state.global_step == total_steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                _log_step(accelerator, log_with, progress, state, out.logits, grad_norm, scheduler, tokens_seen / elapsed)
                tokens_seen, window_start = 0, time.perf_counter()
            last = state.global_step == total_steps
            if eval_fn is not None and (last or (args.eval_every and state.global_step % args.eval_every == 0)):
                _evaluate(accelerator, log_with, model, eval_fn, state, output_dir)
            if state.global_step % args.checkpoint_every == 0 or last:
                _save_checkpoint(accelerator, output_dir, ema, state, args.keep_checkpoints)
            if state.global_step >= total_steps:
                break
        else:
            state.epoch, state.consumed = state.epoch + 1, 0
            continue
        if state.consumed >= len(dataloader):
            state.epoch, state.consumed = state.epoch + 1, 0
    progress.close()
    return _finish(accelerator, model, ema, state, output_dir, cluster_map, vqvae, train_dataset)


def _accelerator(args: ARTrainingArguments):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    log_with = args.log_with
    if log_with == "auto":
        import importlib.util

        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") else None
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision if torch.cuda.is_available() or args.mixed_precision != "fp16" else "no",
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    return accelerator, log_with


def _dataloader(train_dataset, args: ARTrainingArguments, world: int):
    per_device, rest = divmod(args.global_batch_size, world * args.gradient_accumulation_steps)
    if per_device < 1 or rest:
        raise TrainingError(
            f"global_batch_size={args.global_batch_size} is not divisible by processes ({world}) x gradient_accumulation_steps "
            f"({args.gradient_accumulation_steps}); choose a multiple of {world * args.gradient_accumulation_steps}"
        )
    if len(train_dataset) < args.global_batch_size:
        raise TrainingError(f"the codes hold {len(train_dataset)} examples, fewer than one global batch ({args.global_batch_size})")
    return torch.utils.data.DataLoader(
        train_dataset, batch_size=per_device, shuffle=True, drop_last=True, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


def _prepare(accelerator, model, dataloader, args: ARTrainingArguments):
    """Optimiser (LlamaGen's weight-decay grouping), cosine schedule, accelerate's wrappers, EMA; the step count."""
    from .schedules import warmup_cosine_schedule

    peak_lr, final_lr = paper_learning_rates(model.config, args)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]  # matrices decay; norms and biases do not
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps, fused=torch.cuda.is_available() or None,
    )
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    steps_per_epoch = len(dataloader) // args.gradient_accumulation_steps
    total_steps = args.max_steps if args.max_steps is not None else steps_per_epoch * args.epochs
    if total_steps < 1 or steps_per_epoch < 1:
        raise TrainingError(f"nothing to train: {steps_per_epoch} steps per epoch, {total_steps} steps in total")
    world = accelerator.num_processes  # accelerate steps a prepared scheduler once per process per optimiser step
    scheduler = warmup_cosine_schedule(
        optimizer, warmup_steps=args.warmup_steps * world, total_steps=total_steps * world, min_lr_ratio=final_lr / peak_lr
    )
    scheduler = accelerator.prepare(scheduler)
    ema = _EMA(accelerator.unwrap_model(model), args.ema_decay) if args.ema_decay else None
    return model, optimizer, scheduler, dataloader, ema, total_steps


def _resume(accelerator, args: ARTrainingArguments, ema: _EMA | None) -> _Progress:
    output_dir = Path(args.output_dir)
    resume_dir = latest_checkpoint(output_dir) if args.resume == "latest" else (Path(args.resume) if args.resume else None)
    if args.resume and args.resume != "latest" and not (resume_dir / STATE_NAME).is_file():
        raise TrainingError(f"{resume_dir} is not a complete checkpoint (no {STATE_NAME}); use --resume latest or another path")
    if resume_dir is None:
        if args.resume == "latest":
            logger.info("no checkpoint under %s: starting from scratch", output_dir)
        return _Progress()
    saved = json.loads((resume_dir / STATE_NAME).read_text())
    accelerator.load_state(str(resume_dir))
    if ema is not None and (resume_dir / EMA_NAME).is_file():
        ema.load(resume_dir / EMA_NAME)
    state = _Progress(global_step=saved["global_step"], epoch=saved["epoch"], consumed=saved["batches_consumed"])
    eval_path = output_dir / EVAL_HISTORY_NAME
    if eval_path.is_file():  # records past the checkpoint belong to the lost part of the run
        state.eval_history = [r for r in json.loads(eval_path.read_text()) if r["step"] <= state.global_step]
    logger.info("resumed from %s at step %d (epoch %d, %d batches into it)", resume_dir, state.global_step, state.epoch, state.consumed)
    return state


def _write_run_files(accelerator, args: ARTrainingArguments, log_with, model) -> None:
    if accelerator.is_main_process:
        write_text_atomic(Path(args.output_dir) / "training_args.json", json.dumps(asdict(args), indent=2, default=str) + "\n")
    if log_with:
        config = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("masc-hf", config={**config, "vocab_size": accelerator.unwrap_model(model).config.vocab_size})


def _progress_bar(args: ARTrainingArguments, accelerator, total_steps: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, initial=initial, desc="train", unit="step", disable=not (args.progress and accelerator.is_local_main_process))


def _train_step(accelerator, model, optimizer, scheduler, codes, labels, max_grad_norm: float):
    """Forward (teacher forcing on the whole sequence), backward, clip, optimiser and schedule step."""
    with accelerator.accumulate(model):
        # ids were checked where they entered (the dataset): no per-step range check (a host sync)
        out = model(input_ids=codes[:, :-1], class_labels=labels, labels=codes, check_inputs=False)
        accelerator.backward(out.loss)
        grad_norm = None
        if accelerator.sync_gradients and max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return out, grad_norm


def _log_step(accelerator, log_with, progress, state: _Progress, logits, grad_norm, scheduler, tokens_per_s: float) -> None:
    entropy, entropy_norm = prediction_entropy(logits.detach())
    record = {
        "step": state.global_step,
        "epoch": state.epoch,
        "loss": state.loss,
        "entropy": entropy,
        "entropy_normalized": entropy_norm,
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "tokens_per_s": tokens_per_s,
    }
    state.history.append(record)
    progress.set_postfix(loss=f"{state.loss:.4f}", H=f"{entropy_norm:.3f}", lr=f"{record['lr']:.2e}")
    if log_with:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.global_step)


def _evaluate(accelerator, log_with, model, eval_fn, state: _Progress, output_dir: Path) -> None:
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        try:
            with torch.no_grad():
                metrics = dict(eval_fn(state.global_step, unwrapped))
        finally:
            unwrapped.train()
        logger.info("step %d eval: %s", state.global_step, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        record = {"step": state.global_step, **metrics}
        state.eval_history.append(record)
        write_text_atomic(output_dir / EVAL_HISTORY_NAME, json.dumps(state.eval_history, indent=1) + "\n")
        if log_with:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.global_step)
    accelerator.wait_for_everyone()


def _save_checkpoint(accelerator, output_dir: Path, ema: _EMA | None, state: _Progress, keep: int) -> None:
    """accelerate's state into a staging directory every process writes to, renamed when complete."""
    from accelerate.utils import broadcast_object_list

    target = output_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
    staging = [None]
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        import tempfile

        staging = [tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=output_dir)]
    if accelerator.num_processes > 1:
        broadcast_object_list(staging)
    tmp = Path(staging[0])
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if ema is not None:
            ema.save(tmp / EMA_NAME)
        saved = {"global_step": state.global_step, "epoch": state.epoch, "batches_consumed": state.consumed, "loss": state.loss, "time": time.time()}
        write_text_atomic(tmp / STATE_NAME, json.dumps(saved, indent=2) + "\n")
        replace_dir(tmp, target)
        done = sorted(
            (p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_NAME).is_file()),
            key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
        )
        for old in done[: max(len(done) - keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _finish(accelerator, model, ema, state: _Progress, output_dir: Path, cluster_map, vqvae, train_dataset) -> TrainOutput:
    """The trained model (EMA weights when EMA is on) and, with a VQ tokenizer, its pipeline."""
    accelerator.wait_for_everyone()
    output = TrainOutput(global_step=state.global_step, epoch=state.epoch, loss=state.loss, history=state.history, eval_history=state.eval_history)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final)
        final.eval()
        model_dir = output_dir / "model"
        with staged_dir(model_dir) as tmp:
            final.save_pretrained(tmp)
        write_text_atomic(output_dir / "history.json", json.dumps(state.history, indent=1) + "\n")
        output.model, output.model_dir = final, str(model_dir)
        if vqvae is not None:
            output.pipeline_dir = str(write_pipeline(final, vqvae, cluster_map, output_dir / "pipeline", getattr(train_dataset, "class_names", None)))
    accelerator.end_training()
    return output


def write_pipeline(model, vqvae, cluster_map, out_dir: Path, class_names: list[str] | None = None) -> Path:
    """A ``MASCPipeline`` directory of a trained model, its VQ tokenizer and its map."""
    from ..pipelines import MASCPipeline

    id2label = dict(enumerate(class_names)) if class_names and len(class_names) == model.config.num_classes else None
    pipe = MASCPipeline(transformer=model.eval(), vqvae=vqvae, cluster_map=cluster_map, id2label=id2label)
    with staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return out_dir
