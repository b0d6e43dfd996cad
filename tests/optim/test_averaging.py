"""EMA follows its recursion; SWA is the mean of the snapshots it was due to take."""

from __future__ import annotations

import torch
from torch import nn

from pgolf.optim.averaging import EMA, SWA, build_averager


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))


def _perturb(model: nn.Module, k: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * (k + 1))


def test_ema_matches_its_formula_over_several_steps():
    model = _model()
    d = 0.9
    expected = {n: t.detach().double().clone() for n, t in model.state_dict().items()}
    ema = EMA(model, d)
    for k in range(5):
        _perturb(model, k)
        ema.update(model, k + 1, 1.0)
        for n, t in model.state_dict().items():
            expected[n] = d * expected[n] + (1 - d) * t.double()
    out = ema.averaged_state(model)
    for n in expected:
        assert torch.allclose(out[n].double(), expected[n], atol=1e-6), n


def test_swa_is_the_mean_of_the_due_snapshots():
    model = _model()
    swa = SWA(every=2, start_lr_scale=0.5)
    snaps = []
    schedule = [(1, 0.4), (2, 0.9), (4, 0.4), (5, 0.1), (6, 0.2), (8, 0.5)]  # only steps 4 and 6 are due
    for k, (step, scale) in enumerate(schedule):
        _perturb(model, k)
        swa.update(model, step, scale)
        if step % 2 == 0 and scale < 0.5:
            snaps.append({n: t.clone() for n, t in model.state_dict().items()})
    assert swa.count == 2
    out = swa.averaged_state(model)
    for n in out:
        assert torch.allclose(out[n], (snaps[0][n] + snaps[1][n]) / 2, atol=1e-6)


def test_swa_without_snapshots_keeps_the_weights_and_default_builds_nothing():
    model = _model()
    swa = SWA(every=50, start_lr_scale=0.2)
    swa.update(model, 50, 0.9)
    assert swa.averaged_state(model) is None
    assert build_averager(0.0, False, 50, 0.5, model) is None
    assert isinstance(build_averager(0.99, False, 50, 0.5, model), EMA)


def test_integer_buffers_are_not_averaged():
    model = _model()
    model.register_buffer("steps", torch.tensor(3, dtype=torch.int64))
    ema = EMA(model, 0.5)
    model.steps += 4
    _perturb(model, 0)
    ema.update(model, 1, 1.0)
    out = ema.averaged_state(model)
    assert out["steps"].dtype == torch.int64 and int(out["steps"]) == 7
    assert set(out) == set(model.state_dict())
