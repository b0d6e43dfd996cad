"""GPTQ of the token embedding, as the records that GPTQ an embedding do it (R30's technique; R35 and
R44 among the oracles): pgolf's Hessians are the records' ``collect_hessians`` (the tied embedding's
from the final-norm outputs that feed the head, every hooked linear's from its inputs), and its
preset export rounds ``tok_emb.weight`` to the record's ``gptq_quantize_weight`` codes and scales.

The embedding is the only table the records GPTQ: their Hessian hooks cover the linears and the
head input (R24/R25 hook CastedLinears only; R35/R44 the attention and MLP matrices plus
``final_norm``), and a lookup table as such has no input Hessian (``onehot^T onehot`` is diagonal,
under which GPTQ is round-to-nearest). So a tied embedding is GPTQ-rounded for its role as head.
"""

from __future__ import annotations

import types

import pytest
import torch
from oracles import RECORDS, no_orthogonal_init, randomise_

from pgolf.export.record_layout import in_pgolf_layout
from pgolf.model.gpt import build_model
from pgolf.presets import build_config
from pgolf.quant.gptq import TIED_EMBED_NAME, collect_hessians, hessian_error
from pgolf.quant.lowbit import dequantize_weight
from pgolf.quant.policy import parse_policy, quantize_for_export

PRESETS = ["sp8192_recur_parres_ttt", "sp8192_lqer_sparsegate_bossmear"]
BATCHES, SEQ = 2, 24
ROWS = 1024  # GPTQ rounds each row on its own (errors flow along a row), so a block of rows is exact


class FixedLoader:
    """The records' ``train_loader.next_batch(tokens, accum)``, handing out given batches in turn."""

    def __init__(self, batches):
        self.batches = list(batches)

    def next_batch(self, *_):
        return self.batches.pop(0), None


@pytest.fixture(scope="module", params=PRESETS)
def calibrated(request, oracle):
    """(preset config, record module, pgolf state, record's Hessians, pgolf's Hessians) from the
    record's model with random weights and pgolf's model holding the same weights."""
    preset = request.param
    record = RECORDS[preset]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module setup runs before the autouse single_thread fixture
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    mod = oracle(record.script)
    cfg = build_config(preset, environ={})
    with no_orthogonal_init():
        theirs = record.build(mod, cfg).float().eval()
        ours = build_model(cfg.model).eval()
    randomise_(theirs, seed=5)
    ours.load_state_dict(in_pgolf_layout(theirs.state_dict(), ours.state_dict(), preset), strict=True)
    g = torch.Generator().manual_seed(11)
    batches = [torch.randint(2, cfg.model.vocab_size, (1, SEQ), generator=g) for _ in range(BATCHES)]
    h = types.SimpleNamespace(train_batch_tokens=SEQ, grad_accum_steps=1)
    theirs_h = mod.collect_hessians(theirs, FixedLoader(batches), h, torch.device("cpu"), n_calibration_batches=BATCHES)
    ours_h = collect_hessians(ours, batches)
    return cfg, mod, ours.state_dict(), theirs_h, ours_h


def test_hessians_are_the_records(calibrated):
    _, _, _, theirs_h, ours_h = calibrated
    assert TIED_EMBED_NAME in theirs_h and len(theirs_h) > 1
    for name, h in theirs_h.items():
        mine = ours_h[name] / BATCHES  # the records average over batches; a common scale GPTQ ignores
        assert torch.allclose(mine, h, rtol=1e-4, atol=1e-4 * h.abs().max().item()), name


def test_embedding_gptq_codes_are_the_records(calibrated):
    """Same weights and Hessian: the record's scales bit for bit, and its codes up to float noise.
    GPTQ's error feedback makes a code that sits on a rounding boundary flip with the last bit of a
    matmul, and the flip carries along the row: the record's own function run with 2 threads instead
    of 1 differs from itself in ~1 code in 5,000 on such a table. Real differences (no feedback,
    another damping or order) change most codes."""
    cfg, mod, state, theirs_h, _ = calibrated
    scheme = parse_policy(cfg.quant.scheme).scheme_for(TIED_EMBED_NAME)
    w, h = state[TIED_EMBED_NAME][:ROWS].contiguous(), theirs_h[TIED_EMBED_NAME]
    entry = quantize_for_export({TIED_EMBED_NAME: w}, cfg.quant, {TIED_EMBED_NAME: h}, lqer=False).entry(TIED_EMBED_NAME)
    codes, scale = mod.gptq_quantize_weight(w, h, clip_sigmas=scheme.k, clip_range=scheme.qmax)
    assert cfg.quant.gptq_enabled and scheme.clip == "sd"
    assert torch.equal(entry.scale, scale)
    differ = entry.values != codes
    assert differ.sum().item() <= codes.numel() // 2000, f"{differ.sum().item()} codes differ"
    assert differ.any(dim=1).sum().item() <= ROWS // 100
    ours_err = hessian_error(w, dequantize_weight(entry.values, entry.scale, 0), h)
    their_err = hessian_error(w, dequantize_weight(codes, scale, 0), h)
    assert abs(ours_err - their_err) <= 1e-3 * their_err
    rtn = quantize_for_export({TIED_EMBED_NAME: w}, cfg.quant, None, gptq=False, lqer=False).entry(TIED_EMBED_NAME)
    assert (rtn.values != codes).sum().item() > 100 * max(1, differ.sum().item())  # GPTQ really moved codes
