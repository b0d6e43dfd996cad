"""The flip check passes for every production evaluator and fails on a planted leaky TTT;
the normalization check holds for the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pgolf.check.flip import evaluator_for, flip_check, pick_flips
from pgolf.check.normalization import normalization_check
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.sliding import evaluate_windows, ledger_result
from pgolf.eval.ttt.sgd import sgd_epochs, trainable_parameters, windows_by_chunk
from pgolf.eval.windows import plan

STREAM = 768
CHUNK = 256


@pytest.fixture(scope="module")
def flip_setup(trained_tiny):
    t = trained_tiny
    tokens = t.val_tokens[: STREAM + 1].copy()
    # flips inside the second chunk (targets 256..511), away from its first target
    flips = [(p + 300, new) for p, new in pick_flips(tokens[300:500], 2, 1024, t.bos_id, seed=1)]
    return t, tokens, flips


@pytest.mark.parametrize("mode", ["standard", "sliding", "sgd", "lora", "phased"])
def test_flip_check_passes_for_production_evaluators(flip_setup, ttt_settings, mode):
    t, tokens, flips = flip_setup
    settings = ttt_settings(f"TTT_CHUNK_TOKENS={CHUNK}", f"GLOBAL_TTT_CHUNK_TOKENS={CHUNK}", "PHASED_TTT_PREFIX_DOCS=2",
                            "TTT_EPOCHS=1")
    evaluate = evaluator_for(mode, t.model, t.table, settings, 128, t.bos_id, batch_tokens=512)
    stream = tokens[: 640 + 1] if mode == "standard" else tokens  # standard needs whole windows
    report = flip_check(evaluate, stream, mode, flips)
    assert report.ok, report.as_dict()
    assert all(o.protected > 0 for o in report.outcomes)


def leaky_sgd_ttt(model, table, seq_len=128):
    """Planted leak: train on each chunk read straight from the raw stream, then score it."""

    def evaluate(tokens: np.ndarray):
        adapted = copy.deepcopy(model)
        ledger = ScoreLedger(tokens, table)
        groups = windows_by_chunk(plan(tokens, seq_len, 64), CHUNK, ledger.n_targets)
        opt = torch.optim.SGD(trainable_parameters(adapted, 0), lr=0.01)
        raw = torch.from_numpy(tokens.astype(np.int64))
        for c, group in enumerate(groups):
            chunk = raw[c * CHUNK : min((c + 1) * CHUNK, ledger.n_targets) + 1]
            sgd_epochs(adapted, opt, [chunk], seq_len, 8, 1, 0.01, 0.0, torch.device("cpu"))
            evaluate_windows(adapted, ledger, group, seq_len, 512, torch.device("cpu"))
        return ledger_result(ledger)

    return evaluate


def test_flip_check_fails_on_leaky_ttt(flip_setup):
    t, tokens, flips = flip_setup
    report = flip_check(leaky_sgd_ttt(t.model, t.table), tokens, "leaky-sgd", flips)
    assert not report.ok
    assert all(o.changed > 0 for o in report.outcomes)


def test_normalization(trained_tiny):
    report = normalization_check(trained_tiny.model, trained_tiny.val_tokens, 128, samples=32)
    assert report.ok, report.as_dict()
    assert report.max_sum_error < 1e-6
