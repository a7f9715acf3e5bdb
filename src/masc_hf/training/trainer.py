"""The AR training loop (flat, flat with IAR's cluster-oriented loss, or on a cluster map), driven by
``recipes/train.py`` through accelerate.

``train(model, train_dataset, args)`` takes objects and returns a :class:`TrainOutput`; the recipe
turns paths and flags into those objects. One loop serves a 2-core CPU quickstart and a multi-node
H100 run: accelerate handles devices, DDP/FSDP, mixed precision and gradient accumulation; this
module adds the paper's optimiser and schedule (Table 4), prediction entropy (Eq. 6) in the logs,
atomic checkpoints with exact resume, an optional EMA copy, and the final model and pipeline.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .._io import check_writable, clean_leftovers, publish_dir, staged_dir, write_text_atomic
from ..errors import MASCError
from ..models.ar import prediction_entropy
from .losses import IAR_CLUSTER_LOSS_WEIGHT, ClusterOrientedLoss

logger = logging.getLogger(__name__)

__all__ = [
    "ARTrainingArguments", "TrainOutput", "TrainingError", "check_cluster_loss", "checkpoint_problem", "latest_checkpoint",
    "prediction_entropy", "train",
]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"
EMA_NAME = "ema.safetensors"
HISTORY_NAME = "history.json"  # the logged steps: in output_dir at the end, and in every checkpoint
EVAL_HISTORY_NAME = "eval_history.json"
RNG_STATE_NAME = "random_states_{}.pkl"  # accelerate's, one per process
_RANDOM_STATE_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")

# What a resume may change; see ARTrainingArguments. Free: bookkeeping, display, speed, the run's end.
RESUME_FREE = (
    "epochs", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "num_workers",
    "progress", "log_with", "gradient_checkpointing",
)
# Changeable with allow_changed_settings: the new value takes effect from the checkpoint's step on.
RESUME_OVERRIDABLE = (
    "learning_rate", "min_learning_rate", "warmup_steps", "adam_beta1", "adam_beta2", "adam_eps", "weight_decay",
    "max_grad_norm", "mixed_precision", "ema_decay", "seed", "gradient_accumulation_steps", "num_processes",
    "class_dropout_prob", "token_dropout", "attention_dropout", "resid_dropout", "ffn_dropout", "drop_path_rate",
    "cluster_loss_map", "cluster_loss_weight", "compile",
)


class TrainingError(MASCError):
    """Training arguments that cannot work together, or a checkpoint that cannot be resumed."""


# Table 4 of the MASC paper (LlamaGen's own recipe): peak and final learning rate per model size.
PAPER_LR = {"GPT-B": (1e-4, 1e-5), "GPT-L": (1e-4, 1e-5), "GPT-XL": (2e-4, 2e-5)}


@dataclass
class ARTrainingArguments:
    """The hyper-parameters of a training run; defaults are the paper's (Table 4) where it has one.

    The model, the data, the cluster maps and the VQ tokenizer are objects given to :func:`train`
    (``recipes/train.py`` builds them from paths); ``cluster_loss_weight`` weighs the cluster CE of
    ``train(cluster_loss_map=...)`` (IAR's loss; None: IAR's 1.0 with a map, no cluster loss without
    one). Named apart from ``transformers.TrainingArguments``, which this is not. A value that cannot
    work (``keep_checkpoints=0``, ``log_every=0``, a negative batch size, ...) is a
    :class:`TrainingError` when the arguments are built.

    Resuming (``resume``) continues the run that wrote the checkpoint, so its settings are compared
    with the ones that checkpoint records (``trainer_state.json``, ``"run"``):

    - free to change (:data:`RESUME_FREE`): ``log_every``, ``eval_every``, ``checkpoint_every``,
      ``keep_checkpoints``, ``progress``, ``log_with`` (what is written or shown, not what is
      computed); ``num_workers`` (an item depends only on the seed, the epoch and its index) and
      ``gradient_checkpointing`` (the same values, recomputed); ``max_steps``/``epochs`` (the run's
      end, not below the checkpoint's step: the cosine schedule then ends at the new end, a warning
      gives the learning rate before and after).
    - changeable only when named in ``allow_changed_settings`` (:data:`RESUME_OVERRIDABLE`), since the
      run is then no longer the one the checkpoint started (a new value takes effect from the
      checkpoint's step, where it would otherwise be silently overwritten by the checkpoint's state
      or silently break the exact resume): the schedule (``learning_rate``, ``min_learning_rate``,
      ``warmup_steps``), the optimiser (``adam_beta1``/``adam_beta2``/``adam_eps``,
      ``weight_decay``, ``max_grad_norm``), ``mixed_precision``, ``ema_decay`` (an EMA switched on
      starts at the checkpoint's weights), ``seed`` (the data order from the current epoch on),
      ``gradient_accumulation_steps`` and the number of processes (the same global batch, split
      otherwise; new processes' random states start from the seed), and the model's regularisation
      (``class_dropout_prob`` while it stays above 0, the dropout rates, ``drop_path_rate``), and the
      cluster-oriented loss of a flat model (``cluster_loss_map``, by fingerprint, and its effective
      ``cluster_loss_weight``): the weights fit any loss, the new one is minimised from the checkpoint's step;
      and ``compile`` (the same computation, but a compiled graph draws its dropout masks from its own
      random stream, so the run is no longer the eager one bit for bit).
    - fixed (any change needs a new ``output_dir``): ``global_batch_size`` (the epoch position and
      the schedule's step count follow it), the model's architecture and vocabulary (the saved
      weights and optimiser state only fit them), the cluster map, the code shards' tokenizer and
      size, and a ``class_dropout_prob`` that moves to or from 0 (the null-class row).
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
    compile: bool = False  # torch.compile the model (in place: checkpoints and saved weights unchanged; dropout masks differ from eager)
    log_with: str | None = "auto"  # accelerate tracker; "auto": tensorboard when installed
    progress: bool = True
    allow_changed_settings: str | None = None  # on resume, e.g. "learning_rate,seed" (see the class docstring)
    cluster_loss_weight: float | None = None  # weight of the cluster CE of train(cluster_loss_map=...); None: 1.0 (IAR's)
    refiner_mode: str = "frozen"  # train(refiner=...): "frozen" MASC model (the paper) or "joint"
    refiner_loss_weight: float = 1.0  # joint mode: loss = cluster CE + this x the refiner's token CE

    def __post_init__(self) -> None:
        for name in ("log_with", "resume", "allow_changed_settings"):
            if getattr(self, name) in ("", "none", "None"):  # command-line spelling of "no value"
                setattr(self, name, None)
        if isinstance(self.allow_changed_settings, (list, tuple, set, frozenset)):
            self.allow_changed_settings = ",".join(self.allow_changed_settings) or None
        self._validate()

    @property
    def allowed_changes(self) -> set[str]:
        """The names in ``allow_changed_settings``."""
        return {name.strip() for name in (self.allow_changed_settings or "").split(",") if name.strip()}

    def _validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise TrainingError(f"{name}={getattr(self, name)!r} {why}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            fail("output_dir", "is not a directory path; pass where checkpoints and the model go")
        at_least_one = {
            "epochs": "is not a number of epochs; use >= 1 (or max_steps)",
            "global_batch_size": "is not a batch size; use a positive multiple of processes x gradient_accumulation_steps, e.g. 256",
            "gradient_accumulation_steps": "must be >= 1 (1: no accumulation)",
            "checkpoint_every": "must be >= 1 (steps between checkpoints; the last step is always saved)",
            "keep_checkpoints": "must be >= 1: it is how many of the newest checkpoints are kept, and 0 would delete every one",
            "log_every": "must be >= 1 (steps between logged records)",
        }
        for name, why in at_least_one.items():
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, why)
        optional = {"max_steps": "must be None or >= 1 (None: epochs decide)", "eval_every": "must be None or >= 1 (None: only at the end)"}
        for name, why in optional.items():
            if getattr(self, name) is not None and (not is_int(getattr(self, name)) or getattr(self, name) < 1):
                fail(name, why)
        for name in ("warmup_steps", "num_workers"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be an integer >= 0")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            fail("seed", "must be an integer in [0, 2**32) (numpy's seed range)")
        if self.learning_rate is not None and (not is_number(self.learning_rate) or self.learning_rate <= 0):
            fail("learning_rate", "must be a positive number (None: the paper's for the model's size)")
        if self.min_learning_rate is not None and (not is_number(self.min_learning_rate) or self.min_learning_rate < 0):
            fail("min_learning_rate", "must be a number >= 0 (None: a tenth of the peak)")
        if None not in (self.learning_rate, self.min_learning_rate) and self.min_learning_rate > self.learning_rate:
            fail("min_learning_rate", f"is above learning_rate={self.learning_rate!r}; the cosine decays from the peak to the minimum")
        for name in ("adam_beta1", "adam_beta2"):
            if not is_number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                fail(name, "must lie in [0, 1) (the paper's: 0.9 and 0.95)")
        if not is_number(self.adam_eps) or self.adam_eps <= 0:
            fail("adam_eps", "must be a positive number, e.g. 1e-8")
        non_negative = {"weight_decay": "must be a number >= 0 (the paper's: 0.05)", "max_grad_norm": "must be a number >= 0 (0: no clipping)"}
        for name, why in non_negative.items():
            if not is_number(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, why)
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            fail("mixed_precision", "is not one of 'no', 'bf16', 'fp16'")
        if self.cluster_loss_weight is not None and (not is_number(self.cluster_loss_weight) or self.cluster_loss_weight < 0):
            fail("cluster_loss_weight", "must be a finite number >= 0 (IAR's: 1.0; None: 1.0 with a cluster-loss map)")
        if self.refiner_mode not in ("frozen", "joint"):
            fail("refiner_mode", "is not 'frozen' (train the refiner on the trained MASC model, the paper's) or 'joint'")
        if not is_number(self.refiner_loss_weight) or self.refiner_loss_weight < 0:
            fail("refiner_loss_weight", "must be a finite number >= 0 (joint mode's weight of the refiner's CE)")
        if self.ema_decay is not None and (not is_number(self.ema_decay) or not 0 < self.ema_decay < 1):
            fail("ema_decay", "must lie in (0, 1), e.g. 0.9999 (None: no EMA copy)")
        if self.resume is not None and not isinstance(self.resume, (str, os.PathLike)):
            fail("resume", "must be None, 'latest' or a checkpoint directory")
        _check_setting_names(self.allowed_changes)


def _model_fields(config_class=None) -> list[str]:
    """The config fields a checkpoint's model is recorded by (all but sampling defaults):
    ``config_class``'s (default: ``LlamaGenConfig``'s and ``IAR2Config``'s)."""
    import inspect

    from ..models.iar2.configuration_iar2 import IAR2Config
    from ..models.llamagen.configuration_llamagen import LlamaGenConfig

    skip = ("self", "kwargs", "default_guidance_scale")
    names: list[str] = []
    for cls in (config_class,) if config_class is not None else (LlamaGenConfig, IAR2Config):
        names += [name for name in inspect.signature(cls.__init__).parameters if name not in skip and name not in names]
    return names


def is_iar2(model) -> bool:
    """Whether ``model`` (or a wrapped one) predicts (semantic, detail) pairs: an IAR2 model."""
    return hasattr(getattr(model, "config", None), "detail_vocab_size")


def _check_setting_names(names: set[str]) -> None:
    """Every name of ``allow_changed_settings`` is a setting a resume may change."""
    if not names:
        return
    fixed = ["global_batch_size", "train_dataset", *(name for name in _model_fields() if name not in RESUME_OVERRIDABLE)]
    known = sorted({f.name for f in fields(ARTrainingArguments)} | set(RESUME_OVERRIDABLE) | set(fixed))
    for name in sorted(names):
        if name in fixed:
            raise TrainingError(
                f"allow_changed_settings names {name!r}, which a resume cannot change (the checkpoint's weights, optimiser "
                f"state and data position belong to it); start a new --output_dir to train with another {name}"
            )
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TrainingError(
                f"allow_changed_settings names {name!r}, which is not a setting; {hint}"
                f"changeable ones: {', '.join(RESUME_OVERRIDABLE)}"
            )


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
    refiner: Any = None
    refiner_dir: str | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir`` (``None`` if none); see
    :func:`checkpoint_problem`."""
    return next((path for path in _checkpoints(output_dir)[::-1] if checkpoint_problem(path) is None), None)


def _checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-<step>`` directories under ``output_dir`` (complete or not), by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name) and p.is_dir()]
    return sorted(found, key=_step_of)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why ``checkpoint`` is not complete (``None`` when it is): its ``trainer_state.json`` is missing or
    unreadable, or a file that state lists (``"files"``: name -> size, written last) is missing or has
    another size, as an interrupted copy or a full disk leaves it. Contents are checked when loaded."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "no such directory"
    if not (checkpoint / STATE_NAME).is_file():
        return f"no {STATE_NAME}"
    try:
        saved = json.loads((checkpoint / STATE_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{STATE_NAME} is unreadable ({err})"
    if not isinstance(saved, dict) or not all(isinstance(saved.get(key), int) for key in ("global_step", "epoch", "batches_consumed")):
        return f"{STATE_NAME} does not hold a training position"
    files = saved.get("files", {})  # absent in checkpoints written before files were listed: trusted
    if not isinstance(files, dict):
        return f"{STATE_NAME} lists its files wrongly"
    root = checkpoint.resolve()
    for name, size in files.items():
        path = checkpoint / name
        if not path.resolve().is_relative_to(root):
            return f"{STATE_NAME} lists a file outside the checkpoint ({name!r})"
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes instead of {size}"
    return None


def paper_learning_rates(model_config, args: ARTrainingArguments) -> tuple[float, float]:
    """(peak, final) learning rate: the arguments' when given, else Table 4's for the model's size."""
    peak, final = PAPER_LR.get(getattr(model_config, "architecture_name", None), (1e-4, 1e-5))
    if args.learning_rate is not None:
        peak, final = args.learning_rate, args.learning_rate / 10
    return peak, args.min_learning_rate if args.min_learning_rate is not None else final


# ---------------------------------------------------------------------------------------- checks
def check_model_fits_data(model, train_dataset, cluster_map=None) -> None:
    """The model speaks the data's language: tokenizer, vocabulary, sequence length, classes and cluster map."""
    from ..pipelines.pairing import check_map_fits_model

    if is_iar2(model):
        return check_iar2_fits_data(model, train_dataset, cluster_map)
    require_single_codebook(train_dataset)
    config = model.config
    data_fingerprint = _data_tokenizer_fingerprint(train_dataset)
    model_fingerprint = getattr(config, "tokenizer_fingerprint", None)
    if None not in (data_fingerprint, model_fingerprint) and data_fingerprint != model_fingerprint:
        raise TrainingError(
            f"the model was built for the ids of VQ tokenizer {model_fingerprint[:12]}... but the codes come from tokenizer "
            f"{data_fingerprint[:12]}... (codebook fingerprints differ); extract the codes with the model's tokenizer, or build "
            "a model for these codes (model_for_codes)"
        )
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


def check_iar2_fits_data(model, train_dataset, cluster_map=None) -> None:
    """An IAR2 model trains on dual-codebook code shards of its tokenizer: both codebook sizes, the
    tokenizer fingerprint, the sequence length and the classes agree."""
    config = model.config
    require_dual_codebook(train_dataset, cluster_map)
    manifest = train_dataset.manifest
    sizes = (manifest.num_tokens, manifest.num_detail_tokens)
    if sizes != (config.semantic_vocab_size, config.detail_vocab_size):
        raise TrainingError(
            f"the codes come from a tokenizer with {sizes[0]} semantic x {sizes[1]} detail codes but the model predicts "
            f"{config.semantic_vocab_size} x {config.detail_vocab_size}; build the model for these codes (model_for_codes)"
        )
    data_fingerprint, model_fingerprint = manifest.tokenizer_fingerprint, config.tokenizer_fingerprint
    if None not in (data_fingerprint, model_fingerprint) and data_fingerprint != model_fingerprint:
        raise TrainingError(
            f"the model was built for the ids of tokenizer {model_fingerprint[:12]}... but the codes come from tokenizer "
            f"{data_fingerprint[:12]}... (fingerprints differ); extract the codes with the model's tokenizer, or build a model "
            "for these codes (model_for_codes)"
        )
    if config.block_size != manifest.seq_len:
        raise TrainingError(f"the model's block_size {config.block_size} differs from the codes' length {manifest.seq_len}")
    class_names = getattr(train_dataset, "class_names", None)
    if class_names and config.num_classes != len(class_names):
        raise TrainingError(f"the model has {config.num_classes} classes but the data has {len(class_names)}")


def check_cluster_loss(cluster_loss_map, weight: float | None, *, model=None, train_dataset=None, cluster_map=None) -> None:
    """IAR's cluster-oriented loss fits the run: a weight only with a map; a map only for a flat model
    (a MASC model's ids are already clusters), over its N codebook tokens, built from the codes'
    tokenizer. ``model``/``train_dataset``: what is known so far (the recipe checks before building the model)."""
    from ..clustering import check_cluster_map
    from ..errors import ClusterMapMismatchError

    if cluster_loss_map is None:
        if weight is not None:
            raise TrainingError(
                f"cluster_loss_weight={weight!r} was given without a cluster-loss map; pass the map it weighs "
                "(--cluster_loss_map DIR, or train(cluster_loss_map=...)), or drop the weight"
            )
        return
    config = getattr(model, "config", None)
    if cluster_map is not None or (config is not None and config.is_masc):
        k = cluster_map.num_clusters if cluster_map is not None else config.vocab_size
        raise ClusterMapMismatchError(
            f"a cluster-loss map was given for a MASC model, whose ids are already the k={k} clusters of its map; the "
            "cluster-oriented loss is for flat models: drop --cluster_loss_map, or train a flat model (no --cluster_map)"
        )
    data_fingerprint = _data_tokenizer_fingerprint(train_dataset)
    model_fingerprint = getattr(config, "tokenizer_fingerprint", None)
    if config is not None:
        vocab, whose = config.vocab_size, "the flat model's vocabulary"
    else:
        vocab, whose = getattr(train_dataset, "vocab_size", None), "the codes' vocabulary"
    try:
        check_cluster_map(cluster_loss_map, num_tokens=vocab, what=whose)
        if data_fingerprint is not None:
            check_cluster_map(cluster_loss_map, codebook_fingerprint=data_fingerprint, what="the codes' VQ tokenizer")
        if model_fingerprint is not None:
            check_cluster_map(cluster_loss_map, codebook_fingerprint=model_fingerprint, what="the model's VQ tokenizer")
    except ClusterMapMismatchError as err:
        raise ClusterMapMismatchError(f"cluster_loss_map: {err}") from None


def check_vq_fits_run(model, train_dataset, vqvae, cluster_map=None, cluster_loss_map=None) -> None:
    """The VQ tokenizer that will render the model's samples is the one of the codes, of the model and
    of the cluster maps (codebook size and fingerprint); checked when training starts, not at the end."""
    from ..pipelines.pairing import check_iar2_fits_tokenizer, check_map_fits_tokenizer, check_model_fits_vq, tokenizer_fingerprint

    if is_iar2(model) != hasattr(vqvae.config, "num_detail_embeddings"):
        raise MASCError(
            "an IAR2 model renders with a DualCodebookVQModel and a LlamaGen/MASC model with a VQModel; pass the tokenizer "
            "the codes were extracted with"
        )
    fingerprint = tokenizer_fingerprint(vqvae)
    data_fingerprint = _data_tokenizer_fingerprint(train_dataset)
    if data_fingerprint is not None and data_fingerprint != fingerprint:
        raise MASCError(
            f"the codes come from VQ tokenizer {data_fingerprint[:12]}... but the vqvae's codebook is {fingerprint[:12]}... "
            "(codebook fingerprints differ); pass the VQ tokenizer the codes were extracted with"
        )
    if is_iar2(model):
        return check_iar2_fits_tokenizer(model, vqvae, fingerprint=fingerprint)
    check_model_fits_vq(model, vqvae, fingerprint=fingerprint)
    if cluster_map is not None and cluster_map.codebook_fingerprint is not None:
        check_map_fits_tokenizer(cluster_map, vqvae, fingerprint=fingerprint)
    if cluster_loss_map is not None and cluster_loss_map.codebook_fingerprint is not None:
        from ..errors import ClusterMapMismatchError

        try:
            check_map_fits_tokenizer(cluster_loss_map, vqvae, fingerprint=fingerprint)
        except ClusterMapMismatchError as err:
            raise ClusterMapMismatchError(f"cluster_loss_map: {err}") from None


def _cluster_loss_weight(args: ARTrainingArguments, cluster_loss_map) -> float | None:
    """The weight the cluster CE is trained with (None: no cluster loss)."""
    if cluster_loss_map is None:
        return None
    return args.cluster_loss_weight if args.cluster_loss_weight is not None else IAR_CLUSTER_LOSS_WEIGHT


def require_single_codebook(train_dataset) -> None:
    """LlamaGen and MASC models read one id per position: dual-codebook code shards (IAR2's tokenizer)
    are refused with a :class:`~masc_hf.errors.DataError` before anything is built."""
    from ..data.code_shards import CodeShardDataset

    if isinstance(train_dataset, CodeShardDataset):
        train_dataset.require_single_codebook("LlamaGen/MASC training")


def require_dual_codebook(train_dataset, cluster_map=None) -> None:
    """IAR2 models read (semantic, detail) pairs and no cluster map: anything else is a :class:`TrainingError`."""
    if cluster_map is not None:
        raise TrainingError("an IAR2 model predicts (semantic, detail) pairs and takes no cluster map; drop --cluster_map")
    if not getattr(train_dataset, "is_dual_codebook", False):
        raise TrainingError(
            "an IAR2 model trains on (semantic, detail) id pairs, but these codes hold one id per position; extract them with "
            "a DualCodebookVQModel (recipes/extract_codes.py --vq DIR of masc-hf convert-iar2-vq or the dual VQ trainer)"
        )


def _data_tokenizer_fingerprint(train_dataset) -> str | None:
    return getattr(getattr(train_dataset, "manifest", None), "tokenizer_fingerprint", None)


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
    cluster_loss_map=None,
    refiner=None,
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
        cluster_loss_map: a flat model only: train with IAR's cluster-oriented loss over this map's
            clusters (token CE + ``args.cluster_loss_weight`` x cluster CE; see
            :class:`~masc_hf.training.losses.ClusterOrientedLoss`). The model stays flat and so do its
            saved files and pipeline: the map only shapes the loss. The history logs ``token_loss`` and
            ``cluster_loss`` besides ``loss``, their total.
        refiner: a MASC model's :class:`~masc_hf.models.refiner.MASCRefiner` to train (hierarchical
            decoding): ``args.refiner_mode`` "frozen" (the model fixed, as the paper) or "joint"
            (see :mod:`masc_hf.training.two_level`). The dataset must give the codebook ids too
            (``CodeShardDataset(..., cluster_map=..., with_fine_ids=True)``). The history logs
            ``coarse_loss`` and ``refiner_loss``; the refiner is saved to ``output_dir/refiner`` and
            joins the pipeline.

    Checkpoints ``output_dir/checkpoint-<step>`` hold accelerate's state (model, optimiser, scheduler,
    RNG states; all loaded without unpickling objects), ``ema.safetensors`` when EMA is on, the
    history so far, and ``trainer_state.json`` (the position, the run's settings, each file's size).
    Each is written under a temporary name and renamed when complete, so a run killed at any moment
    resumes from the last complete one and ends at the same step with the same loss and history as
    an uninterrupted run. ``resume="latest"`` skips a newest checkpoint that is incomplete (a file
    missing or cut short), with a warning; a checkpoint whose files cannot be read, or whose run had
    other settings (see :class:`ARTrainingArguments`), stops the resume with a :class:`TrainingError`.
    Every pairing (model and codes, map, VQ) and setting is checked before the model is prepared.
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    check_model_fits_data(model, train_dataset, cluster_map)
    if is_iar2(model) and (refiner is not None or cluster_loss_map is not None):
        raise TrainingError("a refiner and a cluster-loss map belong to LlamaGen/MASC models; an IAR2 model trains with its own two losses")
    if refiner is not None:
        model = _two_level(model, refiner, train_dataset, cluster_map, args)
    check_cluster_loss(cluster_loss_map, args.cluster_loss_weight, model=model, train_dataset=train_dataset, cluster_map=cluster_map)
    if vqvae is not None:
        check_vq_fits_run(model, train_dataset, vqvae, cluster_map, cluster_loss_map)
    peak_lr, final_lr = paper_learning_rates(model.config, args)
    if final_lr > peak_lr:
        raise TrainingError(f"min_learning_rate={final_lr!r} is above the peak learning rate {peak_lr!r}; pass a smaller one (or none)")
    check_writable(args.output_dir, f"output_dir={str(args.output_dir)!r}", TrainingError)  # before any step
    resume_dir, saved = _find_checkpoint(args)
    record = _run_record(args, model, train_dataset, PartialState().num_processes, cluster_loss_map)
    changed = _check_resume(resume_dir, saved, record, args) if saved is not None else {}
    accelerator, log_with = _accelerator(args)
    set_seed(args.seed)
    dataloader = _dataloader(train_dataset, args, accelerator.num_processes)
    if args.gradient_checkpointing:
        target = model.model if refiner is not None else model  # transformers' newer name, else the deprecated one
        (getattr(target, "activation_checkpointing_enable", None) or target.gradient_checkpointing_enable)()
    if args.compile:  # in place (nn.Module.compile): parameter names, checkpoints and the saved model stay as they are
        model.compile()
    model, optimizer, scheduler, dataloader, ema, total_steps = _prepare(accelerator, model, dataloader, args)
    cluster_loss = None
    if cluster_loss_map is not None:
        cluster_loss = ClusterOrientedLoss(cluster_loss_map.mapping, _cluster_loss_weight(args, cluster_loss_map)).to(accelerator.device)
    state = _Progress()
    if resume_dir is not None:
        state, ema = _resume(accelerator, args, resume_dir, saved, changed, model, optimizer, scheduler, ema, total_steps)
    _write_run_files(accelerator, args, log_with, model, cluster_loss_map)

    output_dir = Path(args.output_dir)
    progress = _progress_bar(args, accelerator, total_steps, state.global_step)
    tokens_seen, window_start = 0, time.perf_counter()
    iar2 = is_iar2(accelerator.unwrap_model(model))
    model.train()
    while state.global_step < total_steps:
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(state.epoch)
        dataloader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(dataloader, state.consumed) if state.consumed else dataloader
        for codes, labels, *fine in batches:
            fine = fine if refiner is not None or iar2 else ()  # the codebook ids matter only to a refiner; IAR2's detail ids
            loss, logits, parts, grad_norm = _train_step(
                accelerator, model, optimizer, scheduler, codes, labels, args.max_grad_norm, cluster_loss, fine, iar2
            )
            state.consumed += 1
            tokens_seen += codes.numel() * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            state.loss = _mean_over_processes(accelerator, loss)
            progress.update(1)
            if state.global_step % args.log_every == 0 or state.global_step == total_steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                _log_step(accelerator, log_with, progress, state, logits, parts, grad_norm, scheduler, tokens_seen / elapsed)
                tokens_seen, window_start = 0, time.perf_counter()
            last = state.global_step == total_steps
            if eval_fn is not None and (last or (args.eval_every and state.global_step % args.eval_every == 0)):
                _evaluate(accelerator, log_with, model, eval_fn, state, output_dir)
            if state.global_step % args.checkpoint_every == 0 or last:
                _save_checkpoint(accelerator, output_dir, ema, state, args.keep_checkpoints, record, total_steps)
            if state.global_step >= total_steps:
                break
        else:
            state.epoch, state.consumed = state.epoch + 1, 0
            continue
        if state.consumed >= len(dataloader):
            state.epoch, state.consumed = state.epoch + 1, 0
    progress.close()
    return _finish(accelerator, model, ema, state, output_dir, cluster_map, vqvae, train_dataset)


def _two_level(model, refiner, train_dataset, cluster_map, args: ARTrainingArguments):
    """The MASC model and its refiner as one module to train (checked: they, the map and the data belong together)."""
    from ..pipelines.pairing import check_refiner_fits
    from .two_level import TwoLevelModel

    check_refiner_fits(refiner, model, cluster_map, what="the model")
    if cluster_map is None or not getattr(train_dataset, "with_fine_ids", False):
        raise TrainingError(
            "training a refiner needs the cluster map and a dataset giving the codebook ids beside the cluster ids: "
            "CodeShardDataset(codes_dir, cluster_map=cluster_map, with_fine_ids=True)"
        )
    if getattr(refiner, "token_cluster", None) is None or not torch.equal(refiner.token_cluster.cpu(), torch.as_tensor(cluster_map.mapping)):
        refiner.set_cluster_map(cluster_map)
    return TwoLevelModel(model, refiner, args.refiner_mode, args.refiner_loss_weight)


def _accelerator(args: ARTrainingArguments):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, LoggerType, ProjectConfiguration

    log_with = args.log_with
    if log_with == "auto":
        import importlib.util

        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") else None
    trackers = [t.value for t in LoggerType]
    if log_with is not None and log_with not in trackers:
        raise TrainingError(f"log_with={log_with!r} is not an accelerate tracker; use one of {', '.join(trackers)}, 'auto' or none")
    output_dir = Path(args.output_dir)
    try:
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision if torch.cuda.is_available() or args.mixed_precision != "fp16" else "no",
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
    except (ValueError, ImportError) as err:  # e.g. bf16 on a device without it, a tracker not installed
        raise TrainingError(
            f"accelerate cannot be set up with mixed_precision={args.mixed_precision!r}, log_with={log_with!r}: {err}; "
            "choose settings this machine supports (e.g. --mixed_precision no, --log_with none)"
        ) from err
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


def _find_checkpoint(args: ARTrainingArguments) -> tuple[Path | None, dict | None]:
    """The checkpoint ``args.resume`` names and its ``trainer_state.json``; with ``"latest"``, the newest
    complete one (an incomplete newer one is skipped with a warning naming its problem)."""
    if not args.resume:
        return None, None
    output_dir = Path(args.output_dir)
    if args.resume != "latest":
        resume_dir = Path(args.resume)
        problem = checkpoint_problem(resume_dir)
        if problem is not None:
            raise TrainingError(f"{resume_dir} is not a complete checkpoint ({problem}); use --resume latest or another path")
        return resume_dir, json.loads((resume_dir / STATE_NAME).read_text())
    skipped = []
    for resume_dir in _checkpoints(output_dir)[::-1]:
        problem = checkpoint_problem(resume_dir)
        if problem is None:
            if skipped:
                logger.warning(
                    "skipping incomplete checkpoint(s) %s: resuming from %s instead",
                    "; ".join(f"{path.name} ({why})" for path, why in skipped), resume_dir.name,
                )
            return resume_dir, json.loads((resume_dir / STATE_NAME).read_text())
        skipped.append((resume_dir, problem))
    if skipped:
        raise TrainingError(
            f"no complete checkpoint under {output_dir} to resume: "
            + "; ".join(f"{path.name}: {why}" for path, why in skipped)
            + "; start a new --output_dir, or remove the broken checkpoints to start this one from scratch"
        )
    logger.info("no checkpoint under %s: starting from scratch", output_dir)
    return None, None


def _run_record(args: ARTrainingArguments, model, train_dataset, num_processes: int, cluster_loss_map=None) -> dict[str, Any]:
    """What a resume must match (kept in each checkpoint's ``trainer_state.json`` as ``"run"``): the
    settings that are not free to change, as JSON values (the peak learning rate as used; a
    ``min_learning_rate`` of None stays None: a tenth of the peak, whatever the peak; the cluster-loss
    map by fingerprint and the weight as used)."""
    config = model.config
    not_recorded = (*RESUME_FREE, "output_dir", "resume", "allow_changed_settings")
    record = {name: value for name, value in asdict(args).items() if name not in not_recorded}
    record.update(learning_rate=paper_learning_rates(config, args)[0], num_processes=num_processes)
    record.update({name: getattr(config, name, None) for name in _model_fields(type(config) if is_iar2(model) else None)})
    record["train_dataset"] = {"num_examples": len(train_dataset), "tokenizer_fingerprint": _data_tokenizer_fingerprint(train_dataset)}
    record.pop("cluster_loss_weight")  # the map, then its weight as used
    record["cluster_loss_map"] = cluster_loss_map.fingerprint if cluster_loss_map is not None else None
    record["cluster_loss_weight"] = _cluster_loss_weight(args, cluster_loss_map)
    refiner = getattr(model, "refiner", None)
    record["refiner"] = None if refiner is None else {k: v for k, v in refiner.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    return json.loads(json.dumps(record))


def _check_resume(resume_dir: Path, saved: dict, record: dict[str, Any], args: ARTrainingArguments) -> dict[str, tuple]:
    """Refuse to resume a run with other settings unless they may change (see :class:`ARTrainingArguments`);
    the allowed changes ``{name: (old, new)}``."""
    step = saved["global_step"]
    if args.max_steps is not None and args.max_steps < step:
        raise TrainingError(
            f"max_steps={args.max_steps} is below the step of the checkpoint being resumed ({resume_dir.name}, step {step}); "
            f"pass --max_steps {step} or more, or start a new --output_dir"
        )
    ran = saved.get("run")
    if not isinstance(ran, dict):
        logger.warning("%s records no run settings (written by an older masc-hf): they cannot be compared", resume_dir)
        return {}
    changed = {name: (ran[name], value) for name, value in record.items() if name in ran and ran[name] != value}
    fixed = [name for name in changed if name not in RESUME_OVERRIDABLE]
    if "class_dropout_prob" in changed and (changed["class_dropout_prob"][0] > 0) != (changed["class_dropout_prob"][1] > 0):
        fixed.append("class_dropout_prob")  # the null-class row comes or goes: the weights no longer fit

    def describe(names) -> str:
        return ", ".join(f"{name} {changed[name][0]!r} -> {changed[name][1]!r}" for name in names)

    if fixed:
        raise TrainingError(
            f"cannot resume {resume_dir}: the run that wrote it had other settings ({describe(fixed)}), and its weights, "
            "optimiser state and data position only fit that run; resume with the checkpoint's settings, or start a new --output_dir"
        )
    refused = [name for name in changed if name not in args.allowed_changes]
    if refused:
        raise TrainingError(
            f"resuming {resume_dir} with settings that differ from the run that wrote it: {describe(refused)}. "
            f"Resume with the checkpoint's values, start a new --output_dir, or pass --allow_changed_settings {','.join(refused)} "
            f"to continue this run with the new values from step {step}"
        )
    if changed:
        logger.warning("resuming %s with changed settings (allowed): %s", resume_dir, describe(changed))
    return changed


def _load_random_states(resume_dir: Path, process_index: int, changed: dict[str, tuple]) -> dict | None:
    """This process's random states in ``resume_dir`` (``weights_only``, accelerate's allow-list), or a
    :class:`TrainingError` naming the file: an exact resume needs them, and accelerate only logs a failure."""
    from accelerate.utils import load

    path = resume_dir / RNG_STATE_NAME.format(process_index)
    way_out = _way_out(resume_dir)
    if not path.is_file():
        if "num_processes" in changed:  # a process the checkpoint's run did not have
            logger.warning(
                "%s is not in the checkpoint (it had fewer processes): process %d starts from the seed's random state", path.name, process_index
            )
            return None
        raise TrainingError(f"{path} is missing, and an exact resume needs the random states it holds; {way_out}")
    try:
        states = load(path)
        if not isinstance(states, dict) or not all(key in states for key in _RANDOM_STATE_KEYS):
            raise ValueError("not accelerate's random states")
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainingError(
            f"{path} cannot be read ({first_line}), and an exact resume needs the random states it holds; {way_out}"
        ) from None
    return states


def _way_out(resume_dir: Path) -> str:
    """How to get past a damaged checkpoint: the complete one before it, by path, or a new run."""
    earlier = None
    if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", resume_dir.name):
        older = [p for p in _checkpoints(resume_dir.parent) if _step_of(p) < _step_of(resume_dir) and checkpoint_problem(p) is None]
        earlier = older[-1] if older else None
    return f"resume from the earlier checkpoint by path (--resume {earlier})" if earlier else "start a new --output_dir"


def _resume(
    accelerator, args: ARTrainingArguments, resume_dir: Path, saved: dict, changed: dict[str, tuple], model, optimizer, scheduler, ema,
    total_steps: int,
):
    """Load the checkpoint into the prepared objects and apply the allowed changes; the loop's position and the EMA."""
    import random

    step = saved["global_step"]
    if total_steps < step:
        raise TrainingError(
            f"epochs={args.epochs} gives {total_steps} steps, fewer than the step of the checkpoint being resumed "
            f"({resume_dir.name}, step {step}); pass more epochs (or --max_steps {step} or more), or start a new --output_dir"
        )
    random_states = _load_random_states(resume_dir, accelerator.process_index, changed)
    try:
        accelerator.load_state(str(resume_dir))
    except Exception as err:  # a damaged file of the right size
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainingError(
            f"checkpoint {resume_dir} cannot be loaded ({type(err).__name__}: {first_line}); {_way_out(resume_dir)}"
        ) from err
    if random_states is not None and not (
        torch.equal(torch.get_rng_state(), random_states["torch_manual_seed"]) and random.getstate() == random_states["random_state"]
    ):
        raise TrainingError(
            f"the random states in {resume_dir / RNG_STATE_NAME.format(accelerator.process_index)} were not restored "
            f"(accelerate could not apply them); {_way_out(resume_dir)}"
        )
    if ema is not None and (resume_dir / EMA_NAME).is_file():
        ema.load(resume_dir / EMA_NAME)  # the average so far (continued with the new decay if it changed)
    elif ema is not None:  # EMA switched on now: the average starts at the checkpoint's weights
        ema = _EMA(accelerator.unwrap_model(model), args.ema_decay)
    state = _Progress(global_step=step, epoch=saved["epoch"], consumed=saved["batches_consumed"])
    config = accelerator.unwrap_model(model).config
    _apply_changes(accelerator, args, optimizer, scheduler, state, changed, saved.get("total_steps"), total_steps, config)
    history_path = resume_dir / HISTORY_NAME
    if history_path.is_file():  # records past the checkpoint belong to the lost part of the run
        try:
            state.history = [r for r in json.loads(history_path.read_text()) if r["step"] <= step]
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise TrainingError(f"{history_path} is not a training history ({err}); {_way_out(resume_dir)}") from None
    else:
        logger.warning("%s holds no %s (written by an older masc-hf): the history starts at step %d", resume_dir, HISTORY_NAME, step)
    eval_path = Path(args.output_dir) / EVAL_HISTORY_NAME
    if eval_path.is_file():
        state.eval_history = [r for r in json.loads(eval_path.read_text()) if r["step"] <= step]
    logger.info("resumed from %s at step %d (epoch %d, %d batches into it)", resume_dir, state.global_step, state.epoch, state.consumed)
    return state, ema


def _apply_changes(
    accelerator, args, optimizer, scheduler, state: _Progress, changed: dict[str, tuple], old_total: int | None, total_steps: int, config
) -> None:
    """Make the allowed changes take effect from the checkpoint's step: load_state restored the old
    optimiser hyper-parameters, schedule position and accumulation phase."""
    world = accelerator.num_processes
    if "gradient_accumulation_steps" in changed:  # the same global batches, split into other micro-batches
        old, new = changed["gradient_accumulation_steps"]
        state.consumed = state.consumed // old * new
        accelerator.step = state.consumed
    if {"adam_beta1", "adam_beta2", "adam_eps", "weight_decay"} & set(changed):
        decay_group, no_decay_group = optimizer.param_groups
        for group in (decay_group, no_decay_group):
            group["betas"], group["eps"] = (args.adam_beta1, args.adam_beta2), args.adam_eps
        decay_group["weight_decay"] = args.weight_decay
    new_end = old_total is not None and old_total != total_steps
    if new_end:
        logger.warning(
            "the run now ends at step %d instead of %d: the cosine schedule runs to the new end from step %d on",
            total_steps, old_total, state.global_step,
        )
    if new_end or {"learning_rate", "min_learning_rate", "warmup_steps", "num_processes"} & set(changed):
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
        peak, _ = paper_learning_rates(config, args)
        before = inner.get_last_lr()[0]
        inner.last_epoch = state.global_step * world  # the prepared scheduler steps once per process
        inner.base_lrs = [peak for _ in inner.base_lrs]
        for group, lr_lambda in zip(inner.optimizer.param_groups, inner.lr_lambdas):
            group["initial_lr"], group["lr"] = peak, peak * lr_lambda(inner.last_epoch)
        inner._last_lr = [group["lr"] for group in inner.optimizer.param_groups]
        logger.warning("learning rate at step %d: %.3g before the change, %.3g now", state.global_step, before, inner._last_lr[0])


def _write_run_files(accelerator, args: ARTrainingArguments, log_with, model, cluster_loss_map=None) -> None:
    if accelerator.is_main_process:
        write_text_atomic(Path(args.output_dir) / "training_args.json", json.dumps(asdict(args), indent=2, default=str) + "\n")
    if log_with:
        config = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        model_config = accelerator.unwrap_model(model).config
        for name in ("vocab_size", "semantic_vocab_size", "detail_vocab_size"):
            if hasattr(model_config, name):
                config[name] = getattr(model_config, name)
        if cluster_loss_map is not None:
            config.update(cluster_loss_map=cluster_loss_map.fingerprint, cluster_loss_weight=_cluster_loss_weight(args, cluster_loss_map))
        accelerator.init_trackers("masc-hf", config=config)


def _progress_bar(args: ARTrainingArguments, accelerator, total_steps: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, initial=initial, desc="train", unit="step", disable=not (args.progress and accelerator.is_local_main_process))


def _train_step(accelerator, model, optimizer, scheduler, codes, labels, max_grad_norm: float, cluster_loss=None, fine=(), iar2=False):
    """Forward (teacher forcing on the whole sequence), backward, clip, optimiser and schedule step.
    Returns ``(loss, logits, parts, grad_norm)``: ``parts`` the named loss parts (cluster loss:
    ``token_loss``, ``cluster_loss``; a refiner: ``coarse_loss``, ``refiner_loss``; IAR2:
    ``semantic_loss``, ``detail_loss``), else None; an IAR2 model's ``logits`` are a dict
    ``{"semantic": ..., "detail": ...}``."""
    with accelerator.accumulate(model):
        # ids were checked where they entered (the dataset): no per-step range check (a host sync)
        if iar2:  # codes are the semantic ids, fine[0] the detail ids
            out = model(semantic_ids=codes, detail_ids=fine[0], class_labels=labels, return_loss=True, check_inputs=False)
            loss, logits = out.loss, {"semantic": out.logits_semantic, "detail": out.logits_detail}
            parts = {"semantic_loss": out.loss_semantic, "detail_loss": out.loss_detail}
        elif fine:  # a MASC model and its refiner (TwoLevelModel)
            loss, logits, parts = model(codes[:, :-1], labels, codes, fine[0])
        elif cluster_loss is None:
            out = model(input_ids=codes[:, :-1], class_labels=labels, labels=codes, check_inputs=False)
            loss, logits, parts = out.loss, out.logits, None
        else:  # the model stays flat and predicts tokens: only the loss sees the map
            logits = model(input_ids=codes[:, :-1], class_labels=labels, check_inputs=False).logits
            cluster_parts = cluster_loss(logits, codes)
            loss, parts = cluster_parts.loss, {"token_loss": cluster_parts.token_loss, "cluster_loss": cluster_parts.cluster_loss}
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients and max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, logits, parts, grad_norm


def _mean_over_processes(accelerator, value: torch.Tensor) -> float:
    return float(accelerator.reduce(value.detach(), reduction="mean"))


def _log_step(accelerator, log_with, progress, state: _Progress, logits, parts, grad_norm, scheduler, tokens_per_s: float) -> None:
    """One history record; with loss parts (a cluster loss, a refiner), each besides the total."""
    losses = {name: _mean_over_processes(accelerator, value) for name, value in (parts or {}).items()}
    if isinstance(logits, dict):  # an IAR2 model: the entropy of each sub-token's prediction (the first is shown)
        entropies = {}
        for name, part in logits.items():
            entropies[f"entropy_{name}"], entropies[f"entropy_{name}_normalized"] = prediction_entropy(part.detach())
        entropy_norm = next(value for key, value in entropies.items() if key.endswith("_normalized"))
    else:
        entropy, entropy_norm = prediction_entropy(logits.detach())
        entropies = {"entropy": entropy, "entropy_normalized": entropy_norm}
    record = {
        "step": state.global_step,
        "epoch": state.epoch,
        "loss": state.loss,
        **losses,
        **entropies,
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


def _save_checkpoint(
    accelerator, output_dir: Path, ema: _EMA | None, state: _Progress, keep: int, record: dict[str, Any], total_steps: int
) -> None:
    """accelerate's state into a staging directory every process writes to, renamed when complete;
    ``trainer_state.json`` (written last) records the run's settings and every file's size."""
    from accelerate.utils import broadcast_object_list

    target = output_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
    staging = [None]
    if accelerator.is_main_process:
        import tempfile

        output_dir.mkdir(parents=True, exist_ok=True)
        clean_leftovers(target)  # staging directories of this checkpoint left by a killed run
        staging = [tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=output_dir)]  # _io's name pattern
    if accelerator.num_processes > 1:
        broadcast_object_list(staging)
    tmp = Path(staging[0])
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every process's random states are written before the files are listed
    if accelerator.is_main_process:
        if ema is not None:
            ema.save(tmp / EMA_NAME)
        write_text_atomic(tmp / HISTORY_NAME, json.dumps(state.history, indent=1) + "\n")
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        saved = {
            "global_step": state.global_step, "epoch": state.epoch, "batches_consumed": state.consumed, "loss": state.loss,
            "time": time.time(), "total_steps": total_steps, "run": record, "files": files,
        }
        write_text_atomic(tmp / STATE_NAME, json.dumps(saved, indent=2) + "\n")
        publish_dir(tmp, target)  # usual permissions, then the rename
        # only this run's checkpoints rotate: a later one left by an abandoned run is replaced when reached
        done = [p for p in _checkpoints(output_dir) if _step_of(p) <= state.global_step and (p / STATE_NAME).is_file()]
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
        refiner = getattr(final, "refiner", None)
        final = getattr(final, "model", final)  # a TwoLevelModel: the MASC model and its refiner
        model_dir = output_dir / "model"
        with staged_dir(model_dir) as tmp:
            final.save_pretrained(tmp)
        write_text_atomic(output_dir / HISTORY_NAME, json.dumps(state.history, indent=1) + "\n")
        output.model, output.model_dir = final, str(model_dir)
        if refiner is not None:
            with staged_dir(output_dir / "refiner") as tmp:
                refiner.save_pretrained(tmp)
            output.refiner, output.refiner_dir = refiner, str(output_dir / "refiner")
        if vqvae is not None:
            class_names = getattr(train_dataset, "class_names", None)
            output.pipeline_dir = str(write_pipeline(final, vqvae, cluster_map, output_dir / "pipeline", class_names, refiner=refiner))
    accelerator.end_training()
    return output


def write_pipeline(model, vqvae, cluster_map, out_dir: Path, class_names: list[str] | None = None, refiner=None) -> Path:
    """A ``MASCPipeline`` directory of a trained model, its VQ tokenizer, its map (and refiner); an
    ``IAR2Pipeline`` for an IAR2 model and its dual tokenizer."""
    from ..pipelines import IAR2Pipeline, MASCPipeline

    id2label = dict(enumerate(class_names)) if class_names and len(class_names) == model.config.num_classes else None
    if is_iar2(model):
        pipe = IAR2Pipeline(transformer=model.eval(), vqvae=vqvae, id2label=id2label)
    else:
        pipe = MASCPipeline(transformer=model.eval(), vqvae=vqvae, cluster_map=cluster_map, id2label=id2label, refiner=refiner)
    with staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return out_dir
