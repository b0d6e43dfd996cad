"""The training-technique options: record env names, baseline defaults, one-line errors for bad combinations."""

from __future__ import annotations

import pytest

from pgolf.errors import PgolfError
from pgolf.presets import build_config


def test_record_env_names_set_the_fields():
    cfg = build_config("baseline", [], environ={"MUON_WD": "0.095", "WARMDOWN_FRAC": "0.72", "MIN_LR": "0.1",
                                                "EMA_DECAY": "0.9965", "MUON_ROW_NORMALIZE": "1"})
    assert (cfg.optim.muon_wd, cfg.train.warmdown_frac, cfg.train.min_lr) == (0.095, 0.72, 0.1)
    assert cfg.train.ema_decay == 0.9965 and cfg.optim.muon_row_normalize is True


def test_defaults_are_the_reference():
    cfg = build_config("baseline", [], environ={})
    o, t = cfg.optim, cfg.train
    assert (o.muon_wd, o.embed_wd, o.adam_wd, o.grad_clip_norm) == (0.0, 0.0, 0.0, 0.0)
    assert (o.muon_row_normalize, o.muon_ns_schedule, o.muon_parallel) == (False, "quintic", False)
    assert (t.warmdown_frac, t.min_lr, t.ema_decay, t.swa_enabled, t.loader) == (0.0, 0.0, 0.0, False, "sequential")


@pytest.mark.parametrize("overrides, needle", [
    (["EMA_DECAY=0.99", "SWA_ENABLED=1"], "choose one"),
    (["PGOLF_MUON_NS_SCHEDULE=polar_express", "MUON_BACKEND_STEPS=6"], "MUON_BACKEND_STEPS=6"),
    (["PGOLF_MUON_NS_SCHEDULE=cubic"], "PGOLF_MUON_NS_SCHEDULE"),
    (["PGOLF_LOADER=random"], "PGOLF_LOADER"),
    (["EMA_DECAY=1"], "EMA_DECAY"),
    (["MUON_WD=-0.1"], "MUON_WD"),
    (["WARMDOWN_FRAC=1.5"], "WARMDOWN_FRAC"),
    (["SWA_EVERY=0"], "SWA_EVERY"),
])
def test_bad_combinations_are_one_line_errors(overrides, needle):
    with pytest.raises(PgolfError, match=needle) as info:
        build_config("baseline", overrides, environ={})
    assert "\n" not in str(info.value)
