"""MLP width and activations; partial RoPE, the NTK base rescale, LN scale and the q-gain init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from techniques_helpers import tiny_cfg, tiny_model, tokens

from pgolf.config import Config, validate
from pgolf.errors import PgolfError
from pgolf.model.block import Block
from pgolf.model.gpt import GPT
from pgolf.model.mlp import MLP
from pgolf.model.rope import Rotary, apply_rotary, ntk_base


def test_mlp_width_from_multiplier_or_explicit_hidden():
    assert GPT(tiny_cfg(mlp_mult=3)).blocks[0].mlp.fc.weight.shape == (192, 64)
    model = GPT(tiny_cfg(mlp_hidden=80))
    assert model.blocks[0].mlp.fc.weight.shape == (80, 64)
    assert model.blocks[0].mlp.proj.weight.shape == (64, 80)


def test_activations_compute_their_formulas():
    h = torch.linspace(-3, 3, 13)
    assert torch.equal(MLP(4, 13).act(h), torch.relu(h).square())
    leaky = MLP(4, 13, "leaky_relu2", negative_slope=0.3).act(h)
    assert torch.allclose(leaky, torch.where(h > 0, h, 0.3 * h).square())
    assert leaky[0] > 0  # negative inputs keep signal (and a gradient), unlike relu^2
    swiglu = MLP(4, 6, "swiglu")
    assert swiglu.fc.weight.shape == (12, 4)
    h2 = torch.randn(3, 12)
    assert torch.allclose(swiglu.act(h2), F.silu(h2[:, :6]) * h2[:, 6:])


def test_unknown_activation_is_a_config_error():
    cfg = Config()
    cfg.model.mlp_activation = "gelu"
    with pytest.raises(PgolfError, match="MLP_ACTIVATION"):
        validate(cfg)


def test_partial_rope_leaves_the_unrotated_dims_position_free():
    head_dim, rope_dims, seqlen = 16, 4, 10
    cos, sin = Rotary(head_dim, rope_dims=rope_dims)(seqlen, torch.device("cpu"), torch.float32)
    same_vector_everywhere = torch.randn(head_dim).expand(1, 1, seqlen, head_dim)
    out = apply_rotary(same_vector_everywhere, cos, sin)
    tail = out[..., rope_dims:]
    assert torch.equal(tail, tail[:, :, :1].expand_as(tail))  # identical at every position
    assert torch.equal(tail[0, 0, 0], same_vector_everywhere[0, 0, 0, rope_dims:])
    head = out[..., :rope_dims]
    assert not torch.allclose(head[:, :, 0], head[:, :, 5])  # the first k dims do carry position


def test_partial_rope_in_the_model_shifted_positions_leave_position_free_dims_alone():
    rot = Rotary(16, rope_dims=8)
    cos, sin = rot(12, torch.device("cpu"), torch.float32)
    x = torch.randn(1, 2, 12, 16)
    shifted = torch.roll(x, 3, dims=2)
    a, b = apply_rotary(x, cos, sin), apply_rotary(shifted, cos, sin)
    assert torch.equal(torch.roll(a, 3, dims=2)[..., 8:], b[..., 8:])
    assert not torch.allclose(torch.roll(a, 3, dims=2)[..., :8], b[..., :8])


def test_full_rope_is_the_reference_formula():
    cos, sin = Rotary(8)(5, torch.device("cpu"), torch.float32)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    assert torch.allclose(cos[0, 0], torch.cos(torch.outer(torch.arange(5).float(), inv)))


def test_ntk_base_rescale():
    assert ntk_base(10000.0, 1024, 1024, 64) == 10000.0
    assert math.isclose(ntk_base(10000.0, 2048, 1024, 64), 10000.0 * 2 ** (64 / 62))
    rot = Rotary(16, base=10000.0, ntk_train_seq_len=8)
    cos_short, _ = rot(8, torch.device("cpu"), torch.float32)
    assert torch.allclose(cos_short, Rotary(16)(8, torch.device("cpu"), torch.float32)[0])
    cos_long, _ = rot(16, torch.device("cpu"), torch.float32)
    inv = 1.0 / (ntk_base(10000.0, 16, 8, 16) ** (torch.arange(0, 16, 2).float() / 16))
    assert torch.allclose(cos_long[0, 0], torch.cos(torch.outer(torch.arange(16).float(), inv)))
    # The highest frequency (dim 0) is untouched, the lowest is stretched by s^(d/(d-2)) * ... < 1.
    assert torch.allclose(cos_long[0, 0, :, 0], torch.cos(torch.arange(16).float()))


def test_ln_scale_multiplies_block_inputs_by_inverse_sqrt_depth():
    model = tiny_model(ln_scale=True, num_layers=4)
    seen = {}
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_pre_hook(lambda m, a, i=i: seen.update({i: a[0]}))
    model.logits(tokens())
    for i in range(4):
        rms = seen[i].pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, torch.full_like(rms, 1 / math.sqrt(i + 1)), atol=1e-3)
    assert Block.ln_scale_for(3) == 0.5


def test_q_gain_starts_at_qk_gain_init():
    model = GPT(tiny_cfg(qk_gain_init=5.25))
    assert all(torch.all(b.attn.q_gain == 5.25) for b in model.blocks)
