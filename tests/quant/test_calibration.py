"""GPTQ calibration: the training cap pays for it, and self-generated data is the model's own samples."""

from __future__ import annotations

import pytest
import torch

from pgolf.config import QuantConfig
from pgolf.errors import PgolfError
from pgolf.presets import build_config
from pgolf.quant.calibration import calibration_hessians, generate_calibration_tokens
from pgolf.quant.gptq import TIED_EMBED_NAME
from pgolf.train.loop import training_cap_ms


@pytest.mark.parametrize("overrides, cap", [
    (["MAX_WALLCLOCK_SECONDS=600", "USE_GPTQ=1", "GPTQ_RESERVE_SECONDS=12"], 588_000.0),
    (["MAX_WALLCLOCK_SECONDS=600", "USE_GPTQ=1", "GPTQ_RESERVE_SECONDS=0.5"], 599_500.0),
    (["MAX_WALLCLOCK_SECONDS=600", "USE_GPTQ=0", "GPTQ_RESERVE_SECONDS=12"], 600_000.0),  # no GPTQ: no reserve
    (["MAX_WALLCLOCK_SECONDS=0", "USE_GPTQ=1", "GPTQ_RESERVE_SECONDS=12"], None),  # no cap: nothing to reserve from
    (["MAX_WALLCLOCK_SECONDS=3", "USE_GPTQ=1", "GPTQ_RESERVE_SECONDS=12"], 0.0),
])
def test_training_cap_is_reduced_by_the_gptq_reserve(overrides, cap):
    assert training_cap_ms(build_config("baseline", overrides, environ={})) == cap


def test_bad_gptq_settings_are_refused():
    for bad in ("GPTQ_RESERVE_SECONDS=-1", "GPTQ_CALIBRATION_BATCHES=0", "GPTQ_TEMPERATURE=0", "LQER_RANK=0"):
        with pytest.raises(PgolfError, match=bad.split("=")[0]):
            build_config("baseline", [bad], environ={})


def test_self_generation_is_deterministic_for_a_seed(trained_tiny):
    model, _ = trained_tiny
    a = generate_calibration_tokens(model, 3, 12, 1024, 0.8, 2, seed=5)
    b = generate_calibration_tokens(model, 3, 12, 1024, 0.8, 2, seed=5)
    c = generate_calibration_tokens(model, 3, 12, 1024, 0.8, 2, seed=6)
    assert a.shape == (3, 12) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_self_generated_tokens_are_the_models_samples(trained_tiny):
    model, _ = trained_tiny
    # Near zero temperature sampling is argmax: every token must be the model's own top choice.
    tokens = generate_calibration_tokens(model, 2, 10, 1024, 1e-4, 2, seed=0)
    with torch.no_grad():
        logits = model.logits(tokens)
    assert torch.equal(tokens[:, 1:], logits[:, :-1].argmax(dim=-1))
    # At temperature 1 the tokens follow the model's distribution: they are the successors the
    # model learned for the Markov source far more often than chance (4 of 1024).
    from tests.quant.conftest import successor_table

    tokens = generate_calibration_tokens(model, 4, 32, 1024, 1.0, 4, seed=1)
    table = successor_table()
    hits = (table[tokens[:, :-1]] == tokens[:, 1:, None]).any(dim=-1).float().mean()
    assert hits > 0.5


class _NoData:
    def next_batch(self, *args):
        raise AssertionError("self-generated calibration read training data")


def test_self_calibration_reads_no_data_and_train_calibration_does(trained_tiny):
    model, batches = trained_tiny
    q = QuantConfig(gptq_ar_selfgen=True, gptq_calib_samples=2, gptq_batch_size=2)
    h = calibration_hessians(model, q, 16, 1024, torch.device("cpu"), 0, loader=_NoData())
    assert TIED_EMBED_NAME in h and "blocks.0.mlp.fc.weight" in h

    class Loader:
        calls = 0

        def next_batch(self, batch_tokens, seq_len, grad_accum):
            Loader.calls += 1
            return batches[0], batches[0]

    q = QuantConfig(gptq_calibration_batches=3)
    calibration_hessians(model, q, 64, 1024, torch.device("cpu"), 0, loader=Loader(), batch_tokens=512)
    assert Loader.calls == 3
    with pytest.raises(PgolfError, match="training data"):
        calibration_hessians(model, q, 64, 1024, torch.device("cpu"), 0, loader=None)
