"""Turning logits into ids: top-k / top-p filtering, temperature, and draws that are reproducible per
image (inverse CDF at uniforms drawn from each image's own generator)."""

from __future__ import annotations

import math

import torch

from ...errors import ModelInputError


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k (ties with the k-th survive) and outside the nucleus.

    The nucleus keeps the most probable ids up to and including the one at which the cumulative
    probability first exceeds ``top_p``; the best id always survives. ``logits`` is ``[R, V]``.
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = _compilable_cumsum(sorted_logits.softmax(dim=-1))
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p  # dropped once the ids before it already exceed p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """One id per row of ``logits`` ``[R, V]``: argmax when ``temperature == 0``, else a filtered draw.

    The draw is ``torch.multinomial`` with ``generator``; given ``uniforms`` ``[R]`` in [0, 1) it is
    instead the inverse CDF of row r at ``uniforms[r]``, so each row depends on its own number only
    (and no generator enters the computation, which a compiled step needs).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / max(temperature, 1e-5), top_k, top_p)
    probs = logits.softmax(dim=-1)
    if uniforms is None:
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return inverse_cdf_sample(probs, uniforms)


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row r of ``probs`` ``[R, V]`` sampled at ``uniforms[r]`` in [0, 1): the first id whose cumulative
    probability (float64) exceeds ``uniforms[r]`` times the row total; never an id of probability 0."""
    cdf = _compilable_cumsum(probs.double())
    total = cdf[:, -1:]
    target = uniforms.to(cdf)[:, None] * total
    if torch.compiler.is_compiling():  # the same index as searchsorted(right=True) on a sorted row, as a count:
        ids = (cdf <= target).sum(dim=-1)  # inductor's CUDA searchsorted cannot read the blocked CDF (a view)
    else:
        ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    last_positive = (cdf < total).sum(dim=-1)  # rounding can put u * total on the total itself
    return torch.minimum(ids, last_positive)


def _compilable_cumsum(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """``x.cumsum(-1)``; under ``torch.compile`` as scans of ``block`` columns plus a scan of the block
    totals. Inductor's CUDA code for one long scan (a split scan at V = 16,384) failed to compile
    (torch 2.11 on an H200, seen by benchmarks/gpu_check.sh); short scans do not. Eager calls keep
    torch's cumsum, so eager draws are unchanged; the two orders of summation differ by rounding only."""
    if not torch.compiler.is_compiling() or x.shape[-1] <= block:
        return x.cumsum(dim=-1)
    width = x.shape[-1]
    padded = torch.nn.functional.pad(x, (0, -width % block)).unflatten(-1, (-1, block))  # zeros at the end change no sum
    inner = padded.cumsum(dim=-1)
    before = torch.nn.functional.pad(inner[..., -1].cumsum(dim=-1)[..., :-1], (1, 0))  # the sum of every earlier block
    return (inner + before[..., None]).flatten(-2)[..., :width]


def per_image_uniforms(generators, batch_size: int, count: int, device: torch.device) -> torch.Tensor:
    """``[B, count]`` float64 uniforms, row b drawn from ``generators[b]`` (on that generator's device).

    This is how one image's random numbers stay its own: image b consumes ``count`` numbers of its
    generator, whatever else is in the batch.
    """
    if len(generators) != batch_size:
        raise ModelInputError(
            f"generator is a list of {len(generators)} generators but there are {batch_size} class labels; "
            "pass one torch.Generator per image, or a single torch.Generator"
        )
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise ModelInputError(f"a generator list must hold torch.Generator objects, got {type(g).__name__}")
    return torch.stack([torch.rand(count, generator=g, device=g.device, dtype=torch.float64) for g in generators]).to(device)


def check_sampling_options(guidance_scale: float, temperature: float, top_k: int, top_p: float, cfg_interval: int, has_null_class: bool) -> None:
    """Raise :class:`ModelInputError` naming the first option that cannot be used, and the fix."""
    if not guidance_scale >= 0:  # also rejects NaN
        raise ModelInputError(
            f"guidance_scale={guidance_scale} must be >= 0; use 1.0 for no guidance or e.g. 4.0 for classifier-free guidance"
        )
    if guidance_scale != 1.0 and not has_null_class:
        raise ModelInputError(
            f"guidance_scale={guidance_scale} needs a null class, but this model has none (class_dropout_prob=0); "
            "use guidance_scale=1.0"
        )
    if not temperature >= 0:
        raise ModelInputError(f"temperature={temperature} must be >= 0; use 1.0 to sample, 0 for greedy")
    if int(top_k) != top_k or top_k < 0:
        raise ModelInputError(f"top_k={top_k} must be a non-negative integer; use 0 to keep every id")
    if not 0.0 < top_p <= 1.0:
        raise ModelInputError(f"top_p={top_p} must be in (0, 1]; use 1.0 to turn nucleus sampling off")
    if int(cfg_interval) != cfg_interval or cfg_interval < -1:
        raise ModelInputError(f"cfg_interval={cfg_interval} must be -1 (always guide) or a step index >= 0")


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of ``softmax(logits)`` at every position: ``[..., V]`` -> ``[...]``
    (the MASC paper's Eq. 6 before averaging; the evaluation protocol around it is
    :func:`masc_hf.evaluation.entropy_per_position`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2)


def prediction_entropy(logits: torch.Tensor) -> tuple[float, float]:
    """Mean Shannon entropy in bits of ``softmax(logits)`` over all positions (Eq. 6), and the same
    divided by ``log2(V)`` (normalised entropy: 1 is uniform). ``logits``: ``[..., V]``."""
    value = float(entropy_bits(logits).mean())
    return value, value / math.log2(logits.shape[-1])
