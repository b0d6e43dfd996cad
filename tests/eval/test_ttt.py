"""Score-first TTT on a model trained in the tests: every target is scored once, the scores are those
of independent references (R22's own SGD TTT; a plain per-document loop for LoRA and phased), the
ledger refuses leaks, runs are reproducible and two gloo ranks score like one process."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pgolf.eval.ledger import ScoreFirstViolation, ScoreLedger
from pgolf.eval.sliding import evaluate_sliding, evaluate_windows, ledger_result
from pgolf.eval.ttt import run_ttt
from pgolf.eval.ttt.sgd import sgd_epochs, trainable_parameters, windows_by_chunk
from pgolf.eval.windows import plan
from tests.eval.conftest import make_ttt_settings
from tests.eval.ttt_oracles import R22View, import_r22, plain_ttt

TTT_TOKENS = 1024


@pytest.fixture(scope="module")
def stream(trained_tiny):
    return trained_tiny.val_tokens[: TTT_TOKENS + 1]


@pytest.fixture(scope="module")
def ttt_runs(trained_tiny, stream, ttt_settings):
    t = trained_tiny
    return {kind: run_ttt(kind, t.model, stream, t.table, ttt_settings(), 128, t.bos_id) for kind in ("sgd", "lora", "phased")}


@pytest.mark.parametrize("kind", ["sgd", "lora", "phased"])
def test_ttt_scores_every_target_once(ttt_runs, kind):
    result = ttt_runs[kind]
    assert result.score.tokens == TTT_TOKENS and not np.isnan(result.token_losses).any()


def test_sgd_ttt_matches_r22s_own_score_first_ttt(trained_tiny, stream, ttt_settings, sp1024_model):
    """R22's ``eval_val_sliding_ttt`` (chunks scored, then trained on for TTT_EPOCHS, cosine LR over
    chunks, first blocks frozen, momentum, clip) run on the same model and stream gives pgolf's score.

    Stride = window length: R22's stride-64 plan scores the stream's last 64 targets twice, and
    chunks a whole number of windows: R22 trains on whole windows only."""
    import sentencepiece as spm

    r22 = import_r22()
    t = trained_tiny
    s = ttt_settings("EVAL_STRIDE=0", "TTT_CHUNK_TOKENS=256")
    assert s.ttt_freeze_blocks == 1 and s.ttt_epochs == 2 and TTT_TOKENS % s.ttt_chunk_tokens == 0
    ours = run_ttt("sgd", t.model, stream, t.table, s, 128, t.bos_id).score
    args = SimpleNamespace(train_seq_len=128, ttt_chunk_tokens=s.ttt_chunk_tokens, ttt_lr=s.ttt_lr, ttt_epochs=s.ttt_epochs,
                           ttt_freeze_blocks=s.ttt_freeze_blocks, ttt_momentum=s.ttt_momentum,
                           ttt_batch_seqs=s.ttt_batch_seqs, ttt_grad_clip=s.ttt_grad_clip)
    luts = r22.build_sentencepiece_luts(spm.SentencePieceProcessor(model_file=str(sp1024_model)), 1024, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R22 asks for CUDA autocast, off on CPU
        val_loss, val_bpb = r22.eval_val_sliding_ttt(
            args, R22View(copy.deepcopy(t.model)), 0, 1, torch.device("cpu"), torch.from_numpy(stream.astype(np.int64)),
            *luts, stride=128, batch_seqs=4, log0=lambda *_: None)
    untrained = evaluate_sliding(t.model, stream, 128, 128, t.table).score
    assert abs(untrained.val_loss - val_loss) > 1e-3  # the training moves the score (far beyond the tolerance)
    assert ours.val_loss == pytest.approx(val_loss, rel=1e-6, abs=0)
    assert ours.val_bpb == pytest.approx(val_bpb, rel=1e-6, abs=0)


@pytest.mark.parametrize("kind", ["lora", "phased"])
def test_lora_and_phased_ttt_match_a_plain_per_document_loop(trained_tiny, ttt_settings, kind):
    """Batched, length-sorted (lora) or stream-order (phased) TTT gives every target the loss of a
    plain loop over the documents, one at a time (tests/eval/ttt_oracles.py)."""
    t = trained_tiny
    tokens = t.val_tokens[3872 : 3872 + TTT_TOKENS + 1]  # documents of 173, 515 and (cut) 336 tokens
    s = ttt_settings()
    assert s.ttt_lora_targets == "q,v,head" and s.ttt_batch_size >= 3
    ours = run_ttt(kind, t.model, tokens, t.table, s, 128, t.bos_id).token_losses
    plain = plain_ttt(kind, copy.deepcopy(t.model), tokens, s, 128, t.bos_id)
    unadapted = evaluate_sliding(t.model, tokens, 128, 64, t.table, bos_id=t.bos_id).token_losses
    assert np.abs(plain - unadapted).max() > 1e-2  # adaptation moves losses far beyond the tolerance
    np.testing.assert_allclose(ours, plain, rtol=0, atol=2e-5)


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


def _ttt_on_a_rank(rank, world, init_file, state, cfg_model, tokens, table, bos_id, out_file):
    import torch.distributed as dist

    from pgolf.model.gpt import build_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = build_model(cfg_model)
        model.load_state_dict(state)
        out = {}
        for kind in ("sgd", "lora", "phased"):
            r = run_ttt(kind, model, tokens, table, make_ttt_settings("TTT_BATCH_SIZE=1"), 128, bos_id)
            out[kind] = {"score": r.score.as_dict(), "losses": torch.from_numpy(r.token_losses)}
        torch.save(out, f"{out_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ttt_on_two_gloo_ranks_scores_the_stream_once_like_one_process(trained_tiny, stream, tmp_path):
    """Windows, documents and training batches split over the ranks: the same adaptation as one process."""
    import torch.multiprocessing as mp

    t = trained_tiny
    out = tmp_path / "rank"
    mp.spawn(_ttt_on_a_rank, args=(2, str(tmp_path / "init"), t.model.state_dict(), t.cfg.model, stream, t.table, t.bos_id,
                                   str(out)), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for kind in ("sgd", "lora", "phased"):
        single = run_ttt(kind, t.model, stream, t.table, make_ttt_settings("TTT_BATCH_SIZE=1"), 128, t.bos_id)
        own = [~np.isnan(r[kind]["losses"].numpy()) for r in ranks]
        assert own[0].any() and own[1].any(), kind  # both ranks scored a share
        assert not (own[0] & own[1]).any() and (own[0] | own[1]).all(), kind  # and together every target once
        merged = np.where(own[0], ranks[0][kind]["losses"].numpy(), ranks[1][kind]["losses"].numpy())
        np.testing.assert_allclose(merged, single.token_losses, rtol=0, atol=2e-4, err_msg=kind)
        for r in ranks:
            assert r[kind]["score"]["tokens"] == single.score.tokens == TTT_TOKENS, kind
            assert r[kind]["score"]["val_bpb"] == pytest.approx(single.score.val_bpb, rel=1e-5), kind
