"""WARMDOWN_FRAC, MIN_LR, the WD taper and gradient clipping at their boundary points."""

from __future__ import annotations

import pytest
import torch

from pgolf.optim.clip import clip_gradients
from pgolf.optim.schedule import frac_warmdown_scale, lr_scale, training_frac, wd_taper_scale


def test_training_frac_by_time_under_a_cap_and_by_steps_without():
    assert training_frac(10, 3000.0, 100, 6000.0) == pytest.approx(0.5)
    assert training_frac(10, 3000.0, 100, None) == pytest.approx(0.1)


def test_frac_warmdown_boundaries():
    assert frac_warmdown_scale(0.0, 0.75) == 1.0
    assert frac_warmdown_scale(0.2499, 0.75) == 1.0
    assert frac_warmdown_scale(0.25, 0.75) == pytest.approx(1.0)  # starts at 1: continuous
    assert frac_warmdown_scale(0.625, 0.75) == pytest.approx(0.5)
    assert frac_warmdown_scale(1.0, 0.75) == 0.0
    assert frac_warmdown_scale(1.2, 0.75) == 0.0  # past the cap (last step's overshoot)


def test_min_lr_floors_the_warmdown():
    assert frac_warmdown_scale(0.95, 0.5, min_lr=0.1) == pytest.approx(0.1)
    assert frac_warmdown_scale(0.6, 0.5, min_lr=0.1) == pytest.approx(0.8)
    # with WARMDOWN_ITERS too
    assert lr_scale(99, 0, 100, 20, None, min_lr=0.1) == pytest.approx(0.1)
    assert lr_scale(90, 0, 100, 20, None, min_lr=0.1) == pytest.approx(0.5)


def test_warmdown_frac_replaces_warmdown_iters():
    # under a 10 s cap, half the time gone, warm-down over the last 80%: scale (1 - 0.5) / 0.8
    assert lr_scale(5, 5000.0, 100, 1200, 10_000.0, warmdown_frac=0.8) == pytest.approx(0.625)
    # without a cap the fraction is step / ITERATIONS
    assert lr_scale(50, 0.0, 100, 1200, None, warmdown_frac=0.8) == pytest.approx(0.625)


def test_defaults_keep_the_reference_schedule():
    for step in (0, 80, 90, 99):
        assert lr_scale(step, 0, 100, 20, None, 0.0, 0.0) == lr_scale(step, 0, 100, 20, None)


def test_wd_taper_boundaries():
    assert wd_taper_scale(0.0, 0.7, 0.5) == 1.0
    assert wd_taper_scale(0.7, 0.7, 0.5) == 1.0
    assert wd_taper_scale(0.85, 0.7, 0.5) == pytest.approx(0.75)
    assert wd_taper_scale(1.0, 0.7, 0.5) == pytest.approx(0.5)
    assert wd_taper_scale(1.3, 0.7, 0.5) == pytest.approx(0.5)
    assert wd_taper_scale(0.99, 1.0, 0.5) == 1.0  # start 1 disables


def test_grad_clip_scales_the_global_norm_to_the_limit():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])  # global norm 5
    clip_gradients([a, b], 1.0)
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(a.grad / b.grad[1], torch.tensor([0.75, 0.0, 0.0]))  # direction kept


def test_grad_clip_leaves_small_gradients_and_zero_disables():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([0.3, 0.4])
    clip_gradients([p], 1.0)
    assert torch.equal(p.grad, torch.tensor([0.3, 0.4]))
    p.grad = torch.tensor([30.0, 40.0])
    clip_gradients([p], 0.0)
    assert torch.equal(p.grad, torch.tensor([30.0, 40.0]))
