"""XSA, document-isolated attention, value embeddings, value residual and the per-head output gates."""

from __future__ import annotations

import pytest
import torch
from techniques_helpers import BOS, tiny_model, tokens

from pgolf.model.attention import exclusive_self_attention
from pgolf.model.attn_backend import doc_ids_from_bos, document_causal_mask


def capture_attention(model, layer: int):
    """(input x, values v [B, Hkv, T, D], output before out-proj y [B, T, H, D]) of one layer."""
    attn = model.blocks[layer].attn
    seen = {}
    # Hooks must return None: a returned value would replace the module's arguments.
    attn.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    attn.proj.register_forward_pre_hook(lambda m, args: seen.update(y=args[0]))
    return attn, seen


def own_value_projections(model, layer: int, x_ids):
    """|y . v_hat| per token and head (a cosine would be noise where XSA leaves y ~ 0, e.g. at t=0)."""
    attn, seen = capture_attention(model, layer)
    model.logits(x_ids)
    bsz, seqlen, _ = seen["x"].shape
    v = attn.c_v(seen["x"]).view(bsz, seqlen, attn.num_kv_heads, attn.head_dim)
    y = seen["y"].view(bsz, seqlen, attn.num_heads, attn.head_dim)
    group = attn.num_heads // attn.num_kv_heads
    v_per_head = v.repeat_interleave(group, dim=2)  # query head h reads KV head h // group
    v_hat = torch.nn.functional.normalize(v_per_head, dim=-1)
    return (y * v_hat).sum(-1).abs(), y.norm(dim=-1)


def test_xsa_output_is_orthogonal_to_the_tokens_own_value_per_head():
    x = tokens()
    along, norm = own_value_projections(tiny_model(xsa_last_n=1), 1, x)
    assert along.max() < 1e-6 * norm.max() and norm.max() > 0.1
    along, norm = own_value_projections(tiny_model(), 1, x)
    assert along.max() > 0.1 * norm.max()


def test_xsa_last_n_picks_the_last_layers_and_large_n_means_all():
    model = tiny_model(num_layers=4, xsa_last_n=2)
    assert [b.attn.options.xsa for b in model.blocks] == [False, False, True, True]
    assert all(b.attn.options.xsa for b in tiny_model(num_layers=4, xsa_last_n=99).blocks)


def test_efficient_xsa_equals_the_repeat_interleave_form():
    y, v = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 5, 16)
    v_rep = torch.nn.functional.normalize(v.repeat_interleave(4, dim=1), dim=-1)
    expected = y - (y * v_rep).sum(-1, keepdim=True) * v_rep
    assert torch.allclose(exclusive_self_attention(y, v), expected, atol=1e-6)


def with_documents(x: torch.Tensor, starts: list[int]) -> torch.Tensor:
    x = x.clone()
    x[:, starts] = BOS
    return x


def test_document_mask_is_causal_and_block_diagonal():
    ids = torch.tensor([[5, 6, BOS, 7, 8, BOS, 9]])
    mask = document_causal_mask(doc_ids_from_bos(ids, BOS))[0, 0]
    assert mask[4].tolist() == [False, False, True, True, True, False, False]
    assert mask[6].tolist() == [False] * 5 + [True, True]
    assert not mask.triu(1).any()


def doc_outputs_after_changing_previous_doc(model, seed=0):
    x = with_documents(tokens(seqlen=40, seed=seed), [0, 15, 27])
    y = x.clone()
    y[:, 3:15] = (y[:, 3:15] + 5) % 126 + 2  # rewrite document 0 (never into a BOS)
    a, b = model.logits(x), model.logits(y)
    return a[:, 15:], b[:, 15:]


def test_document_isolated_attention_never_leaks_into_the_next_document():
    a, b = doc_outputs_after_changing_previous_doc(tiny_model(doc_isolated_attention=True))
    assert torch.equal(a, b)
    a, b = doc_outputs_after_changing_previous_doc(tiny_model())
    assert not torch.equal(a, b)


def test_value_embeddings_only_on_chosen_layers():
    model = tiny_model(num_layers=4, ve_enabled=True, ve_layers="1,3")
    assert model.ve_layers == (1, 3) and model.ve_layer_scales.shape == (2,)
    assert model.ve_shared.proj.weight.shape == (2 * 16, 128)
    x = tokens()
    base = model.logits(x)
    with torch.no_grad():
        model.ve_layer_scales[1].add_(1.0)  # only layer 3's values move
    moved = model.logits(x)
    assert not torch.equal(base, moved)
    assert tiny_model(num_layers=4, ve_enabled=True).ve_layers == (2, 3)  # default: the last two


def test_value_residual_with_lambdas_0_1_is_the_plain_model():
    plain = tiny_model(num_layers=3)
    vr = tiny_model(num_layers=3, value_residual=True)
    state = plain.state_dict()
    vr.load_state_dict(state, strict=False)
    assert "blocks.0.attn.vr_lambda" not in vr.state_dict()
    with torch.no_grad():
        for block in vr.blocks[1:]:
            block.attn.vr_lambda.copy_(torch.tensor([0.0, 1.0]))
    x = tokens()
    assert torch.allclose(vr.logits(x), plain.logits(x), atol=1e-6)
    with torch.no_grad():
        vr.blocks[2].attn.vr_lambda.copy_(torch.tensor([0.5, 0.5]))
    assert not torch.allclose(vr.logits(x), plain.logits(x), atol=1e-4)


def gated_pair(**gate):
    plain = tiny_model()
    gated = tiny_model(**gate)
    gated.load_state_dict(plain.state_dict(), strict=False)
    return plain, gated


def test_attention_output_gate_starts_as_identity():
    x = tokens()
    plain, gated = gated_pair(attn_out_gate_enabled=True)
    with torch.no_grad():
        for b in gated.blocks:
            b.attn.attn_gate_w.zero_()  # its init: 2 sig(0) = 1
    assert torch.allclose(gated.logits(x), plain.logits(x), atol=1e-6)


def test_gates_multiply_each_head_by_their_formula():
    x = tokens()
    cases = {"sparse_attn_gate_enabled": lambda w, h: torch.sigmoid(0.5 * h[..., :12] @ w.T),
             "attn_out_gate_enabled": lambda w, h: 2 * torch.sigmoid(h[..., :12] @ w.T),
             "gated_attn_enabled": lambda w, h: torch.sigmoid(h @ w.T)}
    for flag, formula in cases.items():
        plain, gated = gated_pair(**{flag: True, "sparse_attn_gate_scale": 0.5})
        _, seen_plain = capture_attention(plain, 0)  # layer 0: both models see the same input
        attn, seen = capture_attention(gated, 0)
        plain.logits(x), gated.logits(x)
        g = formula(attn.attn_gate_w, seen["x"])  # [B, T, H]
        y_plain = seen_plain["y"].view(2, 32, 4, 16)
        assert torch.allclose(seen["y"].view(2, 32, 4, 16), y_plain * g[..., None], atol=1e-6), flag
    assert tiny_model(gated_attn_enabled=True).blocks[0].attn.attn_gate_w.shape == (4, 64)
    assert tiny_model(attn_out_gate_enabled=True).blocks[0].attn.attn_gate_w.shape == (4, 12)


def test_sparse_gate_reads_only_the_first_window_dims():
    model = tiny_model(sparse_attn_gate_enabled=True, sparse_attn_gate_scale=0.5)
    attn = model.blocks[0].attn
    x = torch.randn(1, 6, 64)
    x2 = x.clone()
    x2[..., 12:] += 1.0
    assert torch.equal(attn._gate(x), attn._gate(x2))
    assert torch.allclose(attn._gate(x), torch.sigmoid(0.5 * x[..., :12] @ attn.attn_gate_w.T))


@pytest.mark.parametrize("option", ["doc_isolated_attention", "ve_enabled", "value_residual", None])
def test_attention_is_told_whether_the_model_gives_it_side_inputs(option):
    # side_inputs off, attention reads none (a bundle folds their handling away), so each option
    # that makes the model pass them must turn it on
    model = tiny_model(**({option: True} if option else {}))
    ids = tokens()
    ids[:, 9] = BOS
    given = [model._attention_inputs(ids)(i) is not None for i in range(len(model.blocks))]
    told = [block.attn.options.side_inputs for block in model.blocks]
    assert told == [option is not None] * len(model.blocks) and (any(given) if option else not any(given))
    model.logits(ids)  # attention's own check that it was told
