"""The flip check passes for every production evaluator under every perturbation kind (document
structure included) and fails on planted leaks in each TTT kind, structure leaks that substitutions
alone miss; the normalization check holds for the model."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import pgolf.eval.ttt.phased as phased_module
import pgolf.eval.ttt.sgd as sgd_module
from pgolf.check.flip import KINDS, Perturbation, evaluator_for, flip_check, perturb, pick_perturbations
from pgolf.check.normalization import normalization_check
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.sliding import evaluate_windows, ledger_result
from pgolf.eval.ttt.lora import BatchedLoRA
from pgolf.eval.ttt.sgd import sgd_epochs, trainable_parameters, windows_by_chunk
from pgolf.eval.windows import plan, segments

STREAM = 768
CHUNK = 256
# the stream starts at the BOS at val position 3872: documents of 173, 515 and (cut) 80 tokens, so
# perturbations in its second half split, merge, shorten and lengthen documents
STREAM_START = 3872


@pytest.fixture(scope="module")
def flip_setup(trained_tiny):
    t = trained_tiny
    tokens = t.val_tokens[STREAM_START : STREAM_START + STREAM + 1].copy()
    assert tokens[0] == t.bos_id and (tokens == t.bos_id).sum() == 3
    return t, tokens, pick_perturbations(tokens, len(KINDS), 1024, t.bos_id, seed=1)


def flip_settings(ttt_settings, *extra):
    return ttt_settings(f"TTT_CHUNK_TOKENS={CHUNK}", f"GLOBAL_TTT_CHUNK_TOKENS={CHUNK}", "PHASED_TTT_PREFIX_DOCS=2",
                        "TTT_EPOCHS=1", *extra)


def test_perturbations_change_document_structure(flip_setup):
    t, tokens, perturbations = flip_setup
    assert [p.kind for p in perturbations] == list(KINDS)
    docs = segments(tokens, t.bos_id)
    for p in perturbations:
        assert np.array_equal(p.stream[: p.position], tokens[: p.position]) and p.stream[p.position] != tokens[p.position]
        assert p.stream.shape == tokens.shape
        assert (segments(p.stream, t.bos_id) == docs) == (p.kind == "substitute"), p.kind


# R44's adapters (the sp8192_lqer_sparsegate_bossmear preset's): Q, K, V, O, MLP and logits, one per
# virtual layer, its init and alpha/rank scale, AdamW; and its packed global SGD
R44_ADAPTERS = ("PGOLF_TTT_LORA_TARGETS=q,k,v,o,mlp,logits", "PGOLF_TTT_LORA_INIT=r44", "PGOLF_TTT_LORA_PER_PASS=1",
                "TTT_BETA1=0", "TTT_BETA2=0.99", "PGOLF_TTT_ADAM_EPS=1e-10", "TTT_WEIGHT_DECAY=0.5",
                "PGOLF_GLOBAL_TTT_PACKED=1", "DOC_ISOLATED_ATTENTION=1")
MODE_SETTINGS = {"sliding-doc-isolated": ("PGOLF_EVAL_DOC_ISOLATED=1",), "phased-r44": R44_ADAPTERS}


@pytest.mark.parametrize("mode", ["standard", "sliding", "sliding-doc-isolated", "sgd", "lora", "phased", "phased-r44"])
def test_flip_check_passes_for_production_evaluators(flip_setup, ttt_settings, mode):
    t, tokens, perturbations = flip_setup
    settings = flip_settings(ttt_settings, *MODE_SETTINGS.get(mode, ()))
    evaluate = evaluator_for(mode.split("-")[0], t.model, t.table, settings, 128, t.bos_id, batch_tokens=512)
    stream = tokens[: 640 + 1] if mode == "standard" else tokens  # standard needs whole windows
    kept = [p for p in perturbations if p.position < 640] if mode == "standard" else perturbations
    report = flip_check(evaluate, stream, mode, [Perturbation(p.kind, p.position, p.stream[: stream.shape[0]]) for p in kept])
    assert report.ok, report.as_dict()
    assert all(o.protected > 0 for o in report.outcomes)


def lora_init_from_the_batchs_last_document(monkeypatch):
    """Planted leak: every adapter of a batch starts as the batch's latest document's would."""
    original = BatchedLoRA.__init__

    def leaky(self, model, doc_starts, *args, **kwargs):
        original(self, model, [max(doc_starts)] * len(doc_starts), *args, **kwargs)

    monkeypatch.setattr(BatchedLoRA, "__init__", leaky)


def sgd_lr_from_the_document_count(monkeypatch):
    """Planted leak: the SGD TTT's learning rate follows how many documents the whole stream has."""
    original = sgd_module.evaluate_sgd_ttt

    def leaky(model, tokens, table, s, seq_len, bos_id, device):
        docs = int((tokens == bos_id).sum())
        return original(model, tokens, table, dataclasses.replace(s, ttt_lr=s.ttt_lr * docs), seq_len, bos_id, device)

    monkeypatch.setattr(sgd_module, "evaluate_sgd_ttt", leaky)


def phases_spread_over_the_documents_present(monkeypatch):
    """Planted leak (pgolf's phase ends before issue 16, and R44's): the pauses spread over
    min(PHASED_TTT_PREFIX_DOCS, documents in the stream), so later documents move them."""
    def leaky(n_docs, prefix_docs, phases):
        prefix = min(prefix_docs, n_docs)
        return sorted({math.ceil(prefix * (i + 1) / phases) for i in range(phases)} - {0})

    monkeypatch.setattr(phased_module, "phase_ends", leaky)


@pytest.mark.parametrize("mode, plant, extra", [
    ("sgd", sgd_lr_from_the_document_count, ()),
    ("lora", lora_init_from_the_batchs_last_document, ()),
    ("phased", lora_init_from_the_batchs_last_document, ("PHASED_TTT_PREFIX_DOCS=1",)),
    ("phased", lora_init_from_the_batchs_last_document, ("PHASED_TTT_PREFIX_DOCS=1", *R44_ADAPTERS)),
    ("phased", phases_spread_over_the_documents_present, ("PHASED_TTT_PREFIX_DOCS=2000", "PHASED_TTT_NUM_PHASES=2")),
])
def test_flip_check_catches_a_planted_structure_leak_substitutions_miss(flip_setup, ttt_settings, monkeypatch, mode, plant, extra):
    t, tokens, perturbations = flip_setup
    plant(monkeypatch)
    evaluate = evaluator_for(mode, t.model, t.table, flip_settings(ttt_settings, *extra), 128, t.bos_id)
    rng = np.random.default_rng(2)
    # the third document vanishes: merged into the second, or overwritten from inside the second
    structural = [Perturbation(kind, p, perturb(tokens, kind, p, 1024, t.bos_id, rng))
                  for kind, p in (("delete_bos", 688), ("rewrite_tail", 600))]
    report = flip_check(evaluate, tokens, mode, [p for p in perturbations if p.kind == "substitute"] + structural)
    assert not report.ok
    substituted, *restructured = report.outcomes
    assert substituted.ok  # the flips of old: blind to it
    assert all(o.changed > 0 for o in restructured), report.as_dict()


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
    t, tokens, perturbations = flip_setup
    report = flip_check(leaky_sgd_ttt(t.model, t.table), tokens, "leaky-sgd", perturbations)
    assert not report.ok
    assert all(o.changed > 0 for o in report.outcomes)


def test_normalization(trained_tiny):
    report = normalization_check(trained_tiny.model, trained_tiny.val_tokens, 128, samples=32)
    assert report.ok, report.as_dict()
    assert report.max_sum_error < 1e-6
