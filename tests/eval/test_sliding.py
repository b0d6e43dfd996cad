"""Sliding and document-isolated evaluation on a model trained in the tests, and the ledger's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.eval.evaluate import evaluate, trim_to_windows
from pgolf.eval.ledger import IncompleteScore, ScoreFirstViolation, ScoreLedger
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
    with pytest.raises(IncompleteScore, match="unscored"):
        ledger.result()


# -- the fast path: one batch shape, head at scored positions only, device-side gathers --------------


class _FullForwardOnly(torch.nn.Module):
    """The same model without ``hidden``/``head``: evaluate_windows takes the plain path for it."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x, y, reduction="mean"):
        return self.inner(x, y, reduction=reduction)


@pytest.mark.parametrize("bos", [False, True], ids=["stream", "doc_isolated"])
def test_fast_path_equals_full_forward_then_pick(trained_tiny, bos):
    from pgolf.eval.sliding import evaluate_windows
    from pgolf.eval.windows import plan

    t = trained_tiny
    tokens, seq_len = t.val_tokens[: 3000 + 1], t.cfg.eval_seq_len
    windows = plan(tokens, seq_len, 48, t.bos_id if bos else None)
    results = []
    for model in (t.model, _FullForwardOnly(t.model)):
        ledger = ScoreLedger(tokens, t.table)
        evaluate_windows(model, ledger, windows, seq_len, 7 * seq_len, torch.device("cpu"))  # ragged last batch
        results.append((ledger.result(), ledger.losses, ledger.step_of))
    (fast, fast_losses, fast_steps), (plain, plain_losses, plain_steps) = results
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(fast_steps, plain_steps)  # same batches, same scoring order
    assert (fast.tokens, fast.bytes) == (plain.tokens, plain.bytes) == (3000, plain.bytes)
    assert fast.val_bpb == pytest.approx(plain.val_bpb, rel=1e-6)


def test_batch_layout_maps_every_scored_position_to_its_target():
    from pgolf.eval.sliding import batch_layout, batches
    from pgolf.eval.windows import plan

    tokens = np.array([1, 5, 6, 7, 1, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 4] * 7)
    seq_len, rows = 8, 5
    seen = []
    for group in batches(plan(tokens, seq_len, 3, bos_id=1), rows):
        layout = batch_layout(group, rows, seq_len)
        assert layout.starts.shape == layout.lengths.shape == (rows,)  # every batch has one shape
        row, col = np.divmod(layout.positions, seq_len)
        assert (col < layout.lengths[row]).all()
        np.testing.assert_array_equal(layout.starts[row] + col, layout.targets)
        expected = np.concatenate([np.arange(w.score_from, w.end) for w in group])
        np.testing.assert_array_equal(layout.targets, expected)
        seen.append(layout.targets)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(tokens.shape[0] - 1))


def test_eager_batches_compute_no_padding_rows_and_a_given_hidden_keeps_one_shape(trained_tiny):
    from pgolf.eval.sliding import evaluate_windows
    from pgolf.eval.windows import plan

    t = trained_tiny
    tokens, seq_len, rows = t.val_tokens[: 1500 + 1], t.cfg.eval_seq_len, 4
    windows = plan(tokens, seq_len, 64)
    assert len(windows) % rows  # a ragged last batch
    shapes: dict[str, list[int]] = {"eager": [], "given": []}
    original = t.model.hidden

    def counting(name):
        def hidden(x):
            shapes[name].append(x.shape[0])
            return original(x)
        return hidden

    results = []
    for name in shapes:
        ledger = ScoreLedger(tokens, t.table)
        t.model.hidden = counting(name)  # what evaluate_windows calls when no hidden is given
        try:
            evaluate_windows(t.model, ledger, windows, seq_len, rows * seq_len, torch.device("cpu"),
                             hidden=counting("given") if name == "given" else None)
        finally:
            del t.model.hidden  # the instance attribute: the method shows through again
        results.append(ledger.result())
    assert sum(shapes["eager"]) == len(windows) and shapes["eager"][-1] == len(windows) % rows
    assert set(shapes["given"]) == {rows}  # a compiled graph's one shape
    assert results[0].val_bpb == pytest.approx(results[1].val_bpb, rel=1e-6)


def test_compiled_hidden_compiles_nothing_after_a_two_batch_warm_up(trained_tiny):
    from pgolf.bench.recompile import RecompileWatch
    from pgolf.eval.sliding import evaluate_windows
    from pgolf.eval.windows import plan

    t = trained_tiny
    tokens, seq_len, stride = t.val_tokens[: 2000 + 1], t.cfg.eval_seq_len, 64
    torch._dynamo.reset()
    # graphs, not generated code, are what is counted: the eager backend keeps this to seconds
    hidden = torch.compile(t.model.hidden, dynamic=False, fullgraph=True, backend="eager")
    windows = plan(tokens, seq_len, stride)
    rows = 4
    assert len(windows) % rows  # the last batch is ragged, the first window scores seq_len targets
    for _ in range(2):  # the second call compiles once more, guarding on the filled RoPE cache
        evaluate_windows(t.model, ScoreLedger(tokens, t.table), windows[: 2 * rows], seq_len, rows * seq_len,
                         torch.device("cpu"), hidden=hidden)
    watch = RecompileWatch()
    ledger = ScoreLedger(tokens, t.table)
    with watch.forbid("the sliding evaluation"):
        evaluate_windows(t.model, ledger, windows, seq_len, rows * seq_len, torch.device("cpu"), hidden=hidden)
    plain = evaluate_sliding(t.model, tokens, seq_len, stride, t.table, batch_tokens=rows * seq_len)
    assert ledger.result().val_bpb == pytest.approx(plain.score.val_bpb, rel=1e-6)


def _sliding_on_a_rank(rank, world, init_file, state, cfg_model, tokens, table, out_file):
    import torch.distributed as dist

    from pgolf.model.gpt import build_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = build_model(cfg_model)
        model.load_state_dict(state)
        result = evaluate_sliding(model, tokens, 128, 48, table, batch_tokens=3 * 128)
        torch.save({"score": result.score.as_dict(), "losses": torch.from_numpy(result.token_losses)}, f"{out_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sliding_on_two_gloo_ranks_scores_the_stream_once_with_the_single_process_score(trained_tiny, tmp_path):
    import torch.multiprocessing as mp

    t = trained_tiny
    tokens = t.val_tokens[: 2500 + 1]
    single = evaluate_sliding(t.model, tokens, 128, 48, t.table, batch_tokens=3 * 128)
    out = tmp_path / "rank"
    mp.spawn(_sliding_on_a_rank, args=(2, str(tmp_path / "init"), t.model.state_dict(), t.cfg.model, tokens, t.table, str(out)),
             nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for r in ranks:  # every rank reports the whole stream's score
        assert (r["score"]["tokens"], r["score"]["bytes"]) == (single.score.tokens, single.score.bytes)
        assert r["score"]["val_bpb"] == pytest.approx(single.score.val_bpb, rel=1e-6)
    own = [~np.isnan(r["losses"].numpy()) for r in ranks]
    assert not (own[0] & own[1]).any() and (own[0] | own[1]).all()  # the shares split the targets
    merged = np.where(own[0], ranks[0]["losses"].numpy(), ranks[1]["losses"].numpy())
    np.testing.assert_allclose(merged, single.token_losses, rtol=0, atol=1e-5)
