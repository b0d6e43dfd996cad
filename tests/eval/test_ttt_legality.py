"""The legality rule for LoRA and phased TTT: a target's loss depends only on the artifact and the
tokens before it, however later documents change (issue 16's reviewer experiment, scaled down), and
with ROPE_YARN a document scores the same alone or batched with a longer one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pgolf.eval.ttt import run_ttt
from pgolf.eval.ttt.phased import phase_ends
from pgolf.eval.windows import segments
from pgolf.model.rope import Rotary, ntk_length_pinned

# The reviewer's experiment on 8,193 tokens takes minutes per LoRA run of the baseline on CPU; the
# same experiment on the val slice from the BOS at 573,454: documents of 132, 156 and (cut) 32
# tokens. From position 250 (inside the second document) every token becomes a random non-BOS id:
# the third document's BOS vanishes, the second grows, and the first lies wholly before the change.
SLICE_START, SLICE_TOKENS, CHANGE_AT = 573_454, 320, 250
SMALL_LORA = ("TTT_CHUNK_SIZE=64", "TTT_EVAL_SEQ_LEN=64")


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32)


@pytest.fixture(scope="module")
def reviewer_streams(val_prefix_shard, sp1024_model):
    from pgolf.data.shards import load_tokens
    from pgolf.tokenizer.luts import build_byte_table
    from pgolf.tokenizer.spm import load_tokenizer

    sp = load_tokenizer(str(sp1024_model))
    bos = int(sp.bos_id())
    tokens = np.ascontiguousarray(load_tokens(str(val_prefix_shard), "val", 1024)[SLICE_START : SLICE_START + SLICE_TOKENS + 1])
    rng = np.random.default_rng(0)
    changed = tokens.copy()
    tail = rng.integers(0, 1024, size=tokens.shape[0] - CHANGE_AT)
    changed[CHANGE_AT:] = np.where(tail == bos, bos + 1, tail)
    assert segments(tokens, bos) == [(0, 132), (132, 288), (288, 320)]
    assert segments(changed, bos) == [(0, 132), (132, 320)]
    return tokens, changed, build_byte_table(sp, 1024).to_torch(), bos


@pytest.mark.slow
@pytest.mark.parametrize("kind, extra", [
    ("lora", ()),
    # a global SGD pause after the first document: the second and third are adapted together after it
    ("phased", ("PHASED_TTT_PREFIX_DOCS=1",)),
])
def test_reviewer_experiment_later_documents_never_move_earlier_losses(reviewer_streams, kind, extra):
    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config

    tokens, changed, table, bos = reviewer_streams
    cfg = build_config("baseline", [*SMALL_LORA, *extra], environ={})
    torch.manual_seed(0)
    model = build_model(cfg.model, "cpu")  # random weights, as the reviewer's
    model.eval()
    # seq_len 256: the global SGD over the first document is one sequence
    before = run_ttt(kind, model, tokens, table, cfg.eval, 256, bos)
    after = run_ttt(kind, model, changed, table, cfg.eval, 256, bos)
    earlier = slice(0, CHANGE_AT - 1)
    moved = np.flatnonzero(bits(before.token_losses[earlier]) != bits(after.token_losses[earlier]))
    assert moved.size == 0, f"{moved.size} earlier targets moved, the first at {moved[0]}"
    assert (before.token_losses[CHANGE_AT:] != after.token_losses[CHANGE_AT:]).any()  # the change took effect


def yarn_model(trained_tiny):
    """The trained tiny model with the NTK rescale past 16 positions (no parameter changes)."""
    from pgolf.model.gpt import build_model

    model = build_model(dataclasses.replace(trained_tiny.cfg.model, rope_yarn=True, rope_train_seq_len=16), "cpu")
    model.load_state_dict(trained_tiny.model.state_dict())
    return model.eval()


@pytest.mark.parametrize("kind", ["lora", "phased"])
def test_yarn_document_alone_or_batched_with_a_longer_one_scores_the_same(trained_tiny, ttt_settings, kind):
    t = trained_tiny
    model = yarn_model(t)
    doc = t.val_tokens[7066 : 7066 + 20]  # a BOS and 19 tokens
    longer = t.val_tokens[7474 : 7474 + 100]  # a BOS and 99 tokens
    assert doc[0] == longer[0] == t.bos_id
    alone = np.concatenate([doc, [t.bos_id]])
    batched = np.concatenate([doc, longer, [t.bos_id]])
    settings = ttt_settings("PHASED_TTT_PREFIX_DOCS=0")
    assert settings.ttt_batch_size >= 2  # both documents in one batch
    a = run_ttt(kind, model, alone, t.table, settings, 128, t.bos_id)
    b = run_ttt(kind, model, batched, t.table, settings, 128, t.bos_id)
    assert np.array_equal(bits(a.token_losses), bits(b.token_losses[:20]))


def test_yarn_base_is_that_of_the_configured_window_length(trained_tiny, ttt_settings):
    """A document's first chunk (adapters still the identity) scores as a plain forward over a
    TTT_EVAL_SEQ_LEN window does, whose length sets the base, not as one over the chunk alone."""
    t = trained_tiny
    model = yarn_model(t)
    settings = ttt_settings("PHASED_TTT_PREFIX_DOCS=0")  # chunks of 64, windows of 128
    doc = t.val_tokens[7474 : 7474 + 64 + 1]
    lora = run_ttt("lora", model, doc, t.table, settings, 128, t.bos_id)
    x = torch.zeros(1, 128, dtype=torch.int64)
    y = torch.zeros(1, 128, dtype=torch.int64)
    x[0, :64], y[0, :64] = torch.from_numpy(doc[:-1].astype(np.int64)), torch.from_numpy(doc[1:].astype(np.int64))
    with torch.no_grad():
        window_of_128 = model(x, y, reduction="none")[0, :64].numpy()
        chunk_alone = model(x[:, :64], y[:, :64], reduction="none")[0].numpy()
    assert np.abs(window_of_128 - chunk_alone).max() > 1e-3  # the base matters here
    np.testing.assert_allclose(lora.token_losses, window_of_128, rtol=0, atol=1e-5)


def test_pinned_ntk_length_gives_r22s_tables_of_that_length_to_shorter_calls():
    """R22's Rotary at its window length L (the base rescaled for L) is the oracle: pinned to L,
    pgolf's tables for a call of any length T <= L are the first T rows of R22's."""
    from tests.eval.ttt_oracles import import_r22

    reference = import_r22().Rotary(64, base=10000.0, train_seq_len=16, rope_dims=16)
    cos_ref, sin_ref = reference(128, torch.device("cpu"), torch.float32)  # [1, T, 1, dims/2]
    rotary = Rotary(64, base=10000.0, rope_dims=16, ntk_train_seq_len=16)
    with ntk_length_pinned(torch.nn.ModuleList([rotary]), 128):
        for length in (20, 64, 128):
            cos, sin = rotary(length, torch.device("cpu"), torch.float32)  # [1, 1, T, dims/2]
            assert torch.allclose(cos[0, 0], cos_ref[0, :length, 0], atol=1e-6)
            assert torch.allclose(sin[0, 0], sin_ref[0, :length, 0], atol=1e-6)
    cos, _ = rotary(20, torch.device("cpu"), torch.float32)  # unpinned again: the base of 20
    assert not torch.allclose(cos[0, 0], cos_ref[0, :20, 0], atol=1e-3)
    assert torch.allclose(cos[0, 0], reference(20, torch.device("cpu"), torch.float32)[0][0, :, 0], atol=1e-6)


@pytest.mark.parametrize("prefix, phases", [(2000, 1), (2000, 3), (5, 2), (7, 3)])
def test_phase_ends_before_a_document_never_depend_on_how_many_follow(prefix, phases):
    """Whether global SGD runs after document i is fixed by the settings, not by the stream's length."""
    for n_docs in range(1, 12):
        for more in range(n_docs + 1, 13):
            assert phase_ends(n_docs, prefix, phases) == [e for e in phase_ends(more, prefix, phases) if e < n_docs]


PR1090_RULES = ("PGOLF_TTT_LORA_INIT=pr1090", "TTT_MIN_DOC_LEN=32", "TTT_CHUNK_SIZE=32", "TTT_EVAL_SEQ_LEN=32")


@pytest.mark.parametrize("kind", ["lora", "phased"])
def test_pr1090_short_document_rule_never_reads_where_the_document_ends(trained_tiny, ttt_settings, kind):
    """PR #1090 scores documents under TTT_MIN_DOC_LEN tokens without TTT steps, which needs where
    the next BOS is. pgolf's rule (a document's first TTT_MIN_DOC_LEN - 1 targets with its initial
    adapters, before any step) does not: a BOS planted 20 tokens into a 150-token document, which
    makes it short, leaves every target before the BOS as it was, bit for bit, under PR #1090's
    random initial adapters."""
    t = trained_tiny
    tokens = np.concatenate([t.val_tokens[7474 : 7474 + 150], [t.bos_id]])  # a BOS, 149 tokens, the next BOS
    planted = tokens.copy()
    planted[20] = t.bos_id
    s = ttt_settings(*PR1090_RULES, "PHASED_TTT_PREFIX_DOCS=0")
    before = run_ttt(kind, t.model, tokens, t.table, s, 128, t.bos_id).token_losses
    after = run_ttt(kind, t.model, planted, t.table, s, 128, t.bos_id).token_losses
    assert np.array_equal(bits(before[:19]), bits(after[:19]))
    # and those first targets are scored with the initial adapters, as if no step were ever taken (a
    # learning rate of 0), even where steps come before them (chunks of 8: three steps before target 31)
    eights = (*PR1090_RULES, "PHASED_TTT_PREFIX_DOCS=0", "TTT_CHUNK_SIZE=8")
    stepped = run_ttt(kind, t.model, tokens, t.table, ttt_settings(*eights), 128, t.bos_id).token_losses
    unstepped = run_ttt(kind, t.model, tokens, t.table, ttt_settings(*eights, "TTT_LORA_LR=0"), 128, t.bos_id).token_losses
    assert np.array_equal(bits(stepped[:31]), bits(unstepped[:31]))
    assert np.abs(stepped[31:] - unstepped[31:]).max() > 1e-3  # the steps do move the later ones
    assert np.abs(before[31:64] - run_ttt(kind, t.model, tokens, t.table, ttt_settings(
        "TTT_CHUNK_SIZE=32", "TTT_EVAL_SEQ_LEN=32", "PHASED_TTT_PREFIX_DOCS=0"), 128, t.bos_id).token_losses[31:64]).max() > 0


@pytest.mark.parametrize("kind", ["lora", "phased"])
def test_r44_adapters_on_a_looped_model_score_a_document_alone_or_batched_the_same(trained_tiny, ttt_settings, kind):
    """R44's adapters (one per virtual layer: block 0 runs twice here, on Q, K, V, O, MLP and the
    logits; its init, alpha/rank scale and AdamW with weight decay): a document's losses do not
    depend on the longer document batched with it, bit for bit, and its second pass of block 0
    adapts apart from its first."""
    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config
    from tests.eval.test_flip import R44_ADAPTERS

    t = trained_tiny
    cfg = build_config("tiny_cpu", ["NUM_LOOPS=1", "LOOP_START=0", "LOOP_END=0"], environ={})
    torch.manual_seed(0)
    model = build_model(cfg.model, "cpu").eval()  # random weights
    assert model.layer_order() == [0, 0, 1]
    doc = t.val_tokens[7066 : 7066 + 150]  # a BOS and 149 tokens
    longer = t.val_tokens[7474 : 7474 + 300]
    assert doc[0] == longer[0] == t.bos_id and (doc[1:] != t.bos_id).all()
    alone = np.concatenate([doc, [t.bos_id]])
    batched = np.concatenate([doc, longer, [t.bos_id]])
    settings = ttt_settings("PHASED_TTT_PREFIX_DOCS=0", *R44_ADAPTERS)
    a = run_ttt(kind, model, alone, t.table, settings, 128, t.bos_id).token_losses
    b = run_ttt(kind, model, batched, t.table, settings, 128, t.bos_id).token_losses
    assert np.array_equal(bits(a), bits(b[:150]))
    if kind == "phased":
        return  # the same adapters as lora's
    shared = run_ttt(kind, model, alone, t.table, dataclasses.replace(settings, ttt_lora_per_pass=False), 128,
                     t.bos_id).token_losses
    assert np.abs(a - shared)[64:].max() > 1e-3  # the passes' own adapters: after the first step, other losses
