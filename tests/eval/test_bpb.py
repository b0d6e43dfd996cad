"""val_bpb on a hand-computed example, and the evaluation window rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.errors import PgolfError
from pgolf.eval.bpb import BpbAccumulator, bits_per_byte
from pgolf.eval.evaluate import evaluate, trim_to_windows
from pgolf.tokenizer.luts import ByteTable

# ids: 0 BOS (boundary), 1 "▁the", 2 "cat", 3 a byte-fallback token, 4 "▁" alone, 5 unused (boundary)
TABLE = ByteTable(
    base_bytes=np.array([0, 3, 3, 1, 0, 0], dtype=np.int16),
    has_leading_space=np.array([False, True, False, False, True, False]),
    is_boundary=np.array([True, False, False, False, False, True]),
).to_torch()


class UniformModel(torch.nn.Module):
    """Predicts the uniform distribution over 6 ids: every target costs ln 6 nats."""

    def forward(self, x, y, reduction="mean"):
        logits = torch.zeros(*x.shape, 6)
        return F.cross_entropy(logits.reshape(-1, 6), y.reshape(-1), reduction=reduction).view_as(y)


def test_hand_computed_bytes_and_bpb():
    stream = torch.tensor([0, 1, 2, 4, 3, 0, 1])
    # targets 1,2,4,3,0,1 after 0,1,2,4,3,0:  3 (space not charged after BOS) + 3 + 1 + 1 + 0 + 3 = 11 bytes
    acc = BpbAccumulator(TABLE)
    losses = torch.full((6,), math.log(6), dtype=torch.float64)
    acc.add(losses, stream[:-1], stream[1:])
    score = acc.result()
    assert (score.tokens, score.bytes) == (6, 11)
    assert score.val_loss == pytest.approx(math.log(6))
    assert score.val_bpb == pytest.approx(math.log2(6) * 6 / 11, rel=1e-12)


def test_evaluate_scores_whole_windows_only():
    tokens = np.array([0, 1, 2, 4, 3, 0, 1, 2, 2, 1], dtype=np.uint16)  # 10 tokens, windows of 3
    trimmed = trim_to_windows(tokens, 3)
    assert trimmed.shape[0] == 10  # 3 windows use 9 targets plus the leading token
    result = evaluate(UniformModel(), trimmed, 3, TABLE, batch_tokens=3, keep_token_losses=True)
    assert result.score.tokens == 9
    # per window: 3,3,1 | 1,0,3 | 3,3,4 (the last "▁the" follows "cat", so its space byte counts)
    expected_bytes = sum([3, 3, 1, 1, 0, 3, 3, 3, 4])
    assert result.score.bytes == expected_bytes
    assert result.token_losses.shape == (9,)
    assert result.score.val_bpb == pytest.approx(bits_per_byte(math.log(6), 9, expected_bytes), rel=1e-6)


def test_batching_does_not_change_the_score():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, size=301).astype(np.uint16)
    a = evaluate(UniformModel(), trim_to_windows(tokens, 10), 10, TABLE, batch_tokens=10).score
    b = evaluate(UniformModel(), trim_to_windows(tokens, 10), 10, TABLE, batch_tokens=70).score
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes) == (300, b.bytes)
    assert a.val_bpb == pytest.approx(b.val_bpb, rel=1e-12)


def test_too_short_validation_is_a_clear_error():
    with pytest.raises(PgolfError, match="too few"):
        trim_to_windows(np.zeros(5, dtype=np.uint16), 8)
