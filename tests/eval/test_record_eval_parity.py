"""Every preset scores what its record's own evaluation scores, on the same targets.

For each of the seven presets: the record's own ``GPT`` (imported from its script in the oracles),
built with the preset's hyperparameters (fewer layers: the protocol under test is window arithmetic,
and the records' hyperparameters allow it), gets random non-trivial fp32 weights and is saved as its
``main()`` saves ``final_model.pt``; pgolf loads that file as ``pgolf eval --checkpoint`` does
(pgolf.export.record_layout). A short val shard (3 whole windows of 512 and a 100-target tail; real
sp1024 val tokens, random sp8192 ids with planted BOS tokens where no such shards exist offline) is
read by each side's own loader. The record's ``eval_val`` and its sliding evaluation at its stride
then run as its ``main()`` runs them (``torch.compile`` left out: CPU), and pgolf's evaluation on
the same weights; the two must agree on the same targets:

* per-target losses where the record's function computes them (``reduction="none"``: R22's and
  R35's sliding evaluations, R44's ``eval_val``), read from its cross-entropy call; the window plan
  that maps them to targets is checked by reproducing the record's returned val_loss from them;
* else the record's (val_loss, val_bpb) against pgolf's score (pgolf.eval.bpb) of its own per-target
  losses on exactly the record's targets.

Where the record's protocol differs from pgolf's every-target-once, the test shows how (and the
preset's docstring says so): a dropped tail, R22's double scoring, R15's
unscored first window, R44's cross-window packing and its dropped last partial batch.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from oracles import RECORDS, no_orthogonal_init, oracle_path, randomise_

from pgolf.data.shards import write_shard
from pgolf.eval.bpb import BpbAccumulator, Score
from pgolf.eval.evaluate import evaluate, val_stream
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.windows import plan, target_context_lengths
from pgolf.export.loading import load_weights
from pgolf.export.record_layout import in_pgolf_layout
from pgolf.model.gpt import build_model
from pgolf.presets import build_config
from pgolf.tokenizer.luts import build_byte_table

SEQ_LEN = 512
WINDOWS, TAIL = 3, 100  # the stream: 3 whole windows, then a tail no window of 512 fills
N_TARGETS = WINDOWS * SEQ_LEN + TAIL
BATCH_WINDOWS = 2  # the records' VAL_BATCH_SIZE in windows: 3 windows make a last partial batch
REL = 2e-6  # fp32 on CPU: the sides differ only in batching and summation order
PER_TARGET = 2e-4  # |delta nats| per target (batched vs unbatched fp32 matmuls)

# fewer layers; each record's layer-indexed settings moved inside them
SHALLOW = {
    "baseline": ["NUM_LAYERS=2"],
    "mlp3x_int8emb_seq2048": ["NUM_LAYERS=2"],
    "smeargate_orthoinit_muonwd": ["NUM_LAYERS=2"],
    "leakyrelu_ttt_parallel_muon": ["NUM_LAYERS=3", "VE_LAYERS=1,2", "XSA_LAST_N=2"],
    "xsa_swiglu_lora_ttt_1xh100": ["NUM_LAYERS=2"],
    "sp8192_recur_parres_ttt": ["NUM_LAYERS=3", "LOOP_START=1", "LOOP_END=1", "PARALLEL_RESIDUAL_START=2",
                                "XSA_LAST_N=3"],
    "sp8192_lqer_sparsegate_bossmear": ["NUM_LAYERS=3", "LOOP_START=1", "LOOP_END=1", "PARALLEL_START_LAYER=2",
                                        "XSA_LAST_N=3"],
}
SP8192_TOKENIZER = "R44_sp8192_lqer_sparsegate_bossmear/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


@dataclass
class Case:
    preset: str
    cfg: object
    mod: types.ModuleType
    theirs: torch.nn.Module  # the record's GPT
    ours: torch.nn.Module  # pgolf's GPT, loaded from the record's final_model.pt
    shard: Path
    tokens: np.ndarray  # pgolf's val stream (its own loader)
    table: object  # pgolf's byte table
    luts: tuple  # the record's byte LUTs
    stride: int


def sp8192_stream(cfg) -> np.ndarray:
    """Random ids with BOS at every batch start and inside windows (documents crossing window edges)."""
    ids = torch.randint(2, cfg.model.vocab_size, (N_TARGETS + 1,), generator=torch.Generator().manual_seed(5))
    for pos in (0, 300, 700, BATCH_WINDOWS * SEQ_LEN, BATCH_WINDOWS * SEQ_LEN + 900 - SEQ_LEN, 1580):
        ids[pos] = cfg.model.bos_id
    return ids.numpy().astype(np.uint16)


@pytest.fixture(scope="module", params=list(RECORDS))
def case(request, oracle, tmp_path_factory) -> Case:
    preset = request.param
    record = RECORDS[preset]
    mod = oracle(record.script)
    cfg = build_config(preset, SHALLOW[preset], environ={})
    folder = tmp_path_factory.mktemp(preset)
    if cfg.model.vocab_size == 1024:
        from pgolf.data.shards import load_tokens
        from pgolf.eval.valdata import load_validation

        shared = request.getfixturevalue("shared_data")  # skips where the real data is absent
        real = load_tokens(request.getfixturevalue("val_prefix_shard"), "val", 1024)[: N_TARGETS + 1]
        write_shard(folder / "fineweb_val_000000.bin", real)
        val = load_validation(shared / "tokenizers" / "fineweb_1024_bpe.model", folder / "fineweb_val_000000.bin",
                              1024, SEQ_LEN)  # what pgolf eval scores
        sp, tokens, table = val.sp, val.tokens, val.table
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(oracle_path(SP8192_TOKENIZER)))
        write_shard(folder / "fineweb_val_000000.bin", sp8192_stream(cfg))
        from pgolf.data.shards import load_tokens

        tokens = val_stream(load_tokens(folder / "fineweb_val_000000.bin", "val", 8192), SEQ_LEN)
        table = build_byte_table(sp, 8192).to_torch("cpu")
    with no_orthogonal_init():
        theirs = record.build(mod, cfg).float().eval()
        ours = build_model(cfg.model).eval()
    randomise_(theirs, seed=11)
    torch.save(theirs.state_dict(), folder / "final_model.pt")  # as the record's main() saves it
    state, _ = load_weights(folder / "final_model.pt")
    ours.load_state_dict(in_pgolf_layout(state, ours.state_dict(), preset), strict=True)
    luts = mod.build_sentencepiece_luts(sp, cfg.model.vocab_size, torch.device("cpu"))
    return Case(preset, cfg, mod, theirs, ours, folder / "fineweb_val_000000.bin", tokens, table, luts,
                cfg.eval.eval_stride)


# -- the record's side, called as its main() calls it --------------------------------------------

def record_stream(c: Case) -> torch.Tensor:
    """The val tokens as the record's main() loads them (its own loader: most trim to whole windows)."""
    load = c.mod.load_validation_tokens
    try:
        return load(str(c.shard), SEQ_LEN)
    except TypeError:  # PR #160, PR #1090, the reference: the whole stream, eval_val trims
        return load(str(c.shard))


def legacy_args(**extra):
    return types.SimpleNamespace(train_seq_len=SEQ_LEN, val_batch_size=BATCH_WINDOWS * SEQ_LEN, **extra)


def r35_style(c: Case, tokens: torch.Tensor, **extra):
    h = types.SimpleNamespace(eval_seq_len=SEQ_LEN, val_batch_tokens=BATCH_WINDOWS * SEQ_LEN, world_size=1,
                              grad_accum_steps=1, rank=0, eval_stride=c.stride)
    base, lead, boundary = c.luts
    return h, types.SimpleNamespace(val_tokens=tokens, base_bytes_lut=base, has_leading_space_lut=lead,
                                    is_boundary_token_lut=boundary, **extra)


class CapturingCE:
    """The record module's ``F`` with every ``cross_entropy`` result kept (the record's own losses)."""

    def __init__(self, real):
        self.real, self.results = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cross_entropy(self, *args, **kwargs):
        out = self.real.cross_entropy(*args, **kwargs)
        self.results.append(out.detach().clone())
        return out


def run_record(c: Case, fn, *args):
    """``fn(*args)`` with its cross-entropy results captured and ``torch.compile`` left out (CPU)."""
    capture = CapturingCE(c.mod.F)
    with mock.patch.object(c.mod, "F", capture), mock.patch.object(torch, "compile", lambda f, **_: f):
        result = fn(*args)
    return result, capture.results


def record_eval_val(c: Case, tokens: torch.Tensor):
    dev = torch.device("cpu")
    if c.preset == "sp8192_lqer_sparsegate_bossmear":
        h, data = r35_style(c, tokens, val_bytes=torch.from_numpy(sidecar(c).astype(np.int32)))
        return run_record(c, c.mod.eval_val, h, dev, data, c.theirs)
    if c.preset == "sp8192_recur_parres_ttt":
        h, data = r35_style(c, tokens)
        return run_record(c, c.mod.eval_val, h, dev, data, c.theirs)
    extra = (SEQ_LEN,) if c.preset in ("mlp3x_int8emb_seq2048", "leakyrelu_ttt_parallel_muon") else ()
    return run_record(c, c.mod.eval_val, legacy_args(), c.theirs, 0, 1, dev, 1, tokens, *c.luts, *extra)


def record_sliding(c: Case, tokens: torch.Tensor):
    dev = torch.device("cpu")
    if c.preset == "mlp3x_int8emb_seq2048":
        return run_record(c, c.mod.eval_val_sliding, None, c.theirs, 0, 1, dev, tokens, *c.luts, SEQ_LEN, c.stride)
    if c.preset == "smeargate_orthoinit_muonwd":
        with mock.patch.dict("os.environ", {"SW_EVAL_BATCH": "32"}):
            return run_record(c, c.mod.eval_val_sliding_window, legacy_args(), c.theirs, 0, 1, dev, tokens, *c.luts,
                              c.stride)
    if c.preset == "leakyrelu_ttt_parallel_muon":
        return run_record(c, c.mod.eval_val_sliding, legacy_args(), c.theirs, 0, 1, dev, tokens, *c.luts, c.stride,
                          32, SEQ_LEN)
    h, data = r35_style(c, tokens)
    return run_record(c, c.mod.eval_val_sliding, h, dev, data, c.theirs)


def sidecar(c: Case) -> np.ndarray:
    """R44's per-token byte sidecar for the test stream: arbitrary bytes per position, 0..5."""
    return np.random.default_rng(3).integers(0, 6, size=c.tokens.shape[0]).astype(np.int64)


# -- scoring pgolf's per-target losses on the record's targets -----------------------------------

def score_on(losses: np.ndarray, tokens: np.ndarray, targets: np.ndarray, table) -> Score:
    """pgolf's score (pgolf.eval.bpb) of its per-target ``losses`` on ``targets`` only."""
    acc = BpbAccumulator(table)
    idx = torch.from_numpy(targets.astype(np.int64))
    stream = torch.from_numpy(tokens.astype(np.int64))
    acc.add(torch.from_numpy(losses[targets]), stream[idx], stream[idx + 1], idx + 1)
    return acc.result()


def assert_same_score(record: tuple[float, float], ours: Score) -> None:
    loss, bpb = record
    assert ours.val_loss == pytest.approx(loss, rel=REL) and ours.val_bpb == pytest.approx(bpb, rel=REL), (
        f"record val_loss {loss:.8f} val_bpb {bpb:.8f}, pgolf {ours.val_loss:.8f} {ours.val_bpb:.8f}")


def sliding_picks(c: Case, n_targets: int, nll: list[torch.Tensor]) -> list[tuple[int, int, float]]:
    """(window start, target, loss) for every target R22's / R35's sliding function scores, in its order.

    The windows as its code builds them (R22: every stride start, each scoring its last ``stride``;
    R35: starts whose context fits, each scoring past its context); the losses are its own.
    """
    seq, stride = SEQ_LEN, c.stride
    if c.preset == "leakyrelu_ttt_parallel_muon":
        starts = [ws for ws in range(0, n_targets, stride) if min(ws + seq, n_targets) - ws >= 1]
        first = lambda ws, wlen: 0 if ws == 0 else max(wlen - stride, 0)  # noqa: E731
    else:
        starts = [ws for ws in range(0, n_targets, stride) if ws + seq - stride < n_targets]
        first = lambda ws, wlen: 0 if ws == 0 else seq - stride  # noqa: E731
    rows = torch.cat([n.reshape(-1, seq) for n in nll])
    assert rows.shape[0] == len(starts)
    picks = []
    for ws, row in zip(starts, rows):
        wlen = min(ws + seq, n_targets) - ws
        picks += [(ws, ws + j, float(row[j])) for j in range(first(ws, wlen), wlen)]
    return picks


# -- the tests ------------------------------------------------------------------------------------

def test_the_records_eval_val_is_pgolfs_standard_evaluation_on_its_targets(case):
    c = case
    tokens = record_stream(c)
    with torch.no_grad():
        (loss, bpb), ce = record_eval_val(c, tokens)
    if c.preset == "sp8192_lqer_sparsegate_bossmear":
        return check_r44_eval_val(c, (loss, bpb), ce)
    ours = evaluate(c.ours, c.tokens, SEQ_LEN, c.table, batch_tokens=BATCH_WINDOWS * SEQ_LEN, keep_token_losses=True)
    # both drop the 100-target tail; the record's last batch (one window of two) is scored
    assert ours.score.tokens == WINDOWS * SEQ_LEN
    assert_same_score((loss, bpb), ours.score)


def check_r44_eval_val(c: Case, record: tuple[float, float], ce: list[torch.Tensor]) -> None:
    """R44's eval_val packs each batch's windows into one sequence cut at BOS and every 512 from a
    document's start (a document crossing a window edge keeps its context), and drops the last
    partial batch: it scores 2 of the 3 windows. pgolf's document-isolated sliding windows at stride
    512 read exactly those contexts and score every target once."""
    scored = torch.cat(ce).numel()
    assert scored == BATCH_WINDOWS * SEQ_LEN  # the third window and the tail are never scored
    table = c.table.with_stream_bytes(torch.from_numpy(sidecar(c)))
    ours = evaluate_sliding(c.ours, c.tokens, SEQ_LEN, SEQ_LEN, table, bos_id=c.cfg.model.bos_id)
    assert ours.score.tokens == N_TARGETS
    targets = np.arange(scored)
    delta = np.abs(ours.token_losses[targets] - torch.cat(ce).numpy()).max()
    assert delta < PER_TARGET, f"max |delta| {delta:.3g} nats per target"
    assert_same_score(record, score_on(ours.token_losses, c.tokens, targets, table))
    # pgolf's standard windows restart the context at every window edge: not R44's numbers
    standard = evaluate(c.ours, c.tokens, SEQ_LEN, table, keep_token_losses=True)
    crossing = np.arange(SEQ_LEN, BATCH_WINDOWS * SEQ_LEN)[:10]  # a document crosses the first window edge
    assert np.abs(standard.token_losses[crossing] - ours.token_losses[crossing]).max() > 1e-3


def test_the_records_sliding_eval_agrees_with_pgolfs_on_the_records_targets(case):
    c = case
    if c.preset in ("baseline", "xsa_swiglu_lora_ttt_1xh100", "sp8192_lqer_sparsegate_bossmear"):
        pytest.skip(f"{c.preset}'s record has no sliding-window evaluation")
    tokens = record_stream(c)
    with torch.no_grad():
        (loss, bpb), ce = record_sliding(c, tokens)
    ours = evaluate_sliding(c.ours, c.tokens, SEQ_LEN, c.stride, c.table)
    assert ours.score.tokens == N_TARGETS  # every target once, the tail included
    n_record = tokens.numel() - 1
    if c.preset == "mlp3x_int8emb_seq2048":
        # PR #160 reads the whole stream and scores every target once with pgolf's windows
        assert n_record == N_TARGETS
        assert_same_score((loss, bpb), ours.score)
        return
    assert n_record == WINDOWS * SEQ_LEN  # R15, R22, R35 load whole windows only: the tail is never scored
    if c.preset == "smeargate_orthoinit_muonwd":
        # R15 scores the last stride targets of each full window (so never the first 448), each
        # with the context pgolf's window for it has
        windows = (n_record - SEQ_LEN) // c.stride + 1
        targets = (np.arange(windows)[:, None] * c.stride + SEQ_LEN - c.stride + np.arange(c.stride)).reshape(-1)
        assert_same_score((loss, bpb), score_on(ours.token_losses, c.tokens, targets, c.table))
        return
    picks = sliding_picks(c, n_record, ce)
    nats = np.array([p[2] for p in picks], dtype=np.float64)
    assert nats.mean() == pytest.approx(loss, rel=1e-9)  # the plan above is the record's
    context = target_context_lengths(plan(c.tokens, SEQ_LEN, c.stride), N_TARGETS)
    first_seen, same_context = set(), []
    for ws, t, nat in picks:
        if t - ws + 1 == context[t] and t not in first_seen:
            same_context.append((t, nat))
        first_seen.add(t)
    got = np.array([ours.token_losses[t] for t, _ in same_context])
    want = np.array([nat for _, nat in same_context])
    assert np.abs(got - want).max() < PER_TARGET
    distinct = {t for _, t, _ in picks}
    if c.preset == "leakyrelu_ttt_parallel_muon":
        # every target of the record's stream once with pgolf's context, then the last 64 again in
        # each shorter tail window: 7 more times each
        assert len(distinct) == n_record and len(same_context) == n_record
        assert len(picks) == n_record + (SEQ_LEN // c.stride - 1) * c.stride
    else:
        # R35 scores each target of its stream once, with pgolf's context (its stream is whole
        # windows, so its last window is a full one)
        assert len(picks) == len(distinct) == len(same_context) == n_record
