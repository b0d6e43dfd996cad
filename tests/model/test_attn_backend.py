"""The attention backend layer on CPU: document isolation equals per-document attention, FA3 varlen's
fixed-shape segments describe exactly the mask path's documents, selection rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgolf.errors import PgolfError
from pgolf.model import attn_backend
from pgolf.model.attn_backend import (
    causal_attention,
    doc_ids_from_bos,
    document_attention_inputs,
    document_causal_mask,
    padded_segments_from_bos,
    segments_from_bos,
    select_backend,
)

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


def test_a_stand_in_flash_attn_interface_is_not_taken_for_fa3(monkeypatch):
    # The first H200 run: a benchmark's stand-in module (the records import flash_attn_interface) left
    # in sys.modules made pgolf pick FA3, which then failed at the first forward.
    import sys
    import types

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=None))
    assert attn_backend.fa3_module_problem() == "flash_attn_interface lacks flash_attn_func, flash_attn_varlen_func"
    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=F.scaled_dot_product_attention))
    assert attn_backend.fa3_module_problem().endswith("lacks flash_attn_varlen_func")
    complete = types.SimpleNamespace(flash_attn_func=F.scaled_dot_product_attention, flash_attn_varlen_func=F.scaled_dot_product_attention)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", complete)
    assert attn_backend.fa3_module_problem() is None
    monkeypatch.delitem(sys.modules, "flash_attn_interface")
    monkeypatch.setattr(sys, "path", [])
    assert "not importable" in attn_backend.fa3_module_problem()


# -- FA3 varlen's input, in fixed shapes for compiled models ------------------------------------------

LAYOUTS = [
    torch.tensor([[5, 1, 7, 8, 1, 9], [1, 4, 4, 4, 4, 1]]),  # BOS first, last, mid-row
    torch.tensor([[1, 1, 1, 2, 2, 2], [3, 3, 3, 3, 3, 3]]),  # back-to-back BOS; a row without any
    torch.randint(0, 4, (3, 32), generator=torch.Generator().manual_seed(7)),  # about one token in four
]


def varlen_reference(q, k, v, cu_seqlens):
    """What flash_attn_varlen_func computes: plain causal attention over each [cu[i], cu[i+1]) of the
    flattened batch (zero-length documents contribute nothing)."""
    batch, heads, seq_len, dim = q.shape
    groups = heads // k.size(1)
    flat = [t.transpose(1, 2).reshape(batch * seq_len, t.size(1), dim) for t in (q, k, v)]
    out = torch.zeros_like(flat[0])
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            qq, kk, vv = (t[a:b].transpose(0, 1)[None] for t in flat)
            kk, vv = kk.repeat_interleave(groups, dim=1), vv.repeat_interleave(groups, dim=1)
            out[a:b] = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)[0].transpose(0, 1)
    return out.view(batch, seq_len, heads, dim).transpose(1, 2)


@pytest.mark.parametrize("ids", LAYOUTS)
def test_padded_segments_are_the_documents_of_the_mask_path(ids):
    padded, exact = padded_segments_from_bos(ids, BOS), segments_from_bos(ids, BOS)
    n = exact.num_docs
    assert padded.cu_seqlens.dtype == torch.int32 and padded.cu_seqlens.numel() == ids.numel() + 1
    assert torch.equal(padded.cu_seqlens[: n + 1], exact.cu_seqlens)
    assert (padded.cu_seqlens[n:] == ids.numel()).all()  # the rest: zero-length documents at the end
    assert padded.max_seqlen == ids.size(1) >= exact.max_seqlen
    assert torch.equal(padded.doc_ids, exact.doc_ids)
    # every segment is one document of the SDPA mask path: constant doc id, never crossing a row
    mask_ids = doc_ids_from_bos(ids, BOS)
    bounds = padded.cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            assert a // ids.size(1) == (b - 1) // ids.size(1)
            assert mask_ids.reshape(-1)[a:b].unique().numel() == 1
    assert torch.equal(document_causal_mask(padded.doc_ids), document_causal_mask(mask_ids))


@pytest.mark.parametrize("ids", LAYOUTS)
def test_varlen_over_padded_segments_equals_the_sdpa_mask_path(ids):
    q, k, v = qkv(ids.size(0), 4, 2, ids.size(1), seed=5)
    select_backend("sdpa", "cpu")
    masked = causal_attention(q, k, v, segments_from_bos(ids, BOS))
    got = varlen_reference(q, k, v, padded_segments_from_bos(ids, BOS).cu_seqlens)
    torch.testing.assert_close(got, masked, rtol=1e-12, atol=1e-12)


def test_padded_segments_compile_once_for_every_document_layout():
    from pgolf.bench.recompile import RecompileWatch

    torch._dynamo.reset()
    build = torch.compile(padded_segments_from_bos, fullgraph=True, dynamic=False, backend="eager")
    ids = torch.randint(0, 4, (2, 16), generator=torch.Generator().manual_seed(0))
    build(ids, BOS)
    watch = RecompileWatch()
    with watch.forbid("new document layouts"):
        for seed in range(1, 4):
            other = torch.randint(0, 4, (2, 16), generator=torch.Generator().manual_seed(seed))
            assert torch.equal(build(other, BOS).cu_seqlens, padded_segments_from_bos(other, BOS).cu_seqlens)
    torch._dynamo.reset()


def test_the_model_gets_a_mask_on_sdpa_and_segments_on_fa3(monkeypatch):
    ids = LAYOUTS[0]
    select_backend("sdpa", "cpu")
    mask, segments = document_attention_inputs(ids, BOS)
    assert segments is None and torch.equal(mask, document_causal_mask(doc_ids_from_bos(ids, BOS)))
    monkeypatch.setattr(attn_backend, "_active", "fa3")  # as select_backend leaves it on a Hopper GPU with FA3
    mask, segments = document_attention_inputs(ids, BOS)
    assert mask is None and torch.equal(segments.cu_seqlens, padded_segments_from_bos(ids, BOS).cu_seqlens)
