"""Sliding and document-isolated evaluation on a model trained in the tests, and the ledger's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.eval.evaluate import evaluate, trim_to_windows
from pgolf.eval.ledger import ScoreFirstViolation, ScoreLedger
from pgolf.eval.sliding import evaluate_sliding


def test_stride_64_beats_standard_and_scores_every_target(trained_tiny):
    t = trained_tiny
    seq_len = t.cfg.eval_seq_len
    tokens = trim_to_windows(t.val_tokens, seq_len)
    standard = evaluate(t.model, tokens, seq_len, t.table, batch_tokens=4096).score
    sliding = evaluate_sliding(t.model, tokens, seq_len, 64, t.table, batch_tokens=4096)
    n_targets = tokens.shape[0] - 1
    assert sliding.score.tokens == standard.tokens == n_targets
    assert sliding.score.bytes == standard.bytes
    assert sliding.score.val_bpb < standard.val_bpb, (sliding.score.val_bpb, standard.val_bpb)


def test_stride_equal_to_seq_len_reproduces_standard(trained_tiny):
    t = trained_tiny
    seq_len = t.cfg.eval_seq_len
    tokens = trim_to_windows(t.val_tokens, seq_len)
    standard = evaluate(t.model, tokens, seq_len, t.table, batch_tokens=4096, keep_token_losses=True)
    same = evaluate_sliding(t.model, tokens, seq_len, seq_len, t.table, batch_tokens=4096)
    np.testing.assert_allclose(same.token_losses, standard.token_losses, rtol=0, atol=1e-5)
    assert same.score.val_bpb == pytest.approx(standard.score.val_bpb, rel=1e-6)


def test_final_partial_window_is_scored(trained_tiny):
    t = trained_tiny
    tokens = t.val_tokens[: 1000 + 1]  # 1000 targets: not a multiple of the stride or the length
    result = evaluate_sliding(t.model, tokens, t.cfg.eval_seq_len, 64, t.table)
    assert result.score.tokens == 1000 and not np.isnan(result.token_losses).any()


def test_document_isolated_scores_every_target(trained_tiny):
    t = trained_tiny
    assert (t.val_tokens == t.bos_id).sum() > 3  # several documents in the sample
    result = evaluate_sliding(t.model, t.val_tokens, t.cfg.eval_seq_len, 64, t.table, bos_id=t.bos_id)
    assert result.score.tokens == t.val_tokens.shape[0] - 1
    # the first target of each document is predicted from the BOS alone: its loss cannot depend
    # on the previous document, so it equals the loss of a one-token window
    bos = int(np.flatnonzero(t.val_tokens[:-1] == t.bos_id)[2])
    alone = t.model(torch.tensor([[t.bos_id]]), torch.tensor([[int(t.val_tokens[bos + 1])]]), reduction="none")
    assert result.token_losses[bos] == pytest.approx(float(alone.detach()), abs=1e-5)


def test_ledger_refuses_unscored_and_double_scored_targets(trained_tiny):
    ledger = ScoreLedger(np.arange(11) % 5, trained_tiny.table)
    ledger.record(torch.arange(0, 4), torch.ones(4))
    assert ledger.training_tokens(0, 4).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ScoreFirstViolation, match="target 4 is not scored"):
        ledger.training_tokens(2, 6)
    with pytest.raises(ScoreFirstViolation, match="scored twice"):
        ledger.record(torch.tensor([3]), torch.ones(1))
    with pytest.raises(Exception, match="unscored"):
        ledger.result()
