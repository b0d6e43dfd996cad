"""Small models for the technique tests: tiny widths, every zero/identity init perturbed."""

from __future__ import annotations

import torch

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.presets import resolve_preset

BOS = 1


def tiny_cfg(**changes) -> ModelConfig:
    cfg = resolve_preset("tiny_cpu").model
    cfg.vocab_size = 128
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def perturbed(model: GPT, seed: int = 0, scale: float = 0.05) -> GPT:
    """Move every parameter off its init so zero-initialised paths carry signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def tiny_model(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    return perturbed(GPT(tiny_cfg(**changes)), seed).eval()


def tokens(batch: int = 2, seqlen: int = 32, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    """Random tokens that avoid BOS, so documents are only where a test puts them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(2, vocab, (batch, seqlen), generator=gen)
    return x


ALL_ON = dict(
    num_layers=4, mlp_hidden=96, mlp_activation="leaky_relu2", negative_slope=0.3, xsa_last_n=4,
    rope_dims=8, rope_yarn=True, rope_train_seq_len=16, ln_scale=True, qk_gain_init=4.0,
    smear_gate_enabled=True, smear_bos_fix=True, bigram_vocab_size=257, bigram_dim=24, bigram_bos_fix=True,
    ve_enabled=True, ve_layers="2,3", value_residual=True, doc_isolated_attention=True,
    num_loops=1, loop_start=1, loop_end=2, parallel_start_layer=3, sparse_attn_gate_enabled=True,
    sparse_attn_gate_scale=0.5, skip_gates_enabled=True, logit_softcap_kind="poly", z_loss=1e-4,
    ortho_init=True, overtone_init=True, embed_dim=24, smear_after_norm=True,
)
"""Every option switched on at once (mutually exclusive ones: one of each)."""
