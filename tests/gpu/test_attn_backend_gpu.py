"""FA3 against PyTorch SDPA on a Hopper GPU, within bf16 tolerance (skipped without CUDA and FA3)."""

from __future__ import annotations

import pytest
import torch

from pgolf.model import attn_backend
from pgolf.model.attn_backend import (
    causal_attention,
    fa3_unavailable_reason,
    padded_segments_from_bos,
    segments_from_bos,
    select_backend,
)

pytestmark = pytest.mark.gpu

BOS = 1
# bf16 has an 8-bit mantissa; two different kernel orders over up to 1024 keys agree to about this.
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


def _need_fa3() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    reason = fa3_unavailable_reason(device)
    if reason:
        pytest.skip(reason)
    return device


@pytest.fixture(autouse=True)
def fresh_selection():
    attn_backend.reset_backend()
    yield
    attn_backend.reset_backend()


def _qkv(device, batch=4, heads=8, kv_heads=4, seq_len=1024, head_dim=64):
    g = torch.Generator(device=device).manual_seed(0)
    shapes = [(batch, heads, seq_len, head_dim), (batch, kv_heads, seq_len, head_dim), (batch, kv_heads, seq_len, head_dim)]
    return [torch.randn(s, generator=g, device=device, dtype=torch.bfloat16, requires_grad=True) for s in shapes]


def _run(backend, device, q, k, v, segments=None):
    select_backend(backend, device)
    out = causal_attention(q, k, v, segments)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    return out, grads


def _relative_error(a, b) -> float:
    # gradients sum over many keys, so compare them as whole tensors rather than element by element
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fa3_matches_sdpa_dense():
    device = _need_fa3()
    q, k, v = _qkv(device)
    fa3_out, fa3_grads = _run("fa3", device, q, k, v)
    sdpa_out, sdpa_grads = _run("sdpa", device, q, k, v)
    assert fa3_out.shape == sdpa_out.shape == q.shape
    torch.testing.assert_close(fa3_out, sdpa_out, **BF16_TOL)
    for a, b in zip(fa3_grads, sdpa_grads):
        assert _relative_error(a, b) < 2e-2


def test_fa3_varlen_matches_sdpa_block_diagonal_mask():
    device = _need_fa3()
    q, k, v = _qkv(device)
    g = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(2, 1024, (q.size(0), q.size(2)), generator=g, device=device)
    ids[torch.rand(ids.shape, generator=g, device=device) < 0.01] = BOS  # documents of ~100 tokens
    segments = segments_from_bos(ids, BOS)
    fa3_out, fa3_grads = _run("fa3", device, q, k, v, segments)
    sdpa_out, sdpa_grads = _run("sdpa", device, q, k, v, segments)
    torch.testing.assert_close(fa3_out, sdpa_out, **BF16_TOL)
    for a, b in zip(fa3_grads, sdpa_grads):
        assert _relative_error(a, b) < 2e-2


def _documents(device, batch, seq_len, seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(2, 1024, (batch, seq_len), generator=g, device=device)
    ids[torch.rand(ids.shape, generator=g, device=device) < 0.01] = BOS  # documents of ~100 tokens
    return ids


def test_fa3_varlen_over_padded_segments_matches_sdpa_block_diagonal_mask():
    """The fixed-shape segments the compiled model uses: trailing zero-length documents change nothing."""
    device = _need_fa3()
    q, k, v = _qkv(device)
    ids = _documents(device, q.size(0), q.size(2))
    fa3_out, fa3_grads = _run("fa3", device, q, k, v, padded_segments_from_bos(ids, BOS))
    sdpa_out, sdpa_grads = _run("sdpa", device, q, k, v, segments_from_bos(ids, BOS))
    torch.testing.assert_close(fa3_out, sdpa_out, **BF16_TOL)
    for a, b in zip(fa3_grads, sdpa_grads):
        assert _relative_error(a, b) < 2e-2


def test_fa3_varlen_over_a_packed_rows_cut_segments_matches_sdpa_mask():
    """R44's packed row (PGOLF_MAX_DOC_LEN): cut at BOS and every 1024 from a document's start."""
    device = _need_fa3()
    q, k, v = _qkv(device, batch=1, seq_len=4096)
    ids = _documents(device, 1, 4096, seed=3)
    ids[ids == BOS] = 2
    ids[0, [700, 3000]] = BOS  # documents of 2300 and 1096 tokens: cut inside both, and in the row's first part
    fa3_out, fa3_grads = _run("fa3", device, q, k, v, padded_segments_from_bos(ids, BOS, 1024))
    sdpa_out, sdpa_grads = _run("sdpa", device, q, k, v, segments_from_bos(ids, BOS, 1024))
    torch.testing.assert_close(fa3_out, sdpa_out, **BF16_TOL)
    for a, b in zip(fa3_grads, sdpa_grads):
        assert _relative_error(a, b) < 2e-2


def _compiled_doc_isolated_loss(backend: str, device, ids, max_doc_len: int = 0):
    from pgolf.eval.evaluate import autocast_for
    from pgolf.model.gpt import build_model
    from pgolf.presets import baseline

    cfg = baseline().model
    cfg.num_layers, cfg.doc_isolated_attention, cfg.bos_id = 2, True, BOS  # head_dim 64: an FA3 size
    cfg.max_doc_len = max_doc_len
    torch._dynamo.reset()
    select_backend(backend, device)
    torch.manual_seed(0)
    model = build_model(cfg, device)
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    with autocast_for(device):
        loss = compiled(ids, torch.roll(ids, -1, 1))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return loss.detach().float(), grads


def test_compiled_doc_isolated_model_on_fa3_varlen_matches_sdpa_mask():
    """The model's wiring: DOC_ISOLATED_ATTENTION on FA3 (varlen, compiled, no graph break) equals the SDPA mask path."""
    device = _need_fa3()
    ids = _documents(device, 4, 1024, seed=2)
    fa3_loss, fa3_grads = _compiled_doc_isolated_loss("fa3", device, ids)
    sdpa_loss, sdpa_grads = _compiled_doc_isolated_loss("sdpa", device, ids)
    torch._dynamo.reset()
    torch.testing.assert_close(fa3_loss, sdpa_loss, rtol=1e-2, atol=1e-2)
    for a, b in zip(fa3_grads, sdpa_grads):
        if a is not None and b is not None and b.norm() > 0:
            assert _relative_error(a, b) < 5e-2


def test_compiled_model_on_a_packed_row_on_fa3_varlen_matches_sdpa_mask():
    """PGOLF_LOADER=doc_packed's rows: one row, PGOLF_MAX_DOC_LEN cuts, compiled on FA3 vs the SDPA mask."""
    device = _need_fa3()
    ids = _documents(device, 1, 4096, seed=4)
    ids[ids == BOS] = 2
    ids[0, [700, 3000, 3001]] = BOS  # long documents, cut every 512 from their starts; an empty one
    fa3_loss, fa3_grads = _compiled_doc_isolated_loss("fa3", device, ids, 512)
    sdpa_loss, sdpa_grads = _compiled_doc_isolated_loss("sdpa", device, ids, 512)
    torch._dynamo.reset()
    torch.testing.assert_close(fa3_loss, sdpa_loss, rtol=1e-2, atol=1e-2)
    for a, b in zip(fa3_grads, sdpa_grads):
        if a is not None and b is not None and b.norm() > 0:
            assert _relative_error(a, b) < 5e-2
