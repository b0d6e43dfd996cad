"""apply_schedules sets the LR scale, Muon momentum, the WD taper and depth recurrence of one step together."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pgolf.model.gpt import build_model
from pgolf.optim.groups import build_optimizers
from pgolf.presets import build_config
from pgolf.train.loop import apply_schedules
from pgolf.train.rundir import RunDir


def test_apply_schedules_sets_every_scheduled_quantity():
    cfg = build_config("tiny_cpu", ["MUON_WD=0.1", "WD_TAPER_START_FRAC=0.7", "WD_TAPER_FINAL_MULT=0.5",
                                     "NUM_LOOPS=1", "LOOP_START=0", "LOOP_END=1", "ENABLE_LOOPING_AT=0.9"], environ={})
    model = build_model(cfg.model, "cpu")
    opts = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings)
    session = SimpleNamespace(cfg=cfg, opts=opts, model=model, run=RunDir(Path("unused"), enabled=False))
    apply_schedules(session, step=250, scale=0.5, frac=0.85)
    assert model.active_loops == 0  # recurrence waits for ENABLE_LOOPING_AT
    apply_schedules(session, step=260, scale=0.5, frac=0.9)
    assert model.active_loops == 1
    apply_schedules(session, step=250, scale=0.5, frac=0.85)
    for opt in opts.all:
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(0.5 * group["base_lr"])
    muon = opts.muon.param_groups[0]
    assert muon["momentum"] == pytest.approx(0.90)  # halfway from 0.85 to 0.95 over 500 steps
    assert muon["wd_scale"] == pytest.approx(0.75)  # halfway from 1 to 0.5 between frac 0.7 and 1
    assert muon["weight_decay"] == pytest.approx(0.1)
