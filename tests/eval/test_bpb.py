"""val_bpb against the reference's own ``eval_val`` and ``build_sentencepiece_luts`` on real val tokens
and a model whose losses differ per token, by hand, and with a byte sidecar by brute force."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F

from pgolf.data.shards import read_shard
from pgolf.errors import PgolfError
from pgolf.eval.bpb import BpbAccumulator, bits_per_byte
from pgolf.eval.evaluate import evaluate, trim_to_windows
from pgolf.eval.sliding import evaluate_sliding
from pgolf.tokenizer.luts import ByteTable, build_byte_table, count_target_bytes

# ids: 0 BOS (boundary), 1 "▁the", 2 "cat", 3 a byte-fallback token, 4 "▁" alone, 5 unused (boundary)
TABLE = ByteTable(
    base_bytes=np.array([0, 3, 3, 1, 0, 0], dtype=np.int16),
    has_leading_space=np.array([False, True, False, False, True, False]),
    is_boundary=np.array([True, False, False, False, False, True]),
).to_torch()


class PrevTokenModel(torch.nn.Module):
    """Logits from the previous token only, in float64: every target has its own loss, exactly the same
    whatever the batch shape (elementwise), so sums compare to ~1e-15."""

    def __init__(self, vocab: int):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.vocab = vocab
        self.a = torch.randn(vocab, generator=g, dtype=torch.float64)
        self.w = torch.randn(vocab, generator=g, dtype=torch.float64) * 3

    def forward(self, x, y, reduction="mean"):
        logits = self.a[x][..., None] * self.w
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(y)


SEQ = 128
WINDOWS = 40


@pytest.fixture(scope="module")
def real_stream(val_prefix_shard) -> np.ndarray:
    return np.asarray(read_shard(val_prefix_shard))[: WINDOWS * SEQ + 1]


@pytest.fixture(scope="module")
def sp(sp1024_model):
    return spm.SentencePieceProcessor(model_file=str(sp1024_model))


def test_byte_table_is_the_references(sp, reference_script):
    base, lead, boundary = reference_script.build_sentencepiece_luts(sp, 1024, torch.device("cpu"))
    mine = build_byte_table(sp, 1024)
    assert np.array_equal(mine.base_bytes, base.numpy())
    assert np.array_equal(mine.has_leading_space, lead.numpy())
    assert np.array_equal(mine.is_boundary, boundary.numpy())


def test_standard_eval_is_the_references_eval_val(sp, reference_script, real_stream):
    ref = reference_script
    luts = ref.build_sentencepiece_luts(sp, 1024, torch.device("cpu"))
    model = PrevTokenModel(1024)
    args = types.SimpleNamespace(val_batch_size=8 * SEQ, train_seq_len=SEQ)
    with pytest.warns(UserWarning, match="CUDA is not available"):  # its autocast("cuda") is off on CPU
        their_loss, their_bpb = ref.eval_val(args, model, 0, 1, torch.device("cpu"), 1,
                                             torch.from_numpy(real_stream.astype(np.int64)), *luts)
    score = evaluate(model, trim_to_windows(real_stream, SEQ), SEQ, build_byte_table(sp, 1024).to_torch(),
                     batch_tokens=3 * SEQ).score
    assert score.tokens == WINDOWS * SEQ
    assert score.val_loss == pytest.approx(their_loss, rel=1e-12)
    # one byte more or less in ~12,000 would move val_bpb by ~1e-4
    assert score.val_bpb == pytest.approx(their_bpb, rel=1e-12)


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
    result = evaluate(PrevTokenModel(6), trimmed, 3, TABLE, batch_tokens=3, keep_token_losses=True)
    assert result.score.tokens == 9
    # per window: 3,3,1 | 1,0,3 | 3,3,4 (the last "▁the" follows "cat", so its space byte counts)
    expected_bytes = sum([3, 3, 1, 1, 0, 3, 3, 3, 4])
    assert result.score.bytes == expected_bytes
    assert result.token_losses.shape == (9,)
    mean = float(np.mean(result.token_losses.astype(np.float64)))
    assert result.score.val_bpb == pytest.approx(bits_per_byte(mean, 9, expected_bytes), rel=1e-6)


def test_batching_does_not_change_the_score():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, size=301).astype(np.uint16)
    a = evaluate(PrevTokenModel(6), trim_to_windows(tokens, 10), 10, TABLE, batch_tokens=10).score
    b = evaluate(PrevTokenModel(6), trim_to_windows(tokens, 10), 10, TABLE, batch_tokens=70).score
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes) == (300, b.bytes)
    assert a.val_bpb == pytest.approx(b.val_bpb, rel=1e-12)


def sidecar_table(stream: np.ndarray, seed: int = 0):
    """TABLE with a random byte sidecar: every target position has its own byte count (0 at a BOS)."""
    counts = np.random.default_rng(seed).integers(1, 9, size=stream.size).astype(np.int32)
    counts[stream == 0] = 0
    return TABLE.with_stream_bytes(torch.from_numpy(counts)), counts


def test_a_sidecar_charges_each_target_its_own_position():
    stream = np.random.default_rng(1).integers(0, 5, size=61).astype(np.uint16)
    stream[0], stream[56], stream[60] = 0, 2, 2  # a BOS first (0 bytes), then targets that cost bytes where windows end
    table, counts = sidecar_table(stream)
    standard = evaluate(PrevTokenModel(6), trim_to_windows(stream, 7), 7, table, batch_tokens=14).score
    assert standard.bytes == int(counts[1 : 56 + 1].sum())  # 8 windows of 7: targets at positions 1..56
    sliding = evaluate_sliding(PrevTokenModel(6), stream, 7, 3, table, batch_tokens=14).score
    assert (sliding.tokens, sliding.bytes) == (60, int(counts[1:].sum()))  # every target, the last partial window too


def test_a_sidecar_is_never_bypassed_by_the_rule():
    table, _ = sidecar_table(np.zeros(5, dtype=np.uint16))
    with pytest.raises(ValueError, match="byte sidecar"):
        count_target_bytes(torch.tensor([0]), torch.tensor([1]), table)


def test_too_short_validation_is_a_clear_error():
    with pytest.raises(PgolfError, match="too few"):
        trim_to_windows(np.zeros(5, dtype=np.uint16), 8)
