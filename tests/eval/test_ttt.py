"""Score-first TTT on a model trained in the tests: the ledger refuses leaks, runs are reproducible,
every target is scored once, and adaptation helps (or at least runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.eval.ledger import ScoreFirstViolation, ScoreLedger
from pgolf.eval.sliding import evaluate_sliding, evaluate_windows, ledger_result
from pgolf.eval.ttt import run_ttt
from pgolf.eval.ttt.sgd import sgd_epochs, trainable_parameters, windows_by_chunk
from pgolf.eval.windows import plan

TTT_TOKENS = 1024


@pytest.fixture(scope="module")
def stream(trained_tiny):
    return trained_tiny.val_tokens[: TTT_TOKENS + 1]


@pytest.fixture(scope="module")
def ttt_runs(trained_tiny, stream, ttt_settings):
    t = trained_tiny
    return {kind: run_ttt(kind, t.model, stream, t.table, ttt_settings(), 128, t.bos_id) for kind in ("sgd", "lora", "phased")}


@pytest.mark.parametrize("kind", ["sgd", "lora", "phased"])
def test_ttt_scores_every_target_once_and_improves(trained_tiny, stream, ttt_runs, kind):
    t = trained_tiny
    result = ttt_runs[kind]
    assert result.score.tokens == TTT_TOKENS and not np.isnan(result.token_losses).any()
    # the same context each kind scores with, without adaptation
    baseline = evaluate_sliding(t.model, stream, 128, 64, t.table,
                                bos_id=None if kind == "sgd" else t.bos_id).score
    assert result.score.val_bpb < baseline.val_bpb + 0.01


@pytest.mark.parametrize("kind", ["sgd", "lora", "phased"])
def test_ttt_per_token_losses_are_reproducible(trained_tiny, stream, ttt_runs, kind, ttt_settings):
    t = trained_tiny
    again = run_ttt(kind, t.model, stream, t.table, ttt_settings(), 128, t.bos_id)
    assert np.array_equal(again.token_losses.view(np.uint32), ttt_runs[kind].token_losses.view(np.uint32))


def test_ttt_leaves_the_callers_model_untouched(trained_tiny, ttt_settings):
    before = {k: v.clone() for k, v in trained_tiny.model.state_dict().items()}
    run_ttt("sgd", trained_tiny.model, trained_tiny.val_tokens[:600], trained_tiny.table, ttt_settings(), 128, trained_tiny.bos_id)
    assert all(torch.equal(before[k], v) for k, v in trained_tiny.model.state_dict().items())


def train_then_score_through_the_ledger(model, tokens, table, s, seq_len=128):
    """A planted violation: chunked SGD that trains on each chunk BEFORE scoring it."""
    ledger = ScoreLedger(tokens, table)
    groups = windows_by_chunk(plan(tokens, seq_len, 64), s.ttt_chunk_tokens, ledger.n_targets)
    opt = torch.optim.SGD(trainable_parameters(model, 0), lr=s.ttt_lr)
    for c, group in enumerate(groups):
        end = min((c + 1) * s.ttt_chunk_tokens, ledger.n_targets)
        sgd_epochs(model, opt, [ledger.training_tokens(c * s.ttt_chunk_tokens, end)], seq_len, 8, 1, s.ttt_lr, 0.0, torch.device("cpu"))
        evaluate_windows(model, ledger, group, seq_len, 4096, torch.device("cpu"))
    return ledger_result(ledger)


def test_ledger_raises_on_a_planted_train_before_score(trained_tiny, stream, ttt_settings):
    import copy

    with pytest.raises(ScoreFirstViolation, match="target 0 is not scored yet"):
        train_then_score_through_the_ledger(copy.deepcopy(trained_tiny.model), stream, trained_tiny.table, ttt_settings())
