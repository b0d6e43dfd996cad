"""R44's phased TTT (its own ``eval_val_ttt_phased``, ``BatchedTTTLoRA`` and global SGD, imported from
its script) and pgolf's ``phased`` TTT with the preset's adapters give the same per-token losses.

The record's GPT is built small (3 layers, the middle one looped: 5 virtual layers, two-lane
parallel residuals from layer 2, 128 wide, a 1024 vocabulary) with the preset's other settings and
random fp32 weights; pgolf reads its state dict as ``pgolf eval --checkpoint`` does. Both run in
float64 (see the test). The stream is real sp1024 val tokens with BOS planted to give documents of
known lengths. The global SGD is R44's packed one (``PGOLF_GLOBAL_TTT_PACKED``, the preset's):
GLOBAL_TTT_BATCH_SEQS sequences a row, cut at every BOS and every EVAL_SEQ_LEN from a document's
start, the SmearGate reading across the other cuts; the pause's second document starts inside a
row, off the EVAL_SEQ_LEN grid, and the last chunk holds a whole sequence R44 never trains on.

What the record does that pgolf must not (legality, issue 16) is neutralised, never copied:

* R44 keeps each adapter's trained ``A`` from one document to the next in its length-sorted order
  (only ``B`` is reset), so a document's start depends on documents after it in the stream. pgolf
  draws every document's ``A`` from the document's own generator. Here, at the first forward of
  each of R44's batches, its ``A`` are set to the draws pgolf makes for those documents (and its
  ``B`` to zero, as its reset leaves them): the adapters, forward, AdamW, chunking and scoring
  that follow are the record's own.
* R44's last chunk of a document longer than ``TTT_EVAL_SEQ_LEN`` reaches back from where the
  document ends; pgolf's window starts where a full chunk's would. The documents here have a full
  last chunk or fit in the window, where the two are the same window.
* R44's global SGD trains on the scored documents concatenated in length order, each with the next
  BOS (so a boundary BOS twice); pgolf on the stream before the pause. The documents before the
  pause are the longest (R44 processes the longest batch first, so it pauses after the same ones),
  in increasing length; the test checks that R44's global SGD is handed exactly those documents so
  concatenated, and hands it the stream before the pause instead: what it then does with the
  tokens (chunks, packing, cuts, loss, LR, momentum, clip) is its own.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

from pgolf.eval.ttt import run_ttt
from pgolf.eval.ttt.lora import HEAD_PROJECTION, BatchedLoRA
from tests.eval.test_ttt_record_parity import exact_clipping, record_and_pgolf, record_luts  # noqa: F401 (a fixture)

PRESET = "sp8192_lqer_sparsegate_bossmear"
TOLERANCE = 1e-4
SMALL = ("NUM_LAYERS=3", "LOOP_START=1", "LOOP_END=1", "PARALLEL_START_LAYER=2", "XSA_LAST_N=3", "MODEL_DIM=128",
         "NUM_HEADS=4", "NUM_KV_HEADS=2", "VOCAB_SIZE=1024")
CHUNK, CONTEXT, GLOBAL_SEQ = 32, 64, 16
# global SGD chunks of 32 targets, each one packed row of two sequences of 16
TTT = (f"TTT_CHUNK_SIZE={CHUNK}", f"TTT_EVAL_SEQ_LEN={CONTEXT}", "TTT_BATCH_SIZE=2", "TTT_LORA_RANK=4",
       "TTT_LORA_LR=0.001", "GLOBAL_TTT_CHUNK_TOKENS=32", "GLOBAL_TTT_BATCH_SEQS=2", "GLOBAL_TTT_LR=0.05",
       "GLOBAL_TTT_EPOCHS=2")
# targets per document (a BOS, then that many tokens up to the next BOS or the stream's end), each
# a whole number of chunks or inside one window. LoRA alone: the longest first, several chunks long.
# With the pause after the first two (R44's first batch: the two longest, sorted by length): the
# second starts at 38, inside the global SGD's second row and 6 past its EVAL_SEQ_LEN grid (R44
# cuts at 38 + 16, not 48); 88 targets before the pause, so the last chunk (64-88) holds a whole
# sequence that R44 skips (at the cosine's zero LR, where skipping changes nothing); in chunks of 128
# those 88 are one chunk, the last, at the full LR, which R44 never trains on either.
LORA_DOCS = (128, 50, 64, 33, 20)
PAUSE_DOCS = (38, 50, 33, 20, 36, 30)
CASES = {"lora": (LORA_DOCS, 0, ()), "pause": (PAUSE_DOCS, 2, ()),
         "one-chunk-pause": (PAUSE_DOCS, 2, ("GLOBAL_TTT_CHUNK_TOKENS=128",))}
# R44's names for pgolf's targets
R44_LISTS = {"q": "q_loras", "k": "k_loras", "v": "v_loras", "o": "o_loras", "mlp": "mlp_loras"}
PGOLF_MODULE = {"q": "blocks.{}.attn.c_q", "k": "blocks.{}.attn.c_k", "v": "blocks.{}.attn.c_v", "o": "blocks.{}.attn",
                "mlp": "blocks.{}.mlp"}


def planted_stream(val_prefix_shard, doc_targets) -> np.ndarray:
    from pgolf.data.shards import load_tokens

    n = sum(doc_targets) + 1
    tokens = np.ascontiguousarray(load_tokens(str(val_prefix_shard), "val", 1024)[:n]).copy()
    assert tokens[0] == 1
    tokens[1:] = np.where(tokens[1:] == 1, 2, tokens[1:])  # no BOS but the planted ones
    tokens[np.cumsum(doc_targets)[:-1]] = 1
    return tokens


@pytest.fixture(scope="module")
def sp1024_table(sp1024_model):
    from pgolf.tokenizer.luts import build_byte_table
    from pgolf.tokenizer.spm import load_tokenizer

    return build_byte_table(load_tokenizer(str(sp1024_model)), 1024).to_torch()


def record_hyperparameters(mod, s, rank: int):
    """R44's Hyperparameters with the TTT settings of pgolf's ``s`` (the record's env names)."""
    h = mod.Hyperparameters()
    for name in ("ttt_lora_rank", "ttt_lora_lr", "ttt_chunk_size", "ttt_eval_seq_len", "ttt_batch_size", "ttt_beta1",
                 "ttt_beta2", "ttt_weight_decay", "phased_ttt_prefix_docs", "phased_ttt_num_phases", "global_ttt_lr",
                 "global_ttt_momentum", "global_ttt_epochs", "global_ttt_chunk_tokens", "global_ttt_batch_seqs",
                 "global_ttt_grad_clip"):
        setattr(h, name, getattr(s, name))
    h.rank, h.world_size, h.run_id, h.ttt_eval_batches, h.val_doc_fraction = 0, 1, f"pgolf-test-{uuid.uuid4().hex}", "", 1.0
    h.ttt_optimizer, h.ttt_grad_steps, h.eval_seq_len = "adam", 1, GLOBAL_SEQ
    h.ttt_k_lora = h.ttt_mlp_lora = h.ttt_o_lora = True
    h.global_ttt_warmup_chunks, h.global_ttt_respect_doc_boundaries = 0, True
    assert rank == h.ttt_lora_rank
    return h


def pgolf_initial_adapters(ours, s, doc_start: int) -> dict[tuple[str, int], torch.Tensor]:
    """(module name, pass) -> the A pgolf draws for the document starting at ``doc_start`` (seed 0)."""
    lora = BatchedLoRA(ours, [doc_start], s.ttt_lora_rank, s.ttt_lora_targets, 0, "cpu", s.ttt_lora_init,
                       s.ttt_lora_alpha, s.ttt_lora_per_pass)
    return {slot: lora.a[i][0].detach().clone() for i, slot in enumerate(lora.slots)}


def seed_record_adapters(lora, theirs, ours, s, docs, dtype) -> None:
    """R44's adapters of a batch set to pgolf's initial ones: slot j of R44 is virtual layer j, pgolf's
    pass p of the block there; B zero, as R44's reset leaves it."""
    order = list(theirs.encoder_indices) + list(theirs.decoder_indices)
    assert order == ours.layer_order()
    draws = [pgolf_initial_adapters(ours, s, start) for start, _ in docs]

    used = []

    def put(adapter, key):
        adapter.A.data = torch.stack([d[key] for d in draws]).to(dtype)
        adapter.B.data = torch.zeros_like(adapter.B, dtype=dtype)
        used.append(key)

    for slot, block in enumerate(order):
        npass = order[:slot].count(block)
        for target, attr in R44_LISTS.items():
            put(getattr(lora, attr)[slot], (PGOLF_MODULE[target].format(block), npass))
    put(lora.lm_head_lora, (HEAD_PROJECTION, 0))
    assert sorted(used) == sorted(draws[0])  # one pgolf adapter for each of R44's, none left over


def stream_for_global_sgd(mod, tokens: np.ndarray, doc_targets, prefix_docs: int):
    """R44's global SGD, handed the stream before the pause where R44 hands it its scored documents
    (checked to be the first ``prefix_docs``, in increasing length, each with the next BOS)."""
    real = mod.train_val_ttt_global_sgd_distributed
    stream = torch.from_numpy(tokens.astype(np.int64))
    ends = np.cumsum(doc_targets)
    docs = sorted(zip(ends[:prefix_docs] - doc_targets[:prefix_docs], ends[:prefix_docs]), key=lambda d: d[1] - d[0])
    calls = []

    def train(h, device, val_data, base_model, val_tokens, *args, **kwargs):
        assert torch.equal(val_tokens, torch.cat([stream[a : b + 1] for a, b in docs]))
        calls.append(1)
        return real(h, device, val_data, base_model, stream[: ends[prefix_docs - 1] + 1], *args, **kwargs)

    return calls, mock.patch.object(mod, "train_val_ttt_global_sgd_distributed", train)


def record_phased_ttt(mod, theirs, ours, tokens, s, luts, dtype, doc_targets):
    """R44's own phased TTT; returns (per-target losses, where scored, its val_loss)."""
    h = record_hyperparameters(mod, s, s.ttt_lora_rank)
    val_tokens = torch.from_numpy(tokens.astype(np.int64))
    val_data = SimpleNamespace(val_tokens=val_tokens, base_bytes_lut=luts[0], has_leading_space_lut=luts[1],
                               is_boundary_token_lut=luts[2], caseops_enabled=False, val_bytes=None)
    state = SimpleNamespace(queue=None, batch=None, new_batch=False, ci=0, x=None)
    losses = np.full(tokens.shape[0] - 1, np.nan)
    real_build, real_claim, real_accumulate = mod._build_ttt_global_batches, mod._claim_next_batch, mod._accumulate_bpb

    def build(doc_entries, h_, ascending=False):
        state.queue = real_build(doc_entries, h_, ascending)
        return state.queue

    def claim(path, queue_len):
        idx = real_claim(path, queue_len)
        if idx < queue_len:
            state.batch, state.new_batch, state.ci = [doc for _, doc in state.queue[idx][1]], True, 0
        return idx

    def forward(x, y, lora):
        if state.new_batch:  # the batch's first forward: pgolf's initial adapters for its documents
            seed_record_adapters(lora, theirs, ours, s, state.batch, dtype)
            state.new_batch = False
        return theirs.forward_ttt(x, y, lora=lora)

    def accumulate(ptl, x, y, chunk_offsets, chunk_lens, *args, **kwargs):
        for b, (start, length) in enumerate(state.batch):  # the record's own window of chunk ci, row b
            if chunk_lens[b] == 0:
                continue
            pred = length - 1
            win_start, _, offset, count = mod._compute_chunk_window(
                state.ci, pred, (pred + h.ttt_chunk_size - 1) // h.ttt_chunk_size, h.ttt_chunk_size, h.ttt_eval_seq_len)
            assert (offset, count) == (chunk_offsets[b].item(), chunk_lens[b].item())
            targets = start + win_start + np.arange(offset, offset + count)
            assert np.isnan(losses[targets]).all()
            assert torch.equal(y[b, offset : offset + count], val_tokens[targets + 1])  # the mapping is the record's
            losses[targets] = ptl[b, offset : offset + count].detach().double().numpy()
        state.ci += 1
        return real_accumulate(ptl, x, y, chunk_offsets, chunk_lens, *args, **kwargs)

    pauses, global_sgd = stream_for_global_sgd(mod, tokens, doc_targets, s.phased_ttt_prefix_docs)
    patches = [mock.patch.object(mod, "_build_ttt_global_batches", build), mock.patch.object(mod, "_claim_next_batch", claim),
               mock.patch.object(mod, "_accumulate_bpb", accumulate), mock.patch.object(mod, "log", lambda *_a, **_k: None)]
    try:
        with patches[0], patches[1], patches[2], patches[3], global_sgd, exact_clipping(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CUDA autocast, off on CPU
            val_loss, _ = mod.eval_val_ttt_phased(h, theirs, torch.device("cpu"), val_data, forward_ttt_train=forward)
        assert len(pauses) == (s.phased_ttt_prefix_docs > 0)
    finally:
        for name in ("ttt_counter", "ttt_prefix_counter", "ttt_pause_flag"):
            try:
                os.remove(f"/tmp/{name}_{h.run_id}")
            except FileNotFoundError:
                pass
    return losses, ~np.isnan(losses), val_loss


@pytest.mark.parametrize("case", list(CASES))
def test_phased_ttt_gives_r44s_per_token_losses(oracle, val_prefix_shard, sp1024_table, record_luts, case):
    """Per-virtual-layer LoRA on Q, K, V, O, MLP and the logits, R44's init and alpha/rank scale,
    AdamW (beta1 0, beta2 0.99, eps 1e-10, weight decay 0.5), chunks scored then stepped on, two
    documents side by side; in case ``pause``, R44's packed global SGD (momentum, clip, cosine LR
    over chunks of 32, two epochs each, rows of two sequences of 16) after the first two documents;
    in case ``one-chunk-pause``, the same pause with one chunk, the last, which R44 never trains on.

    Both models run in float64 (R44's adapters too; pgolf's stay fp32, as always): AdamW with beta1
    0 moves every adapter weight by about the learning rate whatever its gradient's size, so the
    last bits of tiny gradients, summed in another order, can move losses by that (the PR #1090
    test saw 1.3e-4 in fp32 after four Adam steps). Measured here in float64: at most 1.9e-6 without
    the pause, 9.5e-7 with it; in fp32 (before the SGD was packed, a one-document pause), 1.4e-6
    without and 7.6e-6 with it."""
    dtype = torch.float64
    doc_targets, prefix_docs, extra = CASES[case]
    cfg, mod, theirs, ours = record_and_pgolf(oracle, PRESET, 13, *SMALL, *TTT, f"PHASED_TTT_PREFIX_DOCS={prefix_docs}",
                                              "PHASED_TTT_NUM_PHASES=1", *extra, dtype=dtype)
    for block in theirs.blocks:
        block.mlp.use_fused = False  # its training MLP is a Triton kernel (GPU only) of the same function
    s = cfg.eval
    assert (s.ttt, s.ttt_lora_targets, s.ttt_lora_init, s.ttt_lora_per_pass) == ("phased", "q,k,v,o,mlp,logits", "r44", True)
    assert (s.ttt_beta1, s.ttt_beta2, s.ttt_adam_eps, s.ttt_weight_decay, s.ttt_lora_alpha) == (0.0, 0.99, 1e-10, 0.5, 144.0)
    assert s.global_ttt_packed
    tokens = planted_stream(val_prefix_shard, doc_targets)
    got = run_ttt("phased", ours, tokens, sp1024_table, s, GLOBAL_SEQ, cfg.model.bos_id).token_losses
    expected, scored, val_loss = record_phased_ttt(mod, theirs, ours, tokens, s, record_luts, dtype, np.array(doc_targets))
    assert scored.all()  # every target once, as pgolf
    assert expected.mean() == pytest.approx(val_loss, rel=1e-9)  # its own scoring
    unadapted = run_ttt("phased", ours, tokens, sp1024_table, dataclasses.replace(s, ttt_lora_lr=0.0, global_ttt_lr=0.0),
                        GLOBAL_SEQ, cfg.model.bos_id).token_losses
    assert np.abs(expected - unadapted).max() > 0.05  # its adaptation moves losses far past the tolerance
    if case == "pause":  # and so does its global SGD alone, on the documents after the pause
        after = slice(sum(doc_targets[:prefix_docs]), None)
        lora_only = run_ttt("phased", ours, tokens, sp1024_table, dataclasses.replace(s, global_ttt_lr=0.0), GLOBAL_SEQ,
                            cfg.model.bos_id).token_losses
        assert np.abs(expected - lora_only)[after].max() > 0.05
    delta = np.abs(got - expected).max()
    print(f"R44 phased ({case}): max |delta loss| {delta:.3g} over {scored.sum()} targets")
    assert delta < TOLERANCE


# R44's global SGD alone, over a whole stream: chunks of 64 (three trained on, two epochs each, the
# last never), rows of up to four sequences of 16, three document boundaries inside rows; no clip
# (the phased test clips), which would hide how the ranks' gradients are combined
GLOBAL_ONLY = ("GLOBAL_TTT_CHUNK_TOKENS=64", "GLOBAL_TTT_BATCH_SEQS=4", "GLOBAL_TTT_GRAD_CLIP=0", "GLOBAL_TTT_LR=0.01")


def packed_global_sgd_pair(import_oracle, tokens: np.ndarray, table, rank: int, world: int):
    """Per-token losses on ``tokens`` of pgolf's model: after pgolf's packed global SGD over all of
    them, on R44's weights after R44's own ``train_val_ttt_global_sgd_distributed``, and before."""
    import copy

    from pgolf.eval.ledger import ScoreLedger
    from pgolf.eval.ttt.phased import global_sgd
    from pgolf.export.record_layout import in_pgolf_layout

    cfg, mod, theirs, ours = record_and_pgolf(import_oracle, PRESET, 13, *SMALL, *TTT, *GLOBAL_ONLY, dtype=torch.float64)
    for block in theirs.blocks:
        block.mlp.use_fused = False  # its training MLP is a Triton kernel (GPU only) of the same function
    s, n = cfg.eval, tokens.shape[0] - 1
    assert s.global_ttt_packed
    stream = torch.from_numpy(tokens.astype(np.int64))
    h = record_hyperparameters(mod, s, s.ttt_lora_rank)
    h.rank, h.world_size = rank, world

    def losses(model):
        with torch.no_grad():
            return model(stream[None, :-1], stream[None, 1:], reduction="none")[0].numpy()

    before, on_theirs = losses(ours), copy.deepcopy(ours)
    with exact_clipping(), mock.patch.object(mod, "log", lambda *_a, **_k: None), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA autocast, off on CPU
        mod.train_val_ttt_global_sgd_distributed(h, torch.device("cpu"), None, theirs, stream)
        ledger = ScoreLedger(tokens, table)
        ledger.record(np.arange(n), torch.zeros(n))
        global_sgd(ours, ledger, n, s, GLOBAL_SEQ, torch.device("cpu"))
    state = {k: v.detach().clone() for k, v in theirs.state_dict().items()}
    on_theirs.load_state_dict(in_pgolf_layout(state, on_theirs.state_dict(), PRESET), strict=True)
    return losses(ours), losses(on_theirs), before


def _global_sgd_on_a_rank(rank, world, init_file, tokens, table, out_file):
    import torch.distributed as dist
    from oracles import import_oracle

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.save([torch.from_numpy(a) for a in packed_global_sgd_pair(import_oracle, tokens, table, rank, world)],
                   f"{out_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def on_two_gloo_ranks(tokens, table, tmp_path):
    """:func:`packed_global_sgd_pair` on two gloo ranks (rank 0's; the replicas checked equal)."""
    import torch.multiprocessing as mp

    out = tmp_path / "rank"
    # forked: the ranks start with torch and the record's script imported (spawned, each would import
    # them again, ~5 s a rank on 2 cores)
    mp.start_processes(_global_sgd_on_a_rank, args=(2, str(tmp_path / "init"), tokens, table, str(out)),
                       nprocs=2, join=True, start_method="fork")
    ranks = [[t.numpy() for t in torch.load(f"{out}.{r}", weights_only=True)] for r in range(2)]
    for ours, theirs in zip(*ranks):
        np.testing.assert_array_equal(ours, theirs)  # the replicas stay equal, R44's and pgolf's
    return ranks[0]


def test_packed_global_sgd_is_r44s(oracle, val_prefix_shard, sp1024_table, tmp_path):
    """R44's global SGD (``PGOLF_GLOBAL_TTT_PACKED``) on one process, and on two gloo ranks as R44
    under torchrun: each rank packs its half of a chunk's sequences, the gradients averaged (so not
    the steps of one process)."""
    tokens = planted_stream(val_prefix_shard, PAUSE_DOCS)
    got, expected, before = packed_global_sgd_pair(oracle, tokens, sp1024_table, 0, 1)
    got2, expected2, before2 = on_two_gloo_ranks(tokens, sp1024_table, tmp_path)
    np.testing.assert_array_equal(before, before2)
    assert np.abs(expected - before).max() > 0.05  # its steps move losses far past the tolerance
    assert np.abs(expected2 - expected).max() > 0.01  # and on two ranks other steps than on one
    deltas = np.abs(got - expected).max(), np.abs(got2 - expected2).max()
    print(f"R44 global SGD: max |delta loss| {deltas[0]:.3g} on one process, {deltas[1]:.3g} on two ranks")
    assert max(deltas) < TOLERANCE


def test_packed_global_sgd_refuses_ranks_with_unequal_rows(sp1024_table):
    """Three sequences a chunk on two ranks, one a row: one rank would step once, the other twice."""
    from pgolf.errors import PgolfError
    from pgolf.eval.ttt.phased import check_packed_ranks
    from pgolf.presets import build_config

    s = build_config(PRESET, ["GLOBAL_TTT_CHUNK_TOKENS=48", "GLOBAL_TTT_BATCH_SEQS=1"], environ={}).eval
    check_packed_ranks(s, 16, 1)
    check_packed_ranks(dataclasses.replace(s, global_ttt_batch_seqs=2), 16, 2)  # one row each
    with pytest.raises(PgolfError, match="give the ranks 1 to 2 rows"):
        check_packed_ranks(s, 16, 2)
