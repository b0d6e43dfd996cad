"""`pgolf train` with the fused Triton kernels (FUSED_CE, FUSED_MLP): the same trajectory as the
unfused run on real data (Triton's CPU interpreter here; fp32), and a clear refusal where they
cannot run."""

from __future__ import annotations

import json

import pytest

from pgolf.errors import PgolfError
from pgolf.kernels.support import triton_interpreting
from pgolf.train.loop import train
from tests.train.test_training import tiny_config, train_losses

pytest.importorskip("triton", reason="triton is not installed (it comes with the dev extra on Linux x86-64)")
pytestmark = pytest.mark.skipif(
    not triton_interpreting(),
    reason="runs the kernels on CPU tensors in Triton's interpreter (tests/conftest.py sets it without CUDA); "
           "tests/gpu/test_fused_kernels_gpu.py covers CUDA")

# two 128-token rows a step keep the interpreted cross-entropy (one program per row) quick
SMALL = ("TRAIN_BATCH_TOKENS=256", "MLP_ACTIVATION=leaky_relu2", "Z_LOSS=0.0001")


def test_fused_training_follows_the_unfused_trajectory(shared_data, tmp_path):
    train(tiny_config(shared_data, 4, "RUN_ID=plain", *SMALL), runs_dir=tmp_path, echo=False)
    train(tiny_config(shared_data, 4, "RUN_ID=fused", "FUSED_CE=1", "FUSED_MLP=1", *SMALL), runs_dir=tmp_path, echo=False)
    plain, fused = train_losses(tmp_path / "plain"), train_losses(tmp_path / "fused")
    assert len(fused) == 4
    assert fused == pytest.approx(plain, abs=1e-4)
    recorded = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert recorded["train"]["fused_ce"] is True and recorded["train"]["fused_mlp"] is True


def test_a_machine_that_cannot_run_them_is_refused_before_training(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(PgolfError, match="FUSED_MLP=1: fused Triton kernels cannot run here: they need a CUDA device"):
        train(tiny_config(shared_data, 2, "FUSED_MLP=1"), runs_dir=tmp_path, echo=False)
    assert not any(tmp_path.iterdir())
