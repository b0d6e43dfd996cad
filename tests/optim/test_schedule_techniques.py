"""WARMDOWN_FRAC, MIN_LR, the WD taper and gradient clipping at their boundary points."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from types import SimpleNamespace

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


def nested_function(module, outer: str, name: str, **free):
    """The function ``name`` defined inside the oracle's top-level ``outer`` (``main``'s ``lr_mul``),
    compiled from the oracle's own source with its free variables (``args``, ``max_wallclock_ms``)
    bound to ``free``."""
    source = Path(module.__file__).read_text()
    top = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == outer)
    node = next(n for n in ast.walk(top) if isinstance(n, ast.FunctionDef) and n.name == name)
    ns = {**vars(module), **free}
    exec(compile(ast.Module(body=[node], type_ignores=[]), module.__file__, "exec"), ns)
    return ns[name]


CAPS = [None, 600_000.0, 20_000.0]  # no cap, the challenge's 10 minutes, a short one
STEPS = [0, 1, 7, 50, 79, 80, 81, 99, 100, 130]
ELAPSED = [0.0, 1.0, 5_000.0, 14_999.0, 19_999.5, 20_000.0, 450_000.0, 599_000.0, 600_000.0, 700_000.0]


def test_default_schedule_is_the_references_lr_mul(oracle):
    # The reference's own lr_mul (main() of its train_gpt.py): step-based without a cap, time-based
    # warm-down (WARMDOWN_ITERS x the mean step time so far) with one.
    ref = oracle("reference/train_gpt.py")
    for iterations, warmdown_iters, cap in itertools.product([100, 20_000], [0, 20, 1200, 30_000], CAPS):
        args = SimpleNamespace(iterations=iterations, warmdown_iters=warmdown_iters)
        lr_mul = nested_function(ref, "main", "lr_mul", args=args, max_wallclock_ms=cap)
        for step, elapsed in itertools.product(STEPS, ELAPSED):
            expected = lr_mul(step, elapsed)
            assert lr_scale(step, elapsed, iterations, warmdown_iters, cap) == expected, (iterations, warmdown_iters, cap, step, elapsed)


def test_warmdown_frac_and_min_lr_are_r44s_lr_mul(oracle):
    # R44's training_frac + lr_mul (in its train_model()): WARMDOWN_FRAC of training by time or steps, MIN_LR floor.
    r44 = oracle("R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py")
    for warmdown_frac, min_lr, cap in itertools.product([0.75, 0.72, 1.0], [0.0, 0.1], CAPS):
        h = SimpleNamespace(iterations=100, warmdown_frac=warmdown_frac, min_lr=min_lr)
        frac = nested_function(r44, "train_model", "training_frac", h=h, max_wallclock_ms=cap)
        lr_mul = nested_function(r44, "train_model", "lr_mul", h=h)
        for step, elapsed in itertools.product(STEPS, ELAPSED):
            expected = lr_mul(frac(step, elapsed))
            got = lr_scale(step, elapsed, 100, 1200, cap, warmdown_frac=warmdown_frac, min_lr=min_lr)
            assert got == expected, (warmdown_frac, min_lr, cap, step, elapsed)


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
