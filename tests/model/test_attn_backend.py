"""The attention backend layer on CPU: document isolation equals per-document attention, selection rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgolf.errors import PgolfError
from pgolf.model import attn_backend
from pgolf.model.attn_backend import causal_attention, document_causal_mask, segments_from_bos, select_backend

BOS = 1


@pytest.fixture(autouse=True)
def fresh_selection(monkeypatch):
    attn_backend.reset_backend()
    monkeypatch.setattr(attn_backend, "_noticed", False)
    yield
    attn_backend.reset_backend()


def qkv(batch: int, heads: int, kv_heads: int, seq_len: int, head_dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, seq_len, head_dim, generator=g, dtype=torch.float64)
    return q, k, v


def test_segments_cut_at_bos_and_row_starts():
    ids = torch.tensor([[5, 1, 7, 8, 1, 9], [1, 4, 4, 4, 4, 1]])
    seg = segments_from_bos(ids, BOS)
    assert seg.cu_seqlens.tolist() == [0, 1, 4, 6, 11, 12]
    assert seg.cu_seqlens.dtype == torch.int32
    assert seg.max_seqlen == 5
    assert seg.num_docs == 5
    assert seg.doc_ids.tolist() == [[0, 1, 1, 1, 2, 2], [3, 3, 3, 3, 3, 4]]


def test_document_mask_is_block_diagonal_causal():
    mask = document_causal_mask(torch.tensor([[0, 0, 1, 1]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def per_document_reference(q, k, v, ids):
    """Run plain causal attention on every document separately and stitch the outputs back."""
    groups = q.size(1) // k.size(1)
    out = torch.empty_like(q)
    for row in range(ids.size(0)):
        starts = [0] + [i for i in range(1, ids.size(1)) if ids[row, i] == BOS] + [ids.size(1)]
        for a, b in zip(starts[:-1], starts[1:]):
            kk = k[row : row + 1, :, a:b].repeat_interleave(groups, dim=1)
            vv = v[row : row + 1, :, a:b].repeat_interleave(groups, dim=1)
            out[row : row + 1, :, a:b] = F.scaled_dot_product_attention(q[row : row + 1, :, a:b], kk, vv, is_causal=True)
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_document_isolated_sdpa_equals_each_document_alone(heads, kv_heads):
    ids = torch.tensor([[3, 4, 1, 5, 6, 7, 1, 2, 9, 9, 1, 3], [1, 2, 2, 2, 2, 2, 2, 1, 5, 5, 5, 5]])
    q, k, v = qkv(2, heads, kv_heads, ids.size(1))
    select_backend("sdpa", "cpu")
    got = causal_attention(q, k, v, segments_from_bos(ids, BOS))
    torch.testing.assert_close(got, per_document_reference(q, k, v, ids), rtol=1e-12, atol=1e-12)
    # and isolation really changes the result compared with attending across documents
    assert not torch.allclose(got, causal_attention(q, k, v))


def test_document_isolated_gradients_equal_each_document_alone():
    ids = torch.tensor([[7, 7, 1, 5, 6, 1, 2, 9]])
    q, k, v = (t.requires_grad_() for t in qkv(1, 4, 2, ids.size(1), seed=3))
    select_backend("sdpa", "cpu")
    grads = torch.autograd.grad(causal_attention(q, k, v, segments_from_bos(ids, BOS)).square().sum(), (q, k, v))
    expected = torch.autograd.grad(per_document_reference(q, k, v, ids).square().sum(), (q, k, v))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_one_document_per_row_equals_plain_causal_attention():
    ids = torch.full((2, 16), 5)
    q, k, v = qkv(2, 4, 2, 16, seed=1)
    select_backend("sdpa", "cpu")
    torch.testing.assert_close(causal_attention(q, k, v, segments_from_bos(ids, BOS)), causal_attention(q, k, v))


def test_unselected_backend_is_the_references_sdpa_call_bit_for_bit(capsys):
    q, k, v = (t.float() for t in qkv(2, 4, 2, 16, seed=2))
    got = causal_attention(q, k, v)
    assert torch.equal(got, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    assert attn_backend.active_backend() == "sdpa"
    assert capsys.readouterr().err == ""  # on CPU SDPA is the only option: no notice


def test_selection_rules_on_cpu():
    assert select_backend("sdpa", "cpu") == "sdpa"
    assert select_backend("auto", "cpu") == "sdpa"
    with pytest.raises(PgolfError, match="PGOLF_ATTN_BACKEND=fa3 but FlashAttention 3 cannot run: the device is cpu") as err:
        select_backend("fa3", "cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(PgolfError, match="expected one of auto, fa3, sdpa"):
        select_backend("flex", "cpu")


def test_segments_reject_a_flat_tensor():
    with pytest.raises(PgolfError, match="must be \\[batch, seq_len\\]"):
        segments_from_bos(torch.tensor([1, 2, 3]), BOS)


def test_gpu_fallback_prints_one_notice_with_reason_and_cost(capsys):
    # a CUDA device object on a machine without CUDA: FA3 cannot run, so auto falls back to SDPA
    assert select_backend("auto", "cuda") == "sdpa"
    assert select_backend("auto", "cuda") == "sdpa"
    err = capsys.readouterr().err
    assert err.count("pgolf: notice:") == 1 and err.count("\n") == 1
    assert "not FlashAttention 3, because CUDA is not available" in err and "slower than FA3" in err
    with pytest.raises(PgolfError, match="fa3 but FlashAttention 3 cannot run: CUDA is not available"):
        select_backend("fa3", "cuda")
    assert select_backend("sdpa", "cuda") == "sdpa" and capsys.readouterr().err == ""
