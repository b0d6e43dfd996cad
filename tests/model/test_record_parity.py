"""Every record preset computes its record's function, on the record's own checkpoint.

For each of the seven presets: the record's own ``GPT`` (imported from its script in the oracles,
FlashAttention 3 replaced by SDPA), built with the preset's hyperparameters, gets random
non-trivial fp32 weights (zero-initialised projections too) and is saved as its ``main()`` saves
``final_model.pt``. pgolf reads that file as ``pgolf eval --checkpoint`` does (banks, key names:
pgolf.export.record_layout) and must give the record's logits on real tokens at the record's
sequence length. The other way round, random pgolf weights written in the record's layout must
load into the record's model with ``strict=True`` and give pgolf's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from pgolf.export.loading import load_weights
from pgolf.export.record_layout import in_pgolf_layout, record_layout
from pgolf.model.gpt import build_model
from pgolf.presets import build_config

TOLERANCE = 1e-4  # max |logit difference|, fp32; logits are softcapped at 30


def reference_kwargs(m) -> dict:
    """The arguments every record's GPT shares with the reference's."""
    return dict(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                num_kv_heads=m.num_kv_heads, mlp_mult=m.mlp_mult, tie_embeddings=m.tie_embeddings,
                tied_embed_init_std=m.tied_embed_init_std, logit_softcap=m.logit_softcap, rope_base=m.rope_base,
                qk_gain_init=m.qk_gain_init)


def reference_gpt(mod, cfg):
    return mod.GPT(**reference_kwargs(cfg.model))


def pr160_gpt(mod, cfg):
    return mod.GPT(**reference_kwargs(cfg.model), mlp_hidden=cfg.model.mlp_hidden, train_seq_len=cfg.train.train_seq_len)


def r15_gpt(mod, cfg):
    m = cfg.model
    return mod.GPT(**reference_kwargs(m), bigram_hash_buckets=m.bigram_vocab_size, bigram_hash_dim=m.bigram_dim,
                   use_smeargate=m.use_smeargate)


def r22_gpt(mod, cfg):
    m = cfg.model
    return mod.GPT(**reference_kwargs(m), bigram_vocab_size=m.bigram_vocab_size, bigram_dim=m.bigram_dim,
                   xsa_last_n=m.xsa_last_n, rope_dims=m.rope_dims, ln_scale=m.ln_scale, ve_enabled=m.ve_enabled,
                   ve_dim=m.ve_dim, ve_layers=m.ve_layers, value_residual=m.value_residual)


def pr1090_gpt(mod, cfg):
    # its SwiGLU width comes from MLP_MULT (3: 2/3 of 3x, rounded to 64); pgolf states it as MLP_HIDDEN
    return mod.GPT(**{**reference_kwargs(cfg.model), "mlp_mult": mod.Hyperparameters.mlp_mult})


def hyperparameters(mod, cfg, **record_only):
    """The Hyperparameters object of an R35-style script, with the preset's model settings."""
    m, h = cfg.model, mod.Hyperparameters()
    for name in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "tie_embeddings",
                 "tied_embed_init_std", "logit_softcap", "rope_base", "qk_gain_init", "xsa_last_n", "rope_dims",
                 "ln_scale", "skip_gates_enabled", "num_loops", "loop_start", "loop_end"):
        setattr(h, name, getattr(m, name))
    h.train_seq_len = cfg.train.train_seq_len
    for name, value in record_only.items():
        setattr(h, name, value)
    return h


def r35_gpt(mod, cfg):
    m = cfg.model
    model = mod.GPT(hyperparameters(mod, cfg, embedding_dim=m.model_dim, parallel_residual_start=m.parallel_residual_start))
    model.looping_active = True  # as it is evaluated
    return model


def r44_gpt(mod, cfg):
    m = cfg.model
    mod.BOS_ID = m.bos_id  # its evaluation sets the global before the first forward
    model = mod.GPT(hyperparameters(
        mod, cfg, parallel_start_layer=m.parallel_start_layer, parallel_final_lane=m.parallel_final_lane,
        smear_gate_enabled=m.smear_gate_enabled, gate_window=m.gate_window, rope_yarn=m.rope_yarn,
        sparse_attn_gate_enabled=m.sparse_attn_gate_enabled, sparse_attn_gate_scale=m.sparse_attn_gate_scale,
        attn_out_gate_enabled=m.attn_out_gate_enabled, gated_attn_enabled=m.gated_attn_enabled, fused_ce_enabled=False))
    model.looping_active = True
    return model


@dataclass(frozen=True)
class Record:
    script: str
    build: Callable
    varlen: bool = False  # evaluated with varlen attention over the BOS-delimited documents


RECORDS = {
    "baseline": Record("reference/train_gpt.py", reference_gpt),
    "mlp3x_int8emb_seq2048": Record("PR160_mlp3x_int8emb_seq2048/train_gpt.py", pr160_gpt),
    "smeargate_orthoinit_muonwd": Record("R15_smeargate_orthoinit_muonwd/train_gpt_v5.py", r15_gpt),
    "leakyrelu_ttt_parallel_muon": Record("R22_leakyrelu_ttt_parallel_muon/train_gpt.py", r22_gpt),
    "xsa_swiglu_lora_ttt_1xh100": Record("PR1090_xsa_swiglu_lora_ttt_1xh100/train_gpt.py", pr1090_gpt),
    "sp8192_recur_parres_ttt": Record("R35_sp8192_recur_parres_ttt/train_gpt.decompressed.py", r35_gpt),
    "sp8192_lqer_sparsegate_bossmear": Record("R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py", r44_gpt, varlen=True),
}


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights: matrices and tables ~ N(0, 1/fan_in) (zero-initialised projections
    too), gains, gates and lambdas their init value plus N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2 and min(p.shape[-2:]) >= 16:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            else:
                p.add_(0.5 * noise)


class CapturingF:
    """torch.nn.functional with ``cross_entropy`` recording its logits: for the scripts whose GPT
    returns only the loss (the reference, PR #1090)."""

    def __init__(self, real):
        self.real, self.logits = real, None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cross_entropy(self, logits, *args, **kwargs):
        self.logits = logits
        return self.real.cross_entropy(logits, *args, **kwargs)


def record_logits(mod, record: Record, model, ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The record's own logits [B, T, V] for ``ids``, as its evaluation computes them."""
    if record.varlen:  # one sequence, cut at every BOS as its eval_val does
        bos = (ids[0] == mod.BOS_ID).nonzero(as_tuple=True)[0].tolist()
        cu, max_len = mod._build_cu_seqlens(bos, ids.numel(), ids.device, seq_len, 64)
        return model.forward_logits(ids, cu_seqlens=cu, max_seqlen=max_len)
    if hasattr(model, "forward_logits"):
        return model.forward_logits(ids)
    if hasattr(model, "get_logits"):
        return model.get_logits(ids)
    capture, real = CapturingF(mod.F), mod.F
    mod.F = capture
    try:
        model(ids, ids)
    finally:
        mod.F = real
    return capture.logits.reshape(*ids.shape, -1)


def parity_tokens(request, cfg, seq_len: int) -> torch.Tensor:
    """One sequence of real val tokens (sp1024), or random ids with planted BOS tokens (sp8192:
    no such shards offline)."""
    if cfg.model.vocab_size == 1024:
        from pgolf.data.shards import load_tokens

        shard = request.getfixturevalue("val_prefix_shard")  # skips where the real data is absent
        return torch.from_numpy(load_tokens(shard, "val", 1024)[:seq_len].astype(np.int64))[None]
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, cfg.model.vocab_size, (1, seq_len), generator=g)
    ids[0, [0, seq_len // 5, seq_len // 5 + 1, seq_len // 2]] = cfg.model.bos_id  # documents, one empty
    return ids


@pytest.fixture(scope="module", params=list(RECORDS))
def pair(request, oracle):
    """(preset, config, record module, record's GPT, pgolf's GPT), built once per preset."""
    preset = request.param
    record = RECORDS[preset]
    mod = oracle(record.script)
    cfg = build_config(preset, environ={})
    torch.manual_seed(0)
    ours = build_model(cfg.model).eval()
    theirs = record.build(mod, cfg).float().eval()
    return preset, cfg, record, mod, theirs, ours


@pytest.fixture(autouse=True)
def two_threads():
    # these are the records' real shapes (up to 17 virtual layers of 512 at 2048 tokens): both cores
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_pgolf_reads_the_records_checkpoint_and_computes_its_logits(pair, tmp_path, request):
    preset, cfg, record, mod, theirs, ours = pair
    seq_len = cfg.train.train_seq_len
    randomise_(theirs, seed=1)
    torch.save(theirs.state_dict(), tmp_path / "final_model.pt")  # as the record's main() saves it
    state, _ = load_weights(tmp_path / "final_model.pt")
    ours.load_state_dict(in_pgolf_layout(state, ours.state_dict(), preset), strict=True)
    ids = parity_tokens(request, cfg, seq_len)
    with torch.no_grad():
        expected = record_logits(mod, record, theirs, ids, seq_len)
        got = ours.logits(ids)
    assert expected.shape == got.shape == (1, seq_len, cfg.model.vocab_size)
    assert expected.std() > 0.5, "the random weights must give non-trivial logits"
    delta = (got - expected).abs().max().item()
    print(f"{preset}: max |delta logit| {delta:.3g} over {seq_len} tokens")
    assert delta < TOLERANCE


def test_pgolf_weights_in_the_records_layout_load_strictly_into_the_record(pair, tmp_path):
    preset, cfg, record, mod, theirs, ours = pair
    randomise_(ours, seed=2)
    path = tmp_path / "final_model.pt"
    torch.save(record_layout(preset).to_record(ours.state_dict()), path)
    theirs.load_state_dict(torch.load(path, weights_only=True), strict=True)
    ids = parity_tokens_short(cfg)
    with torch.no_grad():
        expected = ours.logits(ids)
        got = record_logits(mod, record, theirs, ids, ids.size(1))
    assert expected.std() > 0.5
    assert (got - expected).abs().max().item() < TOLERANCE


def parity_tokens_short(cfg, seq_len: int = 256) -> torch.Tensor:
    """A short random sequence with a BOS inside: the round trip checks names and shapes, not length."""
    ids = torch.randint(2, cfg.model.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(3))
    ids[0, [0, seq_len // 3]] = cfg.model.bos_id
    return ids
