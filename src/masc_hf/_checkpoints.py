"""The one reader of original (non-Hugging-Face) checkpoints that every converter and codebook
loader uses: ``.safetensors``, or ``.pt``/``.pth``/``.ckpt``/``.bin`` read with
``torch.load(weights_only=True)`` (never unpickling objects), with the state dict possibly under a
wrapper key and its keys possibly prefixed by a ``DistributedDataParallel`` or ``torch.compile`` wrapper."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CheckpointError

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Key prefixes added by DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike, wrappers: Sequence[str] = ("model", "ema", "module", "state_dict"), state_dict_key: str | None = None) -> dict:
    """The ``{name: tensor}`` state dict of the checkpoint at ``path``.

    A torch file's state dict is the entry ``state_dict_key`` when given; else the file's dict itself
    when every value is a tensor; else the first entry of ``wrappers`` present (each reference
    script has its own order, which its converter passes). Prefixes in :data:`WRAPPER_PREFIXES`
    shared by every key are removed. Raises :class:`CheckpointError` naming the problem and the fix.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass the path of a .pt or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(
                f"{path} cannot be read with torch.load(weights_only=True): {first_line}. "
                "Only plain tensor state dicts are loaded; re-save the state dict with torch.save or safetensors"
            ) from None
        state = _select(checkpoint, path, wrappers, state_dict_key)
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries {not_tensors[:5]} are not tensors; expected a state dict of tensors")
    for prefix in WRAPPER_PREFIXES:
        if state and all(str(key).startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def _select(checkpoint, path: Path, wrappers: Sequence[str], state_dict_key: str | None) -> Mapping:
    import torch

    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(checkpoint).__name__}, not a state dict")
    if state_dict_key is not None:
        if state_dict_key not in checkpoint:
            raise CheckpointError(f"state_dict_key {state_dict_key!r} is not in {str(path)!r}; it has {sorted(map(str, checkpoint))}")
        state = checkpoint[state_dict_key]
    elif checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state = checkpoint
    else:
        found = next((key for key in wrappers if isinstance(checkpoint.get(key), Mapping)), None)
        if found is None:
            raise CheckpointError(
                f"no state dict in {str(path)!r}: expected one under {', '.join(map(repr, wrappers))}, "
                f"found keys {sorted(map(str, checkpoint))}; pass state_dict_key"
            )
        logger.info("using the state dict under %r of %s", found, path)
        state = checkpoint[found]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors, possibly under {list(wrappers)})")
    return state
