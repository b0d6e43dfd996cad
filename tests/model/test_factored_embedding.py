"""Factored tied embedding (EMBED_DIM, R23): parameter count, what the tied head computes, optimizer roles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from techniques_helpers import tiny_cfg, tiny_model, tokens

from pgolf.errors import PgolfError
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.logits import softcap
from pgolf.optim.groups import build_optimizers
from pgolf.presets import build_config, resolve_preset

K = 24


def embedding_params(model: GPT) -> int:
    named = dict(model.named_parameters())
    return sum(named[n].numel() for n in ("tok_emb.weight", "embed_proj.weight", "embed_proj_rev.weight") if n in named)


def test_shared_factorisation_has_v_k_plus_k_d_parameters_and_the_rest_unchanged():
    plain, shared = GPT(tiny_cfg()), GPT(tiny_cfg(embed_dim=K, embed_proj_shared=True))
    v, d = plain.cfg.vocab_size, plain.cfg.model_dim
    assert embedding_params(shared) == v * K + K * d
    assert count_parameters(shared) == count_parameters(plain) - v * d + v * K + K * d
    assert shared.embed_proj_rev is None and shared.tok_emb.weight.shape == (v, K)


def test_r23_factorisation_has_its_own_head_projection():
    r23 = GPT(tiny_cfg(embed_dim=K))
    v, d = r23.cfg.vocab_size, r23.cfg.model_dim
    assert embedding_params(r23) == v * K + 2 * K * d
    assert r23.embed_proj.weight.shape == (d, K) and r23.embed_proj_rev.weight.shape == (K, d)


def test_shared_head_logits_are_hidden_times_p_transpose_times_e_transpose():
    model = tiny_model(embed_dim=K, embed_proj_shared=True)
    x = tokens()
    with torch.no_grad():
        h = model.hidden(x)
        p, e = model.embed_proj.weight, model.tok_emb.weight  # p: [d, k] maps k -> d; e: [V, k]
        expected = softcap(h @ p @ e.T, model.cfg.logit_softcap, model.cfg.logit_softcap_kind)
        assert torch.allclose(model.logits(x), expected, atol=1e-5)
        # the input side uses the same two factors: x0 = rmsnorm(E[id] P^T)
        assert torch.allclose(model.embed(x), F.rms_norm(e[x] @ p.T, (p.shape[0],)), atol=1e-6)


def test_tying_shares_both_factors_gradients_reach_them_from_the_head():
    model = tiny_model(embed_dim=K, embed_proj_shared=True)
    x = tokens()
    model.logits(x).sum().backward()
    unseen = sorted(set(range(2, 128)) - set(x.flatten().tolist()))[0]  # a row only the head reads
    assert model.tok_emb.weight.grad[unseen].abs().sum() > 0
    p_grad_both = model.embed_proj.weight.grad.clone()
    model.zero_grad()
    with torch.no_grad():  # the head alone still moves P: it is the head's factor too
        h = model.hidden(x)
    logits = F.linear(F.linear(h, model.embed_proj.weight.t()), model.tok_emb.weight)
    logits.sum().backward()
    assert model.embed_proj.weight.grad.abs().sum() > 0 and not torch.equal(model.embed_proj.weight.grad, p_grad_both)


def test_r23_head_reads_through_its_own_projection():
    model = tiny_model(embed_dim=K)
    x = tokens()
    with torch.no_grad():
        h = model.hidden(x)
        expected = softcap(h @ model.embed_proj_rev.weight.T @ model.tok_emb.weight.T, model.cfg.logit_softcap)
        assert torch.allclose(model.logits(x), expected, atol=1e-5)


def test_projections_are_muon_matrices_and_the_table_is_adam():
    model = GPT(tiny_cfg(embed_dim=K))
    opts = build_optimizers(model, resolve_preset("tiny_cpu").optim, True)
    muon_params = {id(p) for g in opts.muon.param_groups for p in g["params"]}
    assert id(model.embed_proj.weight) in muon_params and id(model.embed_proj_rev.weight) in muon_params
    assert id(model.tok_emb.weight) not in muon_params
    every = [p for opt in opts.all for g in opt.param_groups for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))


def test_embed_dim_equal_to_model_dim_or_zero_is_the_reference_model():
    base = GPT(tiny_cfg())
    for k in (0, base.cfg.model_dim):
        model = GPT(tiny_cfg(embed_dim=k))
        assert model.embed_proj is None and list(model.state_dict()) == list(base.state_dict())


def test_untied_head_with_factored_input_has_no_head_projection():
    model = GPT(tiny_cfg(embed_dim=K, tie_embeddings=False))
    assert model.embed_proj is not None and model.embed_proj_rev is None
    assert model.logits(tokens()).shape == (2, 32, 128)


@pytest.mark.parametrize("sets, needle", [
    (["EMBED_DIM=-1"], "EMBED_DIM"),
    (["PGOLF_EMBED_PROJ_SHARED=1"], "PGOLF_EMBED_PROJ_SHARED"),
    (["EMBED_DIM=128", "TIE_EMBEDDINGS=0", "PGOLF_EMBED_PROJ_SHARED=1"], "PGOLF_EMBED_PROJ_SHARED"),
])
def test_bad_factored_settings_are_named(sets, needle):
    with pytest.raises(PgolfError, match=needle):
        build_config("baseline", sets, environ={})
