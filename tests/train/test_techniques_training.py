"""Training-technique options end to end: the averaged weights are what is checkpointed, exported
and scored, and the record options run through the real loop."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import pgolf.train.loop as loop
from pgolf.export.loading import load_weights
from pgolf.optim.averaging import EMA, SWA
from pgolf.train.loop import ARTIFACT_NAME, CHECKPOINT_NAME, train

from test_training import tiny_config, train_losses, train_single_and_two_gloo_ranks


class _Spy:
    """Wraps the run's averager to record the trained and the averaged weights at the swap."""

    def __init__(self, inner):
        self.inner = inner
        self.trained = self.averaged = None

    def update(self, model, step, lr_scale):
        self.inner.update(model, step, lr_scale)

    def averaged_state(self, model):
        self.trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.averaged = self.inner.averaged_state(model)
        return self.averaged

    def describe(self):
        return self.inner.describe()


@pytest.mark.parametrize("extra", [("EMA_DECAY=0.8",), ("SWA_ENABLED=1", "SWA_EVERY=2", "SWA_START_FRAC=1.01")])
def test_exported_artifact_holds_the_averaged_weights(shared_data, tmp_path, monkeypatch, extra):
    spies = []

    def spy_builder(*args):
        spies.append(_Spy(loop_build(*args)))
        return spies[-1]

    loop_build = loop.build_averager
    monkeypatch.setattr(loop, "build_averager", spy_builder)
    train(tiny_config(shared_data, 6, "RUN_ID=avg", *extra), runs_dir=tmp_path, echo=False)
    spy = spies[0]
    assert isinstance(spy.inner, EMA if "EMA" in extra[0] else SWA)
    checkpoint = load_file(str(tmp_path / "avg" / CHECKPOINT_NAME))
    exported, _ = load_weights(tmp_path / "avg" / ARTIFACT_NAME)
    moved = 0
    for name, averaged in spy.averaged.items():
        assert torch.equal(checkpoint[name], averaged), name
        to_average = (exported[name].float() - averaged.float()).norm()
        to_trained = (exported[name].float() - spy.trained[name].float()).norm()
        if not torch.equal(averaged, spy.trained[name]):
            moved += 1
            assert to_average < to_trained, name
    assert moved > 0
    assert "weight average: applied" in (tmp_path / "avg" / "train.log").read_text()


RECORD_OPTIONS = ("MUON_WD=0.095", "WD_TAPER_START_FRAC=0.5", "WD_TAPER_FINAL_MULT=0.5", "MUON_ROW_NORMALIZE=1",
                  "PGOLF_MUON_NS_SCHEDULE=polar_express", "EMBED_WD=0.085", "ADAM_WD=0.02", "WARMDOWN_FRAC=0.5",
                  "MIN_LR=0.1", "GRAD_CLIP_NORM=0.3", "PGOLF_LOADER=coprime", "PGOLF_PARALLEL_MUON=1", "EMA_DECAY=0.9")


def test_record_options_train_the_same_on_one_and_two_gloo_ranks(shared_data, tmp_path):
    """Every training option at once through the real loop; the window loader's rank-independent stream
    and Parallel Muon make 2 DDP ranks follow the single process."""
    common = ["GRAD_ACCUM_STEPS=0", "TRAIN_BATCH_TOKENS=2048", "TRAIN_SEQ_LEN=128", *RECORD_OPTIONS]
    single, ddp = train_single_and_two_gloo_ranks(shared_data, tmp_path, common)
    assert len(single) == len(ddp) == 4 and single[-1] < single[0]
    assert max(abs(a - b) for a, b in zip(single, ddp)) < 1e-4
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("single", "ddp")]
    assert abs(results[0]["val_loss"] - results[1]["val_loss"]) < 1e-4
