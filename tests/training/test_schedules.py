"""The one learning-rate schedule: linear warm-up from 0, then a cosine to a floor."""

import math

import pytest
import torch

from masc_hf.errors import MASCError
from masc_hf.training.schedules import warmup_cosine_schedule


def learning_rates(steps, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = warmup_cosine_schedule(optimizer, total_steps=steps, **kwargs)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warm_up_then_cosine_to_the_floor():
    rates = learning_rates(20, warmup_steps=4, min_lr_ratio=0.1)
    assert rates[:5] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    for step in range(4, 20):
        progress = (step - 4) / 16
        assert rates[step] == pytest.approx(0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def test_no_warm_up_starts_at_the_peak():
    assert learning_rates(5, warmup_steps=0, min_lr_ratio=0.0)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"warmup_steps": -1, "min_lr_ratio": 0.1}, {"warmup_steps": 2, "min_lr_ratio": 1.5}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(MASCError):
        learning_rates(5, **kwargs)
