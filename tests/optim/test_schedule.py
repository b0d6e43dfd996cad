"""The reference's LR warm-down (by steps and by time) and Muon momentum warm-up."""

from __future__ import annotations

import pytest

from pgolf.optim.schedule import lr_scale, muon_momentum


def test_step_based_warmdown():
    assert lr_scale(0, 0, 100, 20, None) == 1.0
    assert lr_scale(79, 0, 100, 20, None) == 1.0
    assert lr_scale(80, 0, 100, 20, None) == 1.0  # (100 - 80) / 20
    assert lr_scale(90, 0, 100, 20, None) == pytest.approx(0.5)
    assert lr_scale(99, 0, 100, 20, None) == pytest.approx(0.05)
    assert lr_scale(5, 0, 100, 0, None) == 1.0


def test_time_based_warmdown_ends_at_the_cap():
    # 100 ms per step so far, 10-step warm-down = last 1000 ms of a 10 s cap
    assert lr_scale(50, 5000.0, 10_000, 10, 10_000.0) == 1.0
    assert lr_scale(95, 9500.0, 10_000, 10, 10_000.0) == pytest.approx(0.5)
    assert lr_scale(100, 10_000.0, 10_000, 10, 10_000.0) == 0.0


def test_muon_momentum_warmup():
    assert muon_momentum(0, 0.85, 0.95, 500) == pytest.approx(0.85)
    assert muon_momentum(250, 0.85, 0.95, 500) == pytest.approx(0.90)
    assert muon_momentum(10_000, 0.85, 0.95, 500) == pytest.approx(0.95)
    assert muon_momentum(3, 0.85, 0.95, 0) == 0.95
