"""Depth recurrence, parallel residuals, gated skips, logit caps, z-loss, record inits, optimizer roles."""

from __future__ import annotations

import math

import pytest
import torch
from techniques_helpers import perturbed, tiny_cfg, tiny_model, tokens

from pgolf.config import OptimConfig
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.logits import softcap
from pgolf.model.recurrence import encoder_decoder, looped_layer_order
from pgolf.optim.groups import build_optimizers


def test_looped_order_is_the_records_virtual_order():
    assert looped_layer_order(11, 3, 5, 2) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert looped_layer_order(9, 3, 5, 0) == list(range(9))
    enc, dec = encoder_decoder(looped_layer_order(11, 3, 5, 2))
    assert len(enc) == 8 and len(dec) == 9  # R35's 8 encoder / 9 decoder virtual layers


def test_recurrence_shares_parameters_and_switches_on_at_runtime():
    flat = GPT(tiny_cfg(num_layers=4))
    looped = perturbed(GPT(tiny_cfg(num_layers=4, num_loops=2, loop_start=1, loop_end=2)))
    # Only the U-Net skip weights grow with the virtual depth (as in R35+): 4 instead of 2 rows.
    assert count_parameters(looped) - count_parameters(flat) == 2 * 64
    assert looped.layer_order() == [0, 1, 2, 1, 2, 1, 2, 3]  # built on, as a trained model evaluates
    looped.set_recurrence(False)
    calls = []
    looped.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    x = tokens()
    off = looped.logits(x)
    assert len(calls) == 1 and looped.layer_order() == [0, 1, 2, 3]
    looped.set_recurrence(True)
    on = looped.logits(x)
    assert len(calls) == 1 + 3 and looped.layer_order() == [0, 1, 2, 1, 2, 1, 2, 3]
    assert not torch.allclose(off, on)
    looped.set_recurrence(1)  # progressive: one extra pass
    assert looped.layer_order() == [0, 1, 2, 1, 2, 3]
    looped.set_recurrence(False)
    assert torch.equal(looped.logits(x), off)
    with pytest.raises(ValueError):
        looped.set_recurrence(3)


def test_recurrence_grads_accumulate_into_the_shared_tensors():
    """A looped model equals a flat model with copied blocks, and its grads are the copies' sums."""
    looped = perturbed(GPT(tiny_cfg(num_layers=4, num_loops=1, loop_start=1, loop_end=2)))
    order = looped.layer_order()  # [0, 1, 2, 1, 2, 3]
    unrolled = GPT(tiny_cfg(num_layers=len(order)))
    with torch.no_grad():
        unrolled.tok_emb.weight.copy_(looped.tok_emb.weight)
        unrolled.skip_weights.copy_(looped.skip_weights)
        for virtual, physical in enumerate(order):
            unrolled.blocks[virtual].load_state_dict(looped.blocks[physical].state_dict())
    x, y = tokens(), tokens(seed=1)
    loss_looped, loss_unrolled = looped(x, y), unrolled(x, y)
    assert torch.allclose(loss_looped, loss_unrolled, atol=1e-6)
    loss_looped.backward()
    loss_unrolled.backward()
    for physical in (1, 2):
        uses = [v for v, p in enumerate(order) if p == physical]
        expected = sum(unrolled.blocks[v].mlp.fc.weight.grad for v in uses)
        assert torch.allclose(looped.blocks[physical].mlp.fc.weight.grad, expected, atol=1e-6)


def test_gptj_parallel_block_feeds_attention_and_mlp_the_same_input():
    model = tiny_model(gptj_parallel=True)
    seen = {}
    block = model.blocks[0]
    block.attn.register_forward_pre_hook(lambda m, a: seen.update(attn=a[0]))
    block.mlp.register_forward_pre_hook(lambda m, a: seen.update(mlp=a[0]))
    model.logits(tokens())
    assert torch.equal(seen["attn"], seen["mlp"])


def test_two_lane_parallel_mlp_does_not_read_the_same_layers_attention():
    model = tiny_model(num_layers=4, parallel_start_layer=2)
    assert model.parallel_post_lambdas.shape == (4, 2, 2) and model.parallel_resid_lambdas.shape == (4, 2)
    seen = []
    model.blocks[2].mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = tokens()
    model.logits(x)
    with torch.no_grad():
        model.blocks[2].attn.c_v.weight.mul_(3.0)  # change layer 2's attention output only
    model.logits(x)
    assert torch.equal(seen[0], seen[1])  # lane 1 at layer 2 predates layer 2's attention
    sequential = tiny_model(num_layers=4)
    seen.clear()
    sequential.blocks[2].mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    sequential.logits(x)
    with torch.no_grad():
        sequential.blocks[2].attn.c_v.weight.mul_(3.0)
    sequential.logits(x)
    assert not torch.equal(seen[0], seen[1])


def test_two_lane_lambdas_write_outputs_to_lanes():
    model = tiny_model(num_layers=2, parallel_start_layer=1)
    block, x0 = model.blocks[1], torch.randn(1, 4, 64)
    lane0, lane1 = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    post = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    resid = torch.tensor([1.0, 1.0])
    new0, new1 = block.forward_lanes(lane0, lane1, x0, post, resid)
    mlp_only = block.mlp_scale * block.mlp(block.mlp_norm(lane1))
    assert torch.allclose(new1, lane1 + mlp_only, atol=1e-6)
    attn_only = block.attn_scale * block.attn(block.attn_norm(block._mix(lane0, x0)))
    assert torch.allclose(new0, lane0 + attn_only, atol=1e-6)


def test_gated_skips_lerp_towards_the_skip():
    model = tiny_model(num_layers=4, skip_gates_enabled=True)
    assert model.skip_gates.shape == (2, 64)
    x = tokens()
    with torch.no_grad():
        model.skip_gates.fill_(50.0)  # sig -> 1: lerp returns x, the skips are ignored
        model.skip_weights.fill_(7.0)
    a = model.logits(x)
    with torch.no_grad():
        model.skip_weights.fill_(-3.0)
    assert torch.allclose(model.logits(x), a, atol=1e-6)
    with torch.no_grad():
        model.skip_gates.fill_(0.0)
    assert not torch.allclose(model.logits(x), a, atol=1e-3)


def test_poly_softcap_is_bounded_odd_and_near_identity_at_zero():
    z = torch.linspace(-200, 200, 4001)
    out = softcap(z, 10.0, "poly")
    assert out.abs().max() <= 10.0 and torch.allclose(out, -softcap(-z, 10.0, "poly"))
    small = torch.tensor([0.01, -0.2])
    assert torch.allclose(softcap(small, 10.0, "poly"), small, rtol=1e-3)
    assert torch.equal(softcap(z, 30.0), 30.0 * torch.tanh(z / 30.0))
    assert tiny_model(logit_softcap_kind="poly", logit_softcap=10.0).logits(tokens()).abs().max() <= 10.0


def test_z_loss_adds_the_squared_log_partition_in_training_only():
    model = tiny_model(z_loss=1e-2)
    x, y = tokens(), tokens(seed=1)
    plain = torch.nn.functional.cross_entropy(model.logits(x).reshape(-1, 128), y.reshape(-1))
    lse = torch.logsumexp(model.logits(x).reshape(-1, 128), dim=-1)
    model.train()
    assert torch.allclose(model(x, y), plain + 1e-2 * lse.square().mean(), atol=1e-6)
    model.eval()
    assert torch.allclose(model(x, y), plain, atol=1e-6)
    assert torch.allclose(model(x, y, reduction="none").mean(), plain, atol=1e-6)


def test_orthogonal_init_and_scaled_output_projections():
    torch.manual_seed(0)
    model = GPT(tiny_cfg(num_layers=2, ortho_init=True, mlp_mult=1))
    w = model.blocks[0].attn.c_q.weight
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)
    assert torch.count_nonzero(model.blocks[0].attn.proj.weight) == 0  # zero-init stays zero
    untied = GPT(tiny_cfg(num_layers=2, ortho_init=True, bigram_vocab_size=64, bigram_dim=64, tie_embeddings=False))
    assert torch.count_nonzero(untied.bigram.proj.weight) == 0


def test_overtone_init_gives_a_power_law_spectrum_and_phased_resid_mix():
    torch.manual_seed(0)
    model = GPT(tiny_cfg(num_layers=3, overtone_init=True))
    s = torch.linalg.svdvals(model.tok_emb.weight)
    k = torch.arange(1, s.numel() + 1, dtype=s.dtype)
    assert torch.allclose(s, s[0] * k.pow(-0.5), rtol=1e-4)
    phases = [b.resid_mix[0, 0].item() for b in model.blocks]
    assert phases[0] < phases[1] < phases[2] and math.isclose(phases[1], 0.5, abs_tol=1e-6)
    assert torch.allclose(model.blocks[0].resid_mix[1], 1 - model.blocks[0].resid_mix[0])


def test_every_parameter_has_exactly_one_optimizer():
    from techniques_helpers import ALL_ON

    model = GPT(tiny_cfg(**ALL_ON))
    opts = build_optimizers(model, OptimConfig(), tie_embeddings=True)
    owned = [id(p) for opt in opts.all for g in opt.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    assert GPT(tiny_cfg()).extra_parameter_roles() == {"embed": [], "matrix": [], "scalar": []}
